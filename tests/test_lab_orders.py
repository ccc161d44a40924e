"""Orders in (lab.orders.accept_order, lab.hl7_in.parse_order): a good order stores the
order, its tubes, one result per test and the custody events; every bad one is refused
with a reason that names what is wrong, and stores nothing (rows counted before/after)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from conftest import Center
from core.errors import Conflict, InvalidInput
from core.models import (
    AuditRecord,
    LabCustodyEvent,
    LabOrder,
    LabResult,
    LabSpecimen,
)
from devkit.hl7_site import Patient, Tube, oml_o21, orm_o01
from lab.catalog import get_catalog
from lab.errors import UnknownTest
from lab.hl7_in import MalformedMessage, parse_order
from lab.orders import OrderRequest, SpecimenRequest, accept_order

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
PATIENT = Patient("P-100", "ZHANG^Wei", "19700315", "M", "V-7")


def request(**kw: object) -> OrderRequest:
    base = OrderRequest(
        site_id="county-a", placer_order_number="PO-1", patient_id="P-100",
        patient_name="ZHANG^Wei", sex="M", birth_date="19700315", visit_number="V-7",
        ordering_provider="WANG Li", priority="routine",
        specimens=(SpecimenRequest("T1", "serum", NOW - timedelta(hours=1), "room", True,
                                   ("K", "NA")),
                   SpecimenRequest("T2", "whole blood", NOW - timedelta(hours=1),
                                   "refrigerated", False, ("HGB",))))
    return replace(base, **kw)  # type: ignore[arg-type]


def counts(c: Center) -> tuple[int, ...]:
    with c.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) or 0
                     for m in (LabOrder, LabSpecimen, LabResult, LabCustodyEvent))


@pytest.fixture
def lab(env_center: Center) -> Center:
    env_center.add_site("county-a", "COUNTY_A")
    return env_center


def test_accept_order_stores_tubes_results_and_custody(lab: Center) -> None:
    with lab.db.session() as s:
        order = accept_order(s, request(), source="hl7", actor="site:county-a", now=NOW)
        order_id = order.id
    with lab.db.session() as s:
        stored = s.get(LabOrder, order_id)
        assert stored is not None
        order = stored
        assert (order.site_id, order.placer_order_number, order.state, order.source) == (
            "county-a", "PO-1", "ordered", "hl7")
        assert order.filler_order_number == f"LO{order_id:08d}"
        tubes = list(s.scalars(select(LabSpecimen).where(LabSpecimen.order_id == order_id)
                               .order_by(LabSpecimen.id)))
        assert [t.accession for t in tubes] == [f"L{t.id:08d}" for t in tubes]
        assert [(t.site_specimen_id, t.specimen_type, t.condition, t.spun, t.state)
                for t in tubes] == [("T1", "serum", "room", True, "collected"),
                                    ("T2", "whole blood", "refrigerated", False, "collected")]
        assert tubes[0].container == get_catalog().test("K").container
        results = list(s.scalars(select(LabResult).where(LabResult.order_id == order_id)
                                 .order_by(LabResult.id)))
        assert [(r.test_code, r.loinc, r.units, r.state, r.specimen_id) for r in results] == [
            ("K", "2823-3", "mmol/L", "ordered", tubes[0].id),
            ("NA", "2951-2", "mmol/L", "ordered", tubes[0].id),
            ("HGB", get_catalog().test("HGB").loinc, get_catalog().test("HGB").units,
             "ordered", tubes[1].id)]
        assert {(r.site_id, r.patient_id) for r in results} == {("county-a", "P-100")}
        events = list(s.scalars(select(LabCustodyEvent).where(
            LabCustodyEvent.specimen_id == tubes[0].id).order_by(LabCustodyEvent.id)))
        assert [e.step for e in events] == ["ordered", "collected"]
        assert events[1].at == NOW - timedelta(hours=1)
        audit = s.scalar(select(AuditRecord).where(AuditRecord.action == "lab.order"))
        assert audit is not None and audit.object_id == str(order_id)
        assert audit.detail["accessions"] == [t.accession for t in tubes]


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"specimens": (SpecimenRequest("T1", "serum", NOW, "room", True, ("K", "XYZ")),)},
     UnknownTest, "unknown test code 'XYZ'"),
    ({"site_id": "nowhere"}, InvalidInput, "unknown site 'nowhere'"),
    ({"patient_id": ""}, InvalidInput, "patient id is empty"),
    ({"birth_date": "19701332"}, InvalidInput, "birth date '19701332' is not a date"),
    ({"birth_date": "20990101"}, InvalidInput, "birth date 20990101 is in the future"),
    ({"specimens": (SpecimenRequest("T1", "serum", NOW + timedelta(days=2), "room", True,
                                    ("K",)),)}, InvalidInput, "is in the future"),
    ({"specimens": (SpecimenRequest("T1", "serum", datetime(1960, 1, 1, tzinfo=UTC),
                                    "room", True, ("K",)),)},
     InvalidInput, "before the birth date"),
    ({"specimens": (SpecimenRequest("T1", "serum", NOW, "warm", True, ("K",)),)},
     InvalidInput, "condition 'warm'"),
    ({"specimens": (SpecimenRequest("T1", "serum", NOW, "room", True, ("K", "HGB")),)},
     InvalidInput, "test HGB needs whole blood"),
    ({"specimens": (SpecimenRequest("T1", "serum", NOW, "room", True, ("K",)),
                    SpecimenRequest("T2", "serum", NOW, "room", True, ("K",)))},
     InvalidInput, "test K is ordered twice"),
    ({"specimens": ()}, InvalidInput, "no specimens"),
    ({"priority": "asap"}, InvalidInput, "priority 'asap'"),
])
def test_bad_orders_are_refused_and_store_nothing(lab: Center, change: dict[str, object],
                                                  error: type[Exception],
                                                  message: str) -> None:
    before = counts(lab)
    with pytest.raises(error, match=message), lab.db.session() as s:
        accept_order(s, request(**change), source="hl7", actor="site:county-a", now=NOW)
    assert counts(lab) == before


def test_a_bad_last_tube_leaves_nothing_of_the_first(lab: Center) -> None:
    """All or nothing: the check runs before any row is written, not tube by tube."""
    bad = request(specimens=(SpecimenRequest("T1", "serum", NOW, "room", True, ("K",)),
                             SpecimenRequest("T2", "serum", NOW, "room", True, ("NOPE",))))
    with lab.db.session() as s:
        with pytest.raises(UnknownTest, match="NOPE"):
            accept_order(s, bad, source="hl7", actor="t", now=NOW)
        assert s.new == set() or all(not isinstance(o, LabOrder) for o in s.new)
    assert counts(lab) == (0, 0, 0, 0)


def test_duplicate_placer_order_is_a_conflict(lab: Center) -> None:
    with lab.db.session() as s:
        accept_order(s, request(), source="hl7", actor="t", now=NOW)
    before = counts(lab)
    with pytest.raises(Conflict, match="duplicate placer order number 'PO-1'"), \
            lab.db.session() as s:
        accept_order(s, request(), source="fhir", actor="t", now=NOW)
    assert counts(lab) == before
    # Another site may use the same placer number: placer numbers are per site.
    lab.add_site("county-b", "COUNTY_B")
    with lab.db.session() as s:
        accept_order(s, request(site_id="county-b"), source="hl7", actor="t", now=NOW)
    assert counts(lab)[0] == before[0] + 1


def test_oml_o21_parsed_into_tubes_by_spm() -> None:
    raw = oml_o21("county-a", "PO-9", PATIENT,
                  [Tube("S1", ("K", "NA", "CREA"), spun=True, condition="refrigerated"),
                   Tube("S2", ("HGB", "PLT"), "whole blood", spun=False)],
                  collected_at=NOW, stat=True)
    req = parse_order(raw, get_catalog())
    assert (req.site_id, req.placer_order_number, req.patient_id, req.patient_name,
            req.sex, req.birth_date, req.visit_number, req.priority) == (
        "county-a", "PO-9", "P-100", "ZHANG^Wei", "M", "19700315", "V-7", "stat")
    assert req.ordering_provider == "1001 WANG Li"
    assert [(t.site_specimen_id, t.specimen_type, t.condition, t.spun, t.tests,
             t.collected_at) for t in req.specimens] == [
        ("S1", "serum", "refrigerated", True, ("K", "NA", "CREA"), NOW),
        ("S2", "whole blood", "room", False, ("HGB", "PLT"), NOW)]


def test_orm_o01_with_nte_conditions_and_loinc_codes() -> None:
    raw = orm_o01("county-a", "PO-3", PATIENT, ["K", "INR"], collected_at=NOW,
                  condition="frozen", spun=True)
    req = parse_order(raw, get_catalog())
    assert [(t.specimen_type, t.condition, t.spun, t.tests) for t in req.specimens] == [
        ("serum", "frozen", True, ("K",)),
        (get_catalog().test("INR").specimen_type, "frozen", True, ("INR",))]
    # OBR-4 as a LOINC code (coding system LN) names the same test.
    loinc = raw.replace("OBR|1|PO-3||K^K^L", "OBR|1|PO-3||2823-3^Potassium^LN")
    assert parse_order(loinc, get_catalog()).specimens[0].tests == ("K",)


@pytest.mark.parametrize(("edit", "error", "message"), [
    (lambda r: r.replace("PID|1||P-100|", "PID|1|||"), InvalidInput,
     r"PID-3 \(patient identifier\) is empty"),
    (lambda r: r.replace("19700315", "1970-03-15"), InvalidInput,
     r"PID-7 \(birth date\)"),
    (lambda r: r.replace("|R||20261201090000+0000", "|R||20261341090000+0000", 1),
     InvalidInput, r"OBR #1 OBR-7 \(collection time\): '20261341090000\+0000' is not a "
                   r"valid date"),
    (lambda r: r.replace("K^K^L", "ZZZ^Unknown^L"), UnknownTest, "unknown test code 'ZZZ'"),
    (lambda r: r.replace("K^K^L", "9999-9^Nothing^LN"), InvalidInput,
     "OBR #1: OBR-4 LOINC '9999-9' is not in the test catalog"),
    (lambda r: r.replace("ORM^O01", "ADT^A01"), MalformedMessage,
     "ADT\\^A01 is not an order"),
    (lambda r: "hello world", MalformedMessage, "does not start with an MSH segment"),
    (lambda r: r.replace("ORC|NW|PO-3", "ORC|NW|PO-4", 1), InvalidInput,
     "differs from 'PO-4': send one order per message"),
])
def test_bad_hl7_orders_name_the_field(edit: object, error: type[Exception],
                                       message: str) -> None:
    raw = orm_o01("county-a", "PO-3", PATIENT, ["K", "NA"], collected_at=NOW)
    assert callable(edit)
    with pytest.raises(error, match=message):
        parse_order(edit(raw), get_catalog())
