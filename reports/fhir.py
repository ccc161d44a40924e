"""The signed report as a FHIR DiagnosticReport, for regional health-information exchange.

Built as a plain dict (the JSON the exchange receives) and validated with the
``fhir.resources`` models before it is returned, so that invalid output never
leaves; the installed ``fhir.resources`` 8.x models FHIR R5.

The resource links back to the sealed copies: the SR's SOP Instance UID is one
of its identifiers and the sealed PDF, when given, is its ``presentedForm``.

Optional keys of ``ReportDocument.extra`` read here:

* ``patient_id_system``: URI of the patient id's namespace (default: a URN
  derived from the site id, since patient ids are assigned by each site);
* ``reader_id_system``: URI of the reader account ids (default ``urn:rdc:reader``).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from html import escape
from typing import Any, Final
from urllib.parse import quote

from fhir.resources.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from core.errors import InvalidInput
from core.timeutil import as_utc
from reports.document import ReportDocument

__all__ = ["FHIR_VERSION", "FHIRValidationError", "diagnostic_report"]

#: FHIR release of the installed fhir.resources top-level models.
FHIR_VERSION: Final = "R5"
_LOINC: Final = "http://loinc.org"
_DICOM_UID: Final = "urn:dicom:uid"
_V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
_V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
_CONCLUSION_KEYS: Final = ("impression", "conclusion", "conclusions")


class FHIRValidationError(InvalidInput):
    """The DiagnosticReport built from the document is not valid FHIR."""


def _instant(moment: datetime) -> str:
    """FHIR instant/dateTime, in UTC (naive means UTC)."""
    return as_utc(moment).isoformat()


def _narrative(doc: ReportDocument) -> dict[str, str]:
    parts = [f"<h3>{escape(doc.title)}</h3>"]
    for section in doc.sections:
        text = "<br/>".join(escape(line) for line in section.text.splitlines())
        parts.append(f"<p><b>{escape(section.title)}</b></p><p>{text}</p>")
    parts.append(
        f"<p>Signed by {escape(doc.signer.name)} at {escape(_instant(doc.signer.signed_at))}"
        f" (certificate SHA-256 {escape(doc.signer.fingerprint)})</p>"
    )
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{"".join(parts)}</div>',
    }


def _type(text: str, code: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if code is not None:
        concept["coding"] = [{"system": _V2_0203, "code": code}]
    return concept


def diagnostic_report(doc: ReportDocument, *, pdf: bytes | None) -> dict[str, Any]:
    """The DiagnosticReport of ``doc`` as FHIR JSON (a dict), validated.

    ``pdf`` is the sealed PDF from :func:`reports.pdf.render_pdf`; it is
    embedded unchanged so that the receiver can verify it.
    """
    signer = doc.signer
    signed = _instant(signer.signed_at)
    patient_system = doc.extra.get(
        "patient_id_system", f"urn:rdc:site:{quote(doc.site_id, safe='')}:patient-id"
    )
    reader_system = doc.extra.get("reader_id_system", "urn:rdc:reader")
    conclusion = next(
        (s.text for key in _CONCLUSION_KEYS for s in doc.sections if s.key.lower() == key),
        None,
    )

    identifiers: list[dict[str, Any]] = [
        {"system": "urn:rdc:report", "value": f"{doc.report_id}/{doc.version}",
         "type": _type("RDC report version")},
        {"system": _DICOM_UID, "value": f"urn:oid:{doc.study_uid}",
         "type": _type("Study Instance UID")},
    ]
    if doc.sr_sop_uid:
        identifiers.append({"system": _DICOM_UID, "value": f"urn:oid:{doc.sr_sop_uid}",
                            "type": _type("Sealed SR SOP Instance UID")})
    if doc.accession_number:
        identifiers.append({"value": doc.accession_number, "type": _type("Accession", "ACSN")})

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"rdc-report-{doc.report_id}-v{doc.version}",
        "text": _narrative(doc),
        "contained": [
            {
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{"system": patient_system, "value": doc.patient_id}],
                "name": [{"text": doc.patient_name}],
            },
            {
                "resourceType": "Organization",
                "id": "center",
                "name": doc.center_name,
            },
        ],
        "identifier": identifiers,
        "status": "appended" if doc.kind == "addendum" else "final",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": _LOINC, "code": "18748-4",
                        "display": "Diagnostic imaging study"}],
            "text": doc.title,
        },
        "subject": {"reference": "#patient", "display": doc.patient_name},
        "effectiveDateTime": signed,
        "issued": signed,
        "performer": [{"reference": "#center", "display": doc.center_name}],
        "resultsInterpreter": [{
            "type": "Practitioner",
            "identifier": {"system": reader_system, "value": signer.reader_id},
            "display": signer.name,
        }],
        "study": [{
            "type": "ImagingStudy",
            "identifier": {"system": _DICOM_UID, "value": f"urn:oid:{doc.study_uid}"},
        }],
        "note": [{
            "text": (
                f"Electronically signed by {signer.name} ({signer.reader_id}) at {signed}; "
                f"algorithm {signer.algorithm}; certificate SHA-256 fingerprint "
                f"{signer.fingerprint}; content hash ({doc.hash_algorithm}) {doc.content_hash}."
            ),
        }],
    }
    if conclusion:
        report["conclusion"] = conclusion
    if pdf is not None:
        report["presentedForm"] = [{
            "contentType": "application/pdf",
            "data": base64.b64encode(pdf).decode("ascii"),
            "title": doc.title,
            "creation": signed,
            "size": str(len(pdf)),  # integer64 is a JSON string in R5
            # Attachment.hash is SHA-1 by definition; an integrity hint, not the seal.
            "hash": base64.b64encode(
                hashlib.sha1(pdf, usedforsecurity=False).digest()
            ).decode("ascii"),
        }]
    try:
        DiagnosticReport.model_validate(report)
    except ValidationError as exc:
        raise FHIRValidationError(f"the DiagnosticReport is not valid FHIR {FHIR_VERSION}: {exc}") \
            from exc
    return report
