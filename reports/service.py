"""Reports over the database: drafts, versions, signing, addenda.

A report belongs to one reported object (a study here; later an ECG, a slide
case or a lab order) and moves draft → preliminary → final (signed) → amended.
A signed version is frozen: its canonical bytes, hash and signature are never
rewritten; an addendum is a new version that points at the last signed one and
is signed in its own right.  Every change, signature and refusal that changed
nothing is in the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.crypto import digest, hash_algorithm
from core.errors import Conflict, InvalidInput, NotFound
from core.models import ReaderKey, Report, ReportVersion, Site, Study
from core.orthanc_client import OrthancClient
from core.settings import Settings
from core.states import ReportState, check_transition
from reports import fhir, hl7, keys, pdf, registry, sr
from reports.canonical import canonical_bytes, normalize_text
from reports.document import Figure, ReportDocument, Section, SignerInfo
from reports.envelope import make_sealer
from reports.templates import Template, get_template, template_for

log = logging.getLogger(__name__)

#: UID root for objects the center makes; UIDs are derived from what they are so
#: that a retried signing writes the same objects, never a second copy.
_UID_PREFIX = "1.2.826.0.1.3680043.10.1245."
EDITABLE = (ReportState.DRAFT, ReportState.PRELIMINARY)


def _now() -> datetime:
    return datetime.now(UTC)


def template_of(report: Report) -> Template:
    return get_template(report.template_id, report.template_version)


def current_version(session: Session, report: Report) -> ReportVersion:
    version = session.scalar(select(ReportVersion).where(ReportVersion.report_id == report.id)
                             .order_by(ReportVersion.number.desc()).limit(1))
    if version is None:
        raise NotFound(f"report {report.id} has no version")
    return version


def get_report(session: Session, report_id: int) -> Report:
    report = session.get(Report, report_id)
    if report is None:
        raise NotFound(f"no report {report_id}")
    return report


def versions(session: Session, report: Report) -> list[ReportVersion]:
    return list(session.scalars(select(ReportVersion).where(ReportVersion.report_id == report.id)
                                .order_by(ReportVersion.number)))


@dataclass(frozen=True)
class Draft:
    """A study's report whose current version can still change."""

    study: Study
    report: Report
    version: ReportVersion


def open_draft(session: Session, study_id: int) -> Draft | None:
    """The study's report if its current version can still change."""
    report = session.scalar(select(Report).where(Report.study_id == study_id,
                                                 Report.subject_type == "study"))
    study = session.get(Study, study_id)
    if report is None or study is None:
        return None
    version = current_version(session, report)
    return Draft(study, report, version) if version.state in EDITABLE else None


def apply_prefill(session: Session, draft: Draft, changed: dict[str, str],
                  actor: str) -> list[str]:
    """Write prefill ``changed`` (field key -> new text) into the open draft, audited."""
    if changed:
        draft.version.fields = {**draft.version.fields, **changed}
        draft.version.updated_at = _now()
        audit.append(session, actor=actor, action="report.prefill", object_type="report",
                     object_id=str(draft.report.id),
                     detail={"version": draft.version.number, "fields": sorted(changed)})
    return sorted(changed)


def prefill_texts(session: Session, study_id: int) -> dict[str, str]:
    """What each prefilled field of the study's open draft would hold now."""
    draft = open_draft(session, study_id)
    if draft is None:
        return {}
    return {f.key: registry.prefill(session, draft.study, f.prefill)
            for f in template_of(draft.report).fields if f.prefill}


def refresh_prefill(session: Session, study_id: int, before: dict[str, str],
                    actor: str) -> list[str]:
    """After the analysis behind a draft changed (a cardiologist's edit), carry it into
    every prefilled field the reader has not rewritten (it still reads as ``before``)."""
    draft = open_draft(session, study_id)
    if draft is None:
        return []
    fields = draft.version.fields
    changed = {k: v for k, v in prefill_texts(session, study_id).items()
               if k in before and fields.get(k, "") == before[k] and v != before[k]}
    return apply_prefill(session, draft, changed, actor)


def _initial_fields(session: Session, study: Study, template: Template) -> dict[str, str]:
    """A first draft's fields: the template's defaults, then what prefills them."""
    fields = {f.key: f.default for f in template.fields}
    for f in template.fields:
        text = registry.prefill(session, study, f.prefill) if f.prefill else ""
        if text:
            fields[f.key] = text
    return fields


def study_report(session: Session, study_id: int) -> Report | None:
    """The study's report, if one was started."""
    return session.scalar(select(Report).where(Report.subject_type == "study",
                                               Report.subject_id == str(study_id)))


def preview_report(session: Session, study_id: int,
                   template_id: str | None = None) -> tuple[Template, dict[str, str]]:
    """What a first draft of the study's report would hold now, without storing it.

    Opening a study stores nothing: a report exists from its first save on, so a
    study nobody wrote a word about stays unread on everyone's worklist."""
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"no study {study_id}")
    template = get_template(template_id) if template_id else \
        template_for(study.modalities, study.body_part, study.description)
    return template, _initial_fields(session, study, template)


def create_report(session: Session, study_id: int, actor: str,
                  template_id: str | None = None, fields: dict[str, str] | None = None,
                  state: str | None = None) -> Report:
    """The study's report, created with a first draft from its template if it has none.

    ``fields`` and ``state`` are the reader's first save: they go over the prefilled
    draft.  When the report exists already (a retried first save), they change its
    current version as :func:`update_draft` does, which refuses a signed one."""
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"no study {study_id}")
    existing = study_report(session, study.id)
    if existing is not None:
        if fields or state:
            update_draft(session, existing.id, fields or {}, actor, state)
        return existing
    template = get_template(template_id) if template_id else \
        template_for(study.modalities, study.body_part, study.description)
    for key, value in (fields or {}).items():
        template.field(key)
        if not isinstance(value, str):
            raise InvalidInput(f"field {key!r} must be text")
    if state is not None and state not in EDITABLE:
        raise InvalidInput(f"state must be draft or preliminary here (sign to make it "
                           f"final), not {state!r}")
    report = Report(subject_type="study", subject_id=str(study.id), study_id=study.id,
                    site_id=study.site_id, template_id=template.id,
                    template_version=template.version, state=state or ReportState.DRAFT)
    session.add(report)
    session.flush()
    session.add(ReportVersion(report_id=report.id, number=1, kind="report",
                              state=state or ReportState.DRAFT,
                              fields={**_initial_fields(session, study, template),
                                      **(fields or {})},
                              author=actor))
    session.flush()
    audit.append(session, actor=actor, action="report.create", object_type="report",
                 object_id=str(report.id), detail={"study_id": study.id,
                                                   "template": f"{template.id}@{template.version}",
                                                   "fields": sorted(fields or {}),
                                                   "state": state or ReportState.DRAFT})
    return report


def check_inputs_open(session: Session, study_id: int, what: str) -> None:
    """Refuse (409) a change to what a signed report was written from.

    Once the study's report is signed, its AI findings and ECG measurements are what
    the signature covers; changing them would make the queue contradict the signed
    report.  An addendum reopens them: while it is a draft, changes go into it."""
    report = study_report(session, study_id)
    if report is None:
        return
    version = current_version(session, report)
    if version.state not in EDITABLE:
        raise Conflict(f"the report of this study is signed (version {version.number}, "
                       f"{version.state}, by {version.signed_by}): {what} can no longer "
                       "change; start an addendum to correct the report")


def update_draft(session: Session, report_id: int, fields: dict[str, str], actor: str,
                 state: str | None = None) -> ReportVersion:
    """Change the fields of the current, unsigned version (and optionally its state)."""
    report = get_report(session, report_id)
    version = current_version(session, report)
    if version.state not in EDITABLE:
        raise Conflict(f"report {report.id} version {version.number} is {version.state}: a "
                       "signed version is never edited; add an addendum instead")
    template = template_of(report)
    for key, value in fields.items():
        template.field(key)
        if not isinstance(value, str):
            raise InvalidInput(f"field {key!r} must be text")
    if state is not None:
        if state not in EDITABLE:
            raise InvalidInput(f"state must be draft or preliminary here (sign to make it "
                               f"final), not {state!r}")
        check_transition(ReportState, version.state, state)
        version.state = state
        if version.kind == "report":
            report.state = state
    version.fields = {**version.fields, **fields}
    version.updated_at = report.updated_at = _now()
    audit.append(session, actor=actor, action="report.update", object_type="report",
                 object_id=str(report.id),
                 detail={"version": version.number, "fields": sorted(fields),
                         "state": version.state})
    return version


def add_addendum(session: Session, report_id: int, fields: dict[str, str],
                 actor: str) -> ReportVersion:
    """Start an addendum to a signed report: a new draft version after the last signed one."""
    report = get_report(session, report_id)
    last = current_version(session, report)
    if last.state in EDITABLE:
        raise Conflict(f"report {report.id} version {last.number} is not signed yet: edit it "
                       "instead of adding an addendum")
    template = template_of(report)
    for key in fields:
        template.field(key)
    version = ReportVersion(report_id=report.id, number=last.number + 1, kind="addendum",
                            state=ReportState.DRAFT, fields={**last.fields, **fields},
                            author=actor, predecessor_id=last.id)
    session.add(version)
    session.flush()
    audit.append(session, actor=actor, action="report.addendum", object_type="report",
                 object_id=str(report.id), detail={"version": version.number,
                                                   "predecessor": last.number})
    return version


@dataclass(frozen=True)
class _Subject:
    study: Study
    site: Site
    evidence: Dataset


def _subject(session: Session, settings: Settings, report: Report) -> _Subject:
    study = session.get(Study, report.study_id) if report.study_id else None
    if study is None:
        raise NotFound(f"report {report.id} has no study")
    site = session.get(Site, study.site_id)
    assert site is not None
    with OrthancClient.from_settings(settings) as client:
        found = [x for x in client.lookup(study.study_uid) if x.get("Type") == "Study"]
        if not found:
            raise NotFound(f"study {study.study_uid} is not in Orthanc")
        instances = client.study_instances(str(found[0]["ID"]))
        # Any instance carries the patient and study attributes the outputs copy.
        data = client.instance_file(str(instances[0]["ID"]))
    evidence = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return _Subject(study, site, evidence)


def _content(report: Report, version: ReportVersion, template: Template, subject: _Subject,
             predecessor: ReportVersion | None) -> dict[str, Any]:
    sections = [[f.key, f.title, normalize_text(version.fields.get(f.key, ""))]
                for f in template.fields]
    return {
        "report_id": report.id, "version": version.number, "kind": version.kind,
        "subject": {"type": report.subject_type, "id": report.subject_id},
        "study_uid": subject.study.study_uid, "patient_id": subject.study.patient_id,
        "site_id": subject.site.id, "template": [template.id, template.version],
        "sections": sections, "author": version.author,
        "predecessor": None if predecessor is None else {
            "version": predecessor.number, "content_hash": predecessor.content_hash},
    }


def sign(session: Session, settings: Settings, report_id: int, *, reader_id: str,
         passphrase: str, key_id: int | None = None, version_number: int | None = None,
         actor: str | None = None, figures: tuple[Figure, ...] = ()) -> ReportVersion:
    """Sign the report's current version with the reader's own key.

    Refused, with nothing changed, when the version is already signed, required
    fields are unresolved, the key is revoked or not the reader's, or the
    passphrase is wrong.  On success the version is frozen, its SR and PDF are
    stored in Orthanc and its HL7 ORU and FHIR DiagnosticReport recorded; the
    caller schedules delivery to the originating site in the same transaction
    (``delivery.service.schedule_result_deliveries``), which keeps reports free of
    delivery.
    """
    actor = actor or reader_id
    report = get_report(session, report_id)
    version = current_version(session, report)
    if version_number is not None and version_number != version.number:
        raise Conflict(f"report {report.id} version {version_number} is not the current one "
                       f"(current: {version.number}, {version.state})")
    if version.state not in EDITABLE:
        raise Conflict(f"report {report.id} version {version.number} is already signed by "
                       f"{version.signed_by} at {version.signed_at}")
    template = template_of(report)
    unresolved = template.unresolved(version.fields)
    if unresolved:
        raise InvalidInput(f"report {report.id} cannot be signed: required fields unresolved "
                           f"(empty or with a {{{{placeholder}}}}): {', '.join(unresolved)}")
    material = keys.unlock_for_signing(session, reader_id=reader_id, passphrase=passphrase,
                                       key_id=key_id)
    predecessor = session.get(ReportVersion, version.predecessor_id) \
        if version.predecessor_id else None
    subject = _subject(session, settings, report)
    signed_at = _now().replace(microsecond=0)
    content = canonical_bytes(_content(report, version, template, subject, predecessor))
    hash_alg = hash_algorithm(material.key.algorithm)
    content_hash = digest(hash_alg, content).hex()
    seal = make_sealer(material.private_key, material.key.cert_pem.encode(),
                       material.key.algorithm, signed_at)
    envelope = seal(content)
    doc = replace(_document(settings, report, version, template, subject, predecessor,
                            material.key, signed_at, content_hash, hash_alg), figures=figures)
    sr_ds = sr.build_signed_sr(doc, subject.evidence, seal)
    pdf_bytes = pdf.render_pdf(doc, seal, subject.evidence)
    pdf_ds = pdf.encapsulated_pdf_dataset(pdf_bytes, doc, subject.evidence)
    with OrthancClient.from_settings(settings) as client:
        for ds in (sr_ds, pdf_ds):
            # An earlier attempt that stored its objects but could not commit left
            # orphans with these UIDs; Orthanc would keep them instead of the new ones.
            orphan = client.find_instance(str(ds.SOPInstanceUID))
            if orphan is not None:
                client.delete("instances", orphan)
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            client.upload_instance(buf.getvalue())
    version.hl7_message = hl7.oru_r01(doc, sending_facility=settings.gateway_ae,
                                      receiving_facility=subject.site.ae_title,
                                      message_id=f"RDC{report.id}V{version.number}")
    version.fhir_report = fhir.diagnostic_report(doc, pdf=pdf_bytes)
    check_transition(ReportState, version.state, ReportState.FINAL)
    version.state = ReportState.FINAL
    version.signed_by, version.signer_key_id, version.signed_at = (
        reader_id, material.key.id, signed_at)
    version.canonical = content.decode("utf-8")
    version.hash_algorithm, version.content_hash = hash_alg, content_hash
    version.envelope = envelope.decode("ascii")
    version.sr_sop_uid, version.sr_series_uid = doc.sr_sop_uid, doc.sr_series_uid
    version.pdf_sop_uid, version.pdf_series_uid = doc.pdf_sop_uid, doc.pdf_series_uid
    version.updated_at = report.updated_at = _now()
    report.state = ReportState.AMENDED if version.kind == "addendum" else ReportState.FINAL
    # Read: the study goes back to no one, so that nobody's "assigned to me" keeps it.
    released = subject.study.claimed_by
    subject.study.claimed_by, subject.study.claimed_at = None, None
    session.flush()
    audit.append(session, actor=actor, action="report.sign", object_type="report",
                 object_id=str(report.id),
                 detail={"version": version.number, "key_fingerprint": material.key.fingerprint,
                         "algorithm": material.key.algorithm, "content_hash": content_hash,
                         "sr": doc.sr_sop_uid, "pdf": doc.pdf_sop_uid})
    if released is not None:
        audit.append(session, actor=actor, action="study.release", object_type="study",
                     object_id=str(subject.study.id), detail={"reason": "report signed"})
    log.info("report.signed report_id=%s version=%s reader=%s alg=%s", report.id,
             version.number, reader_id, material.key.algorithm)
    return version


def _document(settings: Settings, report: Report, version: ReportVersion, template: Template,
              subject: _Subject, predecessor: ReportVersion | None, key: ReaderKey,
              signed_at: datetime, content_hash: str, hash_alg: str) -> ReportDocument:
    ev = subject.evidence

    # The CA's fingerprint makes the UIDs differ between centers whose report ids
    # overlap; the rest makes them the same for every attempt at this version.
    center = keys.center_ca(settings).fingerprint

    def uid(what: str) -> str:
        return generate_uid(prefix=_UID_PREFIX,
                            entropy_srcs=[center, str(report.id), str(version.number), what])

    extra: dict[str, str] = {}
    if predecessor is not None and predecessor.sr_series_uid:
        extra["predecessor_sr_series_uid"] = predecessor.sr_series_uid
    return ReportDocument(
        report_id=report.id, version=version.number, kind=version.kind, title=template.title,
        center_name=settings.center_name, site_id=subject.site.id, site_name=subject.site.name,
        patient_id=str(ev.get("PatientID", "")), patient_name=str(ev.get("PatientName", "")),
        study_uid=subject.study.study_uid, accession_number=str(ev.get("AccessionNumber", "")),
        modality="/".join(subject.study.modalities) or str(ev.get("Modality", "")),
        sections=tuple(Section(f.key, f.title, normalize_text(version.fields.get(f.key, "")))
                       for f in template.fields if version.fields.get(f.key, "").strip()),
        signer=SignerInfo(name=key.display_name, reader_id=key.reader_id,
                          fingerprint=key.fingerprint, algorithm=key.algorithm,
                          signed_at=signed_at),
        content_hash=content_hash, hash_algorithm=hash_alg,
        predecessor_sr_uid=predecessor.sr_sop_uid if predecessor else None,
        sr_sop_uid=uid("sr"), sr_series_uid=uid("sr-series"),
        pdf_sop_uid=uid("pdf"), pdf_series_uid=uid("pdf-series"), extra=extra,
        study_date=subject.study.study_date or str(ev.get("StudyDate", "")),
        study_description=subject.study.description or str(ev.get("StudyDescription", "")))


