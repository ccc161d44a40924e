"""Accepting an order from a county site: all of it, or nothing.

Every way an order arrives (HL7 OML^O21/ORM^O01 over MLLP, a FHIR ServiceRequest bundle
over the API) becomes one :class:`OrderRequest` and goes through :func:`accept_order`,
so the checks are the same whichever way a site sends.  Everything is checked before the
first row is written: an unknown test code or a bad date in the last tube must not leave
the first tube's order behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput
from core.models import LabOrder, LabResult, LabSpecimen, Site
from lab.catalog import get_catalog
from lab.custody import record_event
from lab.states import CustodyStep, check_custody

CONDITIONS = ("room", "refrigerated", "frozen")
PRIORITIES = ("routine", "stat")
SOURCES = ("hl7", "fhir")
#: A collection time this far ahead of the center's clock is a clock error, not a time.
CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class SpecimenRequest:
    """One tube the site collected (or will), and the tests ordered on it."""

    site_specimen_id: str
    specimen_type: str
    collected_at: datetime | None
    condition: str
    spun: bool
    tests: tuple[str, ...]


@dataclass(frozen=True)
class OrderRequest:
    """One order as a site sent it, whichever the channel."""

    site_id: str
    placer_order_number: str
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str
    visit_number: str
    ordering_provider: str
    priority: str
    specimens: tuple[SpecimenRequest, ...]


def _birth(text: str) -> date | None:
    if not text:
        return None
    if len(text) != 8 or not text.isdigit():
        raise InvalidInput(f"birth date {text!r}: expected YYYYMMDD")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as e:
        raise InvalidInput(f"birth date {text!r} is not a date ({e})") from e


def _check_text(value: str, what: str, limit: int, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidInput(f"{what} is empty")
    if len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")


def validate_order(session: Session, req: OrderRequest, now: datetime) -> Site:
    """Every check of an order, before anything is written; returns the site."""
    site = session.get(Site, req.site_id) if req.site_id else None
    if site is None or not site.enabled:
        raise InvalidInput(f"unknown site {req.site_id!r}")
    _check_text(req.placer_order_number, "placer order number", 64, required=True)
    _check_text(req.patient_id, "patient id", 64, required=True)
    _check_text(req.patient_name, "patient name", 200)
    _check_text(req.visit_number, "visit number", 64)
    _check_text(req.ordering_provider, "ordering provider", 200)
    if req.sex not in ("M", "F", "U"):
        raise InvalidInput(f"sex {req.sex!r}: expected M, F or U")
    if req.priority not in PRIORITIES:
        raise InvalidInput(f"priority {req.priority!r}: expected routine or stat")
    born = _birth(req.birth_date)
    if born is not None and born > now.date():
        raise InvalidInput(f"birth date {req.birth_date} is in the future")
    if not req.specimens:
        raise InvalidInput("the order has no specimens (no tests ordered)")
    catalog = get_catalog()
    seen: set[str] = set()
    tube_ids: set[str] = set()
    for n, spec in enumerate(req.specimens, 1):
        where = f"specimen {spec.site_specimen_id or n}"
        _check_text(spec.site_specimen_id, f"{where}: site specimen id", 64)
        if spec.site_specimen_id:
            if spec.site_specimen_id in tube_ids:
                raise InvalidInput(f"{where} is listed twice")
            tube_ids.add(spec.site_specimen_id)
        if spec.condition not in CONDITIONS:
            raise InvalidInput(f"{where}: condition {spec.condition!r}: expected "
                               f"{', '.join(CONDITIONS)}")
        if not spec.tests:
            raise InvalidInput(f"{where} has no tests")
        if spec.collected_at is not None:
            if spec.collected_at.tzinfo is None:
                raise InvalidInput(f"{where}: collection time has no time zone")
            if spec.collected_at > now + CLOCK_SKEW:
                raise InvalidInput(f"{where}: collection time {spec.collected_at.isoformat()}"
                                   " is in the future")
            if born is not None and spec.collected_at.date() < born:
                raise InvalidInput(f"{where}: collection time "
                                   f"{spec.collected_at.isoformat()} is before the birth "
                                   f"date {req.birth_date}")
        for code in spec.tests:
            test = catalog.test(code)  # UnknownTest (InvalidInput) names the code
            if code in seen:
                raise InvalidInput(f"test {code} is ordered twice in one order")
            seen.add(code)
            if spec.specimen_type and test.specimen_type != spec.specimen_type:
                raise InvalidInput(f"{where}: test {code} needs {test.specimen_type} "
                                   f"({test.container}), not {spec.specimen_type}")
    existing = session.scalar(select(LabOrder.id).where(
        LabOrder.site_id == req.site_id,
        LabOrder.placer_order_number == req.placer_order_number))
    if existing is not None:
        raise Conflict(f"duplicate placer order number {req.placer_order_number!r} from "
                       f"site {req.site_id!r} (order {existing})")
    return site


def accept_order(session: Session, req: OrderRequest, *, source: str, actor: str,
                 now: datetime | None = None) -> LabOrder:
    """Store the order, its tubes (accession ``L`` + 8 digits) and one result row per
    test (state ordered), with the custody events ``ordered`` and ``collected``.

    InvalidInput (bad field, unknown test or site) or Conflict (the site's placer order
    number was used before) with nothing stored.  Flushes and audits ``lab.order``; the
    caller commits.
    """
    if source not in SOURCES:
        raise InvalidInput(f"order source {source!r}: expected {' or '.join(SOURCES)}")
    now = now or datetime.now(UTC)
    validate_order(session, req, now)
    catalog = get_catalog()
    order = LabOrder(
        site_id=req.site_id, placer_order_number=req.placer_order_number,
        filler_order_number=f"pending-{uuid.uuid4().hex}", patient_id=req.patient_id,
        patient_name=req.patient_name, sex=req.sex, birth_date=req.birth_date,
        visit_number=req.visit_number, ordering_provider=req.ordering_provider,
        priority=req.priority, state="ordered", source=source, created_at=now,
        updated_at=now)
    session.add(order)
    session.flush()
    order.filler_order_number = f"LO{order.id:08d}"
    accessions: list[str] = []
    for spec in req.specimens:
        first = catalog.test(spec.tests[0])
        specimen = LabSpecimen(
            order_id=order.id, accession=f"pending-{uuid.uuid4().hex[:24]}",
            site_specimen_id=spec.site_specimen_id, specimen_type=first.specimen_type,
            container=first.container, collected_at=spec.collected_at,
            condition=spec.condition, spun=spec.spun, state=CustodyStep.ORDERED,
            created_at=now)
        session.add(specimen)
        session.flush()
        specimen.accession = f"L{specimen.id:08d}"
        accessions.append(specimen.accession)
        for code in spec.tests:
            test = catalog.test(code)
            session.add(LabResult(
                order_id=order.id, specimen_id=specimen.id, site_id=req.site_id,
                patient_id=req.patient_id, test_code=test.code, loinc=test.loinc,
                units=test.units, state="ordered", created_at=now, updated_at=now))
        record_event(session, step=CustodyStep.ORDERED, actor=actor, specimen=specimen,
                     location=req.site_id, at=now,
                     detail={"order": order.filler_order_number, "tests": list(spec.tests)})
        if spec.collected_at is not None:
            check_custody(specimen.state, CustodyStep.COLLECTED)
            specimen.state = CustodyStep.COLLECTED
            record_event(session, step=CustodyStep.COLLECTED, actor=actor,
                         specimen=specimen, location=req.site_id, at=spec.collected_at,
                         detail={"condition": spec.condition, "spun": spec.spun})
    session.flush()
    audit.append(session, actor=actor, action="lab.order", object_type="lab_order",
                 object_id=str(order.id),
                 detail={"site": req.site_id, "placer": req.placer_order_number,
                         "filler": order.filler_order_number, "source": source,
                         "priority": req.priority, "accessions": accessions,
                         "tests": [c for s in req.specimens for c in s.tests],
                         "catalog": catalog.version})
    return order
