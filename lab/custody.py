"""Chain of custody: every scan of a tube or a shipment box, across the institutions.

A scan is one :class:`LabCustodyEvent` — who, where, when, the temperature where known —
and one ``lab.custody`` record in the hash-chained audit, so the timeline a reviewer
reads and the tamper-evident trail are the same facts.  A scan out of order (a tube on
the analyzer before it was received, a scan timed before the tube's last one) is refused
by the state machine of ``lab.states``; a box's readings are checked against its
condition when it is received, and an excursion holds every specimen in it.

A rejection is coded (:data:`REJECTION_CODES`): the specimen's open results are
rejected and the site is told through ``lab.results_out.send_rejection``.  Every
function works in the caller's transaction and never commits; a refused call has
changed nothing (all checks come before the first write).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput, NotFound
from core.models import LabCustodyEvent, LabOrder, LabResult, LabShipment, LabSpecimen
from core.timeutil import as_utc
from lab.stability import apply_holds, check_condition, temperature_excursion
from lab.states import (
    RELEASED_RESULT_STATES,
    CustodyStep,
    ResultState,
    ShipmentState,
    check_custody,
    check_result,
    check_shipment,
)

#: The coded reasons a specimen is rejected, with the text the site reads.
REJECTION_CODES: Mapping[str, str] = MappingProxyType({
    "hemolysed": "Specimen hemolysed: red cells broke open and changed the result",
    "clotted": "Specimen clotted: an anticoagulated tube with clots cannot be counted",
    "insufficient": "Insufficient specimen volume for the tests ordered",
    "unlabelled": "Specimen unlabelled or the label is unreadable",
    "mismatched": "Label and order do not match (patient identity cannot be confirmed)",
})

#: Steps a plain scan may record; packing, courier and receipt of a box go through the
#: box functions (a single tube may still be scanned through them when hand-carried),
#: a rejection through :func:`reject_specimen` (it needs a code).
SCAN_STEPS = frozenset(CustodyStep) - {CustodyStep.ORDERED, CustodyStep.REJECTED}
#: Scans after which the stability and temperature holds are recomputed.
_HOLD_CHECK_STEPS = {CustodyStep.RECEIVED, CustodyStep.ACCESSIONED, CustodyStep.ON_ANALYZER}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def find_specimen(session: Session, accession: str) -> LabSpecimen:
    specimen = session.scalar(select(LabSpecimen).where(LabSpecimen.accession == accession))
    if specimen is None:
        raise NotFound(f"no specimen with accession {accession!r}")
    return specimen


def find_shipment(session: Session, box_code: str) -> LabShipment:
    box = session.scalar(select(LabShipment).where(LabShipment.box_code == box_code))
    if box is None:
        raise NotFound(f"no shipment box {box_code!r}")
    return box


def _last_at(session: Session, specimen: LabSpecimen) -> datetime | None:
    return session.scalar(select(func.max(LabCustodyEvent.at))
                          .where(LabCustodyEvent.specimen_id == specimen.id))


def _check_scan(session: Session, specimen: LabSpecimen, step: str, at: datetime) -> None:
    """The state machine's order, and time order: a scan timed before the tube's last."""
    check_custody(specimen.state, step)
    last = _last_at(session, specimen)
    if last is not None and at < as_utc(last):
        raise Conflict(f"specimen {specimen.accession}: a {step} scan at {at.isoformat()} "
                       f"is before its last scan at {as_utc(last).isoformat()}")


def _check_fields(actor: str, location: str, temperature_c: float | None = None) -> None:
    """What every event stores, checked before anything changes (the columns' limits)."""
    if temperature_c is not None and not math.isfinite(temperature_c):
        raise InvalidInput(f"temperature {temperature_c!r} is not a number")
    for name, value in (("actor", actor), ("location", location)):
        if len(value) > 128:
            raise InvalidInput(f"custody {name} is longer than 128 characters: "
                               f"{value[:40]!r}...")


def record_event(session: Session, *, step: str, actor: str,
                 specimen: LabSpecimen | None = None, shipment: LabShipment | None = None,
                 location: str = "", temperature_c: float | None = None,
                 at: datetime | None = None,
                 detail: dict[str, Any] | None = None) -> LabCustodyEvent:
    """Store one custody event and its ``lab.custody`` audit record (no state check: the
    callers check the transition and move the state)."""
    if specimen is None and shipment is None:
        raise InvalidInput("a custody event needs a specimen or a shipment box")
    _check_fields(actor, location, temperature_c)
    moment = as_utc(at)
    event = LabCustodyEvent(
        specimen_id=None if specimen is None else specimen.id,
        shipment_id=shipment.id if shipment is not None else (
            specimen.shipment_id if specimen is not None else None),
        step=str(step), at=moment, actor=actor, location=location,
        temperature_c=temperature_c, detail=dict(detail or {}))
    session.add(event)
    session.flush()
    if specimen is not None:
        object_type, object_id = "lab_specimen", specimen.accession
    else:
        assert shipment is not None
        object_type, object_id = "lab_shipment", shipment.box_code
    audit.append(session, actor=actor, action="lab.custody", object_type=object_type,
                 object_id=object_id, detail={
                     "event": event.id, "step": str(step), "at": moment.isoformat(),
                     "location": location, "temperature_c": temperature_c,
                     "box": shipment.box_code if shipment is not None else None,
                     **event.detail})
    return event


def scan(session: Session, accession: str, step: str, *, actor: str, location: str = "",
         temperature_c: float | None = None, at: datetime | None = None) -> LabSpecimen:
    """Record one scan of a tube; refused when out of order or not a scannable step."""
    if step not in SCAN_STEPS:
        hint = " (use reject with a code)" if step == CustodyStep.REJECTED else ""
        raise InvalidInput(f"{step!r} is not a step a scan records{hint}; steps: "
                           f"{', '.join(s.value for s in CustodyStep if s in SCAN_STEPS)}")
    _check_fields(actor, location, temperature_c)
    specimen = find_specimen(session, accession)
    moment = as_utc(at)
    _check_scan(session, specimen, step, moment)
    specimen.state = step
    detail: dict[str, Any] = {}
    if step == CustodyStep.COLLECTED and specimen.collected_at is None:
        # The order came without a collection time: the scan at the bedside gives it,
        # and the stability timers run from it.
        specimen.collected_at = moment
        detail["collected_at_set"] = True
    record_event(session, step=step, actor=actor, specimen=specimen, location=location,
                 temperature_c=temperature_c, at=moment, detail=detail)
    if step in _HOLD_CHECK_STEPS:
        apply_holds(session, specimen, moment, actor=actor)
    return specimen


def _box_specimens(session: Session, box: LabShipment) -> list[LabSpecimen]:
    return list(session.scalars(select(LabSpecimen).where(LabSpecimen.shipment_id == box.id)
                                .order_by(LabSpecimen.id)))


def pack_box(session: Session, *, site_id: str, box_code: str, accessions: Sequence[str],
             condition: str, actor: str, at: datetime | None = None,
             location: str = "") -> LabShipment:
    """Pack the site's tubes into a new box; all tubes are checked before anything is
    written (unknown, another site's, already packed, scanned later than ``at``)."""
    check_condition(condition)
    _check_fields(actor, location)
    code = box_code.strip()
    if not code or len(code) > 64:
        raise InvalidInput(f"box code {box_code!r}: 1 to 64 characters")
    if not accessions:
        raise InvalidInput(f"box {code}: no specimens to pack")
    if len(set(accessions)) != len(accessions):
        raise InvalidInput(f"box {code}: a specimen is listed twice")
    if session.scalar(select(LabShipment.id).where(LabShipment.box_code == code)) is not None:
        raise Conflict(f"box {code} already exists")
    moment = as_utc(at)
    specimens: list[LabSpecimen] = []
    for accession in accessions:
        specimen = find_specimen(session, accession)
        order = session.get(LabOrder, specimen.order_id)
        if order is None or order.site_id != site_id:
            raise InvalidInput(f"specimen {accession} is not from site {site_id}")
        if specimen.shipment_id is not None:
            raise Conflict(f"specimen {accession} is already in a box")
        _check_scan(session, specimen, CustodyStep.PACKED, moment)
        specimens.append(specimen)
    box = LabShipment(site_id=site_id, box_code=code, condition=condition,
                      state=ShipmentState.PACKED, packed_at=moment, temperature_log=[])
    session.add(box)
    session.flush()
    record_event(session, step=CustodyStep.PACKED, actor=actor, shipment=box,
                 location=location or site_id, at=moment,
                 detail={"condition": condition, "specimens": list(accessions)})
    for specimen in specimens:
        specimen.shipment_id = box.id
        specimen.state = CustodyStep.PACKED
        record_event(session, step=CustodyStep.PACKED, actor=actor, specimen=specimen,
                     shipment=box, location=location or site_id, at=moment,
                     detail={"box": code, "condition": condition})
        # Said at the site, while the tube can still be kept back or spun: a tube its
        # box's condition does not keep (unspun potassium in a cold box) is held now.
        apply_holds(session, specimen, moment, actor=actor)
    return box


def courier_pickup(session: Session, box_code: str, *, actor: str, courier: str,
                   at: datetime | None = None, location: str = "") -> LabShipment:
    """The courier takes the box: the box and each tube still in it are in transit."""
    box = find_shipment(session, box_code)
    if not courier.strip() or len(courier) > 128:
        raise InvalidInput("courier pickup: the courier's name is required (128 characters "
                           "at most)")
    check_shipment(box.state, ShipmentState.IN_TRANSIT)
    _check_fields(actor, location)
    moment = as_utc(at)
    carried = [s for s in _box_specimens(session, box) if s.state == CustodyStep.PACKED]
    for specimen in carried:
        _check_scan(session, specimen, CustodyStep.COURIER, moment)
    box.state = ShipmentState.IN_TRANSIT
    box.courier = courier
    where = location or box.site_id
    record_event(session, step=CustodyStep.COURIER, actor=actor, shipment=box, location=where,
                 at=moment, detail={"courier": courier})
    for specimen in carried:
        specimen.state = CustodyStep.COURIER
        record_event(session, step=CustodyStep.COURIER, actor=actor, specimen=specimen,
                     shipment=box, location=where, at=moment, detail={"courier": courier})
    return box


def _readings(temperature_log: Sequence[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    readings: list[tuple[datetime, float]] = []
    for i, item in enumerate(temperature_log):
        try:
            moment, value = item
        except (TypeError, ValueError):
            raise InvalidInput(f"temperature reading #{i + 1}: expected (time, °C)") from None
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise InvalidInput(f"temperature reading #{i + 1}: time {moment!r} must be a "
                               "timezone-aware datetime")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not -100 <= value <= 100:
            raise InvalidInput(f"temperature reading #{i + 1} at {moment.isoformat()}: "
                               f"{value!r} is not a temperature in °C")
        readings.append((as_utc(moment), float(value)))
    return sorted(readings)


def receive_box(session: Session, box_code: str, *, actor: str,
                temperature_log: Sequence[tuple[datetime, float]], location: str = "center",
                at: datetime | None = None) -> LabShipment:
    """Receive the box with its logger's readings: the excursion (if any) is recorded
    on the box, each tube is received and accessioned, and its holds are computed."""
    box = find_shipment(session, box_code)
    check_shipment(box.state, ShipmentState.RECEIVED)
    _check_fields(actor, location)
    readings = _readings(temperature_log)
    moment = as_utc(at)
    if readings and readings[-1][0] > moment:
        raise InvalidInput(f"box {box.box_code}: a temperature reading at "
                           f"{readings[-1][0].isoformat()} is after the receipt at "
                           f"{moment.isoformat()}")
    arriving = [s for s in _box_specimens(session, box)
                if s.state in (CustodyStep.PACKED, CustodyStep.COURIER)]
    for specimen in arriving:
        _check_scan(session, specimen, CustodyStep.RECEIVED, moment)
    excursion = temperature_excursion(box.condition, readings)
    box.temperature_log = [*box.temperature_log,
                           *([t.isoformat(), v] for t, v in readings)]
    box.excursion = excursion
    box.state = ShipmentState.RECEIVED
    box.received_at = moment
    last_temp = readings[-1][1] if readings else None
    record_event(session, step=CustodyStep.RECEIVED, actor=actor, shipment=box,
                 location=location, temperature_c=last_temp, at=moment,
                 detail={"readings": len(readings), "excursion": excursion,
                         "specimens": [s.accession for s in arriving]})
    for specimen in arriving:
        specimen.state = CustodyStep.RECEIVED
        record_event(session, step=CustodyStep.RECEIVED, actor=actor, specimen=specimen,
                     shipment=box, location=location, temperature_c=last_temp, at=moment,
                     detail={"box": box.box_code})
        specimen.state = CustodyStep.ACCESSIONED
        record_event(session, step=CustodyStep.ACCESSIONED, actor=actor, specimen=specimen,
                     shipment=box, location=location, at=moment)
        apply_holds(session, specimen, moment, actor=actor)
    return box


def reject_specimen(session: Session, accession: str, code: str, *, actor: str,
                    note: str = "", at: datetime | None = None) -> LabSpecimen:
    """Reject the tube with a coded reason: its open results are rejected and the site
    is sent the rejection (``lab.results_out.send_rejection``)."""
    # Imported here: the outbound leg may read REJECTION_CODES from this module.
    from lab.results_out import send_rejection

    if code not in REJECTION_CODES:
        raise InvalidInput(f"unknown rejection code {code!r}: use one of "
                           f"{', '.join(REJECTION_CODES)}")
    _check_fields(actor, "")
    specimen = find_specimen(session, accession)
    moment = as_utc(at)
    _check_scan(session, specimen, CustodyStep.REJECTED, moment)
    results = list(session.scalars(select(LabResult).where(LabResult.specimen_id == specimen.id)
                                   .order_by(LabResult.id)))
    released = [r.test_code for r in results if r.state in RELEASED_RESULT_STATES]
    if released:
        raise Conflict(f"specimen {accession}: results {', '.join(released)} were already "
                       "released; correct them by review, not by rejecting the tube")
    open_results = [r for r in results if r.state != ResultState.REJECTED]
    for r in open_results:
        check_result(r.state, ResultState.REJECTED)
    text = REJECTION_CODES[code]
    specimen.state = CustodyStep.REJECTED
    specimen.rejection_code = code
    specimen.rejection_note = note
    for r in open_results:
        r.state = ResultState.REJECTED
        r.review_action = "reject"
        r.review_reason = f"{text}{': ' + note if note else ''}"
        r.reviewed_by = actor
        r.reviewed_at = moment
        r.updated_at = moment
    record_event(session, step=CustodyStep.REJECTED, actor=actor, specimen=specimen,
                 at=moment, detail={"code": code, "reason": text, "note": note})
    audit.append(session, actor=actor, action="lab.specimen_reject", object_type="lab_specimen",
                 object_id=specimen.accession,
                 detail={"code": code, "note": note,
                         "results": [r.id for r in open_results]})
    send_rejection(session, specimen, actor=actor)
    return specimen


def _event_dict(e: LabCustodyEvent) -> dict[str, Any]:
    return {"step": e.step, "at": _iso(e.at), "actor": e.actor, "location": e.location,
            "temperature_c": e.temperature_c, "detail": dict(e.detail or {})}


def specimen_timeline(session: Session, specimen_id: int) -> list[dict[str, Any]]:
    """The tube's events, oldest first (times as ISO 8601 strings, UTC)."""
    if session.get(LabSpecimen, specimen_id) is None:
        raise NotFound(f"no specimen {specimen_id}")
    events = session.scalars(select(LabCustodyEvent)
                             .where(LabCustodyEvent.specimen_id == specimen_id)
                             .order_by(LabCustodyEvent.at, LabCustodyEvent.id))
    return [_event_dict(e) for e in events]


def box_timeline(session: Session, shipment_id: int) -> dict[str, Any]:
    """The box: its own events, its logger readings (each marked in range or not) and
    its tubes with their state and holds."""
    from lab.stability import TEMPERATURE_RANGES

    box = session.get(LabShipment, shipment_id)
    if box is None:
        raise NotFound(f"no shipment box {shipment_id}")
    low, high = TEMPERATURE_RANGES[box.condition]
    events = session.scalars(select(LabCustodyEvent)
                             .where(LabCustodyEvent.shipment_id == box.id,
                                    LabCustodyEvent.specimen_id.is_(None))
                             .order_by(LabCustodyEvent.at, LabCustodyEvent.id))
    return {
        "id": box.id, "box_code": box.box_code, "site_id": box.site_id,
        "condition": box.condition, "state": box.state, "courier": box.courier,
        "packed_at": _iso(box.packed_at), "received_at": _iso(box.received_at),
        "excursion": box.excursion,
        "events": [_event_dict(e) for e in events],
        "temperature_log": [
            {"at": t, "temperature_c": v,
             "in_range": (low is None or v >= low) and (high is None or v <= high)}
            for t, v in box.temperature_log],
        "specimens": [
            {"accession": s.accession, "specimen_type": s.specimen_type, "state": s.state,
             "hold_reason": s.hold_reason, "rejection_code": s.rejection_code}
            for s in _box_specimens(session, box)],
    }
