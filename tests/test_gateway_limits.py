"""The gateway's receive limits (issue 11): what a peer declares or sends cannot make the
gateway process grow.

* A PDU header declaring 2**32-1 bytes, followed by a stream of junk, is answered with
  an A-ABORT and a reset after six bytes: the process does not grow, and it still
  answers C-ECHO.  The same before the association is established.
* A 256 MiB dataset is received onto disk as it arrives, inspected from disk, spooled
  by a rename and uploaded as a stream: it is stored byte for byte, and the process
  grows by a small fraction of its size.
* A deflate bomb (256 KiB that inflate to 256 MiB) is refused with 0xA700 and leaves
  nothing behind; an ordinary deflated dataset is still stored.
* A dataset over a (small, configured) dataset limit aborts the association and leaves
  nothing behind; one under it is stored.

Memory is the gateway's own figure: its peak resident set (VmHWM of
``/proc/<pid>/status``), reset before each measurement (``clear_refs``).  One gateway
process (``RDC_GATEWAY_PROCESSES=1``) serves the module, so that it is the one that
received.  The unit tests at the end check the inflate limits and the spool's
adoption of a received file without a gateway.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
import time
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import SENDER_AE, Center, _make_center, wait_until
from core.errors import ConfigurationError
from core.models import AuditRecord, Instance
from core.settings import Settings
from devkit.dcmtk import echoscu, storescu
from pacs_gateway.inspect import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    InflateLimits,
    InvalidDataset,
    dataset_offset,
    inspect_encoded,
)
from pacs_gateway.receive_limits import ReceiveLimits
from pacs_gateway.spool import Spool

MiB = 2**20
#: Multi-frame Grayscale Word Secondary Capture Image Storage.
MULTIFRAME_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    gen = cast(Generator[Center, None, None],
               _make_center(tmp_path_factory.mktemp("limits"), "sqlite", "", None))
    c = next(gen)
    c.extra_env["RDC_GATEWAY_PROCESSES"] = "1"
    try:
        c.start_orthanc()
        c.add_site()
        c.start_gateway()
        yield c
    finally:
        gen.close()


# Helpers ----------------------------------------------------------------------------
def _testdata(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class PeakMemory:
    """How far above its resident set at the start a process's peak went."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # Linux: "5" resets the peak resident set (VmHWM) to the current one.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.start = _status(pid)["VmRSS"]

    @property
    def growth(self) -> int:
        return _status(self.pid)["VmHWM"] - self.start


def _gateway_pid(c: Center) -> int:
    assert c.gateway_proc is not None and c.gateway_proc.poll() is None, c.logs()
    return c.gateway_proc.pid


def _associate(c: Center, sop_class: str, ts: str) -> Association:
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(sop_class, ts)
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = 180
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established, f"association refused\n{c.logs()}"
    return assoc


def _send_file(c: Center, path: Path, sop_class: str, ts: str) -> tuple[int | None, str, bool]:
    """C-STORE ``path``'s dataset as encoded (streamed from the file).
    (status or None when no answer came, error comment, whether the association aborted)."""
    assoc = _associate(c, sop_class, ts)
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        if assoc.is_established:
            assoc.release()
    status = int(rsp.Status) if "Status" in rsp else None
    return status, str(rsp.get("ErrorComment", "")), bool(assoc.is_aborted)


def _big_dataset(path: Path, pixel_bytes: int) -> tuple[Path, str]:
    """A multi-frame secondary capture of ``pixel_bytes`` of pixel data, written without
    holding it in memory.  Returns (path, SOP Instance UID)."""
    frames = pixel_bytes // (512 * 512 * 2)
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "LIMITS"
    ds.PatientName = "Limits^Large"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_SC
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    length = frames * 512 * 512 * 2
    block = os.urandom(MiB)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", length))
        for i in range(length // MiB):
            # Not one block repeated: a frame mixed up in transit would still compare equal.
            f.write(struct.pack("<Q", i) + block[8:])
        f.write(block[: length % MiB])
    return path, str(ds.SOPInstanceUID)


def _deflated(path: Path, inflated_pixels: int) -> tuple[Path, str]:
    """CT_small in Deflated Explicit VR Little Endian with ``inflated_pixels`` zero bytes
    of pixel data, deflated as a stream (never held in memory inflated)."""
    ds = dcmread(_testdata("CT_small.dcm"))
    del ds.PixelData
    ds.SOPInstanceUID = generate_uid()
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)  # the dataset alone, explicit VR little endian
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)  # type: ignore[arg-type]
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(MiB)
    with open(path, "wb") as f:
        f.write(head.getvalue())
        f.write(z.compress(body.getvalue()))
        f.write(z.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", inflated_pixels)))
        for _ in range(inflated_pixels // MiB):
            f.write(z.compress(zeros))
        f.write(z.flush())
    return path, str(ds.SOPInstanceUID)


def _receipts(c: Center, sop_uid: str) -> list[Any]:
    with c.db.session() as s:
        return list(s.execute(select(Instance.state, Instance.size_bytes)
                              .where(Instance.sop_instance_uid == sop_uid)).all())


def _audited(c: Center, action: str) -> list[dict[str, Any]]:
    with c.db.session() as s:
        return [dict(d) for d in s.scalars(select(AuditRecord.detail)
                                           .where(AuditRecord.action == action))]


def _spool_empty(c: Center) -> bool:
    return c.spool_files() == [] and c.spool_files("tmp") == []


def _hash_dataset(chunks: Iterator[bytes]) -> str:
    """SHA-256 of a Part 10 stream's dataset (after the file meta), read in chunks."""
    h = hashlib.sha256()
    head = b""
    offset = None
    for chunk in chunks:
        if offset is None:
            head += chunk
            if len(head) < 64 * 1024:
                continue
            offset = dataset_offset(head[:64 * 1024])
            h.update(head[offset:])
        else:
            h.update(chunk)
    if offset is None:
        h.update(head[dataset_offset(head):])
    return h.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            yield chunk


def _echo_ok(c: Center) -> None:
    rc, out = echoscu(host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert rc == 0, f"no C-ECHO after the refusal: {out}\n{c.logs()}"


def _blast(sock: socket.socket, header: bytes, total: int) -> tuple[int, float]:
    """Send ``header`` then up to ``total`` junk bytes; (junk bytes sent, seconds) until
    the gateway's reset stopped it."""
    sock.settimeout(30)
    junk = bytes(range(256)) * 4096  # 1 MiB
    sent = 0
    start = time.monotonic()
    try:
        sock.sendall(header)
        while sent < total:
            sock.sendall(junk)
            sent += len(junk)
    except OSError:
        pass
    return sent, time.monotonic() - start


# 1. A declared PDU length of 2**32-1 ---------------------------------------------------
def test_a_huge_declared_pdu_length_costs_nothing(gw: Center) -> None:
    c = gw
    pid = _gateway_pid(c)
    assoc = _associate(c, CTImageStorage, ExplicitVRLittleEndian)
    # What the gateway announced in its A-ASSOCIATE-AC (RDC_GATEWAY_PDU_SIZE_KB).
    assert assoc.acceptor.maximum_length == 1024 * 1024
    peak = PeakMemory(pid)
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    sent, took = _blast(raw, struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF), 300 * MiB)
    growth = peak.growth
    print(f"huge P-DATA-TF: {sent / MiB:.0f} MiB of junk went out in {took:.2f} s before "
          f"the reset; gateway peak RSS +{growth / MiB:.1f} MiB")
    assert sent < 64 * MiB, f"the gateway kept reading: {sent / MiB:.0f} MiB accepted"
    assert took < 10, f"the abort took {took:.1f} s"
    assert growth < 50 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB"
    wait_until(lambda: "P-DATA-TF PDU declares 4294967295 bytes" in c.logs(), 10,
               "the refusal in the gateway log")
    wait_until(lambda: any("declares 4294967295 bytes" in str(d.get("reason", ""))
                           for d in _audited(c, "association.abort")), 10,
               "the abort audited with its reason")
    if assoc.is_established:
        assoc.abort()
    _echo_ok(c)

    # Before any association: an A-ASSOCIATE-RQ declaring 2**32-1 bytes.
    peak = PeakMemory(pid)
    with socket.create_connection(("127.0.0.1", c.gateway_port), timeout=10) as sock:
        sent, took = _blast(sock, struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF), 300 * MiB)
    growth = peak.growth
    print(f"huge A-ASSOCIATE-RQ: {sent / MiB:.0f} MiB out in {took:.2f} s; "
          f"peak RSS +{growth / MiB:.1f} MiB")
    assert sent < 64 * MiB and took < 10, (sent, took)
    assert growth < 50 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB"
    _echo_ok(c)


def test_an_endless_command_set_is_cut_off(gw: Center) -> None:
    """pynetdicom collects a command set in memory until its last fragment: the guard
    counts command bytes per message, and 64 KiB of command ends the association."""
    c = gw
    assoc = _associate(c, CTImageStorage, ExplicitVRLittleEndian)
    cx_id = assoc.accepted_contexts[0].context_id
    assert cx_id is not None
    fragment = 100 * 1024
    pdv = struct.pack(">LBB", fragment + 2, cx_id, 0x01) + bytes(fragment)  # command, not last
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    sent, _ = _blast(raw, struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv, 64 * MiB)
    assert sent < 32 * MiB, f"the gateway kept reading: {sent / MiB:.0f} MiB"
    wait_until(lambda: "a DIMSE command set of more than 65536 bytes" in c.logs(), 10,
               "the refusal in the gateway log")
    if assoc.is_established:
        assoc.abort()
    _echo_ok(c)


# 2. A large dataset goes through disk ---------------------------------------------------
def test_a_large_dataset_is_stored_exactly_in_bounded_memory(gw: Center,
                                                             tmp_path: Path) -> None:
    c = gw
    pid = _gateway_pid(c)
    size = 256 * MiB
    path, sop_uid = _big_dataset(tmp_path / "large.dcm", size)
    peak = PeakMemory(pid)
    started = time.monotonic()
    status, comment, aborted = _send_file(c, path, MULTIFRAME_SC, ExplicitVRLittleEndian)
    acked = time.monotonic() - started
    assert status == 0x0000 and not aborted, f"0x{status or 0:04X} {comment}\n{c.logs()}"
    wait_until(lambda: [r.state for r in _receipts(c, sop_uid)] == ["stored"], 180,
               "the large instance stored in Orthanc")
    growth = peak.growth
    print(f"{path.stat().st_size / MiB:.0f} MiB dataset acknowledged in {acked:.1f} s, "
          f"stored in Orthanc after {time.monotonic() - started:.1f} s; gateway peak RSS "
          f"+{growth / MiB:.1f} MiB")
    assert growth < 64 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB for a " \
                              f"{size / MiB:.0f} MiB dataset"
    # The whole received Part 10 stream (its file meta is the gateway's own).
    assert abs(_receipts(c, sop_uid)[0].size_bytes - path.stat().st_size) < 1024
    assert wait_until(lambda: _spool_empty(c), 30, "the spool empty after the upload")
    with c.orthanc() as client:
        orthanc_id = client.find_instance(sop_uid)
        assert orthanc_id is not None
        assert _hash_dataset(client.stream_instance_file(orthanc_id)) == \
            _hash_dataset(_file_chunks(path)), "Orthanc holds a different dataset"
        client.delete("instances", orthanc_id)  # 256 MiB less for the other tests


# 3. A decompression bomb -----------------------------------------------------------------
def test_a_deflate_bomb_is_refused_in_bounded_memory(gw: Center, tmp_path: Path) -> None:
    c = gw
    pid = _gateway_pid(c)
    path, sop_uid = _deflated(tmp_path / "bomb.dcm", 256 * MiB)
    assert path.stat().st_size < 512 * 1024, path.stat().st_size
    peak = PeakMemory(pid)
    status, comment, _ = _send_file(c, path, CTImageStorage, DeflatedExplicitVRLittleEndian)
    growth = peak.growth
    print(f"deflate bomb of {path.stat().st_size / 1024:.0f} KiB: 0x{status or 0:04X} "
          f"{comment!r}; gateway peak RSS +{growth / MiB:.1f} MiB")
    assert status == STATUS_OUT_OF_RESOURCES, f"0x{status or 0:04X} {comment}\n{c.logs()}"
    assert "decompression bomb" in comment, comment
    assert growth < 50 * MiB, f"the gateway grew by {growth / MiB:.0f} MiB"
    assert _receipts(c, sop_uid) == [], "a receipt was recorded for the bomb"
    assert wait_until(lambda: _spool_empty(c), 10, "no spool file left")

    # An ordinary deflated dataset is still taken, and reaches Orthanc.
    ordinary = _testdata("image_dfl.dcm")
    status, comment, _ = _send_file(c, ordinary, SECONDARY_CAPTURE,
                                    DeflatedExplicitVRLittleEndian)
    assert status == 0x0000, f"0x{status or 0:04X} {comment}\n{c.logs()}"
    ordinary_uid = str(dcmread(ordinary, stop_before_pixels=True).SOPInstanceUID)
    wait_until(lambda: [r.state for r in _receipts(c, ordinary_uid)] == ["stored"], 60,
               "the deflated instance stored in Orthanc")


# 4. The dataset limit ---------------------------------------------------------------------
def test_a_dataset_over_the_limit_is_refused(gw: Center, tmp_path: Path) -> None:
    c = gw
    c.stop_gateway()
    c.extra_env["RDC_GATEWAY_DATASET_LIMIT_MB"] = "1"
    try:
        c.start_gateway()
        path, sop_uid = _big_dataset(tmp_path / "over.dcm", 3 * MiB)
        status, comment, aborted = _send_file(c, path, MULTIFRAME_SC, ExplicitVRLittleEndian)
        assert aborted and status is None, f"0x{status or 0:04X} {comment}, aborted={aborted}"
        wait_until(lambda: "a C-STORE dataset of more than 1048576 bytes" in c.logs(), 10,
                   "the refusal in the gateway log")
        assert _receipts(c, sop_uid) == []
        assert wait_until(lambda: _spool_empty(c), 10, "no spool file left")
        # Under the limit: stored as always.
        small = _testdata("CT_small.dcm")
        sent = storescu([small], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                        called_ae=c.gateway_ae, timeout=60)
        assert sent.succeeded == [small], sent.output
    finally:
        c.stop_gateway()
        del c.extra_env["RDC_GATEWAY_DATASET_LIMIT_MB"]
        c.start_gateway()


# Without a gateway: the inflate limits, the configuration, the spool -----------------------
def test_inflate_limits_refuse_with_0xa700_and_stream(tmp_path: Path) -> None:
    path, _ = _deflated(tmp_path / "d.dcm", 80 * MiB)
    # Over the absolute limit (a configured 64 MiB), ratio limit off.
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(path, InflateLimits(max_bytes=64 * MiB, max_ratio=0))
    assert e.value.status == STATUS_OUT_OF_RESOURCES and "64 MiB" in str(e.value)
    # Over the ratio limit (80 MiB of zeros deflate about 1000:1).
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(path, InflateLimits(max_bytes=1024 * MiB, max_ratio=100))
    assert e.value.status == STATUS_OUT_OF_RESOURCES and "100:1" in str(e.value)
    # Within both: read whole, as a stream.
    info = inspect_encoded(path, InflateLimits(max_bytes=1024 * MiB, max_ratio=0))
    assert info.transfer_syntax == DeflatedExplicitVRLittleEndian
    # A deflate stream cut short is a truncated dataset.
    data = path.read_bytes()
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(data[:-200], InflateLimits(max_bytes=1024 * MiB, max_ratio=0))
    assert e.value.status == STATUS_CANNOT_UNDERSTAND


def test_inspect_walks_nested_sequences_and_refuses_a_cut_one() -> None:
    data = _testdata("rtplan.dcm").read_bytes()  # implicit VR, nested items
    assert inspect_encoded(data).modality == "RTPLAN"
    start = dataset_offset(data)
    body = data[start:]
    # Cut inside the undefined-length sequences: the walk notices, pydicom would not.
    for cut in (len(body) // 2, len(body) - 9):
        with pytest.raises(InvalidDataset) as e:
            inspect_encoded(data[:start + cut])
        assert e.value.status == STATUS_CANNOT_UNDERSTAND, (cut, e.value)
    # A small sequence whose items are garbage: pydicom says so with an OSError, which
    # is the dataset's fault (0xC000), not an I/O error (found by the fuzzer).
    ct = _testdata("CT_small.dcm").read_bytes()
    garbled = ct + b"\xfa\xff\xfa\xffSQ\x00\x00" + struct.pack("<L", 3) + b"\xfe\xff\x00"
    with pytest.raises(InvalidDataset) as e:
        inspect_encoded(garbled)
    assert e.value.status == STATUS_CANNOT_UNDERSTAND, e.value


def test_receive_limits_come_from_settings(tmp_path: Path) -> None:
    limits = ReceiveLimits.from_settings(Settings(home=tmp_path))
    assert limits.pdu_size == MiB and limits.pdu_limit == 16 * MiB
    assert limits.dataset_limit == 2048 * MiB
    assert limits.inflate == InflateLimits(max_bytes=2048 * MiB, max_ratio=100)
    with pytest.raises(ConfigurationError, match="RDC_GATEWAY_PDU_LIMIT_MB"):
        ReceiveLimits.from_settings(Settings(home=tmp_path, gateway_pdu_size_kb=4096,
                                             gateway_pdu_limit_mb=2))


def test_spool_adopts_a_received_file_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    received = spool.tmp / "00000000-0000-4000-8000-000000000001.part"
    received.write_bytes(b"DICM" * 1000)
    rid = spool.adopt(received)
    assert not received.exists()
    assert spool.path(rid).read_bytes() == b"DICM" * 1000
    assert spool.pending() == [rid]
    # Below the watermark the file is left where it is, for the caller to drop.
    full = Spool(tmp_path / "spool", min_free_bytes=2**62)
    again = full.tmp / "00000000-0000-4000-8000-000000000002.part"
    again.write_bytes(b"x")
    with pytest.raises(Exception, match="MiB free"):
        full.adopt(again)
    assert again.exists() and full.pending() == [rid]
