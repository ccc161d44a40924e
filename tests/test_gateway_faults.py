"""The gateway under faults: a killed gateway, a stopped Orthanc, a full disk, hostile UIDs.

Everything here runs the real gateway process against a real Orthanc and the
real broker, on SQLite and on PostgreSQL (``running`` / ``center_any_db``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom.config
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from conftest import REPO, SENDER_AE, Center, wait_until
from core.models import AuditRecord, Instance, Study
from devkit.dcmtk import SendResult, echoscu, storescu
from devkit.samples import write_ct_series
from dicom_compare import same_dataset

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_MISMATCH = 0xA900

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# Helpers ----------------------------------------------------------------------------
def _instance_rows(c: Center) -> list[Any]:
    with c.db.session() as s:
        return list(s.execute(select(Instance.id, Instance.sop_instance_uid, Instance.state,
                                     Instance.attempts, Instance.last_error)).all())


def _count(c: Center, model: Any) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _send(c: Center, files: list[Path]) -> SendResult:
    return storescu(files, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                    called_ae=c.gateway_ae, timeout=300)


def _assert_in_orthanc(c: Center, sent: dict[str, Path]) -> None:
    """Every SOP instance in ``sent`` is in Orthanc with the very dataset that was sent."""
    with c.orthanc() as client:
        for sop_uid, path in sent.items():
            orthanc_id = client.find_instance(sop_uid)
            assert orthanc_id is not None, f"{path.name} ({sop_uid}) is not in Orthanc"
            ok, why = same_dataset(path.read_bytes(), client.instance_file(orthanc_id))
            assert ok, f"{path.name}: Orthanc holds a different dataset: {why}"


def _associate(c: Center, *contexts: str) -> Association:
    ae = AE(ae_title=SENDER_AE)
    for cx in contexts:
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established, f"the gateway refused the association\n{c.logs()}"
    return assoc


def _c_store(c: Center, dataset: Any) -> tuple[int, str]:
    """One C-STORE in its own association; (status, error comment)."""
    assoc = _associate(c, CTImageStorage)
    try:
        rsp = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    assert "Status" in rsp, f"no C-STORE response (association aborted?)\n{c.logs()}"
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def _c_echo(c: Center) -> int:
    assoc = _associate(c, Verification)
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    assert "Status" in rsp, "no C-ECHO response"
    return int(rsp.Status)


# 1. kill -9 in the middle of a send ---------------------------------------------------
def test_kill_during_send_loses_no_acknowledged_instance(running: Center,
                                                         tmp_path: Path) -> None:
    c = running
    gen = write_ct_series(tmp_path / "ct", slices=200, size=128, seed=11)
    sop_of = {p: _sop_uid(p) for p in gen.paths}

    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(_send, c, gen.paths)
        wait_until(lambda: _count(c, Instance) >= 50 or sending.done(), 60,
                   "50 receipts from the running send", interval=0.02)
        assert not sending.done(), \
            f"the send finished before the gateway could be killed\n{sending.result().output}"
        c.kill_gateway()
        result = sending.result(timeout=120)

    acked = {sop_of[p]: p for p in result.succeeded}
    assert acked, f"nothing was acknowledged before the kill\n{result.output[-3000:]}"
    assert len(acked) < len(gen.paths), \
        f"all {len(gen.paths)} instances were acknowledged: the send was not interrupted"
    assert result.returncode != 0 or result.failed or len(result.statuses) < len(gen.paths), \
        result.output[-3000:]

    c.start_gateway()

    def settled() -> bool:
        rows = _instance_rows(c)
        stored = {r.sop_instance_uid for r in rows if r.state == "stored"}
        return set(acked) <= stored and all(r.state == "stored" for r in rows) \
            and not c.spool_files()

    try:
        wait_until(settled, 60, "every receipt stored and the spool drained after restart")
    except AssertionError:
        states: dict[str, int] = {}
        for r in _instance_rows(c):
            states[r.state] = states.get(r.state, 0) + 1
        pytest.fail(f"not settled: receipts by state {states}, {len(c.spool_files())} files in "
                    f"ready/\n{c.logs()}")

    rows = _instance_rows(c)
    by_sop: dict[str, list[str]] = {}
    for r in rows:
        by_sop.setdefault(r.sop_instance_uid, []).append(r.state)
    missing = [uid for uid in acked if uid not in by_sop]
    assert not missing, f"{len(missing)} acknowledged instances have no receipt"
    _assert_in_orthanc(c, acked)
    assert c.spool_files() == [], "spool ready/ not empty after recovery"
    assert c.spool_files("tmp") == [], "half-written spool files left in tmp/ after recovery"
    # Nothing that was acknowledged was set aside as "unacknowledged".
    aside = c.home / "spool" / "unacknowledged"
    if aside.exists():
        aside_sops = {_sop_uid(p) for p in aside.iterdir()}
        assert not aside_sops & set(acked), "an acknowledged instance was quarantined"


# 2. Orthanc stopped during a send ----------------------------------------------------
def test_orthanc_down_spools_then_delivers_everything(running: Center, tmp_path: Path) -> None:
    c = running
    gen = write_ct_series(tmp_path / "ct", slices=20, size=64, seed=12)
    sent = {_sop_uid(p): p for p in gen.paths}
    c.stop_orthanc()

    result = _send(c, gen.paths)
    assert result.returncode == 0, result.output[-3000:]
    assert sorted(result.succeeded) == sorted(gen.paths), result.output[-3000:]

    rows = _instance_rows(c)
    assert {r.sop_instance_uid for r in rows} == set(sent)
    assert len(rows) == len(sent)
    assert {r.state for r in rows} == {"spooled"}
    spooled_files = {p.name for p in c.spool_files()}
    assert spooled_files == {f"{r.id}.dcm" for r in rows}, "spool files and receipts differ"
    # The uploader tries, fails, and keeps everything.
    wait_until(lambda: any(r.attempts >= 1 and r.last_error for r in _instance_rows(c)), 30,
               "a failed upload attempt noted on a receipt")
    rows = _instance_rows(c)
    assert {r.state for r in rows} == {"spooled"}, "a receipt left 'spooled' while Orthanc was down"
    assert {p.name for p in c.spool_files()} == spooled_files, \
        "spool files went while Orthanc was down"

    c.start_orthanc()
    try:
        wait_until(lambda: all(r.state == "stored" for r in _instance_rows(c))
                   and not c.spool_files(), 60,
                   "every spooled instance uploaded after Orthanc is back")
    except AssertionError:
        states = sorted({r.state for r in _instance_rows(c)})
        pytest.fail(f"not delivered: states {states}, {len(c.spool_files())} in ready/\n{c.logs()}")
    _assert_in_orthanc(c, sent)
    assert c.spool_files() == []


def test_kill_with_a_full_backlog_resumes_from_the_spool(running: Center,
                                                        tmp_path: Path) -> None:
    """Acknowledged but not yet uploaded when the gateway dies: the restart uploads them."""
    c = running
    gen = write_ct_series(tmp_path / "ct", slices=20, size=64, seed=14)
    sent = {_sop_uid(p): p for p in gen.paths}
    c.stop_orthanc()
    result = _send(c, gen.paths)
    assert sorted(result.succeeded) == sorted(gen.paths), result.output[-3000:]
    assert len(c.spool_files()) == len(sent)
    c.kill_gateway()

    c.start_orthanc()
    c.start_gateway()
    try:
        wait_until(lambda: all(r.state == "stored" for r in _instance_rows(c))
                   and not c.spool_files(), 60, "the spooled backlog uploaded after the restart")
    except AssertionError:
        states = sorted({r.state for r in _instance_rows(c)})
        pytest.fail(f"not delivered: states {states}, {len(c.spool_files())} in ready/\n{c.logs()}")
    assert len(_instance_rows(c)) == len(sent)
    _assert_in_orthanc(c, sent)
    log = (c.home / "logs" / "gateway.log").read_text(errors="replace")
    resumed = re.findall(r"uploader\.recovered resumed=(\d+)", log)
    assert resumed and int(resumed[-1]) == len(sent), f"the restart resumed {resumed}"


# 3. Disk below the free-space watermark ------------------------------------------------
@pytest.fixture
def spool_full(center_any_db: Center) -> Iterator[Center]:
    """Like ``running``, but the spool watermark is far beyond any disk."""
    c = center_any_db
    c.extra_env["RDC_SPOOL_MIN_FREE_MB"] = str(10**12)
    c.start_orthanc()
    c.add_site()
    c.start_gateway()
    yield c


def test_spool_below_watermark_answers_out_of_resources(spool_full: Center,
                                                        tmp_path: Path) -> None:
    c = spool_full
    small = Path(get_testdata_file("CT_small.dcm"))
    gen = write_ct_series(tmp_path / "ct", slices=1, size=64, seed=13)
    files = [small, gen.paths[0]]
    for path in files:
        status, comment = _c_store(c, path)
        assert status == STATUS_OUT_OF_RESOURCES, \
            f"{path.name}: status 0x{status:04X} ({comment}), expected 0xA700\n{c.logs()}"
        assert "out of resources" in comment.lower(), comment

    assert c.spool_files() == [] and c.spool_files("tmp") == [], \
        "something was spooled below the watermark"
    assert _count(c, Instance) == 0, "a receipt was recorded for a refused instance"
    assert _count(c, Study) == 0, "a study was recorded for a refused instance"
    with c.orthanc() as client:
        for path in files:
            assert client.find_instance(_sop_uid(path)) is None
    # The gateway keeps serving.
    assert c.gateway_proc is not None and c.gateway_proc.poll() is None, "the gateway died"
    assert _c_echo(c) == 0x0000
    rc, out = echoscu(host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert rc == 0, out

    def releases() -> list[dict[str, Any]]:
        with c.db.session() as s:
            return [dict(d) for d in s.scalars(select(AuditRecord.detail).where(
                AuditRecord.action == "association.release"))]

    details = wait_until(lambda: len(releases()) >= len(files) and releases(), 10,
                         "the store associations audited")
    assert sum(int(d.get("refused", 0)) for d in details) == len(files), details
    assert sum(int(d.get("stored", 0)) for d in details) == 0, details


# 4. Hostile UIDs never reach a file path ---------------------------------------------
def _hostile_file(out: Path, name: str, keyword: str, value: str,
                  meta_uid: str | None = None) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = str(generate_uid())
    setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = meta_uid or ds.SOPInstanceUID
    path = out / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


_FIXED_FILES = {
    "rdc.sqlite3", "rdc.sqlite3-wal", "rdc.sqlite3-shm", "rdc.sqlite3-journal",
    "gateway.test.log", "worker.test.log", "logs/orthanc.log", "logs/gateway.log",
    "logs/gateway-listener.log",
    "logs/worker.log", "secrets/orthanc-password", "orthanc/orthanc.json",
    "orthanc/index/index", "orthanc/index/index-wal", "orthanc/index/index-shm",
    "orthanc/index/index-journal",
    "audit/checkpoints.jsonl", "audit/checkpoints.lock", "audit/atna.cursor", "audit/atna.lock",
    "spool/NODE", "spool/LOCK",
}
#: Folders whose files have names the center chose (keys and certificates).
_FIXED_DIRS = {"secrets", "secrets/ca", "secrets/tls", "secrets/tls-ca", "run"}
_UUID_DIRS = {"spool/ready", "spool/tmp", "spool/unacknowledged", "spool/failed"}
_ORTHANC_STORAGE = re.compile(r"^orthanc/storage/[0-9a-f]{2}/[0-9a-f]{2}$")


def _unexpected_files(home: Path) -> list[str]:
    """Files under the center home whose name is neither fixed nor a UUID we generated."""
    bad = []
    for p in home.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(home).as_posix()
        parent = p.parent.relative_to(home).as_posix()
        if rel in _FIXED_FILES or parent in _FIXED_DIRS:
            continue
        stem = p.name.split(".", 1)[0]
        if parent in _UUID_DIRS and _UUID.match(stem) and p.name in (
                f"{stem}.dcm", f"{stem}.part"):
            continue
        if _ORTHANC_STORAGE.match(parent) and _UUID.match(p.name):
            continue
        bad.append(rel)
    return bad


def test_hostile_uids_never_become_paths(running: Center, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    c = running
    # Write invalid UIDs as they are, and send the files' bytes without re-encoding.
    for mode in ("reading_validation_mode", "writing_validation_mode"):
        monkeypatch.setattr(pydicom.config.settings, mode, pydicom.config.IGNORE)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    tag = uuid.uuid4().hex[:10]
    evil_name = f"rdc-evil-{tag}"
    cases = [
        ("sop-traversal", "SOPInstanceUID", f"../../../../tmp/{evil_name}-sop", None),
        ("sop-slash", "SOPInstanceUID", f"1.2/3/../{evil_name}", None),
        ("sop-nul", "SOPInstanceUID", "1.2\x00.3", None),
        ("sop-dataset-only", "SOPInstanceUID", f"../{evil_name}-ds", str(generate_uid())),
        ("study-traversal", "StudyInstanceUID", f"../../../../tmp/{evil_name}-study", None),
        ("study-nul", "StudyInstanceUID", f"1.2\x00/../{evil_name}", None),
        ("series-traversal", "SeriesInstanceUID", f"../../../../tmp/{evil_name}-series", None),
        ("series-slash", "SeriesInstanceUID", "1.2/3", None),
        ("series-nul", "SeriesInstanceUID", "1.2\x00.3", None),
    ]
    src = tmp_path / "hostile"
    src.mkdir()
    for name, keyword, value, meta_uid in cases:
        path = _hostile_file(src, name, keyword, value, meta_uid)
        assert str(dcmread(path).get(keyword)) == value, f"{name}: the UID was not written as is"
        status, comment = _c_store(c, path)
        assert 0xC000 <= status <= 0xCFFF or status == STATUS_SOP_MISMATCH, \
            f"{name}: {keyword}={value!r} answered 0x{status:04X} ({comment})\n{c.logs()}"
        assert _count(c, Instance) == 0, f"{name}: a receipt was recorded"
        assert c.spool_files() == [] and c.spool_files("tmp") == [], \
            f"{name}: something was spooled"

    # Nothing was written under any of the paths the UIDs point at.
    bases = [Path("/tmp"), c.home, c.home / "spool", c.home / "spool" / "ready",
             c.home / "spool" / "tmp", c.home / "orthanc" / "storage", REPO, tmp_path]
    for base in bases:
        assert not list(base.glob(f"*{evil_name}*")), f"{evil_name} appeared in {base}"
    for name, _, value, _ in cases:
        for base in bases:
            target = base / value.replace("\x00", "")
            assert not target.exists(), f"{name}: {target} exists"
    hits = [p for p in tmp_path.parent.rglob(f"*{evil_name}*")]
    assert not hits, f"files named after a hostile UID: {hits}"
    assert _count(c, Study) == 0, "a study was recorded from a hostile dataset"

    # The gateway still serves, and a clean instance still gets through (the checks above
    # see receipts and spool files when there are some).
    assert _c_echo(c) == 0x0000
    clean = Path(get_testdata_file("CT_small.dcm"))
    status, comment = _c_store(c, clean)
    assert status == 0x0000, f"clean instance refused: 0x{status:04X} ({comment})"
    rows = wait_until(lambda: [r for r in _instance_rows(c) if r.state == "stored"], 30,
                      "the clean instance stored")
    assert [r.sop_instance_uid for r in rows] == [_sop_uid(clean)]
    assert _count(c, Instance) == 1
    _assert_in_orthanc(c, {_sop_uid(clean): clean})
    with c.orthanc() as client:
        assert client.statistics()["CountInstances"] == 1
    unexpected = _unexpected_files(c.home)
    assert not unexpected, f"files under the center home with unexpected names: {unexpected}"
