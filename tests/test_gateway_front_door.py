"""The gateway's front door (issue 11): what it acknowledges can reach the archive.

* A dataset whose encoding contradicts the negotiated transfer syntax (explicit VR bytes
  on an Implicit VR Little Endian context) and a truncated stream get ``0xC000`` and
  leave nothing behind.
* An instance Orthanc refuses after acknowledgement is shown by ``rdc status``, is
  audited, and never completes a study on its own.
* Transfer-syntax negotiation never picks a lossy syntax where the same context offers
  an uncompressed or lossless one (DCMTK's storescu with each proposal option).

One gateway (SQLite, embedded broker, real Orthanc) serves the whole module.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from conftest import SENDER_AE, Center, _make_center, wait_until
from core.models import AuditRecord, Instance, Job, Study
from devkit.dcmtk import storescu
from pacs_gateway.inspect import InstanceInfo, dataset_offset
from pacs_gateway.receipts import mark_attempt_failed, record_receipt

UNCOMPRESSED = {ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian,
                DeflatedExplicitVRLittleEndian}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    gen = _make_center(tmp_path_factory.mktemp("front-door"), "sqlite", "", None)
    c = next(gen)
    try:
        c.start_orthanc()
        c.add_site()
        c.start_gateway()
        yield c
    finally:
        gen.close()


# Helpers ----------------------------------------------------------------------------
def _count(c: Center, model: Any) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _with_meta(dst: Path, meta_ts: str, dataset_bytes: bytes, sop_class: str,
               sop_instance: str) -> Path:
    """A Part 10 file whose header claims ``meta_ts``; the dataset bytes are kept as given."""
    src = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    meta = src.file_meta
    meta.TransferSyntaxUID = meta_ts
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    fp = BytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)  # type: ignore[arg-type]
    dst.write_bytes(fp.getvalue() + dataset_bytes)
    return dst


def _c_store_raw(c: Center, path: Path, ts: str) -> tuple[int, str]:
    """Send ``path``'s encoded dataset as it is, on a CT context offering only ``ts``."""
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(CTImageStorage, ts)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established, f"association refused\n{c.logs()}"
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        if assoc.is_established:
            assoc.release()
    assert "Status" in rsp, f"no C-STORE response\n{c.logs()}"
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def _assert_nothing_left(c: Center, before: tuple[int, int]) -> None:
    assert (_count(c, Instance), _count(c, Study)) == before, "a receipt or study was recorded"
    assert c.spool_files() == [] and c.spool_files("tmp") == [], "something was spooled"


# 1. Encoding against the negotiated syntax, truncation -------------------------------
def test_explicit_vr_bytes_on_an_implicit_context_are_refused(gw: Center,
                                                             tmp_path: Path) -> None:
    c = gw
    before = (_count(c, Instance), _count(c, Study))
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    path = _with_meta(tmp_path / "explicit-as-implicit.dcm", ImplicitVRLittleEndian,
                      data[dataset_offset(data):], str(ds.SOPClassUID),
                      str(ds.SOPInstanceUID))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status, comment = _c_store_raw(c, path, ImplicitVRLittleEndian)
    assert status == 0xC000, f"answered 0x{status:04X} ({comment})"
    assert "explicit VR" in comment, comment
    _assert_nothing_left(c, before)
    with c.orthanc() as client:
        assert client.find_instance(str(ds.SOPInstanceUID)) is None


def test_truncated_streams_always_get_0xc000(gw: Center, tmp_path: Path) -> None:
    c = gw
    before = (_count(c, Instance), _count(c, Study))
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    start = dataset_offset(data)
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    body = data[start:]
    sop_class_at = body.find(b"\x08\x00\x16\x00")
    sop_instance_at = body.find(b"\x08\x00\x18\x00")
    study_at = body.find(b"\x20\x00\x0d\x00")
    assert 0 < sop_class_at < sop_instance_at < study_at
    cuts = {
        "inside the first element header": 3,
        "inside the SOP Class UID header": sop_class_at + 5,
        "before the SOP Instance UID": sop_instance_at,          # an element boundary
        "before the Study Instance UID": study_at,               # an element boundary
        "inside the Study Instance UID header": study_at + 6,
        "inside the pixel data": len(body) - 1000,
    }
    for name, cut in cuts.items():
        path = _with_meta(tmp_path / f"cut-{cut}.dcm", ExplicitVRLittleEndian, body[:cut],
                          str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        status, comment = _c_store_raw(c, path, ExplicitVRLittleEndian)
        assert status == 0xC000, f"{name}: answered 0x{status:04X} ({comment})"
        _assert_nothing_left(c, before)


# 2. Refused by Orthanc after acknowledgement ---------------------------------------------
def test_instance_failed_after_ack_is_shown_and_completes_nothing(gw: Center) -> None:
    c = gw
    study_uid, sop_uid = "1.2.826.0.1.3680043.9.7777.1", "1.2.826.0.1.3680043.9.7777.1.1"
    info = InstanceInfo(sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid,
                        study_uid=study_uid, series_uid=study_uid + ".2",
                        transfer_syntax=ExplicitVRLittleEndian, modality="CT",
                        patient_id="PHANTOM", expected_study_instances=None)
    rid = "00000000-0000-4000-8000-000000007777"
    # What the gateway records when it acknowledges, then what the uploader records
    # when Orthanc answers 'Bad file format'.
    with c.db.session() as s:
        record_receipt(s, receipt_id=rid, site_id="county-a", info=info, size=1234,
                       calling_ae=SENDER_AE, peer_address="127.0.0.1")
    with c.db.session() as s:
        mark_attempt_failed(s, rid, "Orthanc refused the instance: Bad file format",
                            final=True)

    # A real instance of another study, sent afterwards, completes: the monitor ran
    # over the phantom study more than once in that time (inactivity 3 s, every 0.5 s).
    clean = Path(get_testdata_file("CT_small.dcm"))
    sent = storescu([clean], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                    called_ae=c.gateway_ae, timeout=120)
    assert sent.succeeded == [clean], sent.output
    clean_study = str(dcmread(clean, stop_before_pixels=True).StudyInstanceUID)

    def state(uid: str) -> str:
        with c.db.session() as s:
            return str(s.scalar(select(Study.state).where(Study.study_uid == uid)))

    wait_until(lambda: state(clean_study) == "complete", 30, "the clean study complete")
    assert state(study_uid) == "received", "a study whose only instance failed completed"
    with c.db.session() as s:
        phantom_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.study_id == phantom_id)) == 0, "the phantom was routed"
        audited = [d for d, in s.execute(select(AuditRecord.detail)
                                        .where(AuditRecord.action == "instance.upload_failed"))]
    assert any(d.get("sop_instance_uid") == sop_uid for d in audited), audited

    r = c.rdc("status")
    assert r.returncode == 0, r.stderr
    assert "Acknowledged but not archived" in r.stdout, r.stdout
    assert sop_uid in r.stdout and "Bad file format" in r.stdout, r.stdout


# 3. Transfer-syntax choice --------------------------------------------------------------
OPTIONS = ["-x=", "-xe", "-xb", "-xi", "-xs", "-xy", "-xv", "-xr", "-xd"]
FILES = {"uncompressed": "CT_small.dcm", "jpeg-baseline": "SC_rgb_jpeg_dcmtk.dcm"}


def _stored_syntax(c: Center, sop_uid: str) -> tuple[str, bytes]:
    with c.orthanc() as client:
        orthanc_id = wait_until(lambda: client.find_instance(sop_uid), 30,
                                f"{sop_uid} in Orthanc")
        stored = client.instance_file(orthanc_id)
        # Room for the next case: Orthanc keeps the first copy of a SOP Instance UID.
        client.delete("instances", orthanc_id)
    return str(dcmread(BytesIO(stored), stop_before_pixels=True).file_meta.TransferSyntaxUID), \
        stored


@pytest.mark.parametrize("combine", [False, True], ids=["separate", "combined"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("kind", list(FILES))
def test_transfer_syntax_choice_keeps_objects_bit_exact(gw: Center, kind: str, option: str,
                                                        combine: bool) -> None:
    c = gw
    path = Path(get_testdata_file(FILES[kind]))
    original = dcmread(path)
    file_ts = str(original.file_meta.TransferSyntaxUID)
    sop_uid = str(original.SOPInstanceUID)
    extra = [option, *(["+C"] if combine else [])]
    sent = storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                    called_ae=c.gateway_ae, timeout=120, extra=extra, as_encoded=False)
    status = sent.statuses.get(path)
    if kind == "uncompressed":
        # Every option offers an uncompressed syntax: the send must succeed, unchanged.
        assert status is not None and status.startswith("Success"), \
            f"storescu {extra}: {status}\n{sent.output[-3000:]}"
        stored_ts, stored = _stored_syntax(c, sop_uid)
        assert stored_ts in UNCOMPRESSED, f"storescu {extra}: stored as {stored_ts}"
        got = dcmread(BytesIO(stored))
        assert np.array_equal(got.pixel_array, original.pixel_array), \
            f"storescu {extra}: pixel data changed"
        return
    # A JPEG Baseline file.
    if status is None or not status.startswith("Success"):
        # storescu could not send it in any accepted context (it has nothing to offer
        # but the file's own syntax, which this option does not propose).
        assert option not in ("-xy",) or combine, \
            f"storescu {extra}: the JPEG file was not accepted as JPEG\n{sent.output[-3000:]}"
        with c.orthanc() as client:
            assert client.find_instance(sop_uid) is None
        return
    stored_ts, stored = _stored_syntax(c, sop_uid)
    if option == "-xy" and not combine:
        # Its own context, offering only JPEG Baseline: stored exactly as encoded.
        assert stored_ts == JPEGBaseline8Bit == file_ts, f"stored as {stored_ts}"
        assert dcmread(BytesIO(stored)).PixelData == original.PixelData
    else:
        # Offered next to uncompressed syntaxes in one context: never the lossy one
        # (the sender decoded its file; no further loss).
        assert stored_ts in UNCOMPRESSED or stored_ts == file_ts, \
            f"storescu {extra}: stored as {stored_ts}"
        if combine:
            assert stored_ts != JPEGBaseline8Bit, f"storescu {extra}: lossy syntax chosen"
