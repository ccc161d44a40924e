"""The signed report as a sealed PDF, and that PDF as a DICOM Encapsulated PDF.

The PDF is what a county clinician prints or attaches to the patient's file, so
it must say who signed, when and with which certificate, and it must check on
its own: :func:`render_pdf` appends to the finished PDF a trailer

    ``\\n%RDC-SIGNATURE-1 <base64 of the envelope>\\n%%EOF\\n``

whose envelope seals every byte before the trailer.  The trailer is a PDF
comment followed by an end-of-file marker, so viewers ignore it, and
:func:`sealed_content_of_pdf` can split it off again without parsing PDF.

Just before the trailer, inside the sealed bytes, a second comment of the same
shape, ``\\n%RDC-SUBJECT-1 <canonical JSON>\\n%%EOF\\n``, names the patient,
study and DICOM object the PDF belongs to: the identifying attributes of the
Encapsulated PDF that wraps it (see :func:`pdf_subject`).  A receiving PACS
files the wrapped PDF by those attributes, so the verifier of a wrapped PDF
checks each of them against the sealed value (:func:`check_wrapper`): a signed
PDF cannot be relabelled to another patient or study unnoticed.

Chinese text needs a CJK font embedded in the PDF: the center uses WenQuanYi Zen
Hei from the Debian package ``fonts-wqy-zenhei``.  Without it the PDF would show
empty boxes where the findings are, so a missing font is a configuration error,
never a silent fallback to a Latin font.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
)
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from core.crypto import SignatureInvalid
from core.errors import ConfigurationError
from reports.document import Figure, ReportDocument, Sealer
from reports.sr import (
    MalformedReportFileError,
    ReportFileError,
    ReportRenderError,
    UnsealedReportError,
    evidence_header,
    sealed_content_of_sr,
)

__all__ = [
    "CJK_FONT_PACKAGE",
    "CJK_FONT_PATH",
    "PDF_SERIES_NUMBER",
    "REPORT_HASH_LABEL",
    "SIGNATURE_MARKER",
    "SUBJECT_MARKER",
    "MissingFontError",
    "check_wrapper",
    "display_date",
    "display_person_name",
    "encapsulated_pdf_dataset",
    "pdf_from_dataset",
    "pdf_subject",
    "render_pdf",
    "sealed_content_of_encapsulated_pdf",
    "sealed_content_of_file",
    "sealed_content_of_pdf",
    "sealed_subject_of_pdf",
]

CJK_FONT_PATH: Final = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")
CJK_FONT_PACKAGE: Final = "fonts-wqy-zenhei"
_FONT_NAME: Final = "RDC-WQY-ZenHei"

#: Comment keyword that opens the seal trailer.
SIGNATURE_MARKER: Final = b"%RDC-SIGNATURE-1"
_TRAILER_RE: Final = re.compile(rb"\n%RDC-SIGNATURE-1 ([A-Za-z0-9+/]+={0,2})\n%%EOF\n\Z")
#: Comment keyword of the sealed record of the wrapper's identifying attributes.
SUBJECT_MARKER: Final = b"%RDC-SUBJECT-1"
_SUBJECT_RE: Final = re.compile(rb"\n%RDC-SUBJECT-1 (\{[\x20-\x7e]*\})\n%%EOF\n\Z")

#: Series number of the Encapsulated PDF (the SR is 9901).
PDF_SERIES_NUMBER: Final = 9902


class MissingFontError(ConfigurationError):
    """The CJK font the PDF needs is not installed."""


# --------------------------------------------------------------------------- rendering


def register_font() -> str:
    """Register the CJK font once per process; refuse to render without it."""
    if not CJK_FONT_PATH.is_file():  # checked every time: the package can be removed
        raise MissingFontError(
            f"the CJK font {CJK_FONT_PATH} is missing: install the Debian package "
            f"{CJK_FONT_PACKAGE} (apt-get install {CJK_FONT_PACKAGE}); reports are "
            "not rendered without it, since Chinese text would not show"
        )
    if _FONT_NAME in pdfmetrics.getRegisteredFontNames():
        return _FONT_NAME
    try:
        pdfmetrics.registerFont(TTFont(_FONT_NAME, str(CJK_FONT_PATH), subfontIndex=0))
    except Exception as exc:  # reportlab raises TTFError and plain errors alike
        raise MissingFontError(
            f"the CJK font {CJK_FONT_PATH} cannot be loaded ({exc}); reinstall {CJK_FONT_PACKAGE}"
        ) from exc
    return _FONT_NAME


def _markup(text: str) -> str:
    """Reader text as Paragraph markup: XML-escaped, line breaks kept."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "<br/>".join(escape(line) for line in lines)


def _styles(font: str) -> dict[str, ParagraphStyle]:
    # wordWrap="CJK" lets Chinese lines break between any two characters.
    base = ParagraphStyle("rdc-body", fontName=font, fontSize=10.5, leading=15, wordWrap="CJK")
    return {
        "center": ParagraphStyle("rdc-center", parent=base, fontSize=12, leading=16,
                                 alignment=1),
        "title": ParagraphStyle("rdc-title", parent=base, fontSize=16, leading=22,
                                alignment=1, spaceAfter=4),
        "heading": ParagraphStyle("rdc-heading", parent=base, fontSize=12.5, leading=18,
                                  spaceBefore=8, spaceAfter=2),
        "body": base,
        "cell": ParagraphStyle("rdc-cell", parent=base, fontSize=9, leading=12),
        "mono": ParagraphStyle("rdc-mono", parent=base, fontSize=8, leading=11),
        "note": ParagraphStyle("rdc-note", parent=base, fontSize=7.5, leading=10,
                               textColor=colors.grey),
    }


def _table(rows: list[tuple[str, str]], styles: dict[str, ParagraphStyle],
           value_style: str = "cell") -> Table:
    data = [
        [Paragraph(escape(label), styles["cell"]), Paragraph(_markup(value), styles[value_style])]
        for label, value in rows
    ]
    table = Table(data, colWidths=[38 * mm, None], hAlign="LEFT")
    table.setStyle(TableStyle([
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TEXTCOLOR", (0, 0), (0, -1), colors.HexColor("#444444")),
        ("LINEBELOW", (0, -1), (-1, -1), 0.5, colors.grey),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
    ]))
    return table


def _image(figure: Figure) -> Image:
    """A PNG figure at its width on the page, its aspect kept."""
    reader = ImageReader(io.BytesIO(figure.png))
    w, h = reader.getSize()
    width = figure.width_mm * mm
    return Image(io.BytesIO(figure.png), width=width, height=width * h / w)


def _is_cjk(text: str) -> bool:
    return any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af"
               or "\uf900" <= ch <= "\ufaff" for ch in text)


def _name_group(group: str, natural: bool) -> str:
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    if _is_cjk(family + given + middle):
        # Chinese, Japanese, Korean: family name first, no separator ("张^三" → 张三).
        return "".join(p for p in (family, given, middle) if p)
    if natural:
        name = " ".join(p for p in (prefix, given, middle, family) if p)
    else:
        rest = " ".join(p for p in (prefix, given, middle) if p)
        name = f"{family.upper()}, {rest}" if family and rest else (family.upper() or rest)
    return f"{name}, {suffix}" if suffix and name else name


def display_person_name(value: str, *, natural: bool = False) -> str:
    """A DICOM person name (PN) as people read it.

    On a report, family name first: ``Phantom^Demo`` → ``PHANTOM, Demo``; with
    ``natural``, as one says it: ``Demo Phantom``.  ``张^三`` → ``张三`` either way;
    with alphabetic and ideographic groups, ``Zhang^San=张^三`` → ``ZHANG, San (张三)``.
    """
    groups = [g for g in (_name_group(g, natural) for g in str(value or "").split("="))
              if g]
    if not groups:
        return ""
    others = [g for g in groups[1:] if g != groups[0]]
    return f"{groups[0]} ({' / '.join(others)})" if others else groups[0]


def display_date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as given."""
    text = str(value or "").strip()
    if re.fullmatch(r"\d{8}", text):
        try:
            return datetime.strptime(text, "%Y%m%d").date().isoformat()
        except ValueError:
            return text
    return text


#: The label of the signed report's hash.  ``rdc reports verify`` prints the hash of a
#: file's sealed bytes as its "content hash": that is another hash (of this PDF), so
#: this one is never called a content hash.
REPORT_HASH_LABEL: Final = "Signed report hash"


def _story(doc: ReportDocument, styles: dict[str, ParagraphStyle]) -> list[Any]:
    signer = doc.signer
    study = " · ".join(p for p in (display_date(doc.study_date), doc.study_description) if p)
    header = [
        ("Center", doc.center_name),
        ("Site", f"{doc.site_name} ({doc.site_id})"),
        ("Patient", f"{display_person_name(doc.patient_name)} (ID {doc.patient_id})"),
        ("Study", study or "—"),
        ("Accession", doc.accession_number),
        ("Modality", doc.modality),
        ("Report", f"{doc.report_id} version {doc.version}"
                   + (" (addendum)" if doc.kind == "addendum" else "")),
    ]
    if doc.kind == "addendum" and doc.predecessor_sr_uid:
        header.append(("Amends SR", doc.predecessor_sr_uid))
    story: list[Any] = [
        Paragraph(escape(doc.center_name), styles["center"]),
        Paragraph(escape(doc.title), styles["title"]),
        _table(header, styles),
        Spacer(1, 4 * mm),
    ]
    for section in doc.sections:
        story.append(Paragraph(escape(section.title), styles["heading"]))
        story.append(Paragraph(_markup(section.text), styles["body"]))
    for figure in doc.figures:
        story.append(Paragraph(escape(figure.title), styles["heading"]))
        story.append(_image(figure))
    story.append(Spacer(1, 6 * mm))
    # The signature block stays on one page: a signer's name never parts from its hash.
    block: list[Any] = [Paragraph("Electronic signature", styles["heading"])]
    block.append(_table([
        ("Signed by", f"{signer.name} ({signer.reader_id})"),
        ("Signed at", signer.signed_at.isoformat()),
        ("Algorithm", signer.algorithm),
        ("Certificate fingerprint (SHA-256)", signer.fingerprint),
        (f"{REPORT_HASH_LABEL} ({doc.hash_algorithm})", doc.content_hash),
        ("Study instance UID", doc.study_uid),
    ], styles, value_style="mono"))
    block.append(Spacer(1, 2 * mm))
    block.append(Paragraph(
        "This file carries an electronic seal; check it with "
        "<font face='Courier'>rdc reports verify FILE</font>. "
        "Any change to the file makes the check fail. "
        f"The {REPORT_HASH_LABEL.lower()} is the hash of the report text the reader "
        "signed; the content hash that the check prints is the hash of this file's "
        "sealed bytes.",
        styles["note"],
    ))
    story.append(KeepTogether(block))
    return story


def _pdf_bytes(doc: ReportDocument) -> bytes:
    font = register_font()
    styles = _styles(font)
    stamp = doc.signer.signed_at.astimezone(UTC).strftime("D:%Y%m%d%H%M%S+00'00'")

    def first_page(canvas: Canvas, _template: Any) -> None:
        # Creation date = signature time, not the render time (see invariant below).
        canvas.setDateFormatter(lambda *_: stamp)

    def every_page(canvas: Canvas, template: Any) -> None:
        canvas.saveState()
        canvas.setFont(font, 7.5)
        canvas.setFillColor(colors.grey)
        canvas.drawString(
            18 * mm, 10 * mm,
            f"{doc.center_name} · {doc.accession_number} · page {template.page}",
        )
        canvas.restoreState()

    def first(canvas: Canvas, template: Any) -> None:
        first_page(canvas, template)
        every_page(canvas, template)

    out = io.BytesIO()
    template = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm, bottomMargin=18 * mm,
        title=doc.title,
        author=doc.signer.name,
        subject=f"{doc.accession_number} {doc.study_uid}",
        creator=doc.center_name,
        # No random document ID or render clock: the bytes depend on the document only.
        invariant=1,
    )
    template.build(_story(doc, styles), onFirstPage=first, onLaterPages=every_page)
    return out.getvalue()


def render_pdf(doc: ReportDocument, seal: Sealer, evidence: Dataset | None = None) -> bytes:
    """The report as a PDF, sealed: everything before the trailer is what ``seal`` saw.

    The sealed bytes end with the record of :func:`pdf_subject`: the identifying
    attributes that :func:`encapsulated_pdf_dataset` gives the PDF's DICOM wrapper.
    With ``evidence`` (the instance the wrapper takes its patient attributes from),
    the record also seals the patient's birth date and sex.
    """
    pdf = _pdf_bytes(doc)
    if not pdf.rstrip().endswith(b"%%EOF"):
        raise ReportRenderError("reportlab produced a PDF without a final %%EOF")
    pdf += b"\n" + SUBJECT_MARKER + b" " + _subject_json(pdf_subject(doc, evidence)) \
        + b"\n%%EOF\n"
    envelope = seal(pdf)
    if not envelope:
        raise ReportRenderError("the sealer returned an empty envelope")
    return pdf + b"\n" + SIGNATURE_MARKER + b" " + base64.b64encode(envelope) + b"\n%%EOF\n"


def sealed_content_of_pdf(data: bytes) -> tuple[bytes, bytes]:
    """(signed bytes, envelope bytes) of a delivered PDF, for the verifier.

    Strict on purpose: exactly one trailer, at the very end, after a complete PDF.
    """
    if not data.startswith(b"%PDF-"):
        raise MalformedReportFileError("not a PDF file (no %PDF- header)")
    count = data.count(SIGNATURE_MARKER)
    if count == 0:
        raise UnsealedReportError("the PDF carries no RDC report signature")
    if count > 1:
        raise MalformedReportFileError(
            f"the PDF carries {count} RDC signature trailers; expected exactly one"
        )
    match = _TRAILER_RE.search(data)
    if match is None:
        raise MalformedReportFileError(
            "the RDC signature trailer of the PDF is damaged or not at the very end of the file"
        )
    signed = data[: match.start()]
    if not signed.rstrip().endswith(b"%%EOF"):
        raise MalformedReportFileError("the RDC signature trailer does not follow a complete PDF")
    try:
        envelope = base64.b64decode(match.group(1), validate=True)
    except ValueError as exc:
        raise MalformedReportFileError(f"the RDC signature trailer is not base64: {exc}") from exc
    return signed, envelope


# --------------------------------------------------------------------------- DICOM


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


#: The identifying attributes of the wrapper that every sealed record names: the
#: ones a PACS files the document by (patient, study, series, instance), and what
#: the document says it is and when it was made.  They all come from the document.
_SUBJECT_REQUIRED: Final = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
    "StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "DocumentTitle",
    "InstanceNumber", "ContentDate", "ContentTime", "TimezoneOffsetFromUTC",
)
#: Sealed as well when the evidence instance is known at rendering time.
_SUBJECT_FROM_EVIDENCE: Final = ("IssuerOfPatientID", "PatientBirthDate", "PatientSex")
#: Attributes of the record that must name this document, when a PDF is wrapped.
_SUBJECT_OF_DOCUMENT: Final = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
    "StudyInstanceUID", "DocumentTitle", "InstanceNumber", "ContentDate", "ContentTime",
    "TimezoneOffsetFromUTC",
)


def _text(value: object) -> str:
    """One attribute value as the record holds it: text, multiple values joined with
    a backslash as DICOM stores them, without the padding DICOM ignores."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def pdf_subject(doc: ReportDocument, evidence: Dataset | None = None) -> dict[str, str]:
    """The identifying attributes of the Encapsulated PDF of ``doc`` (DICOM keyword →
    value as text), as the PDF's seal records them and the wrapper carries them.

    Patient ID, name and accession number come from the evidence instance when it is
    given (as in the wrapper), else from the document (which the center fills from
    that instance); birth date, sex and issuer of the patient ID only with evidence.
    """
    signed_at = doc.signer.signed_at
    subject = {
        "SpecificCharacterSet": "ISO_IR 192",
        "SOPClassUID": str(EncapsulatedPDFStorage),
        "SOPInstanceUID": doc.pdf_sop_uid,
        "SeriesInstanceUID": doc.pdf_series_uid,
        "StudyInstanceUID": doc.study_uid,
        "PatientID": doc.patient_id,
        "PatientName": doc.patient_name,
        "AccessionNumber": doc.accession_number,
        "DocumentTitle": doc.title,
        "InstanceNumber": str(doc.version),
        "ContentDate": _da(signed_at),
        "ContentTime": _tm(signed_at),
        "TimezoneOffsetFromUTC": signed_at.strftime("%z"),
    }
    if evidence is not None:
        header = evidence_header(doc, evidence)
        for keyword in ("PatientID", "PatientName", "AccessionNumber", *_SUBJECT_FROM_EVIDENCE):
            if keyword in header:
                subject[keyword] = header[keyword].value
    return {keyword: _text(value) for keyword, value in subject.items()}


def _subject_json(subject: dict[str, str]) -> bytes:
    return json.dumps(subject, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise MalformedReportFileError("the sealed subject record names an attribute twice")
    return dict(pairs)


def sealed_subject_of_pdf(signed: bytes) -> dict[str, str] | None:
    """The record of the wrapper's identifying attributes at the end of a PDF's sealed
    bytes (see :func:`sealed_content_of_pdf`), or ``None`` for a PDF sealed without one.

    Strict: the record is canonical JSON of text values keyed by DICOM keywords, and
    names at least the attributes every record names.
    """
    match = _SUBJECT_RE.search(signed)
    if match is None:
        if SUBJECT_MARKER in signed[-4096:]:
            raise MalformedReportFileError(
                "the sealed subject record of the PDF is damaged or not where it belongs")
        return None
    raw = match.group(1)
    try:
        record = json.loads(raw.decode("ascii"), object_pairs_hook=_reject_duplicates)
    except ValueError as exc:
        raise MalformedReportFileError(f"the sealed subject record is not JSON: {exc}") from exc
    if not isinstance(record, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in record.items()):
        raise MalformedReportFileError("the sealed subject record is not an object of texts")
    if _subject_json(record) != raw:
        raise MalformedReportFileError("the sealed subject record is not in canonical form")
    unknown = sorted(k for k in record if tag_for_keyword(k) is None)
    if unknown:
        raise MalformedReportFileError(
            f"the sealed subject record names unknown DICOM attributes: {', '.join(unknown)}")
    missing = [k for k in _SUBJECT_REQUIRED if k not in record]
    if missing:
        raise MalformedReportFileError(
            f"the sealed subject record lacks {', '.join(missing)}")
    return record


def check_wrapper(ds: Dataset, signed: bytes) -> dict[str, str]:
    """Check the identifying attributes of an Encapsulated PDF against the values the
    PDF's seal records; ``signed`` are the PDF's sealed bytes.  Returns the record.

    Raises :class:`SignatureInvalid` naming every attribute that differs (e.g.
    ``PatientID differs from the sealed value``), and when the PDF seals no record:
    then nothing ties the wrapper's patient and study to the signature.  Call it
    after the signature over ``signed`` verified, so that the record is the signer's.
    """
    record = sealed_subject_of_pdf(signed)
    if record is None:
        raise SignatureInvalid(
            "the DICOM wrapper's identifying attributes (patient, study, document) are not "
            "sealed: the PDF inside carries no sealed subject record, so the wrapper may "
            "name another patient or study; verify the PDF on its own instead")
    problems = []
    for keyword, sealed in sorted(record.items()):
        if keyword not in ds:
            if sealed:
                problems.append(f"{keyword} is missing; the sealed value is {sealed!r}")
            continue
        actual = _text(ds[keyword].value)
        if actual != sealed:
            problems.append(f"{keyword} differs from the sealed value: the DICOM wrapper "
                            f"says {actual!r}, the seal {sealed!r}")
    if problems:
        raise SignatureInvalid(
            "the DICOM wrapper was changed after signing: " + "; ".join(problems))
    return record


_PATIENT_STUDY: Final = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)


def encapsulated_pdf_dataset(pdf: bytes, doc: ReportDocument, evidence: Dataset) -> Dataset:
    """An Encapsulated PDF Storage instance of ``pdf`` filed with the reported study.

    Built by hand because the installed highdicom has no Encapsulated Document
    class; it has every Type 1 and Type 2 attribute of the Encapsulated PDF IOD.
    The PDF carries its own seal, and its sealed record of :func:`pdf_subject`
    seals the wrapper's identifying attributes: they are written as recorded, after
    checking that the record names this document (a PDF rendered for another
    document is refused).
    """
    for what, value in (("PDF SOP Instance UID", doc.pdf_sop_uid),
                        ("PDF Series Instance UID", doc.pdf_series_uid)):
        if not value or not pydicom.uid.UID(value).is_valid:
            raise ReportRenderError(f"{what} {value!r} is not a valid DICOM UID")
    if not pdf.startswith(b"%PDF-"):
        raise ReportRenderError("encapsulated_pdf_dataset needs the bytes of a PDF")
    header = evidence_header(doc, evidence)
    signed_at = doc.signer.signed_at
    subject = pdf_subject(doc, evidence)
    try:
        record = sealed_subject_of_pdf(sealed_content_of_pdf(pdf)[0])
    except ReportFileError:
        record = None  # an unsealed PDF: wrapped all the same, it never verifies
    if record is not None:
        for keyword in _SUBJECT_OF_DOCUMENT:
            if record.get(keyword) != subject[keyword]:
                raise ReportRenderError(
                    f"the PDF was sealed for another document: its {keyword} is "
                    f"{record.get(keyword)!r}, this document's {subject[keyword]!r}")
        subject = record

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = doc.pdf_sop_uid
    ds.InstanceCreationDate = _da(signed_at)
    ds.InstanceCreationTime = _tm(signed_at)
    ds.TimezoneOffsetFromUTC = signed_at.strftime("%z")
    # Patient and General Study (Type 2 ones present, possibly empty)
    for keyword in _PATIENT_STUDY:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    # Encapsulated Document Series
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = doc.pdf_series_uid
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = doc.title[:64]
    # General Equipment / SC Equipment
    ds.Manufacturer = doc.center_name[:64]
    ds.InstitutionName = doc.center_name[:64]
    ds.ConversionType = "WSD"  # workstation: the document was made here, not scanned
    # Encapsulated Document
    ds.InstanceNumber = doc.version
    ds.ContentDate = _da(signed_at)
    ds.ContentTime = _tm(signed_at)
    ds.AcquisitionDateTime = signed_at.strftime("%Y%m%d%H%M%S.%f%z")
    ds.BurnedInAnnotation = "YES"  # the PDF shows patient identity
    ds.DocumentTitle = doc.title
    code = Dataset()
    code.CodeValue = "18748-4"
    code.CodingSchemeDesignator = "LN"
    code.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [code]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)  # the value is padded to even length
    # The identifying attributes exactly as the PDF's seal records them.
    for keyword, value in subject.items():
        setattr(ds, keyword, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(doc.pdf_sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def pdf_from_dataset(ds: Dataset) -> bytes:
    """The exact PDF bytes of an Encapsulated PDF instance, without the pad byte.

    DICOM pads odd-length values with a NUL; the PDF seal covers the unpadded
    bytes, so the length comes from Encapsulated Document Length when present.
    """
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "")).strip()
    if mime != "application/pdf" or "EncapsulatedDocument" not in ds:
        raise MalformedReportFileError(
            f"the DICOM object is not an encapsulated PDF (MIME type {mime!r})"
        )
    value = ds.EncapsulatedDocument
    if not isinstance(value, bytes):
        raise MalformedReportFileError("the Encapsulated Document value is not bytes")
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        length = int(length)
        if not 0 <= len(value) - length <= 1 or value[length:] not in (b"", b"\x00"):
            raise MalformedReportFileError(
                f"Encapsulated Document Length {length} does not match the "
                f"{len(value)} bytes of the encapsulated document"
            )
        return bytes(value[:length])
    if len(value) % 2 == 0 and value.endswith(b"\x00"):
        return bytes(value[:-1])  # a PDF never ends in NUL: this is the pad byte
    return bytes(value)


def sealed_content_of_encapsulated_pdf(data: bytes) -> tuple[bytes, bytes]:
    """(signed bytes, envelope bytes) of the PDF inside an Encapsulated PDF file.

    Refuses (:func:`check_wrapper`) a wrapper whose identifying attributes are not
    those the PDF's sealed bytes record: the signature over those bytes then also
    covers the wrapper's patient, study and document attributes.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise MalformedReportFileError(f"not a readable DICOM file: {exc}") from exc
    signed, envelope = sealed_content_of_pdf(pdf_from_dataset(ds))
    check_wrapper(ds, signed)
    return signed, envelope


def sealed_content_of_file(data: bytes) -> tuple[bytes, bytes]:
    """(signed bytes, envelope bytes) of any delivered report file: PDF, Encapsulated
    PDF or SR, told apart by content, so that ``rdc reports verify`` takes any of them.
    """
    if data.startswith(b"%PDF-"):
        return sealed_content_of_pdf(data)
    if data[128:132] == b"DICM":
        try:
            sop_class = pydicom.dcmread(
                io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"]
            ).get("SOPClassUID")
        except Exception as exc:
            raise MalformedReportFileError(f"not a readable DICOM file: {exc}") from exc
        if sop_class == EncapsulatedPDFStorage:
            return sealed_content_of_encapsulated_pdf(data)
    return sealed_content_of_sr(data)
