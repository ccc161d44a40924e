"""FHIR orders in (lab.fhir_in): a Bundle of ServiceRequests with their Patient and
Specimens becomes the same order an HL7 OML does; a bad bundle is refused naming the
element, and nothing is stored."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import Center
from core.errors import Conflict, InvalidInput
from core.models import LabInboundMessage, LabOrder, LabResult, LabSpecimen
from lab.errors import UnknownTest
from lab.fhir_in import CATALOG_SYSTEM, LOINC, V2_0493, accept_bundle, parse_service_request_bundle

Bundle = dict[str, Any]


def request(n: int, coding: dict[str, str], specimen: str) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:sr-{n}", "resource": {
        "resourceType": "ServiceRequest", "id": f"sr{n}", "status": "active",
        "intent": "order", "priority": "stat" if n == 1 else "routine",
        "requisition": {"value": "REQ-77"}, "identifier": [{"value": f"SR-{n}"}],
        "code": {"coding": [coding]}, "subject": {"reference": "Patient/p1"},
        "requester": {"display": "Dr WANG Li"},
        "encounter": {"identifier": {"value": "VISIT-3"}},
        "specimen": [{"reference": specimen}]}}


def bundle() -> Bundle:
    return {"resourceType": "Bundle", "type": "collection",
            "identifier": {"value": "BUNDLE-1"}, "entry": [
                {"fullUrl": "urn:uuid:p1", "resource": {
                    "resourceType": "Patient", "id": "p1",
                    "identifier": [{"system": "urn:county-a:mrn", "value": "P-300"}],
                    "name": [{"family": "CHEN", "given": ["Mei"]}],
                    "birthDate": "1990-02-14", "gender": "female"}},
                {"fullUrl": "urn:uuid:s1", "resource": {
                    "resourceType": "Specimen", "id": "s1", "identifier": [{"value": "TUBE-1"}],
                    "collection": {"collectedDateTime": "2026-12-01T08:30:00+08:00"},
                    "condition": [{"coding": [{"system": V2_0493, "code": "COOL"},
                                              {"system": V2_0493, "code": "CFU"}]}]}},
                {"fullUrl": "urn:uuid:s2", "resource": {
                    "resourceType": "Specimen", "id": "s2", "identifier": [{"value": "TUBE-2"}],
                    "collection": {"collectedDateTime": "2026-12-01T08:31:00+08:00"}}},
                request(1, {"system": LOINC, "code": "2823-3"}, "Specimen/s1"),
                request(2, {"system": CATALOG_SYSTEM, "code": "NA"}, "urn:uuid:s1"),
                request(3, {"system": CATALOG_SYSTEM, "code": "HGB"}, "Specimen/s2"),
            ]}


def test_bundle_read_into_an_order_request() -> None:
    req = parse_service_request_bundle(bundle(), "county-a")
    assert (req.site_id, req.placer_order_number, req.patient_id, req.patient_name, req.sex,
            req.birth_date, req.visit_number, req.ordering_provider, req.priority) == (
        "county-a", "REQ-77", "P-300", "CHEN^Mei", "F", "19900214", "VISIT-3", "Dr WANG Li",
        "stat")
    assert [(t.site_specimen_id, t.specimen_type, t.condition, t.spun, t.tests,
             t.collected_at) for t in req.specimens] == [
        ("TUBE-1", "serum", "refrigerated", True, ("K", "NA"),
         datetime(2026, 12, 1, 0, 30, tzinfo=UTC)),
        ("TUBE-2", "whole blood", "room", False, ("HGB",),
         datetime(2026, 12, 1, 0, 31, tzinfo=UTC))]


def _counts(c: Center) -> tuple[int, ...]:
    with c.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) or 0
                     for m in (LabOrder, LabSpecimen, LabResult, LabInboundMessage))


def test_accept_bundle_stores_the_order_and_the_message(env_center: Center) -> None:
    c = env_center
    c.add_site("county-a", "COUNTY_A")
    with c.db.session() as s:
        order_id = accept_bundle(s, bundle(), site_id="county-a", actor="user:site-a").id
    with c.db.session() as s:
        order = s.get(LabOrder, order_id)
        assert order is not None and (order.source, order.priority) == ("fhir", "stat")
        codes = sorted(s.scalars(select(LabResult.test_code).where(
            LabResult.order_id == order_id)))
        assert codes == ["HGB", "K", "NA"]
        msg = s.scalar(select(LabInboundMessage))
        assert msg is not None
        assert (msg.channel, msg.sender, msg.control_id, msg.outcome, msg.order_id) == (
            "fhir", "county-a", "BUNDLE-1", "AA", order_id)
    before = _counts(c)
    with pytest.raises(Conflict, match="duplicate placer order number 'REQ-77'"), \
            c.db.session() as s:
        accept_bundle(s, bundle(), site_id="county-a", actor="user:site-a")
    assert _counts(c) == before


def _edit(path: Callable[[Bundle], None]) -> Bundle:
    b = copy.deepcopy(bundle())
    path(b)
    return b


@pytest.mark.parametrize(("bad", "error", "message"), [
    ({"resourceType": "Patient"}, InvalidInput, "not a FHIR Bundle"),
    (_edit(lambda b: b["entry"][0]["resource"].update(birthDate="1990-13-45")), InvalidInput,
     "invalid FHIR Bundle at entry"),
    (_edit(lambda b: b["entry"][3]["resource"]["code"]["coding"][0].update(code="1-8")),
     InvalidInput, r"ServiceRequest\[0\].code: LOINC '1-8' is not in the test catalog"),
    (_edit(lambda b: b["entry"][4]["resource"]["code"]["coding"][0].update(code="ZZ")),
     UnknownTest, "unknown test code 'ZZ'"),
    (_edit(lambda b: b["entry"][0]["resource"].pop("identifier")), InvalidInput,
     "the patient has no identifier"),
    (_edit(lambda b: b["entry"][5]["resource"]["requisition"].update(value="OTHER")),
     InvalidInput, "differs from 'REQ-77': one order per bundle"),
    (_edit(lambda b: b["entry"][5]["resource"]["specimen"][0].update(
        reference="Specimen/nope")), InvalidInput,
     r"ServiceRequest\[2\].specimen: specimen 'Specimen/nope' is not in the bundle"),
    (_edit(lambda b: b["entry"][1]["resource"]["collection"].update(
        collectedDateTime="2026-12-01")), InvalidInput, "is a date, not a date and time"),
    (_edit(lambda b: b["entry"][1]["resource"]["condition"][0]["coding"][0].update(
        code="HOT")), InvalidInput, "'HOT' is not one of ROOM, COOL, FROZ, CFU"),
    (_edit(lambda b: b.update(entry=b["entry"][:3])), InvalidInput, "has no ServiceRequest"),
])
def test_bad_bundles_are_refused_and_store_nothing(env_center: Center, bad: Bundle,
                                                   error: type[Exception],
                                                   message: str) -> None:
    c = env_center
    c.add_site("county-a", "COUNTY_A")
    with pytest.raises(error, match=message), c.db.session() as s:
        accept_bundle(s, bad, site_id="county-a", actor="user:site-a")
    assert _counts(c) == (0, 0, 0, 0)
