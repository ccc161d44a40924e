"""The signed report as an HL7 v2.5.1 ORU^R01 result message, for the sites' HIS/RIS.

County hospital information systems take results as HL7 v2; the message says
the same as the SR and PDF (the sections, then who signed with which
certificate).  It carries no seal of its own: the sealed copies are the SR and
the PDF, and the message names the certificate so a reader can find them.

Each section is sent as TX observations, one OBX per line of text, all with
the section's code (OBX-3) and ordinal (OBX-4), which is how v2 carries a text
report line by line; a line longer than 199 characters (after escaping) goes on
in the next OBX.  That limit is hl7apy's: under STRICT validation it reads
every OBX-5 as ST, so one long FT value per section would not validate.

The ER7 text is written here, with our own escaping, because hl7apy's escaping
leaves reader text such as ``\\F\\`` unescaped; hl7apy then parses the finished
message with STRICT validation, so a message that does not conform never
leaves this module.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from core.errors import InvalidInput
from core.timeutil import as_utc
from reports.document import ReportDocument
from reports.sr import section_concept

__all__ = ["HL7_VERSION", "HL7MessageError", "escape_hl7", "oru_r01", "text_lines"]

HL7_VERSION: Final = "2.5.1"
_SEGMENT_SEPARATOR: Final = "\r"
#: Longest OBX-5 value hl7apy accepts under STRICT validation (ST), escapes included.
_MAX_VALUE: Final = 199
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ESCAPES: Final = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


class HL7MessageError(InvalidInput):
    """The report could not be expressed as a valid ORU^R01 message."""


def escape_hl7(text: str) -> str:
    """``text`` safe inside one (sub)component: delimiters escaped, controls blanked.

    A carriage return would end the segment and MLLP framing bytes would end
    the message, so no control character survives; use :func:`text_lines` for
    text whose line breaks matter.
    """
    text = _CONTROL.sub(" ", text.replace("\r\n", " ").replace("\r", " ").replace("\n", " "))
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def text_lines(text: str, width: int = _MAX_VALUE) -> list[str]:
    """Reader text as escaped TX values, one per line, none longer than ``width``.

    Long lines are cut between characters, never inside an escape sequence;
    empty lines are kept, since they separate paragraphs.
    """
    values: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        current = ""
        for ch in line:
            escaped = escape_hl7(ch)
            if len(current) + len(escaped) > width:
                values.append(current)
                current = ""
            current += escaped
        values.append(current)
    return values


def _ts(moment: datetime) -> str:
    """HL7 DTM with seconds and offset, in UTC (naive means UTC)."""
    return as_utc(moment).strftime("%Y%m%d%H%M%S%z")


def _segment(name: str, fields: dict[int, str]) -> str:
    last = max(fields) if fields else 0
    values = [fields.get(i, "") for i in range(1, last + 1)]
    return "|".join([name, *values])


def _xpn(name: str) -> str:
    """A display or DICOM PN name as XPN repetitions, one per non-empty PN group
    (alphabetic, ideographic, phonetic); DICOM orders family^given^middle^prefix^suffix,
    XPN family^given^middle^suffix^prefix.
    """
    names = []
    for group in name.split("=") or [""]:
        parts = [p.strip() for p in group.split("^")][:5]
        parts += [""] * (5 - len(parts))
        family, given, middle, prefix, suffix = parts
        xpn = "^".join(escape_hl7(p) for p in (family, given, middle, suffix, prefix))
        if xpn.strip("^"):
            names.append(xpn.rstrip("^"))
    return "~".join(names)


def oru_r01(
    doc: ReportDocument,
    *,
    sending_facility: str,
    receiving_facility: str,
    message_id: str,
    created_at: datetime | None = None,
) -> str:
    """The ORU^R01 message of ``doc``, segments separated by ``\\r``, UTF-8 text.

    ``message_id`` (MSH-10) is chosen by the caller so that a resend after a
    lost acknowledgement carries the same id.  ``created_at`` defaults to now.
    """
    if not message_id.strip():
        raise HL7MessageError("an ORU^R01 message needs a message control id")
    addendum = doc.kind == "addendum"
    status = "C" if addendum else "F"  # an addendum corrects the final result
    signed = _ts(doc.signer.signed_at)
    signer = doc.signer
    interpreter = f"{escape_hl7(signer.reader_id)}&{escape_hl7(signer.name)}"
    observer = f"{escape_hl7(signer.reader_id)}^{escape_hl7(signer.name)}"

    segments = [
        "MSH|^~\\&|" + "|".join([
            "RDC",
            escape_hl7(sending_facility),
            "",
            escape_hl7(receiving_facility),
            _ts(created_at or datetime.now(UTC)),
            "",
            "ORU^R01^ORU_R01",
            escape_hl7(message_id),
            "P",
            HL7_VERSION,
            "", "", "", "", "",
            "UNICODE UTF-8",
        ]),
        _segment("PID", {
            1: "1",
            3: f"{escape_hl7(doc.patient_id)}^^^{escape_hl7(doc.site_id)}^PI",
            5: _xpn(doc.patient_name),
        }),
        _segment("OBR", {
            1: "1",
            3: escape_hl7(doc.accession_number),
            4: "18748-4^Diagnostic imaging report^LN",
            7: signed,
            18: escape_hl7(doc.accession_number),
            20: escape_hl7(doc.study_uid),
            22: signed,
            24: "RAD",
            25: status,
            32: interpreter,
        }),
    ]

    observations: list[tuple[str, str, str, str]] = []  # value type, id, sub-id, value
    for ordinal, section in enumerate(doc.sections, start=1):
        code, scheme, meaning = section_concept(section)
        identifier = f"{escape_hl7(code)}^{escape_hl7(meaning)}^{scheme}"
        observations += [
            ("TX", identifier, str(ordinal), line) for line in text_lines(section.text)
        ]
    local = [
        ("ST", "110180^Study Instance UID^DCM", doc.study_uid),
        ("ST", "121139^Modality^DCM", doc.modality),
        ("ST", "SIGNER^Signer^99RDC", f"{signer.name} ({signer.reader_id})"),
        ("ST", "SIGALG^Signature algorithm^99RDC", signer.algorithm),
        ("ST", "CERTFPR^Certificate fingerprint (SHA-256)^99RDC", signer.fingerprint),
        ("ST", f"CONTENTHASH^Content hash ({escape_hl7(doc.hash_algorithm)})^99RDC",
         doc.content_hash),
        ("ST", "REPORTVERSION^Report version^99RDC",
         f"{doc.report_id}/{doc.version} ({doc.kind})"),
    ]
    observations += [(vt, ident, "", escape_hl7(value)) for vt, ident, value in local]
    observations.append(("TS", "SIGNEDAT^Signed at^99RDC", "", signed))

    for set_id, (value_type, identifier, sub_id, value) in enumerate(observations, start=1):
        segments.append(_segment("OBX", {
            1: str(set_id),
            2: value_type,
            3: identifier,
            4: sub_id,
            5: value,
            11: status,
            14: signed,
            16: observer,
        }))

    message = _SEGMENT_SEPARATOR.join(segments)
    _validate(message)
    return message


def strict_validation_error(message: str) -> str | None:
    """Why ``message`` fails hl7apy's STRICT validation (structure, required fields,
    datatypes), shortened for a log line; None when it passes.  Shared by every HL7
    message the center builds (reports here, the lab's ORUs)."""
    try:
        parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
        parsed.validate()
    except Exception as exc:  # hl7apy raises a family of unrelated exceptions
        detail = str(exc) or type(exc).__name__
        if len(detail) > 300:
            detail = detail[:150] + " ... " + detail[-150:]
        return detail
    return None


def _validate(message: str) -> None:
    detail = strict_validation_error(message)
    if detail is not None:
        raise HL7MessageError(f"the ORU^R01 message does not validate: {detail}")
