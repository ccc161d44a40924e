"""The signed report as a verified, final DICOM Structured Report, sealed so that it
checks on its own.

The SR goes where the images are (Orthanc, the county sites' PACS), so it is the
copy a radiologist at a site actually opens.  That copy has been through C-STORE
and Orthanc, which rewrite the File Meta Information and may change the transfer
syntax.  The seal therefore protects a *canonical* encoding of the dataset, not
the file's bytes:

* Explicit VR Little Endian, no preamble, no File Meta Information;
* data elements in tag order; retired group lengths (gggg,0000) and dataset
  trailing padding (FFFC,FFFC) left out, because tools add and drop them freely;
* the VR written for each element is a function of its tag alone (the data
  dictionary's VR, or ``UN`` for private, unknown and ambiguous tags), so an
  implicit VR copy and an explicit VR copy encode alike;
* sequences and items always with undefined length and delimiters, because
  writers choose either form;
* every other value byte for byte as stored in the file (never decoded and
  re-encoded, so that a change of a single byte, padding included, shows);
* without the seal's own private block (group 0099, creator
  ``RDC REPORT SIGNATURE``).

The seal is whatever the :data:`~reports.document.Sealer` returns for those
bytes, stored in the private block; :func:`sealed_content_of_sr` hands the same
two pieces back from a delivered file for the verifier.

Big endian files (a retired transfer syntax no tool here produces) are refused
rather than converted, because their stored value bytes differ from the sealed
ones.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Iterable
from typing import Final

import highdicom as hd
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ComprehensiveSRStorage
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from core.errors import InvalidInput
from reports.document import ReportDocument, Sealer, Section

__all__ = [
    "SEAL_CREATOR",
    "SEAL_FORMAT",
    "SEAL_GROUP",
    "SR_SERIES_NUMBER",
    "MalformedReportFileError",
    "ReportFileError",
    "ReportRenderError",
    "UnsealedReportError",
    "build_signed_sr",
    "canonical_sr_bytes",
    "evidence_header",
    "sealed_content_of_sr",
    "section_concept",
]

#: Private group and creator of the block that holds the seal.
SEAL_GROUP: Final = 0x0099
SEAL_CREATOR: Final = "RDC REPORT SIGNATURE"
#: Value of element 0x02 of the block, naming the canonical form above.
SEAL_FORMAT: Final = "rdc-sr-seal-1"
_ENVELOPE_ELEMENT: Final = 0x01
_FORMAT_ELEMENT: Final = 0x02

#: Series numbers of the center's derived objects: high, so that viewers list
#: them after the acquired series instead of among them.
SR_SERIES_NUMBER: Final = 9901

#: Local coding scheme for concepts without a standard code.
LOCAL_SCHEME: Final = "99RDC"

_REPORT_TITLE = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")

#: Section keys with a heading from CID 7001 "Diagnostic Imaging Report
#: Headings" (LOINC), so that receiving systems can find e.g. the impression
#: without knowing our keys.  Other sections get a local code named after the title.
_SECTION_CODES: Final[dict[str, tuple[str, str]]] = {
    "history": ("11329-0", "History"),
    "clinical_history": ("11329-0", "History"),
    "indication": ("11329-0", "History"),
    "request": ("55115-0", "Request"),
    "technique": ("55111-9", "Current Procedure Descriptions"),
    "procedure": ("55111-9", "Current Procedure Descriptions"),
    "comparison": ("18834-2", "Previous Findings"),
    "findings": ("59776-5", "Findings"),
    "impression": ("19005-8", "Impressions"),
    "conclusion": ("55110-1", "Conclusions"),
    "conclusions": ("55110-1", "Conclusions"),
    "recommendation": ("18783-1", "Recommendations"),
    "recommendations": ("18783-1", "Recommendations"),
    "addendum": ("55107-7", "Addendum"),
}

# Group, element and VR of the elements we must not seal or re-encode.
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_TRAILING_PADDING = 0xFFFCFFFC

_MAX_LO = 64


class ReportRenderError(InvalidInput):
    """The document cannot be rendered as asked (wrong evidence, missing UIDs...)."""


class ReportFileError(InvalidInput):
    """A delivered report file cannot be checked; its origin cannot be trusted."""


class UnsealedReportError(ReportFileError):
    """The file is readable but carries no RDC report signature."""


class MalformedReportFileError(ReportFileError):
    """The file is not a readable DICOM object or PDF, or its seal is damaged."""


# --------------------------------------------------------------------------- building


def section_concept(section: Section) -> tuple[str, str, str]:
    """(code value, coding scheme, meaning) naming a section in the SR and in HL7.

    Known keys get their LOINC heading; others a local code derived from the key
    (hashed when longer than the 16 characters a code value holds), with the
    title as meaning so that a human sees the reader's own heading.
    """
    key = section.key.strip().lower()
    if key in _SECTION_CODES:
        code, meaning = _SECTION_CODES[key]
        return code, "LN", meaning
    value = section.key.strip().upper() or "SECTION"
    if len(value) > 16 or not value.isascii():
        value = "S" + hashlib.sha256(section.key.encode("utf-8")).hexdigest()[:15].upper()
    meaning = (section.title.strip() or section.key)[:_MAX_LO]
    return value, LOCAL_SCHEME, meaning


def _local(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, LOCAL_SCHEME, meaning)


def _person_name(name: str) -> str:
    """A DICOM PN for a display name: a name without components is a family name."""
    name = name.strip()
    return name if "^" in name or "=" in name else f"{name}^"


def _valid_uid(value: str, what: str) -> str:
    if not value or not UID(value).is_valid:
        raise ReportRenderError(f"{what} {value!r} is not a valid DICOM UID")
    return value


def evidence_header(doc: ReportDocument, evidence: Dataset) -> Dataset:
    """A header-only copy of the evidence with the Type 2 attributes highdicom reads.

    Pixel data is left out (the SR only references the instance), and a copy
    that lacks e.g. StudyID still yields an SR instead of an AttributeError.
    """
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(evidence.get(keyword, "")).strip():
            raise ReportRenderError(f"the evidence instance has no {keyword}")
    if evidence.StudyInstanceUID != doc.study_uid:
        raise ReportRenderError(
            f"the evidence instance belongs to study {evidence.StudyInstanceUID}, "
            f"not to the reported study {doc.study_uid}"
        )
    evidence_pid = str(evidence.get("PatientID", "")).strip()
    if evidence_pid and doc.patient_id.strip() and evidence_pid != doc.patient_id.strip():
        raise ReportRenderError(
            f"the evidence instance belongs to patient {evidence_pid!r}, "
            f"not to the reported patient {doc.patient_id!r}"
        )
    header = Dataset()
    for tag in evidence.keys():
        if tag.group >= 0x7FE0 or tag.is_private:
            continue
        elem = evidence[tag]  # decoded with the evidence's own character set
        header.add(DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value)))
    defaults = {
        "PatientName": "",
        "PatientID": doc.patient_id,
        "PatientBirthDate": "",
        "PatientSex": "",
        "AccessionNumber": doc.accession_number,
        "StudyID": "",
        "StudyDate": "",
        "StudyTime": "",
    }
    for keyword, value in defaults.items():
        if not str(header.get(keyword, "")).strip():
            setattr(header, keyword, value)
    return header


def _content(doc: ReportDocument) -> hd.sr.ContainerContentItem:
    root = hd.sr.ContainerContentItem(name=_REPORT_TITLE)
    items: list[hd.sr.ContentItem] = []
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    for section in doc.sections:
        code, scheme, meaning = section_concept(section)
        items.append(
            hd.sr.TextContentItem(
                name=hd.sr.CodedConcept(code, scheme, meaning),
                value=section.text,
                relationship_type=contains,
            )
        )
    signer = doc.signer
    signature = hd.sr.ContainerContentItem(
        name=_local("SIGNATURE", "Signature"), relationship_type=contains
    )
    rows = [
        ("SIGNER", "Signer", signer.name),
        ("SIGNERID", "Signer account", signer.reader_id),
        ("SIGNEDAT", "Signed at", signer.signed_at.isoformat()),
        ("SIGALG", "Signature algorithm", signer.algorithm),
        ("CERTFPR", "Certificate fingerprint (SHA-256)", signer.fingerprint),
        ("CONTENTHASH", f"Content hash ({doc.hash_algorithm})", doc.content_hash),
        ("REPORTVERSION", "Report version", f"{doc.report_id}/{doc.version} ({doc.kind})"),
    ]
    signature.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=_local(code, meaning), value=value, relationship_type=contains
            )
            for code, meaning, value in rows
        ]
    )
    items.append(signature)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _predecessor(doc: ReportDocument) -> Dataset:
    """Just enough of the previous version for highdicom's Predecessor Documents."""
    series_uid = doc.extra.get("predecessor_sr_series_uid", "")
    if not doc.predecessor_sr_uid or not series_uid:
        raise ReportRenderError(
            f"addendum {doc.report_id}/{doc.version} needs predecessor_sr_uid and "
            "extra['predecessor_sr_series_uid'] to reference the version it amends"
        )
    pre = Dataset()
    pre.SOPClassUID = ComprehensiveSRStorage
    pre.SOPInstanceUID = _valid_uid(doc.predecessor_sr_uid, "predecessor SR SOP Instance UID")
    pre.StudyInstanceUID = doc.study_uid
    pre.SeriesInstanceUID = _valid_uid(series_uid, "predecessor SR Series Instance UID")
    return pre


def build_signed_sr(doc: ReportDocument, evidence: Dataset, seal: Sealer) -> Dataset:
    """The verified, final Comprehensive SR of ``doc``, sealed with ``seal``.

    ``evidence`` is any instance of the reported study: the SR takes its
    patient and study attributes from it so that PACS files it with the images.
    Dates and times are those of the signature, so that a retry with the same
    UIDs gives the same content.
    """
    sop_uid = _valid_uid(doc.sr_sop_uid, "SR SOP Instance UID")
    series_uid = _valid_uid(doc.sr_series_uid, "SR Series Instance UID")
    header = evidence_header(doc, evidence)
    previous = [_predecessor(doc)] if doc.kind == "addendum" else None
    signed_at = doc.signer.signed_at
    sr = hd.sr.ComprehensiveSR(
        evidence=[header],
        content=_content(doc),
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=doc.version,
        manufacturer=doc.center_name[:_MAX_LO],
        is_complete=True,
        is_final=True,
        is_verified=True,
        institution_name=doc.center_name[:_MAX_LO],
        verifying_observer_name=_person_name(doc.signer.name),
        verifying_organization=doc.center_name[:_MAX_LO],
        previous_versions=previous,
        series_description=doc.title[:_MAX_LO],
        content_date=signed_at.date(),
        content_time=signed_at.timetz().replace(tzinfo=None),
        series_date=signed_at.date(),
        series_time=signed_at.timetz().replace(tzinfo=None),
        specific_character_set="ISO_IR 192",
    )
    sr.TimezoneOffsetFromUTC = signed_at.strftime("%z")
    sr.InstanceCreationDate = sr.ContentDate
    sr.InstanceCreationTime = sr.ContentTime
    signed_dt = signed_at.strftime("%Y%m%d%H%M%S.%f%z")
    sr.VerifyingObserverSequence[0].VerificationDateTime = signed_dt
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps "now" on its own entry
            item.ContributionDateTime = signed_dt
    sr.VerifyingObserverSequence[0].VerifyingObserverIdentificationCodeSequence = [
        _local(doc.signer.reader_id or "UNKNOWN", doc.signer.name[:_MAX_LO] or "?")
    ]

    envelope = seal(canonical_sr_bytes(sr))
    if not envelope or envelope.endswith(b"\x00"):
        # OB values are padded with NUL to even length; an envelope that ended
        # in NUL could not be told from its padding (ASCII JSON never does).
        raise ReportRenderError("the sealer returned an empty or NUL-terminated envelope")
    block = sr.private_block(SEAL_GROUP, SEAL_CREATOR, create=True)
    block.add_new(_ENVELOPE_ELEMENT, "OB", envelope)
    block.add_new(_FORMAT_ELEMENT, "LO", SEAL_FORMAT)
    return sr


# --------------------------------------------------------------------------- sealing


def _seal_blocks(ds: Dataset) -> list[int]:
    """Block bytes (the ``xx`` of ``(0099,xx..)``) reserved by our private creator."""
    blocks = []
    for element in range(0x10, 0x100):
        tag = Tag(SEAL_GROUP, element)
        if tag not in ds:
            continue
        value = _text_of(ds.get_item(tag))
        if value == SEAL_CREATOR:
            blocks.append(element)
    return blocks


def _text_of(elem: DataElement | RawDataElement | None) -> str:
    """A short text value whatever the VR it was read with (``UN`` after implicit VR)."""
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        try:
            return value.decode("ascii").rstrip(" \x00")
        except UnicodeDecodeError:
            return ""
    return str(value).strip()


def _canonical_vr(tag: BaseTag) -> str:
    """The VR written for ``tag``: a function of the tag alone (see module doc)."""
    if tag.is_private:
        return "UN"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr if len(vr) == 2 else "UN"


def _header(tag: BaseTag, vr: str, length: int) -> bytes:
    out = tag.group.to_bytes(2, "little") + tag.element.to_bytes(2, "little") + vr.encode()
    if vr in EXPLICIT_VR_LENGTH_32:
        return out + b"\x00\x00" + length.to_bytes(4, "little")
    if length > 0xFFFF:
        # As pydicom does (PS3.5 6.2.2): a long value of a 16-bit-length VR goes as UN.
        return out[:4] + b"UN\x00\x00" + length.to_bytes(4, "little")
    return out + length.to_bytes(2, "little")


def _encoded_value(elem: DataElement, encodings: str | list[str]) -> bytes:
    """Value bytes of an in-memory element, exactly as pydicom writes them to a file."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True  # header is always tag + 4-byte length
    write_data_element(fp, elem, encodings)
    return fp.getvalue()[8:]


def _is_sequence(ds: Dataset, tag: BaseTag, raw: DataElement | RawDataElement) -> bool:
    if raw.VR == "SQ" or isinstance(raw.value, Sequence):
        return True
    if raw.VR in (None, "UN"):
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:
            value = raw.value
            # A private sequence read as implicit VR / UN: undefined length or an item.
            return getattr(raw, "length", 0) == 0xFFFFFFFF or (
                isinstance(value, bytes) and value[:4] == _ITEM_TAG
            )
    return False


def _encode(
    ds: Dataset, out: io.BytesIO, parent_encodings: str | list[str], skip: Iterable[int]
) -> None:
    skipped = set(skip)
    encodings = ds.get("SpecificCharacterSet", parent_encodings)
    if ds.original_encoding[1] is False:
        raise MalformedReportFileError(
            "big endian DICOM is not supported for report verification; "
            "convert the file to a little endian transfer syntax"
        )
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag == _TRAILING_PADDING or int(tag) in skipped:
            continue
        raw = ds.get_item(tag)
        if raw is None:
            continue
        if _is_sequence(ds, tag, raw):
            out.write(_header(tag, "SQ", 0)[:8] + b"\xff\xff\xff\xff")
            items = ds[tag].value
            for item in items:
                out.write(_ITEM_TAG + b"\xff\xff\xff\xff")
                _encode(item, out, encodings, ())
                out.write(_ITEM_DELIMITER)
            out.write(_SEQUENCE_DELIMITER)
            continue
        if isinstance(raw, RawDataElement):
            value = raw.value or b""
        else:
            value = _encoded_value(raw, encodings)
        out.write(_header(tag, _canonical_vr(tag), len(value)))
        out.write(value)


def _seal_tags(ds: Dataset) -> list[int]:
    tags: list[int] = []
    for block in _seal_blocks(ds):
        tags.append(int(Tag(SEAL_GROUP, block)))
        tags.extend(int(Tag(SEAL_GROUP, (block << 8) | e)) for e in range(0x100))
    return tags


def canonical_sr_bytes(ds: Dataset) -> bytes:
    """The bytes the seal protects: ``ds`` canonically encoded, seal block left out.

    See the module docstring for the canonical form.  Raw values read from a
    file are copied as they are; values built in memory are encoded as pydicom
    writes them, so that the bytes computed before writing equal those computed
    from the written file.
    """
    out = io.BytesIO()
    try:
        _encode(ds, out, "iso8859", _seal_tags(ds))
    except ReportFileError:
        raise
    except Exception as exc:  # pydicom raises anything from a damaged value
        raise MalformedReportFileError(f"the DICOM dataset cannot be encoded: {exc}") from exc
    return out.getvalue()


def _read_dicom(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise MalformedReportFileError(f"not a readable DICOM file: {exc}") from exc
    # No preamble / DICM prefix: a bare dataset as some stores save them.
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise InvalidDicomError("no SOP Class / SOP Instance UID")
    except Exception as exc:
        raise MalformedReportFileError(f"not a readable DICOM file: {exc}") from exc
    return ds


def sealed_content_of_sr(data: bytes) -> tuple[bytes, bytes]:
    """(signed bytes, envelope bytes) of a delivered SR file, for the verifier.

    The file may have been rewritten by Orthanc or C-STORE (File Meta
    Information, uncompressed transfer syntax): the signed bytes are the
    canonical encoding, the same whatever the file's encoding.
    """
    ds = _read_dicom(data)
    blocks = _seal_blocks(ds)
    if not blocks:
        raise UnsealedReportError("the DICOM file carries no RDC report signature")
    if len(blocks) > 1:
        raise MalformedReportFileError(
            f"the DICOM file has {len(blocks)} private blocks {SEAL_CREATOR!r}; expected one"
        )
    block = blocks[0]
    fmt = _text_of(ds.get_item(Tag(SEAL_GROUP, (block << 8) | _FORMAT_ELEMENT)))
    envelope_elem = ds.get_item(Tag(SEAL_GROUP, (block << 8) | _ENVELOPE_ELEMENT))
    if envelope_elem is None:
        raise UnsealedReportError(
            "the DICOM file carries no RDC report signature (the seal block is empty)"
        )
    if fmt != SEAL_FORMAT:
        raise MalformedReportFileError(f"unknown RDC seal format {fmt!r}; expected {SEAL_FORMAT}")
    envelope = envelope_elem.value
    if not isinstance(envelope, bytes) or not envelope:
        raise MalformedReportFileError("the RDC report signature element is empty")
    if envelope.endswith(b"\x00"):
        envelope = envelope[:-1]  # the even-length padding of OB
    return canonical_sr_bytes(ds), envelope
