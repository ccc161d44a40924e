"""Make the seed corpora in ``fuzz/corpus/<target>/`` from real inputs:

    python -m fuzz.seeds [--ecg-data ../shared/data/ecg]

- DICOM: pydicom's own test files (small ones: explicit, implicit, big endian, deflated,
  encapsulated, SR, truncated, without meta), as sites send them.
- ECG: the first fraction of a second of the shared PhysioNet records (PTB ``s0010_re``,
  12 leads at 1000 Hz; MIT-BIH ``100``, 2 leads in format 212), written by the center's
  own DICOM ECG writer (``ai_models.training.ecg_simulator.waveform_dataset``), as HL7 aECG and as
  WFDB records by ``wfdb.wrsamp``; and pydicom's ECG waveform file, shortened.  Nothing
  of the records is copied beyond those seconds.
- Gateway streams: P-DATA-TF PDUs encoded by pynetdicom's own DIMSE encoder (C-STORE of
  the DICOM files above in every accepted context, C-ECHO, A-RELEASE-RQ), at several
  maximum PDU sizes.
- DICOMweb: every resource of the grammar, with real UIDs.
- Reports: an SR, a PDF and a DICOM-wrapped PDF, sealed by a test reader with a test CA
  (ECDSA P-256), whose certificate goes to ``fuzz/data/report-ca.pem``.

Seed files are named after what they are; files named ``regress-*`` are inputs that
once crashed a parser and are never removed.  Running this again rewrites the generated
seeds (UIDs and signatures change) and keeps the regression seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from fuzz.harnesses.ecg_wfdb_record import join as join_wfdb
from fuzz.harnesses.gateway_stream import CONTEXTS
from fuzz.targets import CORPUS_DIR, FUZZ_DIR

DEFAULT_ECG_DATA = FUZZ_DIR.parents[1] / "shared" / "data" / "ecg"

#: pydicom test files (all under 40 kB) that stand for what sites send.
DICOM_FILES = (
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "image_dfl.dcm", "rtplan.dcm", "rtstruct.dcm", "reportsi.dcm", "test-SR.dcm",
    "JPEG2000.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_truncated.dcm",
    "rtplan_truncated.dcm", "ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm",
    "no_meta_group_length.dcm", "meta_missing_tsyntax.dcm", "badVR.dcm",
    "nested_priv_SQ.dcm", "UN_sequence.dcm", "empty_charset_LEI.dcm", "priv_SQ.dcm",
    "rtdose_1frame.dcm",
)


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS_DIR / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def _clear(target: str) -> None:
    folder = CORPUS_DIR / target
    if folder.is_dir():
        for p in folder.iterdir():
            if not p.name.startswith("regress-"):
                p.unlink()


def _part10(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=True)
    return buf.getvalue()


# --------------------------------------------------------------------- DICOM / gateway

def _dicom_seeds() -> Iterator[tuple[str, bytes]]:
    for name in DICOM_FILES:
        path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"pydicom test file {name} is missing")
        yield name, Path(str(path)).read_bytes()
    ct = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    data = _part10(ct)
    # A truncated stream, cut inside the pixel data and inside an element header.
    yield "CT_small-cut-pixels.dcm", data[: len(data) - 1000]
    yield "CT_small-cut-header.dcm", data[: len(data) - len(ct.PixelData) - 9]
    yield "CT_small-implicit.dcm", _part10(ct, ImplicitVRLittleEndian)
    yield "CT_small-deflated.dcm", _part10(ct, DeflatedExplicitVRLittleEndian)


def _stream(ds: Dataset, cx_id: int, max_pdu: int, message_id: int = 1,
            syntax: str | None = None) -> bytes:
    """The P-DATA-TF PDUs of one C-STORE-RQ of ``ds`` in context ``cx_id``, encoded in
    the context's transfer syntax unless ``syntax`` says otherwise."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import P_DATA_TF

    syntax = pydicom.uid.UID(syntax or CONTEXTS[cx_id][1])
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.Priority = 0
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert encoded is not None
    req.DataSet = io.BytesIO(encoded)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    out = b""
    for primitive in msg.encode_msg(cx_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


def _echo(cx_id: int = 7) -> bytes:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu import P_DATA_TF

    req = C_ECHO()
    req.MessageID = 9
    req.AffectedSOPClassUID = "1.2.840.10008.1.1"
    msg = C_ECHO_RQ()
    msg.primitive_to_message(req)
    out = b""
    for primitive in msg.encode_msg(cx_id, 16382):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out += pdu.encode()
    return out


RELEASE_RQ = bytes.fromhex("050000000004" "00000000")
ABORT_RQ = bytes.fromhex("070000000004" "00000000")


def _gateway_seeds() -> Iterator[tuple[str, bytes]]:
    ct = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    mr = pydicom.dcmread(str(get_testdata_file("MR_small.dcm")))
    # Small instances keep the fuzzer fast: pixel data shortened to a few rows.
    for ds in (ct, mr):
        ds.Rows = 4
        ds.PixelData = ds.PixelData[: 4 * ds.Columns * 2]
    yield "store-ct-explicit.bin", _stream(ct, 1, 16382) + RELEASE_RQ
    yield "store-ct-explicit-fragments.bin", _stream(ct, 1, 256) + RELEASE_RQ
    yield "store-mr-implicit.bin", _stream(mr, 3, 16382) + RELEASE_RQ
    yield "store-mr-deflated.bin", _stream(mr, 5, 1024) + RELEASE_RQ
    yield "echo-store-echo.bin", _echo() + _stream(ct, 1, 4096, 2) + _echo() + ABORT_RQ
    yield "store-two.bin", _stream(ct, 1, 4096, 3) + _stream(mr, 3, 4096, 4) + RELEASE_RQ
    # Refused by the handler: CT on the MR context, explicit VR on the implicit one.
    yield "store-wrong-context.bin", _stream(ct, 3, 16382) + RELEASE_RQ
    yield "store-explicit-bytes-on-implicit.bin", _stream(
        mr, 3, 16382, syntax=ExplicitVRLittleEndian) + RELEASE_RQ


# ------------------------------------------------------------------------------ ECG

def _record(ecg_data: Path, name: str, samples: int) -> tuple[np.ndarray, list[str], float]:
    import wfdb

    rec = wfdb.rdrecord(str(ecg_data / name), sampto=samples, physical=True)
    assert rec.p_signal is not None
    return rec.p_signal, [str(n) for n in rec.sig_name], float(rec.fs)


_LEAD_NAMES = {"i": "I", "ii": "II", "iii": "III", "avr": "aVR", "avl": "aVL", "avf": "aVF",
               "v1": "V1", "v2": "V2", "v3": "V3", "v4": "V4", "v5": "V5", "v6": "V6"}


def _aecg(signals: np.ndarray, names: list[str], increment: str, unit: str = "s") -> bytes:
    scale_uv = 2.5
    parts = []
    for name, column in zip(names, signals.T, strict=True):
        digits = " ".join(str(int(v)) for v in np.round(column * 1000 / scale_uv))
        parts.append(
            f'<component><sequence><code code="MDC_ECG_LEAD_{name.upper()}" '
            'codeSystem="2.16.840.1.113883.6.24"/>'
            '<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>'
            f'<scale value="{scale_uv}" unit="uV"/><digits>{digits}</digits></value>'
            "</sequence></component>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="2.16.840.1.113883.3.1"/><effectiveTime><low value="20240305101500"/>'
        "</effectiveTime><componentOf><timepointEvent><componentOf><subjectAssignment>"
        '<subject><trialSubject><id extension="PTB-S0010"/><subjectDemographicPerson>'
        '<administrativeGenderCode code="F"/></subjectDemographicPerson></trialSubject>'
        "</subject></subjectAssignment></componentOf></timepointEvent></componentOf>"
        '<component><series><code code="RHYTHM"/><component><sequenceSet>'
        '<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
        '<value xsi:type="GLIST_TS"><head value="20240305101500.000"/>'
        f'<increment value="{increment}" unit="{unit}"/></value></sequence></component>'
        + "".join(parts)
        + "</sequenceSet></component></series></component></AnnotatedECG>\n"
    ).encode()


def _wfdb_files(signals: np.ndarray, names: list[str], fs: float, fmt: str,
                units: str = "mV") -> tuple[bytes, bytes]:
    import wfdb

    with tempfile.TemporaryDirectory() as tmp:
        wfdb.wrsamp("rec", fs=fs, units=[units] * len(names), sig_name=names,
                    p_signal=signals, fmt=[fmt] * len(names), write_dir=tmp,
                    comments=["age: 81", "sex: F", "Reason for admission: Myocardial infarction"])
        return (Path(tmp, "rec.hea").read_bytes(), Path(tmp, "rec.dat").read_bytes())


def _zip(header: bytes, dat: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rec.hea", header)
        archive.writestr("rec.dat", dat)
    return buf.getvalue()


def _ecg_seeds(ecg_data: Path) -> Iterator[tuple[str, str, bytes]]:
    from ai_models.training.ecg_simulator import waveform_dataset

    # The readers refuse less than 5 s or below 100 Hz: 5 s of PTB taken at 100 Hz (every
    # tenth sample) pass every check, and stay small enough to mutate quickly.
    ptb, ptb_names, ptb_fs = _record(ecg_data, "s0010_re", 5000)
    ptb, ptb_fs = ptb[::10], ptb_fs / 10
    twelve = [i for i, n in enumerate(ptb_names) if n.lower() in _LEAD_NAMES]
    leads = [_LEAD_NAMES[ptb_names[i].lower()] for i in twelve]
    ptb12 = ptb[:, twelve]
    eight = [leads.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    mit, mit_names, mit_fs = _record(ecg_data, "100", 360)  # 2 leads: refused, 1 s will do

    # DICOM ECG: the center's own writer, and pydicom's ECG file shortened.
    ds = waveform_dataset(ptb12.T, ptb_fs, leads=leads, patient_id="PTB-S0010")
    yield "ecg_dicom", "ptb-s0010-12lead.dcm", _part10(ds)
    ds = waveform_dataset(ptb12[:, eight].T, ptb_fs,
                          leads=[leads[i] for i in eight], patient_id="PTB-S0010")
    yield "ecg_dicom", "ptb-s0010-8lead-implicit.dcm", _part10(ds, ImplicitVRLittleEndian)
    ds = waveform_dataset(mit[:, :2].T, mit_fs, leads=["II", "V5"], patient_id="MITBIH-100")
    yield "ecg_dicom", "mitbih-100-2lead.dcm", _part10(ds)
    sample = pydicom.dcmread(str(get_testdata_file("waveform_ecg.dcm")))
    for group in sample.WaveformSequence:
        n = 100
        width = group.NumberOfWaveformChannels * group.WaveformBitsAllocated // 8
        group.NumberOfWaveformSamples = n
        group.WaveformData = group.WaveformData[: n * width]
    yield "ecg_dicom", "pydicom-waveform_ecg-short.dcm", _part10(sample)

    # HL7 aECG.
    yield "ecg_aecg", "ptb-s0010-12lead.xml", _aecg(ptb12, leads, "0.01")
    yield "ecg_aecg", "ptb-s0010-8lead-ms.xml", _aecg(
        ptb12[:, eight], [leads[i] for i in eight], "10", "ms")
    yield "ecg_aecg", "mitbih-100-2lead.xml", _aecg(mit, ["II", "V5"], "0.0027778")

    # WFDB, zipped and as a record.
    for name, (signals, names, fs, fmt) in {
        "ptb-s0010-12lead-fmt16": (ptb12, leads, ptb_fs, "16"),
        "ptb-s0010-8lead-fmt212": (ptb12[:, eight], [leads[i] for i in eight], ptb_fs, "212"),
        "mitbih-100-2lead-fmt212": (mit, mit_names, mit_fs, "212"),
    }.items():
        header, dat = _wfdb_files(signals, names, fs, fmt)
        yield "ecg_wfdb_zip", f"{name}.zip", _zip(header, dat)
        yield "ecg_wfdb_record", f"{name}.bin", join_wfdb(header, dat)
    header, dat = _wfdb_files(ptb12, leads, ptb_fs, "16", units="uV")
    yield "ecg_wfdb_record", "ptb-s0010-12lead-uV.bin", join_wfdb(header, dat)


# ------------------------------------------------------------------------ DICOMweb

def _dicomweb_seeds() -> Iterator[tuple[str, bytes]]:
    study, series, sop = ("1.2.826.0.1.3680043.8.498.1", "1.3.6.1.4.1.5962.1.3.1.1",
                          "1.2.840.113619.2.1.1.322987881.621.736170080.681")
    base = f"/dicom-web/studies/{study}"
    inst = f"{base}/series/{series}/instances/{sop}"
    paths = {
        "search-studies": "/dicom-web/studies", "study": base,
        "study-metadata": f"{base}/metadata", "search-series": f"{base}/series",
        "search-instances": f"{base}/instances", "series": f"{base}/series/{series}",
        "series-metadata": f"{base}/series/{series}/metadata",
        "series-instances": f"{base}/series/{series}/instances", "instance": inst,
        "instance-metadata": f"{inst}/metadata", "frames": f"{inst}/frames/1,2,10",
        "rendered": f"{inst}/rendered", "thumbnail": f"{inst}/thumbnail",
        "traversal": f"{base}/..%2F1.2.3/metadata", "dot-segments": f"{base}/../../..",
    }
    for name, path in paths.items():
        yield f"{name}.txt", path.encode()


# ------------------------------------------------------------------- PROXY protocol

def _proxy_seeds() -> Iterator[tuple[str, bytes]]:
    from pacs_gateway import proxy_protocol as pp

    v4 = pp.build("10.1.2.3", 40000, "10.0.0.10", 104)
    yield "v4.bin", v4 + b"\x01\x00"
    yield "v6.bin", pp.build("2001:db8::7", 40001, "2001:db8::1", 104)
    yield "v4-mapped.bin", pp.build("::ffff:10.1.2.3", 40002, "::ffff:10.0.0.10", 104)
    yield "local.bin", pp.build_local()
    # HAProxy's TLVs after the addresses (a unique ID, then NOOP padding).
    tlv = b"\x05\x00\x04abcd" + b"\x04\x00\x02\x00\x00"
    body = v4[16:] + tlv
    yield "v4-tlvs.bin", v4[:14] + len(body).to_bytes(2, "big") + body
    yield "v1-text.bin", b"PROXY TCP4 10.1.2.3 10.0.0.10 40000 104\r\n"
    yield "dicom-associate.bin", b"\x01\x00\x00\x00\x00\xcd\x00\x01"


# ------------------------------------------------------------------------- reports

def _report_seeds() -> Iterator[tuple[str, bytes]]:
    from core import crypto, pki
    from reports import envelope, pdf
    from reports.document import ReportDocument, Section, SignerInfo
    from reports.sr import build_signed_sr
    from reports.verify import verify_bytes

    alg = crypto.ECDSA_P256
    t0 = datetime(2026, 6, 1, 8, 0, 0, tzinfo=UTC)
    signed_at = t0 + timedelta(days=1)
    ca = pki.create_ca("RDC Fuzz Test CA", alg, now=t0, valid_days=36500)
    issued = pki.issue_reader_certificate(ca, "drfuzz", "王医生", alg, "fuzz passphrase",
                                          now=t0 + timedelta(hours=1), scrypt_n=2**14)
    key = pki.unlock_private_key(issued.encrypted_private_key, "fuzz passphrase", alg)
    evidence = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    evidence.PatientBirthDate, evidence.AccessionNumber = "19700101", "ACC0001"
    payload = "印象：右肺上叶结节，建议复查。".encode()
    doc = ReportDocument(
        report_id=7, version=1, kind="report", title="CT 胸部平扫诊断报告",
        center_name="江北区域影像诊断中心", site_id="county-a", site_name="甲县人民医院",
        patient_id=str(evidence.PatientID), patient_name=str(evidence.PatientName),
        study_uid=str(evidence.StudyInstanceUID), accession_number="ACC0001", modality="CT",
        sections=(Section("impression", "印象", "右肺上叶结节，建议复查。"),),
        signer=SignerInfo(name="王医生", reader_id="drfuzz", fingerprint=issued.fingerprint,
                          algorithm=alg, signed_at=signed_at),
        content_hash=crypto.digest(crypto.hash_algorithm(alg), payload).hex(),
        hash_algorithm=crypto.hash_algorithm(alg),
        sr_sop_uid=generate_uid(), sr_series_uid=generate_uid(),
        pdf_sop_uid=generate_uid(), pdf_series_uid=generate_uid())
    seal = envelope.make_sealer(key, issued.cert_pem, alg, signed_at)
    sealed_pdf = pdf.render_pdf(doc, seal, evidence)
    sr = _part10(build_signed_sr(doc, evidence, seal))
    wrapped = _part10(pdf.encapsulated_pdf_dataset(sealed_pdf, doc, evidence))
    data_dir = FUZZ_DIR / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "report-ca.pem").write_bytes(ca.cert_pem)
    hashes = []
    for name, data in (("signed-report.pdf", sealed_pdf), ("signed-report-sr.dcm", sr),
                       ("signed-report-pdf.dcm", wrapped),
                       ("signed-report-pdf-implicit.dcm",
                        _part10(pydicom.dcmread(io.BytesIO(wrapped)), ImplicitVRLittleEndian))):
        hashes.append(verify_bytes(data, ca.cert_pem).result.content_hash)
        yield name, data
    (data_dir / "report-hashes.txt").write_text("".join(f"{h}\n" for h in sorted(set(hashes))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ecg-data", type=Path, default=Path(
        os.environ.get("RDC_ECG_DATA", DEFAULT_ECG_DATA)),
        help="folder with the PhysioNet records s0010_re and 100")
    args = parser.parse_args()
    for target in ("inspect_encoded", "gateway_stream", "ecg_dicom", "ecg_aecg",
                   "ecg_wfdb_zip", "ecg_wfdb_record", "dicomweb_path", "report_verify",
                   "proxy_header"):
        _clear(target)
    for name, data in _dicom_seeds():
        _write("inspect_encoded", name, data)
    for name, data in _gateway_seeds():
        _write("gateway_stream", name, data)
    for target, name, data in _ecg_seeds(args.ecg_data):
        _write(target, name, data)
    for name, data in _dicomweb_seeds():
        _write("dicomweb_path", name, data)
    for name, data in _report_seeds():
        _write("report_verify", name, data)
    for name, data in _proxy_seeds():
        _write("proxy_header", name, data)
    for folder in sorted(CORPUS_DIR.iterdir()):
        files = list(folder.iterdir())
        size = sum(p.stat().st_size for p in files)
        digest = hashlib.sha256(b"".join(sorted(p.read_bytes() for p in files))).hexdigest()
        print(f"{folder.name}: {len(files)} seeds, {size} bytes, {digest[:12]}")


if __name__ == "__main__":
    main()
