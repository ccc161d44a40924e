"""An order's lab results as a FHIR R4 DiagnosticReport with its Observations contained.

Why contained and not a Bundle: the report is handed out as one resource (the API's
``GET /api/lab/orders/{id}/fhir``) and its Observations have no life of their own
outside it; contained resources keep them together and still each one is a full
Observation (LOINC code, valueQuantity in UCUM, reference range, interpretation).

Only what the site may see is in it: released results (autoverified or signed) as
``final`` Observations, and rejected ones as ``cancelled`` with the reason; held or
pending results are not.  The report is ``final`` when every result of the order is
final, else ``preliminary``.

Validated with the ``fhir.resources`` R4B models (the installed package's release of
R4; DiagnosticReport and Observation are the same there) before it is returned.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound
from core.models import LabOrder, LabResult, LabSpecimen
from lab.catalog import get_catalog
from lab.states import FINAL_RESULT_STATES, RELEASED_RESULT_STATES, ResultState

__all__ = ["FHIRValidationError", "diagnostic_report"]

_LOINC: Final = "http://loinc.org"
_UCUM: Final = "http://unitsofmeasure.org"
_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
_V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
_FLAG_DISPLAY: Final = {"H": "High", "L": "Low", "HH": "Critical high", "LL": "Critical low",
                        "A": "Abnormal", "N": "Normal"}
_SEX: Final = {"M": "male", "F": "female", "U": "unknown"}


class FHIRValidationError(InvalidInput):
    """The DiagnosticReport built from the order is not valid FHIR."""


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat()


def _quantity(value: float, units: str) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if units:
        quantity.update(unit=units, system=_UCUM, code=units)
    return quantity


def _observation(result: LabResult, specimen_ref: str) -> dict[str, Any]:
    test = get_catalog().tests.get(result.test_code)
    name = test.loinc_name if test is not None else result.test_code
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs-{result.id}",
        "identifier": [{"system": "urn:rdc:lab:result", "value": str(result.id)}],
        "category": [{"coding": [{"system": _CATEGORY, "code": "laboratory",
                                  "display": "Laboratory"}]}],
        "code": {"coding": [{"system": _LOINC, "code": result.loinc or
                             (test.loinc if test else ""), "display": name}],
                 "text": test.name if test is not None else result.test_code},
        "subject": {"reference": "#patient"},
        "specimen": {"reference": specimen_ref},
    }
    if result.state == ResultState.REJECTED:
        obs["status"] = "cancelled"
        obs["dataAbsentReason"] = {"text": "specimen or result rejected"}
        if result.review_reason:
            obs["note"] = [{"text": result.review_reason}]
        return obs
    obs["status"] = "final"
    if result.measured_at is not None:
        obs["effectiveDateTime"] = _instant(result.measured_at)
    if result.signed_at is not None or result.updated_at is not None:
        obs["issued"] = _instant(result.signed_at or result.updated_at)
    text = (result.value_text or "").strip()
    if result.value is not None and not (text and text[0] in "<>"):
        obs["valueQuantity"] = _quantity(result.value, result.units)
    elif text:
        obs["valueString"] = text
    else:
        obs["dataAbsentReason"] = {"text": "no value"}
    reference: dict[str, Any] = {}
    if result.ref_low is not None:
        reference["low"] = _quantity(result.ref_low, result.units)
    if result.ref_high is not None:
        reference["high"] = _quantity(result.ref_high, result.units)
    if reference:
        obs["referenceRange"] = [reference]
    flag = result.abnormal_flag or "N"
    obs["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": flag,
                                          "display": _FLAG_DISPLAY.get(flag, flag)}]}]
    return obs


def diagnostic_report(session: Session, order_id: int) -> dict[str, Any]:
    """The order's DiagnosticReport (FHIR R4 JSON as a dict), validated."""
    order = session.get(LabOrder, order_id)
    if order is None:
        raise NotFound(f"no lab order {order_id}")
    results = list(session.scalars(select(LabResult).where(LabResult.order_id == order_id)
                                   .order_by(LabResult.id)))
    specimens = {s.id: s for s in session.scalars(select(LabSpecimen).where(
        LabSpecimen.order_id == order_id).order_by(LabSpecimen.id))}
    shown = [r for r in results
             if r.state in RELEASED_RESULT_STATES or r.state == ResultState.REJECTED]
    patient: dict[str, Any] = {
        "resourceType": "Patient", "id": "patient",
        "identifier": [{"system": f"urn:rdc:site:{order.site_id}:patient",
                        "value": order.patient_id}],
        "gender": _SEX.get(order.sex, "unknown"),
    }
    if order.patient_name:
        patient["name"] = [{"text": order.patient_name.replace("^", " ").strip()}]
    if len(order.birth_date) == 8 and order.birth_date.isdigit():
        patient["birthDate"] = (f"{order.birth_date[:4]}-{order.birth_date[4:6]}-"
                                f"{order.birth_date[6:]}")
    contained: list[dict[str, Any]] = [patient]
    for specimen in specimens.values():
        spec: dict[str, Any] = {
            "resourceType": "Specimen", "id": f"spec-{specimen.id}",
            "identifier": [{"system": "urn:rdc:lab:accession", "value": specimen.accession}],
            "accessionIdentifier": {"system": "urn:rdc:lab:accession",
                                    "value": specimen.accession},
            "type": {"text": specimen.specimen_type},
            "subject": {"reference": "#patient"},
        }
        if specimen.collected_at is not None:
            spec["collection"] = {"collectedDateTime": _instant(specimen.collected_at)}
        if specimen.rejection_code:
            spec["status"] = "unsatisfactory"
            note = f"rejected ({specimen.rejection_code})"
            if specimen.rejection_note:
                note += f": {specimen.rejection_note}"
            spec["note"] = [{"text": note}]
        contained.append(spec)
    contained += [_observation(r, f"#spec-{r.specimen_id}") for r in shown]
    all_final = bool(results) and all(r.state in FINAL_RESULT_STATES for r in results)
    issued = max((r.signed_at or r.updated_at for r in shown if (r.signed_at or r.updated_at)),
                 default=None)
    collected = [s.collected_at for s in specimens.values() if s.collected_at is not None]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"lab-order-{order.id}",
        "identifier": [
            {"type": {"coding": [{"system": _V2_0203, "code": "PLAC"}]},
             "system": f"urn:rdc:site:{order.site_id}:order",
             "value": order.placer_order_number},
            {"type": {"coding": [{"system": _V2_0203, "code": "FILL"}]},
             "system": "urn:rdc:lab:order", "value": order.filler_order_number},
        ],
        "status": "final" if all_final else "preliminary",
        "category": [{"coding": [{"system": _V2_0074, "code": "LAB",
                                  "display": "Laboratory"}]}],
        "code": {"coding": [{"system": _LOINC, "code": "11502-2",
                             "display": "Laboratory report"}]},
        "subject": {"reference": "#patient"},
        "contained": contained,
        "specimen": [{"reference": f"#spec-{sid}"} for sid in specimens],
        "result": [{"reference": f"#obs-{r.id}"} for r in shown],
    }
    if collected:
        report["effectiveDateTime"] = _instant(min(collected))
    if issued is not None:
        report["issued"] = _instant(issued)
    try:
        DiagnosticReport.model_validate(report)
    except ValidationError as exc:
        raise FHIRValidationError(f"the DiagnosticReport of lab order {order_id} is not "
                                  f"valid FHIR: {exc}") from exc
    return report
