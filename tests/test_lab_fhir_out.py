"""An order's results as a FHIR R4 DiagnosticReport with contained Observations."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from lab_review_support import Measured, make_order, make_site

from conftest import Center
from core.errors import NotFound
from lab.fhir_out import diagnostic_report


def _contained(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in report["contained"] if r["resourceType"] == kind]


def test_diagnostic_report_with_observations(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        order, spec, rows = make_order(s, [
            Measured("K", 6.4, "autoverified", "HH", critical=True),
            Measured("TNI", None, "verified", value_text="<0.01"),
            Measured("NA", 140.0, "autoverified"),
            Measured("GLU", 9.0, "held", "H"),  # not released: not shown
        ], patient_name="王^小明", sex="F", birth_date="19580304")
        report = diagnostic_report(s, order.id)
        ids = [r.id for r in rows]
        accession = spec.accession

        # Valid FHIR (checked again here, independently of the module's own check).
        parsed = DiagnosticReport.model_validate(report)
        assert parsed.status == "preliminary"  # GLU is still held
        assert report["code"]["coding"][0] == {"system": "http://loinc.org",
                                               "code": "11502-2", "display": "Laboratory report"}
        assert {i["value"] for i in report["identifier"]} == {order.placer_order_number,
                                                             order.filler_order_number}
        [patient] = _contained(report, "Patient")
        assert patient["name"] == [{"text": "王 小明"}]
        assert patient["gender"] == "female" and patient["birthDate"] == "1958-03-04"
        [specimen] = _contained(report, "Specimen")
        assert specimen["accessionIdentifier"]["value"] == accession

        obs = {o["id"]: o for o in _contained(report, "Observation")}
        assert [r["reference"] for r in report["result"]] == [f"#obs-{i}" for i in ids[:3]]
        k = obs[f"obs-{ids[0]}"]
        Observation.model_validate(k)
        assert k["status"] == "final"
        assert k["code"]["coding"][0]["system"] == "http://loinc.org"
        assert k["code"]["coding"][0]["code"] == "2823-3"
        assert k["valueQuantity"] == {"value": 6.4, "unit": "mmol/L",
                                      "system": "http://unitsofmeasure.org", "code": "mmol/L"}
        assert k["referenceRange"][0]["low"]["value"] == 3.5
        assert k["referenceRange"][0]["high"]["value"] == 5.3
        assert k["interpretation"][0]["coding"][0]["code"] == "HH"
        assert k["specimen"] == {"reference": f"#spec-{spec.id}"}
        tni = obs[f"obs-{ids[1]}"]
        assert tni["valueString"] == "<0.01" and "valueQuantity" not in tni
        assert "low" not in tni["referenceRange"][0]
        na = obs[f"obs-{ids[2]}"]
        assert na["interpretation"][0]["coding"][0]["code"] == "N"

        # All final: the report is final.
        rows[3].state = "verified"
        s.flush()
        assert diagnostic_report(s, order.id)["status"] == "final"
        with pytest.raises(NotFound, match="no lab order 99999"):
            diagnostic_report(s, 99999)


def test_rejected_results_are_cancelled_observations(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        order, spec, rows = make_order(s, [Measured("K", None, "rejected")])
        spec.rejection_code, spec.rejection_note = "hemolysed", "H index 300"
        rows[0].review_reason = "hemolysed"
        report = diagnostic_report(s, order.id)
    DiagnosticReport.model_validate(report)
    assert report["status"] == "final"
    [o] = _contained(report, "Observation")
    assert o["status"] == "cancelled" and "valueQuantity" not in o
    assert o["note"] == [{"text": "hemolysed"}]
    [sp] = _contained(report, "Specimen")
    assert sp["status"] == "unsatisfactory"
    assert sp["note"] == [{"text": "rejected (hemolysed): H index 300"}]
