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
from core.reports import pdf as pdf_module
from core.reports.document import ReportDocument, Section, SignerInfo
from core.reports.fhir import diagnostic_report
from core.reports.hl7 import oru_r01
from core.reports.pdf import (
    MissingFontError,
    encapsulated_pdf_dataset,
    pdf_from_dataset,
    render_pdf,
    sealed_content_of_encapsulated_pdf,
    sealed_content_of_file,
    sealed_content_of_pdf,
)
from core.reports.sr import (
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

    pdf = render_pdf(doc, StandInSealer())
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
