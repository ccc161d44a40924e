"""Backup and restore against the real processes.

A center receives studies through its gateway (DCMTK storescu), gets an AI pre-read
from its worker, a reader signs a report through the HTTP API and the worker
delivers it to a county site (DCMTK storescp).  ``rdc backup`` runs while all of it
is up; the center is then shut down and ``rdc restore`` rebuilds it in another home
(another database), where Orthanc must hold the same instances byte for byte, every
signed report must verify against the restored CA, the audit chain must verify
against its signed checkpoints, and the gateway must take new studies.

The refusals are tested on a small center: a short passphrase, an existing
destination, a damaged archive, a non-empty home, a wrong passphrase, a corrupted
file and an altered manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import func, select
from test_report_roundtrip import PASSPHRASE as KEY_PASSPHRASE
from test_report_roundtrip import _issue, sign_in, site_scp  # noqa: F401  (fixture)

from conftest import (
    REDIS_HOST,
    SENDER_AE,
    Center,
    _create_pg_database,
    _drop_pg_database,
    _make_center,
    wait_until,
)
from core.audit_checkpoints import make_checkpoint, verify_anchored
from core.db import get_database
from core.models import (
    AIResult,
    AuditRecord,
    Delivery,
    Instance,
    ReportVersion,
    Study,
    WebSession,
)
from core.orthanc_client import SOURCE_SITE_METADATA
from core.settings import get_settings
from devkit.dcmtk import storescu
from devkit.samples import Patient, write_chest_radiograph, write_ct_series
from reports.keys import ca_certificate_pem, revocations
from reports.verify import verify_bytes
from viewer.app import create_app

BACKUP_PASSPHRASE = "a backup passphrase long enough"


def _use_env(c: Center, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's settings (the in-process web app, make_checkpoint) at ``c``."""
    for k in [k for k in os.environ if k.startswith("RDC_")]:
        monkeypatch.delenv(k)
    for k, v in c.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()


def _send(c: Center, paths: list[Path]) -> None:
    result = storescu(paths, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert len(result.succeeded) == len(paths), result.output[-2000:]


def _study_id(c: Center, study_uid: str, instances: int) -> int:
    def stored() -> int | None:
        with c.db.session() as s:
            st = s.scalar(select(Study).where(Study.study_uid == study_uid))
            return st.id if st is not None and st.stored_instances >= instances else None
    return int(wait_until(stored, 120, f"study {study_uid} in Orthanc"))


def _archive(c: Center) -> dict[str, bytes]:
    """Every instance in the center's Orthanc: Orthanc ID → the file's bytes."""
    with c.orthanc() as client:
        ids = client.get("/instances").json()
        return {i: client.instance_file(i) for i in ids}


def _backup(c: Center, dest: Path, passphrase_file: Path) -> str:
    out = c.rdc("backup", str(dest), "--passphrase-file", str(passphrase_file), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _restore(c: Center, src: Path, passphrase: str = BACKUP_PASSPHRASE,
             ) -> tuple[int, str]:
    c.extra_env["RDC_BACKUP_PASSPHRASE"] = passphrase
    try:
        out = c.rdc("restore", str(src), timeout=600)
    finally:
        c.extra_env.pop("RDC_BACKUP_PASSPHRASE")
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source(backend: str, tmp_path: Path, redis_db: int, pg_admin: str) -> Iterator[Center]:
    yield from _make_center(tmp_path / "source", backend,
                            f"redis://{REDIS_HOST}:6379/{redis_db}", pg_admin)


@pytest.fixture
def restored(backend: str, tmp_path: Path, pg_admin: str) -> Iterator[Center]:
    """The center to restore into: a fresh home, an empty database, the embedded
    broker (so that no worker of the source center takes its jobs)."""
    pg_name = None
    if backend == "postgres":
        pg_name, url = _create_pg_database(pg_admin)
    else:
        url = f"sqlite:///{tmp_path / 'restored' / 'rdc.sqlite3'}"
    c = Center(home=tmp_path / "restored", db_url=url, broker_url="")
    try:
        yield c
    finally:
        c.shutdown()
        get_database.cache_clear()
        if pg_name is not None:
            _drop_pg_database(pg_admin, pg_name)


def test_backup_of_a_working_center_restores_elsewhere_byte_for_byte(
        backend: str, source: Center, restored: Center, site_scp: tuple[int, Path],  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_admin: str) -> None:
    c = source
    scp_port, inbox = site_scp
    c.extra_env.update({"RDC_JOB_LEASE_S": "5", "RDC_AI_BATCH_WAIT_MS": "100"})
    c.start_orthanc()
    c.add_site(port=scp_port, accepts_results=True)
    c.start_gateway()
    c.start_worker()
    _use_env(c, monkeypatch)

    # Studies through the gateway: a chest radiograph (AI pre-read) and a CT (report).
    dx = write_chest_radiograph(tmp_path / "dx", size=256, seed=21,
                                patient=Patient(id="BK-DX"))
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    _send(c, [*dx.paths, ct])
    ct_uid = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    ct_study = _study_id(c, ct_uid, 1)

    def ai_done() -> bool:
        with c.db.session() as s:
            return bool(s.scalar(select(func.count()).select_from(AIResult)))
    wait_until(ai_done, 300, "the AI pre-read of the radiograph", interval=1)

    # A signed report, delivered to the county site.
    _issue(c, "dr.li", "李医生", "ed25519")
    with TestClient(create_app()) as api:
        sign_in(c, api, "dr.li")
        rid = api.post(f"/api/studies/{ct_study}/report").json()["id"]
        r = api.put(f"/api/reports/{rid}/draft", json={"fields": {
            "technique": "Axial CT.", "findings": "右肺上叶见一结节。", "impression": "结节。"},
            "state": "preliminary"})
        assert r.status_code == 200, r.text
        r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": KEY_PASSPHRASE})
        assert r.status_code == 200, r.text
    delivered = wait_until(lambda: sorted(p for p in inbox.rglob("*") if p.is_file())
                           if len([p for p in inbox.rglob("*") if p.is_file()]) >= 2 else None,
                           120, "the SR and PDF at the county site")

    def sent() -> bool:
        with c.db.session() as s:
            d = s.scalar(select(Delivery))
            return d is not None and d.state in ("sent", "committed")
    wait_until(sent, 60, "the delivery to be recorded")
    # Every AI and report object is in Orthanc before the snapshot.
    with c.db.session() as s:
        sr_uids = [v.sr_sop_uid for v in s.scalars(select(ReportVersion)) if v.sr_sop_uid]
        ai_uids = [a.sr_sop_uid for a in s.scalars(select(AIResult)) if a.sr_sop_uid]
    with c.orthanc() as client:
        wait_until(lambda: all(client.find_instance(u) for u in sr_uids + ai_uids), 60,
                   "report and AI SRs in Orthanc")
    assert make_checkpoint(c.settings, c.db) is not None  # a signed anchor of the chain

    # The backup, with everything running.
    pass_file = tmp_path / "backup-passphrase"
    pass_file.write_text(BACKUP_PASSPHRASE + "\n")
    dest = tmp_path / "backups" / "center-1"
    report = _backup(c, dest, pass_file)
    assert "backup written to" in report, report
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["center_name"] == c.settings.center_name
    assert manifest["database"]["kind"] == ("sqlite" if backend == "sqlite" else "postgresql")
    assert manifest["schema_revision"] and manifest["rdc_version"] and manifest["created_at"]
    for rel, entry in manifest["files"].items():
        data = (dest / rel).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == \
            entry["sha256"], rel
    assert "audit/checkpoints.jsonl" in manifest["files"]
    assert b"BEGIN" not in (dest / "secrets.enc").read_bytes()  # no PEM in the clear
    assert not list(dest.parent.glob(".*partial*"))
    with c.db.session() as s:
        assert s.scalar(select(AuditRecord).where(AuditRecord.action == "backup.create"))
        counts = {m.__name__: s.scalar(select(func.count()).select_from(m))
                  for m in (Study, Instance, AIResult, ReportVersion, Delivery)}

    before = _archive(c)
    assert len(before) == manifest["orthanc"]["instances"] >= len(dx.paths) + 1 + 2 + 1
    with c.orthanc() as client:
        dx_sop = str(pydicom.dcmread(dx.paths[0], stop_before_pixels=True).SOPInstanceUID)
        dx_id = client.find_instance(dx_sop)
        assert dx_id is not None
    c.shutdown()  # the disaster

    r2 = restored
    if backend == "postgres":
        # The source's database is not empty: refused, and nothing is written.
        r2.db_url, empty_url = c.db_url, r2.db_url
        code, out = _restore(r2, dest)
        assert code != 0 and "not empty" in out, out
        assert not r2.home.exists()
        r2.db_url = empty_url
    code, out = _restore(r2, dest)
    assert code == 0, out + r2.logs()
    assert "restored" in out and not (r2.home / "RESTORE-INCOMPLETE").exists(), out
    assert (r2.home / "secrets").stat().st_mode & 0o077 == 0

    # Orthanc: the same instances, byte for byte, with the center's metadata.
    r2.start_orthanc()
    after = _archive(r2)
    assert sorted(after) == sorted(before)
    for orthanc_id, data in before.items():
        assert after[orthanc_id] == data, orthanc_id
    with r2.orthanc() as client:
        assert client.get_metadata("instances", dx_id, SOURCE_SITE_METADATA) == "county-a"

    # The database: the same rows; every signed report still verifies against the
    # restored CA, as delivered and as archived.
    _use_env(r2, monkeypatch)
    s2 = r2.settings
    with r2.db.session() as s:
        assert counts == {m.__name__: s.scalar(select(func.count()).select_from(m))
                          for m in (Study, Instance, AIResult, ReportVersion, Delivery)}
        revoked = revocations(s)
        versions = list(s.scalars(select(ReportVersion).where(ReportVersion.sr_sop_uid
                                                              .is_not(None))))
        assert s.scalar(select(AuditRecord).where(AuditRecord.action == "backup.restore"))
        # The reader's web session from before the backup does not survive the restore.
        sessions = list(s.scalars(select(WebSession)))
        assert sessions and all(w.revoked_at is not None for w in sessions)
    assert versions
    ca = ca_certificate_pem(s2)
    with r2.orthanc() as client:
        for v in versions:
            for uid in (v.sr_sop_uid, v.pdf_sop_uid):
                assert uid is not None
                oid = client.find_instance(uid)
                assert oid is not None, uid
                checked = verify_bytes(client.instance_file(oid), ca, revoked)
                assert checked.result.reader_id == "dr.li"
    verified = r2.rdc("reports", "verify", *map(str, delivered))
    assert verified.returncode == 0 and verified.stdout.count("OK ") == 2, (
        verified.stdout + verified.stderr)

    # The audit chain verifies, and so do its signed checkpoints.
    audit_out = r2.rdc("audit", "verify")
    assert audit_out.returncode == 0, audit_out.stdout + audit_out.stderr
    anchored = verify_anchored(s2, r2.db)
    assert anchored.ok and anchored.checkpoints >= 1, anchored

    # The restored center takes new studies through its gateway.
    r2.start_gateway()
    new = write_ct_series(tmp_path / "new", slices=2, size=32, seed=33,
                          patient=Patient(id="BK-NEW"), announce_count=True)
    _send(r2, new.paths)
    _study_id(r2, new.study_uid, 2)
    assert len(_archive(r2)) == len(before) + 2


@pytest.fixture
def small(center: Center) -> Iterator[Center]:
    """A center with Orthanc running and one instance, nothing else."""
    center.start_orthanc()
    with center.orthanc() as client:
        client.upload_instance(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes())
    yield center


def test_refusals_leave_nothing_behind(small: Center, tmp_path: Path) -> None:
    c = small
    good = tmp_path / "pass"
    good.write_text(BACKUP_PASSPHRASE)
    short = tmp_path / "short"
    short.write_text("too short")

    # A passphrase too short to protect the CA key.
    out = c.rdc("backup", str(tmp_path / "b0"), "--passphrase-file", str(short))
    assert out.returncode == 2 and "at least 12 characters" in out.stderr, out.stderr
    assert not (tmp_path / "b0").exists()
    # A destination that already holds something.
    (tmp_path / "b1").mkdir()
    (tmp_path / "b1" / "keep.txt").write_text("x")
    out = c.rdc("backup", str(tmp_path / "b1"), "--passphrase-file", str(good))
    assert out.returncode == 1 and "not an empty folder" in out.stderr, out.stderr
    assert sorted(p.name for p in (tmp_path / "b1").iterdir()) == ["keep.txt"]
    # An attachment missing from Orthanc's storage fails the backup, naming it.  With
    # Orthanc stopped (its storage cache would still serve the file), so the backup
    # starts Orthanc itself.
    c.stop_orthanc()
    [stored] = [p for p in (c.home / "orthanc" / "storage").rglob("*") if p.is_file()]
    aside = tmp_path / "aside"
    stored.rename(aside)
    out = c.rdc("backup", str(tmp_path / "b2"), "--passphrase-file", str(good))
    assert out.returncode == 1 and "cannot be read from Orthanc's storage" in out.stderr, (
        out.stdout + out.stderr)
    assert not (tmp_path / "b2").exists() and not list(tmp_path.glob(".b2*"))
    aside.rename(stored)
    with c.db.session() as s:
        assert s.scalar(select(AuditRecord).where(AuditRecord.action == "backup.failed"))

    dest = tmp_path / "b3"
    assert "Orthanc is not running: starting it" in _backup(c, dest, good)

    other = Center(home=tmp_path / "other", db_url=f"sqlite:///{tmp_path / 'other' / 'db'}",
                   broker_url="")
    # A non-empty home.
    other.home.mkdir()
    (other.home / "something").write_text("x")
    code, said = _restore(other, dest)
    assert code == 1 and "is not empty" in said, said
    (other.home / "something").unlink()
    # A wrong passphrase.
    code, said = _restore(other, dest, "not the backup passphrase")
    assert code == 6 and "wrong passphrase" in said, said
    assert list(other.home.iterdir()) == []
    # A corrupted file is named, and nothing is restored.
    manifest = json.loads((dest / "manifest.json").read_text())
    [instance_file] = [r for r in manifest["files"] if r.startswith("orthanc/instances/")]
    data = bytearray((dest / instance_file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (dest / instance_file).write_bytes(bytes(data))
    code, said = _restore(other, dest)
    assert code == 5 and f"backup file {instance_file} is corrupted" in said.replace("\n", " "), \
        said
    assert list(other.home.iterdir()) == []
    # Its checksum rewritten in the manifest: the manifest's seal no longer matches.
    manifest["files"][instance_file]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True,
                                                   ensure_ascii=False))
    code, said = _restore(other, dest)
    assert code == 5 and "manifest was altered" in said.replace("\n", " "), said
    assert list(other.home.iterdir()) == []
