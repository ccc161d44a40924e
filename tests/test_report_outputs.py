"""The four outputs of a signed report: sealed SR, sealed PDF (and its DICOM
wrapper), HL7 ORU^R01 and FHIR DiagnosticReport.

The only stand-in is the sealer: an HMAC envelope of the same shape and size
as the real one, with a matching verifier, so that the tests check that the
extraction functions hand back exactly the sealed bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fhir.resources.diagnosticreport import DiagnosticReport
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from core.errors import ConfigurationError, InvalidInput
from reports import pdf as pdf_module
from reports.document import ReportDocument, Section, SignerInfo
from reports.fhir import diagnostic_report
from reports.hl7 import oru_r01
from reports.pdf import (
    MissingFontError,
    encapsulated_pdf_dataset,
    pdf_from_dataset,
    render_pdf,
    sealed_content_of_encapsulated_pdf,
    sealed_content_of_file,
    sealed_content_of_pdf,
)
from reports.sr import (
    SEAL_CREATOR,
    SEAL_FORMAT,
    MalformedReportFileError,
    ReportRenderError,
    UnsealedReportError,
    build_signed_sr,
    canonical_sr_bytes,
    sealed_content_of_sr,
)

_KEY = b"test-only-hmac-key"
FINDINGS_ZH = "右肺上叶见一结节，大小约 8 mm × 6 mm，边界清楚。\n纵隔未见肿大淋巴结。"  # noqa: RUF001
IMPRESSION_ZH = "右肺上叶结节，考虑良性可能大，建议 12 个月后复查。"


class StandInSealer:
    """HMAC-SHA256 envelope shaped like the real one (ASCII JSON, a few KB)."""

    def __init__(self) -> None:
        self.sealed: list[bytes] = []

    def __call__(self, data: bytes) -> bytes:
        self.sealed.append(data)
        envelope = {
            "v": 1,
            "alg": "test-hmac-sha256",
            "sha256": hashlib.sha256(data).hexdigest(),
            "mac": hmac.new(_KEY, data, hashlib.sha256).hexdigest(),
            # Real envelopes carry the signer certificate chain: a few KB.
            "chain": base64.b64encode(bytes(range(256)) * 9).decode("ascii"),
        }
        return json.dumps(envelope, sort_keys=True).encode("ascii")


def verify(signed: bytes, envelope: bytes) -> bool:
    """The stand-in verifier: what ``rdc reports verify`` does with a real envelope."""
    try:
        parsed = json.loads(envelope)
    except ValueError:
        return False
    expected = hmac.new(_KEY, signed, hashlib.sha256).hexdigest()
    return isinstance(parsed, dict) and hmac.compare_digest(str(parsed.get("mac")), expected)


def ct_small() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    return Path(path)


@pytest.fixture
def evidence() -> Dataset:
    return pydicom.dcmread(ct_small())


@pytest.fixture
def strict_reading(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    yield


def make_doc(evidence: Dataset, **changes: Any) -> ReportDocument:
    doc = ReportDocument(
        report_id=42,
        version=1,
        kind="report",
        title="CT 胸部平扫诊断报告",
        center_name="江北区域影像诊断中心",
        site_id="county-a",
        site_name="甲县人民医院",
        patient_id=str(evidence.PatientID),
        patient_name="张三",
        study_uid=str(evidence.StudyInstanceUID),
        accession_number="ACC20240501",
        modality="CT",
        sections=(
            Section("technique", "检查方法", "胸部 CT 平扫，层厚 1.25 mm。"),
            Section("findings", "所见", FINDINGS_ZH),
            Section("impression", "印象", IMPRESSION_ZH),
        ),
        signer=SignerInfo(
            name="王医生",
            reader_id="wang.reader",
            fingerprint=hashlib.sha256(b"reader certificate").hexdigest(),
            algorithm="sm2",
            signed_at=datetime(2024, 5, 1, 8, 30, 15, tzinfo=UTC),
        ),
        content_hash=hashlib.sha256(b"canonical report content").hexdigest(),
        hash_algorithm="sm3",
        sr_sop_uid=generate_uid(),
        sr_series_uid=generate_uid(),
        pdf_sop_uid=generate_uid(),
        pdf_series_uid=generate_uid(),
    )
    return dataclasses.replace(doc, **changes)


def write(ds: Dataset, *, implicit: bool = False) -> bytes:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return out.getvalue()


def text_items(ds: Dataset) -> dict[str, str]:
    """Concept meaning -> text value of every TEXT item, nested ones included."""
    found: dict[str, str] = {}

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found[item.ConceptNameCodeSequence[0].CodeMeaning] = item.TextValue
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


# --------------------------------------------------------------------------- SR


def test_sr_is_verified_final_and_reads_back_strictly(
    evidence: Dataset, strict_reading: None, tmp_path: Path
) -> None:
    doc = make_doc(evidence)
    sealer = StandInSealer()
    path = tmp_path / "report.dcm"
    path.write_bytes(write(build_signed_sr(doc, evidence, sealer)))

    ds = pydicom.dcmread(path)
    for _ in ds.iterall():  # every value decoded under RAISE
        pass
    assert ds.SOPClassUID == ComprehensiveSRStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.VerificationFlag == "VERIFIED"
    assert ds.CompletionFlag == "COMPLETE"
    assert ds.PreliminaryFlag == "FINAL"
    observer = ds.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "王医生^"
    assert observer.VerifyingOrganization == doc.center_name
    assert observer.VerificationDateTime.startswith("20240501083015")
    # Same patient and study as the evidence, new series and instance.
    assert ds.PatientID == evidence.PatientID
    assert ds.PatientName == evidence.PatientName
    assert ds.StudyInstanceUID == evidence.StudyInstanceUID
    assert ds.SeriesInstanceUID == doc.sr_series_uid != evidence.SeriesInstanceUID
    assert ds.SOPInstanceUID == doc.sr_sop_uid
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("18748-4", "LN")
    ref = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert ref.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
        == evidence.SOPInstanceUID

    texts = text_items(ds)
    assert texts["Findings"] == FINDINGS_ZH
    assert texts["Impressions"] == IMPRESSION_ZH
    assert texts["Signer"] == "王医生"
    assert texts["Certificate fingerprint (SHA-256)"] == doc.signer.fingerprint
    assert texts["Signature algorithm"] == "sm2"
    assert texts["Signed at"] == "2024-05-01T08:30:15+00:00"
    codes = {item.ConceptNameCodeSequence[0].CodeValue for item in ds.ContentSequence}
    assert {"59776-5", "19005-8", "55111-9", "SIGNATURE"} <= codes

    block = ds.private_block(0x0099, SEAL_CREATOR)
    assert block[0x02].value == SEAL_FORMAT

    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.SOPInstanceUID == doc.sr_sop_uid


def test_sr_seal_survives_transfer_syntax_change_and_catches_one_byte(
    evidence: Dataset,
) -> None:
    sealer = StandInSealer()
    data = write(build_signed_sr(make_doc(evidence), evidence, sealer))

    signed, envelope = sealed_content_of_sr(data)
    assert signed == sealer.sealed[0]
    assert verify(signed, envelope)
    assert b"RDC REPORT SIGNATURE" not in signed and b"rdc-sr-seal-1" not in signed

    # As after C-STORE / Orthanc: Implicit VR LE and rewritten file meta.
    stored = pydicom.dcmread(io.BytesIO(data))
    stored.file_meta.ImplementationClassUID = UID("1.2.276.0.7230010.3.0.3.6.8")
    stored.file_meta.ImplementationVersionName = "OFFIS_DCMTK_368"
    stored.file_meta.SourceApplicationEntityTitle = "ORTHANC"
    implicit = write(stored, implicit=True)
    assert implicit != data
    assert pydicom.dcmread(io.BytesIO(implicit)).file_meta.TransferSyntaxUID \
        == ImplicitVRLittleEndian
    assert sealed_content_of_sr(implicit) == (signed, envelope)
    # And back to explicit from the implicit copy.
    again = write(pydicom.dcmread(io.BytesIO(implicit)))
    assert sealed_content_of_sr(again) == (signed, envelope)

    # One byte inside a text value of the findings.
    needle = "边界清楚".encode()
    at = data.index(needle)
    tampered = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
    tampered_signed, tampered_envelope = sealed_content_of_sr(tampered)
    assert tampered_signed != signed
    assert tampered_envelope == envelope
    assert not verify(tampered_signed, tampered_envelope)

    # One byte of the seal.
    mac = json.loads(envelope)["mac"].encode()
    at = data.index(mac)
    broken = data[:at] + (b"0" if data[at:at + 1] != b"0" else b"1") + data[at + 1:]
    broken_signed, broken_envelope = sealed_content_of_sr(broken)
    assert broken_signed == signed
    assert not verify(broken_signed, broken_envelope)


def test_canonical_bytes_ignore_the_seal_and_follow_the_content(evidence: Dataset) -> None:
    sr = build_signed_sr(make_doc(evidence), evidence, StandInSealer())
    before = canonical_sr_bytes(sr)
    sr.private_block(0x0099, SEAL_CREATOR)[0x01].value = b"{}"
    assert canonical_sr_bytes(sr) == before
    sr.SeriesDescription = "changed"
    assert canonical_sr_bytes(sr) != before


def test_sr_extraction_errors(evidence: Dataset) -> None:
    with pytest.raises(UnsealedReportError, match="carries no RDC report signature"):
        sealed_content_of_sr(ct_small().read_bytes())
    with pytest.raises(MalformedReportFileError):
        sealed_content_of_sr(b"this is not DICOM at all")
    assert issubclass(UnsealedReportError, InvalidInput)


def test_sr_refuses_evidence_of_another_study(evidence: Dataset) -> None:
    doc = make_doc(evidence, study_uid=generate_uid())
    with pytest.raises(ReportRenderError, match="not to the reported study"):
        build_signed_sr(doc, evidence, StandInSealer())
    other_patient = make_doc(evidence, patient_id="SOMEONE-ELSE")
    with pytest.raises(ReportRenderError, match="reported patient"):
        build_signed_sr(other_patient, evidence, StandInSealer())


def test_addendum_sr_references_its_predecessor(
    evidence: Dataset, strict_reading: None
) -> None:
    first = make_doc(evidence)
    addendum = make_doc(
        evidence,
        version=2,
        kind="addendum",
        sections=(Section("addendum", "补充报告", "对比 2023 年旧片，结节无明显变化。"),),
        predecessor_sr_uid=first.sr_sop_uid,
        extra={"predecessor_sr_series_uid": first.sr_series_uid},
    )
    sealer = StandInSealer()
    data = write(build_signed_sr(addendum, evidence, sealer))
    ds = pydicom.dcmread(io.BytesIO(data))
    predecessor = ds.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == evidence.StudyInstanceUID
    series = predecessor.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.sr_series_uid
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.sr_sop_uid
    assert series.ReferencedSOPSequence[0].ReferencedSOPClassUID == ComprehensiveSRStorage
    assert ds.InstanceNumber == 2
    assert text_items(ds)["Addendum"] == "对比 2023 年旧片，结节无明显变化。"
    assert verify(*sealed_content_of_sr(data))

    missing_series = dataclasses.replace(addendum, extra={})
    with pytest.raises(ReportRenderError, match="predecessor_sr_series_uid"):
        build_signed_sr(missing_series, evidence, StandInSealer())


# --------------------------------------------------------------------------- PDF


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is missing: apt-get install poppler-utils"
    return path


def test_pdf_renders_chinese_and_signature_block(evidence: Dataset, tmp_path: Path) -> None:
    doc = make_doc(evidence)
    sealer = StandInSealer()
    pdf = render_pdf(doc, sealer)
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)

    text = subprocess.run(
        [_poppler("pdftotext"), "-enc", "UTF-8", str(path), "-"],
        check=True, capture_output=True, timeout=60,
    )
    assert text.stderr == b""  # poppler finds nothing to repair despite the trailer
    content = text.stdout.decode("utf-8")
    assert "右肺上叶见一结节" in content
    assert "建议 12 个月后复查" in content
    assert "王医生" in content
    assert doc.signer.fingerprint in content
    assert doc.content_hash in content
    assert doc.accession_number in content
    assert "甲县人民医院" in content

    subprocess.run(
        [_poppler("pdftoppm"), "-png", "-r", "50", "-singlefile", str(path),
         str(tmp_path / "page")],
        check=True, capture_output=True, timeout=60,
    )
    png = (tmp_path / "page.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 5000  # a rendered page, not an empty one


def test_pdf_seal_round_trip_and_one_byte(evidence: Dataset) -> None:
    sealer = StandInSealer()
    pdf = render_pdf(make_doc(evidence), sealer)
    assert re.search(rb"\n%RDC-SIGNATURE-1 [A-Za-z0-9+/=]+\n%%EOF\n\Z", pdf)

    signed, envelope = sealed_content_of_pdf(pdf)
    assert signed == sealer.sealed[0]
    assert pdf.startswith(signed)
    assert verify(signed, envelope)

    at = len(signed) // 2
    tampered = pdf[:at] + bytes([pdf[at] ^ 0x20]) + pdf[at + 1:]
    tampered_signed, tampered_envelope = sealed_content_of_pdf(tampered)
    assert tampered_signed != signed
    assert not verify(tampered_signed, tampered_envelope)

    # Strict trailer: nothing after it, exactly one, intact base64.
    for bad in (pdf + b"\n", pdf + pdf[len(signed):], pdf.replace(b"\n%%EOF\n", b"\n%%EOF")):
        with pytest.raises(MalformedReportFileError):
            sealed_content_of_pdf(bad)
    with pytest.raises(UnsealedReportError, match="carries no RDC report signature"):
        sealed_content_of_pdf(signed)
    with pytest.raises(MalformedReportFileError):
        sealed_content_of_pdf(b"GIF89a")


def test_encapsulated_pdf_round_trip_is_byte_exact(
    evidence: Dataset, strict_reading: None
) -> None:
    doc = make_doc(evidence)
    pdf = render_pdf(doc, StandInSealer())
    for payload in (pdf, pdf + b"%"):  # one of each parity: the pad byte must go
        ds = encapsulated_pdf_dataset(payload, doc, evidence)
        data = write(ds)
        back = pydicom.dcmread(io.BytesIO(data))
        for _ in back.iterall():
            pass
        assert back.SOPClassUID == EncapsulatedPDFStorage
        assert back.SOPInstanceUID == doc.pdf_sop_uid
        assert back.SeriesInstanceUID == doc.pdf_series_uid
        assert back.StudyInstanceUID == evidence.StudyInstanceUID
        assert back.PatientID == evidence.PatientID
        assert back.Modality == "DOC"
        assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
        assert back.DocumentTitle == doc.title
        assert back.BurnedInAnnotation == "YES"
        assert len(back.EncapsulatedDocument) % 2 == 0
        assert pdf_from_dataset(back) == payload
        assert pdf_from_dataset(pydicom.dcmread(io.BytesIO(write(back, implicit=True)))) \
            == payload

    data = write(encapsulated_pdf_dataset(pdf, doc, evidence))
    assert sealed_content_of_encapsulated_pdf(data) == sealed_content_of_pdf(pdf)
    # One entry point for `rdc reports verify`, whatever the file.
    assert sealed_content_of_file(data) == sealed_content_of_pdf(pdf)
    assert sealed_content_of_file(pdf) == sealed_content_of_pdf(pdf)
    sr = write(build_signed_sr(doc, evidence, StandInSealer()))
    assert sealed_content_of_file(sr) == sealed_content_of_sr(sr)


def test_missing_cjk_font_is_a_configuration_error(
    evidence: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pdf_module, "CJK_FONT_PATH", Path("/nonexistent/wqy-zenhei.ttc"))
    with pytest.raises(MissingFontError, match="fonts-wqy-zenhei") as raised:
        render_pdf(make_doc(evidence), StandInSealer())
    assert isinstance(raised.value, ConfigurationError)


# --------------------------------------------------------------------------- HL7


def _unescape(value: str) -> str:
    table = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
    return re.sub(r"\\([FSTRE])\\", lambda m: table[m.group(1)], value)


def _observations(segments: list[str]) -> dict[str, list[list[str]]]:
    """OBX fields grouped by the code of OBX-3, in message order."""
    found: dict[str, list[list[str]]] = {}
    for segment in segments:
        fields = segment.split("|")
        if fields[0] == "OBX":
            found.setdefault(fields[3].split("^")[0], []).append(fields)
    return found


def test_oru_r01_validates_strictly_and_escapes(evidence: Dataset) -> None:
    tricky = "A|B^C&D~E\\F \\F\\ end\nsecond line\r\nthird"
    long_line = "长句" * 150 + "|^&~\\" * 30
    doc = make_doc(
        evidence,
        sections=(
            *make_doc(evidence).sections,
            Section("note", "Note", tricky),
            Section("long", "Long", long_line),
        ),
        patient_name="Zhang^San=张^三",
    )
    msg = oru_r01(doc, sending_facility="JIANGBEI RDC", receiving_facility="COUNTY-A",
                  message_id="MSG-0001",
                  created_at=datetime(2024, 5, 1, 9, 0, tzinfo=UTC))

    assert "\n" not in msg
    segments = msg.split("\r")
    assert [s[:3] for s in segments[:3]] == ["MSH", "PID", "OBR"]
    assert all(s.startswith("OBX|") for s in segments[3:])
    parsed = parse_message(msg, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.validate()

    msh = segments[0].split("|")
    assert msh[8] == "ORU^R01^ORU_R01" and msh[9] == "MSG-0001" and msh[11] == "2.5.1"
    assert msh[17] == "UNICODE UTF-8"
    assert msh[6] == "20240501090000+0000"
    pid = segments[1].split("|")
    assert pid[3] == f"{evidence.PatientID}^^^county-a^PI"
    assert pid[5] == "Zhang^San~张^三"
    obr = parsed.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_3.value == doc.accession_number
    assert obr.obr_20.value == doc.study_uid
    assert obr.obr_25.value == "F"
    assert [s.split("|")[1] for s in segments[3:]] == [str(n) for n in range(1, len(segments) - 2)]

    obx = _observations(segments)
    # A text section: TX, one OBX per line, same code and sub-id (the section ordinal).
    findings = obx["59776-5"]
    assert {f[2] for f in findings} == {"TX"} and {f[4] for f in findings} == {"2"}
    assert "\n".join(_unescape(f[5]) for f in findings) == FINDINGS_ZH
    assert "\n".join(_unescape(f[5]) for f in obx["19005-8"]) == IMPRESSION_ZH
    assert "\n".join(_unescape(f[5]) for f in obx["NOTE"]) == tricky.replace("\r\n", "\n")
    # A long line goes on in the next OBX, never cut inside an escape sequence.
    pieces = [f[5] for f in obx["LONG"]]
    assert len(pieces) > 2 and all(len(p) <= 199 for p in pieces)
    assert "".join(_unescape(p) for p in pieces) == long_line
    assert obx["CERTFPR"][0][5] == doc.signer.fingerprint
    assert obx["SIGNER"][0][5] == "王医生 (wang.reader)"
    assert obx["110180"][0][5] == doc.study_uid


# --------------------------------------------------------------------------- FHIR


def test_diagnostic_report_is_valid_fhir_with_the_pdf(evidence: Dataset) -> None:
    doc = make_doc(evidence)
    pdf = render_pdf(doc, StandInSealer())
    report = diagnostic_report(doc, pdf=pdf)
    model = DiagnosticReport.model_validate(report)
    assert model.status == "final"
    assert report["code"]["coding"][0]["code"] == "18748-4"
    assert report["conclusion"] == IMPRESSION_ZH
    assert report["issued"] == report["effectiveDateTime"] == "2024-05-01T08:30:15+00:00"
    assert report["resultsInterpreter"][0]["display"] == "王医生"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{doc.study_uid}"}.items() \
        <= report["identifier"][1].items()
    patient = report["contained"][0]
    assert report["subject"]["reference"] == f"#{patient['id']}"
    assert patient["identifier"][0]["value"] == doc.patient_id
    form = report["presentedForm"][0]
    assert form["contentType"] == "application/pdf"
    embedded = base64.b64decode(form["data"])
    assert embedded == pdf
    assert verify(*sealed_content_of_pdf(embedded))
    json.dumps(report)  # plain JSON, ready to send

    addendum = diagnostic_report(make_doc(evidence, kind="addendum", version=2), pdf=None)
    assert addendum["status"] == "appended"
    assert "presentedForm" not in addendum


# --------------------------------------------------------------------------- all four


def test_chinese_report_across_all_four_outputs(
    evidence: Dataset, strict_reading: None, tmp_path: Path
) -> None:
    # Evidence in GB18030, as many Chinese modalities send it: the SR is UTF-8.
    evidence.SpecificCharacterSet = "GB18030"
    evidence.PatientName = "张^三"
    source = io.BytesIO()
    evidence.save_as(source)
    assert "张".encode("gb18030") in source.getvalue()
    evidence = pydicom.dcmread(io.BytesIO(source.getvalue()))
    doc = make_doc(evidence)

    sr_data = write(build_signed_sr(doc, evidence, StandInSealer()))
    sr = pydicom.dcmread(io.BytesIO(sr_data))
    assert str(sr.PatientName) == "张^三"
    assert "张^三".encode() in sr_data
    assert text_items(sr)["Findings"] == FINDINGS_ZH
    assert verify(*sealed_content_of_sr(sr_data))

    pdf = render_pdf(doc, StandInSealer(), evidence)  # the wrapper's patient as the SR's
    (tmp_path / "r.pdf").write_bytes(pdf)
    text = subprocess.run([_poppler("pdftotext"), "-enc", "UTF-8", str(tmp_path / "r.pdf"), "-"],
                          check=True, capture_output=True, timeout=60).stdout.decode()
    assert "纵隔未见肿大淋巴结" in text and "江北区域影像诊断中心" in text
    assert verify(*sealed_content_of_pdf(pdf))
    wrapped = write(encapsulated_pdf_dataset(pdf, doc, evidence))
    assert "张^三".encode() in wrapped
    assert pdf_from_dataset(pydicom.dcmread(io.BytesIO(wrapped))) == pdf

    msg = oru_r01(doc, sending_facility="江北中心", receiving_facility="甲县", message_id="M2")
    parse_message(msg, validation_level=VALIDATION_LEVEL.STRICT)
    assert "纵隔未见肿大淋巴结" in msg and "PID|1||" in msg and "||张三" in msg
    msg.encode("utf-8")

    report = diagnostic_report(doc, pdf=pdf)
    assert report["conclusion"] == IMPRESSION_ZH
    assert "纵隔未见肿大淋巴结" in report["text"]["div"]
    assert report["contained"][0]["name"][0]["text"] == "张三"


# --------------------------------------------------------------------------- PDF page


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "page.pdf"
    path.write_bytes(pdf)
    out = subprocess.run([_poppler("pdftotext"), "-enc", "UTF-8", str(path), "-"],
                         check=True, capture_output=True, timeout=60)
    return out.stdout.decode("utf-8")


def test_pdf_names_the_patient_dates_the_study_and_shows_a_key_image(
    evidence: Dataset, tmp_path: Path
) -> None:
    from reports.document import Figure

    key = _key_image_png()
    doc = make_doc(evidence, patient_name="Phantom^Demo", study_date="20040119",
                   study_description="CT chest without contrast",
                   figures=(Figure("Key image: CT series 2 Axial, image 3 of 5", key,
                                   width_mm=100.0),))
    pdf = render_pdf(doc, StandInSealer())
    text = _pdf_text(pdf, tmp_path)
    assert "PHANTOM, Demo" in text and "Phantom^Demo" not in text
    assert "2004-01-19" in text and "CT chest without contrast" in text
    # The study UID is no longer what the header says the study is.
    header = text.split("Electronic signature")[0]
    assert doc.study_uid not in header and "20040119" not in header
    assert "Key image: CT series 2 Axial, image 3 of 5" in text
    images = subprocess.run([_poppler("pdfimages"), "-list", str(tmp_path / "page.pdf")],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    assert len([ln for ln in images.splitlines()[2:] if ln.strip()]) >= 1, images

    # The report's hash is labelled as what it is: `rdc reports verify` prints the hash
    # of the file's sealed bytes as its "content hash", a different hash.
    flat = " ".join(text.split())  # table cells wrap their labels
    assert f"Signed report hash ({doc.hash_algorithm})" in flat
    assert "Content hash" not in flat
    assert doc.content_hash in text
    assert pdf_module.REPORT_HASH_LABEL == "Signed report hash"


def _key_image_png() -> bytes:
    import numpy as np
    from PIL import Image as PILImage

    yy, xx = np.mgrid[0:128, 0:128]
    disc = ((xx - 64) ** 2 + (yy - 64) ** 2 < 40 ** 2).astype(np.uint8) * 200
    buf = io.BytesIO()
    PILImage.fromarray(disc + 20).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("pn", "shown", "natural"), [
    ("Phantom^Demo", "PHANTOM, Demo", "Demo Phantom"),
    ("张^三", "张三", "张三"),
    ("Zhang^San=张^三", "ZHANG, San (张三)", "San Zhang (张三)"),
    ("Doe", "DOE", "Doe"),
    ("", "", ""),
])
def test_person_names_as_people_read_them(pn: str, shown: str, natural: str) -> None:
    assert pdf_module.display_person_name(pn) == shown
    assert pdf_module.display_person_name(pn, natural=True) == natural


# --------------------------------------------------------------------------- PDF route

_PASSWORD = "a long enough password 1"
_STAND_IN_PDF = b"%PDF-1.7\n% stand-in for the sealed PDF in Orthanc\n%%EOF\n"


@pytest.fixture
def pdf_world(center: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Two sites; at county-a a signed report and a draft, at county-b a signed report.
    The sealed PDF normally comes out of Orthanc; here a stand-in answers for it."""
    from datetime import timedelta

    from core.models import Report, ReportVersion, Study
    from core.settings import get_settings
    from core.sites import SiteSpec, add_site
    from viewer import report_views

    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    asked: list[str] = []

    def stand_in(sop_instance_uid: str) -> bytes:
        asked.append(sop_instance_uid)
        return _STAND_IN_PDF
    monkeypatch.setattr(report_views, "_signed_pdf", stand_in)
    ids: dict[str, int] = {}
    signed_at = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    with center.db.session() as s:
        for site in ("county-a", "county-b"):
            add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=site.upper(),
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="test")
        for key, site, state in (("a_signed", "county-a", "final"),
                                 ("a_draft", "county-a", "draft"),
                                 ("b_signed", "county-b", "final")):
            st = Study(site_id=site, study_uid=f"1.2.9.{len(ids) + 1}", patient_id="P1",
                       modalities=["CT"], state="complete")
            s.add(st)
            s.flush()
            report = Report(subject_type="study", subject_id=str(st.id), study_id=st.id,
                            site_id=site, template_id="ct-generic", template_version="1.0.0",
                            state=state)
            s.add(report)
            s.flush()
            signed = state == "final"
            s.add(ReportVersion(
                report_id=report.id, number=1, state=state,
                fields={"findings": "Normal.", "impression": "Normal."}, author="dr.all",
                signed_by="dr.all" if signed else None,
                signed_at=signed_at + timedelta(minutes=len(ids)) if signed else None,
                pdf_sop_uid=f"1.2.9.{st.id}.77" if signed else None))
            ids[key] = report.id
    yield {"center": center, "ids": ids, "asked": asked}
    get_settings.cache_clear()


def _signed_in(center: Any, username: str, roles: list[str], sites: list[str] | None) -> Any:
    from conftest import signed_in_client

    return signed_in_client(center, username, roles, sites, _PASSWORD)


def test_site_clerk_reads_its_own_sites_signed_report_pdf(pdf_world: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from core.models import AuditRecord
    from viewer.app import create_app

    c, ids, asked = pdf_world["center"], pdf_world["ids"], pdf_world["asked"]
    clerk_a = _signed_in(c, "clerk.a", ["site_user"], ["county-a"])
    a, draft, b = ids["a_signed"], ids["a_draft"], ids["b_signed"]

    r = clerk_a.get(f"/api/reports/{a}/pdf")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf" and r.content == _STAND_IN_PDF
    assert f'filename="report-{a}-v1.pdf"' in r.headers["content-disposition"]
    assert asked == ["1.2.9.1.77"]
    with c.db.session() as s:
        view = s.scalars(select(AuditRecord).where(AuditRecord.action == "report.view")
                         .order_by(AuditRecord.seq.desc())).first()
        assert view is not None and view.actor == "clerk.a" and view.object_id == str(a)
        assert view.detail == {"version": 1, "format": "pdf"}
    # The signed report itself, as JSON, and in the list of reports: signed ones only.
    assert clerk_a.get(f"/api/reports/{a}").json()["state"] == "final"
    assert [x["id"] for x in clerk_a.get("/api/reports").json()] == [a]

    # Negative cases: another site's report, a draft, a version that is not there.
    for rid in (b, draft):
        assert clerk_a.get(f"/api/reports/{rid}/pdf").status_code == 404, rid
        assert clerk_a.get(f"/api/reports/{rid}").status_code == 404, rid
    assert clerk_a.get(f"/api/reports/{a}/pdf?version=2").status_code == 404
    assert clerk_a.get("/api/reports/999/pdf").status_code == 404
    # A wrong role: an administrator reads no patient data.
    admin = _signed_in(c, "admin.x", ["admin"], None)
    assert admin.get(f"/api/reports/{a}/pdf").status_code == 403
    # Nobody signed in.
    assert TestClient(create_app()).get(f"/api/reports/{a}/pdf").status_code == 401
    # A reader of every site gets every signed PDF; a draft has none to give.
    reader = _signed_in(c, "dr.all", ["radiologist"], None)
    assert reader.get(f"/api/reports/{b}/pdf").content == _STAND_IN_PDF
    r = reader.get(f"/api/reports/{draft}/pdf")
    assert r.status_code == 404 and "no signed PDF" in r.json()["detail"]
    assert reader.get(f"/api/reports/{draft}").status_code == 200  # the reader's work
    assert asked == ["1.2.9.1.77", "1.2.9.3.77"]
