"""The center's audit records as DICOM audit messages (PS3.15 A.5, RFC 3881 derived).

A hospital keeps its audit trail in an audit record repository (IHE ATNA), fed by
every system over syslog; this module turns one record of the center's chain into
one ``AuditMessage``:

- ``EventIdentification``: the DICOM event (EventID from CID 400, codes of DCM),
  what was done to the object (EventActionCode C/R/U/D/E), when, and the outcome
  (0 success, 4 minor failure, 8 serious failure);
- ``ActiveParticipant``: who asked (a reader, an operator, a county site's AE at
  its address) and the center application that did it, with the DICOM role codes
  for transfers (source 110153, destination 110152);
- ``AuditSourceIdentification``: this center;
- ``ParticipantObjectIdentification``: the study (Study Instance UID) and its
  patient, the report, the user account, the query..., and on the first object the
  record itself (sequence number, hash, detail) as ``ParticipantObjectDetail``
  ``rdc-audit-record``, so the repository holds every record's hash as well.

Each of the center's actions maps to an event in :data:`ACTION_EVENTS` or, by its
family (the part before the first dot), in :data:`FAMILY_EVENTS`; anything else is
Application Activity, so an unforeseen action is still sent, never dropped.  The
center's own action name always travels as an EventTypeCode in the local code
system ``99RDC`` (HL7's convention for local codes).
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import AuditRecord, Report, Study

DCM: Final = "DCM"
RFC3881: Final = "RFC-3881"
LOCAL: Final = "99RDC"
#: Cap on the JSON of one record's detail inside a message (a UDP datagram must hold
#: the whole message; the record's hash still covers the full detail).
MAX_DETAIL_BYTES: Final = 8_000


@dataclass(frozen=True)
class Code:
    """A coded value: csd-code, codeSystemName, originalText."""

    code: str
    system: str
    text: str


# EventID (PS3.16 CID 400).
APPLICATION_ACTIVITY: Final = Code("110100", DCM, "Application Activity")
AUDIT_LOG_USED: Final = Code("110101", DCM, "Audit Log Used")
INSTANCES_ACCESSED: Final = Code("110103", DCM, "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Final = Code("110104", DCM, "DICOM Instances Transferred")
EXPORT: Final = Code("110106", DCM, "Export")
IMPORT: Final = Code("110107", DCM, "Import")
PATIENT_RECORD: Final = Code("110110", DCM, "Patient Record")
PROCEDURE_RECORD: Final = Code("110111", DCM, "Procedure Record")
QUERY: Final = Code("110112", DCM, "Query")
SECURITY_ALERT: Final = Code("110113", DCM, "Security Alert")
USER_AUTHENTICATION: Final = Code("110114", DCM, "User Authentication")

# EventTypeCode (CID 401, 402, 403).
APPLICATION_START: Final = Code("110120", DCM, "Application Start")
APPLICATION_STOP: Final = Code("110121", DCM, "Application Stop")
LOGIN: Final = Code("110122", DCM, "Login")
LOGOUT: Final = Code("110123", DCM, "Logout")
NODE_AUTHENTICATION: Final = Code("110126", DCM, "Node Authentication")
NETWORK_CONFIGURATION: Final = Code("110128", DCM, "Network Configuration")
SECURITY_CONFIGURATION: Final = Code("110129", DCM, "Security Configuration")
SOFTWARE_CONFIGURATION: Final = Code("110131", DCM, "Software Configuration")
RESTRICTED_FUNCTION: Final = Code("110132", DCM, "Use of Restricted Function")
OBJECT_SECURITY_CHANGED: Final = Code("110135", DCM, "Object Security Attributes Changed")
USER_SECURITY_CHANGED: Final = Code("110137", DCM, "User Security Attributes Changed")

# RoleIDCode (CID 402) and ParticipantObjectIDTypeCode.
ROLE_APPLICATION: Final = Code("110150", DCM, "Application")
ROLE_DESTINATION: Final = Code("110152", DCM, "Destination Role ID")
ROLE_SOURCE: Final = Code("110153", DCM, "Source Role ID")
STUDY_UID: Final = Code("110180", DCM, "Study Instance UID")
NODE_ID: Final = Code("110182", DCM, "Node ID")
PATIENT_NUMBER: Final = Code("2", RFC3881, "Patient Number")
REPORT_NUMBER: Final = Code("9", RFC3881, "Report Number")
SEARCH_CRITERIA: Final = Code("10", RFC3881, "Search Criteria")
USER_IDENTIFIER: Final = Code("11", RFC3881, "User Identifier")


@dataclass(frozen=True)
class Event:
    """How one kind of record is told to an audit repository."""

    event_id: Code
    #: C create, R read, U update, D delete, E execute.
    action: str
    types: tuple[Code, ...] = ()
    #: The center is the sender of the instances (outgoing transfer), not the receiver.
    outgoing: bool = False
    #: The requestor is a remote DICOM node (calling AE at an address), not a person.
    node: bool = False


def _e(event_id: Code, action: str, *types: Code, outgoing: bool = False,
       node: bool = False) -> Event:
    return Event(event_id, action, types, outgoing, node)


#: Exact actions.  Every action the code base writes is here or in a family below
#: (tests/test_atna.py scans the code base and checks).
ACTION_EVENTS: Final[Mapping[str, Event]] = {
    # Sign-in and accounts.
    "login": _e(USER_AUTHENTICATION, "E", LOGIN),
    "login.failed": _e(USER_AUTHENTICATION, "E", LOGIN),
    "logout": _e(USER_AUTHENTICATION, "E", LOGOUT),
    "user.locked": _e(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    # Images and records seen by readers.
    "study.view": _e(INSTANCES_ACCESSED, "R"),
    "dicomweb.access": _e(INSTANCES_ACCESSED, "R"),
    "dicomweb.search": _e(QUERY, "E"),
    "ecg.view": _e(INSTANCES_ACCESSED, "R"),
    "ecg.edit": _e(INSTANCES_ACCESSED, "U"),
    "report.view": _e(PATIENT_RECORD, "R"),
    "share.open": _e(INSTANCES_ACCESSED, "R"),
    "share.create": _e(SECURITY_ALERT, "C", OBJECT_SECURITY_CHANGED),
    "share.revoke": _e(SECURITY_ALERT, "D", OBJECT_SECURITY_CHANGED),
    "share.refused": _e(SECURITY_ALERT, "E", RESTRICTED_FUNCTION),
    # Reading workflow.
    "study.claim": _e(PROCEDURE_RECORD, "U"),
    "study.release": _e(PROCEDURE_RECORD, "U"),
    "study.route": _e(PROCEDURE_RECORD, "U"),
    "study.complete": _e(INSTANCES_TRANSFERRED, "C", node=True),
    "study.reopen": _e(INSTANCES_TRANSFERRED, "U", node=True),
    "report.create": _e(PATIENT_RECORD, "C"),
    "report.prefill": _e(PATIENT_RECORD, "U"),
    "report.update": _e(PATIENT_RECORD, "U"),
    "report.addendum": _e(PATIENT_RECORD, "U"),
    "report.sign": _e(PATIENT_RECORD, "U"),
    "ai.result": _e(PATIENT_RECORD, "C"),
    "ecg.analysed": _e(PATIENT_RECORD, "C"),
    # Pathology: slides in, the case read (views, marks), frozen-section pages.
    "pathology.import": _e(IMPORT, "C"),
    "pathology.intake": _e(PATIENT_RECORD, "C"),
    "pathology.case_view": _e(PATIENT_RECORD, "R"),
    "pathology.annotation_save": _e(PATIENT_RECORD, "C"),
    "pathology.case_sign": _e(PATIENT_RECORD, "U"),
    "pathology.case_amend": _e(PATIENT_RECORD, "U"),
    "pathology.page": _e(APPLICATION_ACTIVITY, "E"),
    "pathology.page_failed": _e(APPLICATION_ACTIVITY, "E"),
    "pathology.page_webhook_failed": _e(APPLICATION_ACTIVITY, "E"),
    # Lab results: review, QC-hold release, per-result signatures, results back.
    "lab.review": _e(PATIENT_RECORD, "U"),
    "lab.qc_release": _e(PATIENT_RECORD, "U"),
    "lab.sign": _e(PATIENT_RECORD, "U"),
    "lab.release": _e(EXPORT, "R"),
    "lab.rejection_sent": _e(EXPORT, "R"),
    # Lab orders in (HL7 over MLLP, FHIR over the API): accepted, or refused with a reason.
    "lab.order": _e(PATIENT_RECORD, "C"),
    "lab.message_refused": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    # Lab chain of custody: each scan of a tube or box, a stability or temperature hold
    # set or cleared on a tube, a tube rejected with a coded reason.
    "lab.custody": _e(PATIENT_RECORD, "U"),
    "lab.specimen_hold": _e(PATIENT_RECORD, "U"),
    "lab.specimen_reject": _e(PATIENT_RECORD, "U"),
    # Analyzer runs in (ASTM, instrument ORU): a run's results stored, a run sent again
    # (recognised, not stored twice), a result or control that could not be attached.
    "lab.run_store": _e(PATIENT_RECORD, "C", node=True),
    "lab.run_resent": _e(PATIENT_RECORD, "R", node=True),
    "lab.result_refused": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    # Lab QC: a control lot registered (a configuration change), a run judged by the
    # Westgard rules (its patient results of a failing analyte put on hold).
    "lab.qc_lot_add": _e(APPLICATION_ACTIVITY, "C", SOFTWARE_CONFIGURATION),
    "lab.qc_evaluate": _e(PATIENT_RECORD, "U"),
    # Lab critical values: the site notified (ORU, in-app, webhook), escalated to the next
    # tier, a wrong read-back refused, the value acknowledged with a matching read-back.
    "lab.critical_notify": _e(EXPORT, "R"),
    "lab.critical_escalate": _e(APPLICATION_ACTIVITY, "E"),
    "lab.critical_readback_mismatch": _e(PATIENT_RECORD, "R"),
    "lab.critical_ack": _e(PATIENT_RECORD, "U"),
    # Lab autoverification: a batch judged by the rules; a rule set validated by
    # replay and enabled (software configuration changes).
    "lab.autoverify": _e(PATIENT_RECORD, "U"),
    "lab.rules_validate": _e(APPLICATION_ACTIVITY, "E", SOFTWARE_CONFIGURATION),
    "lab.rules_enable": _e(APPLICATION_ACTIVITY, "U", SOFTWARE_CONFIGURATION),
    # The lab in the web app: a result or a visit's report looked at, a FHIR order refused.
    "lab.result_view": _e(PATIENT_RECORD, "R"),
    "lab.report_view": _e(PATIENT_RECORD, "R"),
    "lab.fhir_order_refused": _e(IMPORT, "C"),
    # The DICOM front door.
    "association.accept": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "association.reject": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "association.release": _e(INSTANCES_TRANSFERRED, "C", node=True),
    "association.abort": _e(INSTANCES_TRANSFERRED, "C", node=True),
    "instance.upload_failed": _e(INSTANCES_TRANSFERRED, "C", node=True),
    # The storage commitment SCP's front door (delivery.commitment_scp).
    "commitment.association_reject": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    # Results sent back to sites.
    "delivery.attempt": _e(INSTANCES_TRANSFERRED, "R", outgoing=True),
    "delivery.dead": _e(INSTANCES_TRANSFERRED, "R", outgoing=True),
    "delivery.commitment": _e(INSTANCES_TRANSFERRED, "R", outgoing=True),
    # The audit log itself.
    "audit.verify": _e(AUDIT_LOG_USED, "R"),
    "audit.export": _e(AUDIT_LOG_USED, "R"),
    "audit.anchor_mismatch": _e(SECURITY_ALERT, "E", SECURITY_CONFIGURATION),
    # Certificates of the DICOM TLS port.
    "site.cert_issue": _e(SECURITY_ALERT, "C", SECURITY_CONFIGURATION),
    "site.cert_revoke": _e(SECURITY_ALERT, "D", SECURITY_CONFIGURATION),
    "site.delivery_tls": _e(SECURITY_ALERT, "U", SECURITY_CONFIGURATION),
    # Backup and restore.
    "backup.create": _e(EXPORT, "R"),
    "backup.failed": _e(EXPORT, "R"),
    "backup.restore": _e(IMPORT, "C"),
}

#: By family, for the actions of a family not listed above (and new ones).
FAMILY_EVENTS: Final[Mapping[str, Event]] = {
    "login": _e(USER_AUTHENTICATION, "E", LOGIN),
    "user": _e(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    "key": _e(SECURITY_ALERT, "U", USER_SECURITY_CHANGED),
    "site": _e(SECURITY_ALERT, "U", NETWORK_CONFIGURATION),
    "tls": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "association": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "dicom": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "connection": _e(SECURITY_ALERT, "E", NODE_AUTHENTICATION, node=True),
    "model": _e(SECURITY_ALERT, "U", SOFTWARE_CONFIGURATION),
    "share": _e(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    "study": _e(PROCEDURE_RECORD, "U"),
    "report": _e(PATIENT_RECORD, "U"),
    "ai_finding": _e(PATIENT_RECORD, "U"),
    "ecg": _e(PATIENT_RECORD, "U"),
    "pathology": _e(PATIENT_RECORD, "U"),
    "delivery": _e(APPLICATION_ACTIVITY, "E"),
    "job": _e(APPLICATION_ACTIVITY, "E"),
    "instance": _e(INSTANCES_TRANSFERRED, "C", node=True),
    "dicomweb": _e(INSTANCES_ACCESSED, "R"),
    "audit": _e(AUDIT_LOG_USED, "R"),
    "backup": _e(EXPORT, "R"),
    "restore": _e(IMPORT, "C"),
    "service": _e(APPLICATION_ACTIVITY, "E"),
    "process": _e(APPLICATION_ACTIVITY, "E"),
    "supervisor": _e(APPLICATION_ACTIVITY, "E"),
    "scheduler": _e(APPLICATION_ACTIVITY, "E"),
    "admin": _e(APPLICATION_ACTIVITY, "R"),
}

GENERIC: Final = _e(APPLICATION_ACTIVITY, "E")

_START_STOP: Final = {"start": APPLICATION_START, "started": APPLICATION_START,
                      "stop": APPLICATION_STOP, "stopped": APPLICATION_STOP,
                      "restart": APPLICATION_START, "restarted": APPLICATION_START}


def event_for(action: str) -> tuple[Event, bool]:
    """The event of an action, and whether it is mapped (False: the generic fallback)."""
    if action in ACTION_EVENTS:
        return ACTION_EVENTS[action], True
    family, _, rest = action.partition(".")
    event = FAMILY_EVENTS.get(family)
    if event is None:
        return GENERIC, False
    if event.event_id == APPLICATION_ACTIVITY and rest in _START_STOP:
        event = _e(APPLICATION_ACTIVITY, "E", _START_STOP[rest])
    return event, True


_SERIOUS: Final = re.compile(r"(dead|mismatch|error|lost|gave_up)")
_MINOR: Final = re.compile(r"(fail|reject|refus|denied|abort|invalid)")


def outcome_of(action: str, detail: Mapping[str, Any]) -> int:
    """EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure."""
    result = str(detail.get("outcome", "")).lower()
    if _OUTCOME_OF_ACTION.get(action, 0) == 8 or _SERIOUS.search(action) or result == "dead":
        return 8
    if (_MINOR.search(action.rpartition(".")[2]) or result in ("failed", "superseded")
            or detail.get("ok") is False or detail.get("committed") is False):
        return 4
    return _OUTCOME_OF_ACTION.get(action, 0)


#: Actions whose outcome their name does not tell.
_OUTCOME_OF_ACTION: Final = {"user.locked": 4, "instance.upload_failed": 8}


def _outcome_text(action: str, detail: Mapping[str, Any]) -> str | None:
    for key in ("reason", "error", "last_error", "why"):
        value = detail.get(key)
        if value:
            return str(value)[:500]
    return None


# --- context from the database --------------------------------------------------------

@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    patient_id: str
    patient_name: str
    issuer: str


class Lookup:
    """Studies behind a batch of records (by study row id, Study UID or report id),
    read with a few queries per batch instead of one per record."""

    def __init__(self, session: Session, records: Sequence[AuditRecord]) -> None:
        study_ids: set[int] = set()
        study_uids: set[str] = set()
        report_ids: set[int] = set()
        for r in records:
            detail = r.detail or {}
            if r.object_type == "study":
                if r.object_id.isdigit():
                    study_ids.add(int(r.object_id))
                else:
                    study_uids.add(r.object_id)
            if r.object_type == "report" and r.object_id.isdigit():
                report_ids.add(int(r.object_id))
            if isinstance(detail.get("study_id"), int):
                study_ids.add(int(detail["study_id"]))
        self.report_study: dict[int, int] = {}
        if report_ids:
            for rid, sid in session.execute(select(Report.id, Report.study_id).where(
                    Report.id.in_(sorted(report_ids)))):
                if sid is not None:
                    self.report_study[int(rid)] = int(sid)
                    study_ids.add(int(sid))
        self.by_id: dict[int, StudyFacts] = {}
        self.by_uid: dict[str, StudyFacts] = {}
        rows: list[Study] = []
        if study_ids:
            rows += session.scalars(select(Study).where(Study.id.in_(sorted(study_ids))))
        if study_uids:
            rows += session.scalars(select(Study).where(Study.study_uid.in_(sorted(study_uids))))
        for st in rows:
            facts = StudyFacts(st.study_uid, st.patient_id, st.patient_name,
                               st.issuer_of_patient_id)
            self.by_id[int(st.id)] = facts
            self.by_uid[st.study_uid] = facts

    def study_of(self, r: AuditRecord) -> StudyFacts | None:
        detail = r.detail or {}
        if r.object_type == "study":
            if r.object_id.isdigit():
                return self.by_id.get(int(r.object_id))
            return self.by_uid.get(r.object_id)
        if r.object_type == "report" and r.object_id.isdigit():
            sid = self.report_study.get(int(r.object_id))
            return self.by_id.get(sid) if sid is not None else None
        if isinstance(detail.get("study_id"), int):
            return self.by_id.get(int(detail["study_id"]))
        return None


# --- the message ----------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """This center as the audit source and as the application participant."""

    source_id: str
    enterprise_site: str
    ae_title: str
    hostname: str


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.text})


def _machine(actor: str) -> bool:
    return actor in ("system", "worker", "gateway", "cli", "test") or actor.startswith(
        ("ai:", "site:", "share:"))


def _client_address(detail: Mapping[str, Any]) -> str | None:
    client = detail.get("client")
    if isinstance(client, str) and client.strip():
        return client.split()[0][:255]
    for key in ("peer", "address", "client_address"):
        value = detail.get(key)
        if isinstance(value, str) and value:
            return value[:255]
    return None


def _participant(root: ET.Element, user_id: str, requestor: bool, *,
                 alternative: str | None = None, name: str | None = None,
                 access_point: str | None = None, access_type: str = "2",
                 role: Code | None = None) -> None:
    attrs = {"UserID": user_id[:255] or "-", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attrs["AlternativeUserID"] = alternative[:255]
    if name:
        attrs["UserName"] = name[:255]
    if access_point:
        attrs["NetworkAccessPointID"] = access_point
        attrs["NetworkAccessPointTypeCode"] = access_type
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _coded(element, "RoleIDCode", role)


def _target_host(detail: Mapping[str, Any]) -> str | None:
    target = detail.get("target")
    if isinstance(target, str) and target:
        return target.rsplit(":", 1)[0]
    return None


def _participants(root: ET.Element, r: AuditRecord, event: Event, source: Source) -> None:
    detail = r.detail or {}
    center = {"user_id": source.ae_title, "alternative": f"rdc@{source.hostname}",
              "name": source.enterprise_site, "access_point": source.hostname,
              "access_type": "1"}
    if event.node:
        calling = str(detail.get("calling_ae") or r.actor.removeprefix("site:"))
        _participant(root, calling, True, access_point=_client_address(detail),
                     name=r.actor if r.actor.startswith("site:") else None, role=ROLE_SOURCE)
        _participant(root, str(center["user_id"]), False, alternative=center["alternative"],
                     name=center["name"], access_point=center["access_point"],
                     access_type="1", role=ROLE_DESTINATION)
        return
    if event.outgoing:
        _participant(root, str(center["user_id"]), True, alternative=center["alternative"],
                     name=center["name"], access_point=center["access_point"],
                     access_type="1", role=ROLE_SOURCE)
        site = detail.get("site")
        _participant(root, f"site:{site}" if site else "site", False,
                     access_point=_target_host(detail), role=ROLE_DESTINATION)
        return
    human = not _machine(r.actor)
    _participant(root, r.actor, True, access_point=_client_address(detail) if human else None,
                 role=None if human else ROLE_APPLICATION)
    _participant(root, str(center["user_id"]), False, alternative=center["alternative"],
                 name=center["name"], access_point=center["access_point"], access_type="1",
                 role=ROLE_APPLICATION)


def _record_detail(r: AuditRecord) -> bytes:
    """The record as the repository keeps it: enough to check it against the chain."""
    detail: Any = r.detail or {}
    text = json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)
    if len(text.encode("utf-8")) > MAX_DETAIL_BYTES:
        detail = {"truncated": True, "bytes": len(text.encode("utf-8"))}
    body = {"seq": r.seq, "at": r.at, "actor": r.actor, "action": r.action,
            "object_type": r.object_type, "object_id": r.object_id, "detail": detail,
            "prev_hash": r.prev_hash, "hash": r.hash}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def _object(root: ET.Element, object_id: str, type_code: str, role: str, id_type: Code, *,
            name: str | None = None, query: bytes | None = None,
            details: Iterable[tuple[str, bytes]] = ()) -> None:
    element = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": object_id[:255] or "-", "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    if name:
        ET.SubElement(element, "ParticipantObjectName").text = name
    elif query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query).decode()
    for kind, value in details:
        ET.SubElement(element, "ParticipantObjectDetail",
                      {"type": kind, "value": base64.b64encode(value).decode("ascii")})


def _objects(root: ET.Element, r: AuditRecord, lookup: Lookup) -> None:
    detail = r.detail or {}
    record = [("rdc-audit-record", _record_detail(r))]
    study = lookup.study_of(r)
    study_first = r.object_type == "study" and study is not None
    if study_first and study is not None:
        _object(root, study.study_uid, "2", "3", STUDY_UID, details=record)
    elif r.object_type == "user":
        _object(root, r.object_id, "1", "11", USER_IDENTIFIER, details=record)
    elif r.object_type == "report":
        _object(root, r.object_id, "2", "3", REPORT_NUMBER, details=record)
    elif r.object_type == "query":
        query = json.dumps(detail, sort_keys=True, default=str).encode("utf-8")
        _object(root, r.object_id, "2", "24", SEARCH_CRITERIA, query=query, details=record)
    elif r.object_type == "association":
        _object(root, r.object_id, "2", "4", NODE_ID, details=record)
    else:
        kind = r.object_type or "object"
        _object(root, r.object_id, "2", "4", Code(kind, LOCAL, kind), details=record)
    if study is not None:
        if not study_first:
            _object(root, study.study_uid, "2", "3", STUDY_UID)
        _patient(root, study)


def _patient(root: ET.Element, study: StudyFacts) -> None:
    if study.patient_id:
        pid = f"{study.patient_id}^^^{study.issuer}" if study.issuer else study.patient_id
        _object(root, pid, "1", "1", PATIENT_NUMBER, name=study.patient_name or None)


def audit_message(r: AuditRecord, source: Source, lookup: Lookup) -> bytes:
    """The ``AuditMessage`` XML of one record (UTF-8, with an XML declaration)."""
    event, _ = event_for(r.action)
    detail = r.detail or {}
    outcome = outcome_of(r.action, detail)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action, "EventDateTime": r.at,
        "EventOutcomeIndicator": str(outcome)})
    _coded(ident, "EventID", event.event_id)
    for code in event.types:
        _coded(ident, "EventTypeCode", code)
    _coded(ident, "EventTypeCode", Code(r.action, LOCAL, r.action))
    text = _outcome_text(r.action, detail) if outcome else None
    if text:
        ET.SubElement(ident, "EventOutcomeDescription").text = text
    _participants(root, r, event, source)
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {
        "AuditEnterpriseSiteID": source.enterprise_site[:255],
        "AuditSourceID": source.source_id[:255]})
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})
    _objects(root, r, lookup)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
