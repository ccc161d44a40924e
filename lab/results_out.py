"""Lab results back to the county site: one HL7 v2.5.1 ORU^R01 per order.

Why one message per order: the site's HIS files results under its own order (ORC-2,
the placer order number), so a message that carries one order's results is what it
can file in one go; the center's filler order number (ORC-3) and the specimen's
accession (OBR-20) let the site ask about a result later.

Each specimen of the order is one ORC/OBR group; each result one OBX with its LOINC
code (OBX-3), value (NM, or ST for a censored value such as ``<0.01``), units (UCUM),
reference range ``low-high``, abnormal flag (HL7 table 0078) and status (F final,
P preliminary, X no result: rejected).  A rejected result carries its reason in an
NTE after its OBX.

Text is escaped with :func:`reports.hl7.escape_hl7`, the center's one escaping of HL7
delimiters and control characters, and the finished message is parsed back with
hl7apy's STRICT validation before it is stored: a message that does not conform never
leaves the center.  Sending goes through :func:`delivery.service.schedule_message`
(retries, dead letters, resend, the site's ACK recorded on the message).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AuditRecord, LabOrder, LabResult, LabSpecimen, OutboundMessage, Site
from core.settings import get_settings
from core.timeutil import as_utc
from delivery.service import schedule_message
from lab.catalog import Test, get_catalog
from lab.states import (
    FINAL_RESULT_STATES,
    RELEASED_RESULT_STATES,
    OrderState,
    ResultState,
    check_order,
)
from reports.hl7 import HL7_VERSION, escape_hl7, strict_validation_error

__all__ = ["ORUError", "build_oru", "format_range", "format_value", "release", "send_message",
           "send_rejection", "site_takes_hl7", "validate_oru"]

log = logging.getLogger(__name__)

#: HL7 table 0074 (diagnostic service section) for the catalog's sections.
_SECTION_0074: Final = {"chemistry": "CH", "cardiac": "CH", "hematology": "HM",
                        "coagulation": "HM"}
_SEPARATOR: Final = "\r"
_UCUM: Final = "UCUM"


class ORUError(InvalidInput):
    """The results could not be expressed as a valid ORU^R01 message."""


def _ts(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y%m%d%H%M%S%z")


def _segment(name: str, fields: dict[int, str]) -> str:
    last = max((i for i, v in fields.items() if v), default=0)
    return "|".join([name, *(fields.get(i, "") for i in range(1, last + 1))])


def _number(value: float, decimals: int) -> str:
    return f"{value:.{max(decimals, 0)}f}"


def format_value(result: LabResult, decimals: int) -> tuple[str, str]:
    """(HL7 value type, value text): NM with the test's decimals, or ST for a value the
    analyzer sent censored or as text (``<0.01``, ``>70.0``); ("", "") for none."""
    text = (result.value_text or "").strip()
    if text and text[0] in "<>":
        return "ST", text
    if result.value is not None:
        return "NM", _number(result.value, decimals)
    if text:
        return "ST", text
    return "", ""


def format_range(low: float | None, high: float | None, decimals: int) -> str:
    """``low-high``; ``>low`` or ``<high`` when only one limit is known; "" for none."""
    if low is not None and high is not None:
        return f"{_number(low, decimals)}-{_number(high, decimals)}"
    if low is not None:
        return f">{_number(low, decimals)}"
    if high is not None:
        return f"<{_number(high, decimals)}"
    return ""


def _xpn(name: str) -> str:
    """A patient name as XPN: ``Family^Given`` kept as components, a name without
    ``^`` (a Chinese name is often written as one) as the family name, and the
    alphabetic and ideographic groups of a DICOM-style ``Zhang^San=张^三`` as
    repetitions."""
    names = []
    for group in name.split("="):
        parts = [p.strip() for p in group.split("^")][:3]
        xpn = "^".join(escape_hl7(p) for p in parts).rstrip("^")
        if xpn:
            names.append(xpn)
    return "~".join(names)


def _obx_status(result: LabResult, preliminary: bool, corrected: frozenset[int]) -> str:
    if result.state == ResultState.REJECTED:
        return "X"
    if preliminary:
        return "P"
    return "C" if result.id in corrected else "F"


def _rejection_note(result: LabResult, specimen: LabSpecimen) -> str:
    if specimen.rejection_code:
        note = f"Specimen {specimen.accession} rejected ({specimen.rejection_code})"
        if specimen.rejection_note:
            note += f": {specimen.rejection_note}"
        return note
    return f"Result rejected: {result.review_reason or 'no reason recorded'}"


def _test_of(code: str) -> Test:
    return get_catalog().test(code)


def _message_text(order: LabOrder, site: Site, specimens: dict[int, LabSpecimen],
                  results: Sequence[LabResult], *, control_id: str, preliminary: bool,
                  corrected: frozenset[int], now: datetime) -> str:
    settings = get_settings()
    segments = [
        "MSH|^~\\&|" + "|".join([
            "RDC-LAB", escape_hl7(settings.gateway_ae), "", escape_hl7(site.id), _ts(now), "",
            "ORU^R01^ORU_R01", escape_hl7(control_id), "P", HL7_VERSION,
            "", "", "", "", "", "UNICODE UTF-8"]),
        _segment("PID", {
            1: "1",
            3: f"{escape_hl7(order.patient_id)}^^^{escape_hl7(order.site_id)}^PI",
            # PID-5 is required: an order without a name says so with HL7's null.
            5: _xpn(order.patient_name) or '""',
            7: escape_hl7(order.birth_date),
            8: escape_hl7(order.sex or "U"),
        }),
        _segment("PV1", {1: "1", 2: "U", 19: escape_hl7(order.visit_number)}),
    ]
    provider = f"^{escape_hl7(order.ordering_provider)}" if order.ordering_provider else ""
    all_final = all(r.state in FINAL_RESULT_STATES for r in results)
    order_status = "CM" if all_final and not preliminary else "IP"
    by_specimen: dict[int, list[LabResult]] = defaultdict(list)
    for r in results:
        by_specimen[r.specimen_id].append(r)
    set_obx = 0
    for obr_set, specimen_id in enumerate(sorted(by_specimen), start=1):
        specimen = specimens[specimen_id]
        group = sorted(by_specimen[specimen_id], key=lambda r: r.id)
        tests = [_test_of(r.test_code) for r in group]
        if len(group) == 1:
            service = (f"{escape_hl7(group[0].loinc or tests[0].loinc)}^"
                       f"{escape_hl7(tests[0].loinc_name)}^LN")
        else:
            service = (f"{escape_hl7('+'.join(t.code for t in tests))}^"
                       f"{escape_hl7(', '.join(t.name for t in tests))}^99RDCLAB")
        if all(r.state == ResultState.REJECTED for r in group):
            obr_status = "X"
        elif preliminary:
            obr_status = "P"
        else:
            obr_status = "C" if any(r.id in corrected for r in group) else "F"
        sections = {_SECTION_0074.get(t.section, "") for t in tests}
        collected = _ts(specimen.collected_at) if specimen.collected_at else ""
        segments.append(_segment("ORC", {
            1: "RE", 2: escape_hl7(order.placer_order_number),
            3: escape_hl7(order.filler_order_number), 5: order_status, 12: provider}))
        segments.append(_segment("OBR", {
            1: str(obr_set), 2: escape_hl7(order.placer_order_number),
            3: escape_hl7(order.filler_order_number), 4: service, 7: collected,
            16: provider, 18: escape_hl7(specimen.site_specimen_id),
            20: escape_hl7(specimen.accession), 22: _ts(now),
            24: sections.pop() if len(sections) == 1 else "", 25: obr_status}))
        for result, test in zip(group, tests, strict=True):
            set_obx += 1
            rejected = result.state == ResultState.REJECTED
            value_type, value = ("", "") if rejected else format_value(result, test.decimals)
            units = result.units or test.units
            segments.append(_segment("OBX", {
                1: str(set_obx), 2: value_type,
                3: f"{escape_hl7(result.loinc or test.loinc)}^{escape_hl7(test.loinc_name)}^LN",
                5: escape_hl7(value),
                6: f"{escape_hl7(units)}^{escape_hl7(units)}^{_UCUM}" if units and not rejected
                else "",
                7: "" if rejected else escape_hl7(format_range(result.ref_low, result.ref_high,
                                                               test.decimals)),
                8: "" if rejected else escape_hl7(result.abnormal_flag),
                11: _obx_status(result, preliminary, corrected),
                14: _ts(result.measured_at) if result.measured_at and not rejected else "",
                16: f"{escape_hl7(result.signed_by)}" if result.signed_by else "",
                18: escape_hl7(result.analyzer_id) if not rejected else "",
            }))
            if rejected:
                segments.append(_segment("NTE", {
                    1: "1", 2: "L", 3: escape_hl7(_rejection_note(result, specimen))}))
    return _SEPARATOR.join(segments)


def validate_oru(text: str) -> None:
    """Parse ``text`` back with hl7apy's STRICT validation (structure, required fields,
    data types); raises :class:`ORUError` naming what is wrong."""
    detail = strict_validation_error(text)
    if detail is not None:
        raise ORUError(f"the lab ORU^R01 message does not validate: {detail}")


def build_oru(session: Session, results: Sequence[LabResult], *, kind: str,
              preliminary: bool = False,
              corrected: frozenset[int] = frozenset()) -> OutboundMessage:
    """Store (and flush) the ORU^R01 that carries ``results`` of one order to its site.

    MSH-10 is ``"LAB"`` and the message's own id (unique, so the site's ACK names
    exactly one message).  Results whose ids are in ``corrected`` replace a value the
    site had already received (a rerun after release): their OBX-11 is ``C``.  Nothing
    is stored when the results span several orders or the message does not validate.
    """
    if not results:
        raise InvalidInput("an ORU^R01 needs at least one result")
    order_ids = {r.order_id for r in results}
    if len(order_ids) != 1:
        raise InvalidInput(f"one ORU^R01 carries one order's results; got orders "
                           f"{sorted(order_ids)}")
    order = session.get(LabOrder, order_ids.pop())
    if order is None:
        raise NotFound(f"lab order {results[0].order_id} does not exist")
    site = session.get(Site, order.site_id)
    if site is None:
        raise NotFound(f"lab order {order.id} names no known site {order.site_id!r}")
    specimens = {s.id: s for s in session.scalars(select(LabSpecimen).where(
        LabSpecimen.id.in_({r.specimen_id for r in results})))}
    now = datetime.now(UTC).replace(microsecond=0)
    with session.begin_nested():
        message = OutboundMessage(site_id=site.id, kind=kind, subject=f"lab_order:{order.id}",
                                  control_id=f"pending-{uuid.uuid4().hex}", body="")
        session.add(message)
        session.flush()
        control_id = f"LAB{message.id:08d}"
        text = _message_text(order, site, specimens, results, control_id=control_id,
                             preliminary=preliminary, corrected=corrected, now=now)
        validate_oru(text)
        message.control_id, message.body = control_id, text
        session.flush()
    return message


def site_takes_hl7(site: Site) -> bool:
    """Whether the site asked for results over HL7 and can get them (enabled, takes
    results back, has an MLLP endpoint)."""
    return bool(site.enabled and site.accepts_results and "hl7" in (site.result_formats or [])
                and site.hl7_host and site.hl7_port)


def send_message(session: Session, message: OutboundMessage) -> int | None:
    """Schedule the message when its site takes HL7; else keep it stored and say so."""
    site = session.get(Site, message.site_id)
    if site is None or not site_takes_hl7(site):
        log.info("lab.result_not_sent message=%s site=%s reason=site-takes-no-hl7-results",
                 message.control_id, message.site_id)
        return None
    return schedule_message(session, message).id


def update_order_state(session: Session, order: LabOrder) -> None:
    """The order is ``resulted`` once every result of it is final, else ``in_progress``
    (a rerun after release reopens it); shared by release and review."""
    states = list(session.scalars(select(LabResult.state).where(
        LabResult.order_id == order.id)))
    new = OrderState.RESULTED if all(s in FINAL_RESULT_STATES for s in states) \
        else OrderState.IN_PROGRESS
    if order.state != new:
        check_order(order.state, new)
        order.state = new
        order.updated_at = datetime.now(UTC)


def _released_before(session: Session, order_id: int,
                     results: Sequence[LabResult]) -> frozenset[int]:
    """The results of ``results`` that an earlier release of the order already sent
    (read from the hash-chained audit: each ``lab.release`` names its results)."""
    ids = {r.id for r in results}
    sent: set[int] = set()
    for detail in session.scalars(select(AuditRecord.detail).where(
            AuditRecord.action == "lab.release", AuditRecord.object_type == "lab_order",
            AuditRecord.object_id == str(order_id))):
        sent.update(int(i) for i in (detail or {}).get("results", []) if int(i) in ids)
    return frozenset(sent)


def release(session: Session, results: Sequence[LabResult], *,
            actor: str) -> list[OutboundMessage]:
    """Send final results (autoverified or verified) back to their sites, one ORU^R01
    per order; returns the messages made.

    A result already carried by a message is not sent again (a retried job).  Any
    result that is not final is refused with :class:`Conflict` before anything is
    stored.  Each result gets its ``message_id``; an order whose results are all final
    becomes ``resulted``.
    """
    not_final = [f"{r.id} ({r.state})" for r in results
                 if r.state not in RELEASED_RESULT_STATES]
    if not_final:
        raise Conflict(f"only autoverified or verified results are released; not: "
                       f"{', '.join(not_final)}")
    by_order: dict[int, list[LabResult]] = defaultdict(list)
    for r in results:
        if r.message_id is None:
            by_order[r.order_id].append(r)
    messages: list[OutboundMessage] = []
    for order_id in sorted(by_order):
        group = by_order[order_id]
        corrected = _released_before(session, order_id, group)
        message = build_oru(session, group, kind="lab-result", corrected=corrected)
        for r in group:
            r.message_id = message.id
            r.updated_at = datetime.now(UTC)
        delivery_id = send_message(session, message)
        order = session.get(LabOrder, order_id)
        assert order is not None  # build_oru found it
        update_order_state(session, order)
        audit.append(session, actor=actor, action="lab.release", object_type="lab_order",
                     object_id=str(order_id), detail={
                         "results": [r.id for r in group], "message": message.control_id,
                         "corrected": sorted(corrected),
                         "delivery_id": delivery_id, "site": message.site_id})
        messages.append(message)
    session.flush()
    return messages


def send_rejection(session: Session, specimen: LabSpecimen, *,
                   actor: str) -> OutboundMessage | None:
    """Tell the site its specimen was rejected: an ORU^R01 whose OBX are status X with
    the coded reason in an NTE.  ``None`` when the specimen has no rejected result not
    yet reported.  Stored always; sent when the site takes HL7 results."""
    # A result rejected (and reported) earlier by a reviewer is not reported twice.
    results = list(session.scalars(select(LabResult).where(
        LabResult.specimen_id == specimen.id, LabResult.state == ResultState.REJECTED,
        LabResult.message_id.is_(None)).order_by(LabResult.id)))
    if not results:
        return None
    message = build_oru(session, results, kind="lab-rejection")
    for r in results:
        r.message_id = message.id
    delivery_id = send_message(session, message)
    order = session.get(LabOrder, specimen.order_id)
    if order is not None:
        update_order_state(session, order)
    audit.append(session, actor=actor, action="lab.rejection_sent", object_type="lab_specimen",
                 object_id=str(specimen.id), detail={
                     "accession": specimen.accession, "code": specimen.rejection_code,
                     "results": [r.id for r in results], "message": message.control_id,
                     "delivery_id": delivery_id})
    session.flush()
    return message
