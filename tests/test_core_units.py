"""Shared core on a real database: settings, audit chain, sites, state machines, jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from conftest import _create_pg_database, _drop_pg_database
from core import audit, jobs
from core.db import Database, get_database
from core.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from core.models import AuditRecord, Job, Study
from core.settings import Settings
from core.sites import SiteSpec, add_site, find_sender, list_sites, remove_site
from core.states import JobState, StudyState, check_transition


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str) -> Iterator[Database]:
    if request.param == "sqlite":
        yield get_database(f"sqlite:///{tmp_path / 'unit.sqlite3'}")
        get_database.cache_clear()
        return
    name, url = _create_pg_database(pg_admin)
    try:
        d = get_database(url)
        yield d
        d.dispose()
    finally:
        get_database.cache_clear()
        _drop_pg_database(pg_admin, name)


# Settings -------------------------------------------------------------------
def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "rdc.toml").write_text('gateway_ae = "FROM_TOML"\nweb_port = 9001\n')
    for k in list(__import__("os").environ):
        if k.startswith("RDC_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RDC_HOME", str(home))
    monkeypatch.setenv("RDC_WEB_PORT", "9002")  # environment beats the file
    s = Settings()
    assert s.gateway_ae == "FROM_TOML"
    assert s.web_port == 9002
    assert s.gateway_port == 11112
    assert s.database_url == f"sqlite:///{home.resolve() / 'rdc.sqlite3'}"
    assert s.broker_url == "filesystem://"
    assert s.spool_dir == home.resolve() / "spool"


def test_settings_refuse_bad_values_and_insecure_production(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gateway_port"):
        Settings(home=tmp_path, gateway_port=70000)
    with pytest.raises(ValueError, match="PostgreSQL in production"):
        Settings(home=tmp_path, environment="production")
    ok = Settings(home=tmp_path, environment="production",
                  database_url="postgresql://x@db/rdc", broker_url="redis://r:6379/0")
    assert ok.environment == "production"


def test_orthanc_password_generated_once_and_private(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    user, pw = s.orthanc_credentials()
    assert len(pw) >= 24
    assert Settings(home=tmp_path).orthanc_credentials() == (user, pw)
    assert (tmp_path / "secrets" / "orthanc-password").stat().st_mode & 0o077 == 0
    assert pw not in str(s.public_summary())


# Audit ----------------------------------------------------------------------
def _fill_audit(db: Database, n: int) -> None:
    with db.session() as s:
        for i in range(n):
            audit.append(s, actor="tester", action="thing.do", object_type="thing",
                         object_id=str(i), detail={"i": i, "text": "中文 ok"})


def test_audit_chain_verifies(db: Database) -> None:
    _fill_audit(db, 5)
    with db.session() as s:
        result = audit.verify(s)
    assert result.ok and result.checked == 5


def test_audit_detects_changed_record(db: Database) -> None:
    _fill_audit(db, 5)
    with db.session() as s:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 3).values(actor="mallory"))
    with db.session() as s:
        result = audit.verify(s)
    assert not result.ok and result.first_broken_seq == 3 and result.checked == 2
    assert "hash" in result.reason


def test_audit_detects_deleted_records(db: Database) -> None:
    _fill_audit(db, 5)
    with db.session() as s:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 2))
    with db.session() as s:
        result = audit.verify(s)
    assert not result.ok and result.first_broken_seq == 2 and "missing" in result.reason


def test_audit_detects_truncated_tail(db: Database) -> None:
    _fill_audit(db, 5)
    with db.session() as s:
        s.execute(delete(AuditRecord).where(AuditRecord.seq == 5))
    with db.session() as s:
        result = audit.verify(s)
    assert not result.ok and result.first_broken_seq == 5 and "removed" in result.reason


def test_audit_rolls_back_with_its_transaction(db: Database) -> None:
    _fill_audit(db, 2)
    with pytest.raises(RuntimeError), db.session() as s:
        audit.append(s, actor="a", action="b", object_type="c", object_id="d")
        raise RuntimeError("abort")
    _fill_audit(db, 1)
    with db.session() as s:
        assert audit.verify(s).ok
        assert s.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1)) == 3


# Sites ----------------------------------------------------------------------------
def _spec(**kw: object) -> SiteSpec:
    base: dict[str, object] = dict(id="county-a", name="County A", ae_title="COUNTY_A",
                                   host="10.0.0.5", port=104,
                                   allowed_addresses=("10.0.0.0/24",))
    base.update(kw)
    return SiteSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad,match", [
    (dict(id="Bad Id"), "site id"),
    (dict(ae_title="THIS_AE_TITLE_IS_TOO_LONG"), "AE title"),
    (dict(ae_title="A\\B"), "AE title"),
    (dict(allowed_addresses=("not-an-ip",)), "allowed address"),
    (dict(allowed_addresses=()), "at least one"),
    (dict(port=0), "port"),
])
def test_site_validation(db: Database, bad: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match), db.session() as s:
        add_site(s, _spec(**bad), actor="t")
    with db.session() as s:
        assert list_sites(s) == []


def test_site_registry_matches_ae_and_address(db: Database) -> None:
    with db.session() as s:
        add_site(s, _spec(), actor="t")
    with pytest.raises(Conflict), db.session() as s:
        add_site(s, _spec(id="other"), actor="t")
    with db.session() as s:
        assert find_sender(s, "COUNTY_A", "10.0.0.77") is not None
        assert find_sender(s, "COUNTY_A", "::ffff:10.0.0.77") is not None
        assert find_sender(s, "COUNTY_A", "10.0.1.1") is None
        assert find_sender(s, "COUNTY_B", "10.0.0.77") is None
    with db.session() as s:
        assert remove_site(s, "county-a", actor="t") == "deleted"
    with pytest.raises(NotFound), db.session() as s:
        remove_site(s, "county-a", actor="t")


def test_site_with_studies_is_disabled_not_deleted(db: Database) -> None:
    with db.session() as s:
        add_site(s, _spec(), actor="t")
        s.add(Study(site_id="county-a", study_uid="1.2.3", modalities=[], state="received"))
    with db.session() as s:
        assert remove_site(s, "county-a", actor="t") == "disabled"
        assert find_sender(s, "COUNTY_A", "10.0.0.77") is None
        assert s.scalar(select(Study.site_id)) == "county-a"


# State machines and jobs ----------------------------------------------------------------
def test_state_machines_refuse_illegal_moves() -> None:
    check_transition(StudyState, "received", "complete")
    check_transition(StudyState, "complete", "reopened")
    with pytest.raises(InvalidTransition):
        check_transition(StudyState, "received", "reopened")
    with pytest.raises(InvalidTransition):
        check_transition(JobState, "succeeded", "running")


def test_jobs_are_idempotent_and_run_through_their_state_machine(db: Database) -> None:
    calls: list[int] = []
    kind = f"test-{uuid.uuid4().hex[:6]}"

    def _run(session: object, job: Job) -> None:
        calls.append(job.id)
        if job.params.get("fail") == "transient" and calls.count(job.id) < 2:
            raise jobs.TransientJobError("service down")
        if job.params.get("fail") == "hard":
            raise ValueError("bad input 42")

    jobs.register_handler(kind, _run)  # type: ignore[arg-type]

    with db.session() as s:
        ok, created = jobs.create_job(s, jobs.NewJob(key=f"{kind}:1", kind=kind, queue="q"))
        again, created2 = jobs.create_job(s, jobs.NewJob(key=f"{kind}:1", kind=kind, queue="q"))
        flaky, _ = jobs.create_job(s, jobs.NewJob(key=f"{kind}:2", kind=kind, queue="q",
                                                  params={"fail": "transient"}))
        bad, _ = jobs.create_job(s, jobs.NewJob(key=f"{kind}:3", kind=kind, queue="q",
                                                params={"fail": "hard"}))
    assert created and not created2 and again.id == ok.id
    assert jobs.execute(db, ok.id) == "succeeded"
    assert jobs.execute(db, ok.id) == "succeeded"  # re-delivery does not run it twice
    assert calls == [ok.id]
    assert jobs.execute(db, flaky.id) == "queued"
    assert jobs.execute(db, flaky.id) == "succeeded"
    assert jobs.execute(db, bad.id) == "failed"
    with db.session() as s:
        failed = s.get(Job, bad.id)
        assert failed is not None and "bad input 42" in (failed.error or "")
        assert s.scalar(text("SELECT count(*) FROM jobs")) == 3
        assert audit.verify(s).ok


def test_worker_drops_foreign_messages_and_human_jobs(db: Database) -> None:
    kind = f"test-{uuid.uuid4().hex[:6]}"
    ran: list[int] = []

    def _run(session: object, job: Job) -> None:
        ran.append(job.id)

    jobs.register_handler(kind, _run)  # type: ignore[arg-type]

    with db.session() as s:
        mine, _ = jobs.create_job(s, jobs.NewJob(key=f"{kind}:a", kind=kind, queue="q"))
        human, _ = jobs.create_job(s, jobs.NewJob(key=f"{kind}:h", kind=kind, queue="reading"))
    # A message from another center's database that happens to carry our job's ID.
    assert jobs.execute(db, mine.id, expected_key="route:study-1:gen-1") == "foreign"
    assert jobs.execute(db, human.id, expected_key=human.key) == "not-for-workers"
    assert ran == []
    with db.session() as s:
        assert {j.state for j in s.scalars(select(Job))} == {"queued"}
    assert jobs.execute(db, mine.id, expected_key=mine.key) == "succeeded"
    assert ran == [mine.id]


def test_migrations_match_the_models(db: Database) -> None:
    """The schema Alembic builds is the one the models describe, on both databases."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core.models import Base

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_report_and_delivery_state_machines() -> None:
    from core.states import DeliveryState, ReportState

    check_transition(ReportState, "draft", "final")
    check_transition(ReportState, "final", "amended")
    with pytest.raises(InvalidTransition):
        check_transition(ReportState, "final", "draft")
    check_transition(DeliveryState, "failed", "dead")
    check_transition(DeliveryState, "dead", "pending")
    with pytest.raises(InvalidTransition):
        check_transition(DeliveryState, "committed", "pending")


def test_datetime_columns_are_aware_utc(db: Database) -> None:
    """UTCDateTime columns store UTC and read back aware on both databases; naive is refused."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.exc import StatementError

    from core.timeutil import as_utc

    east = datetime(2026, 6, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    with db.session() as s:
        job, _ = jobs.create_job(s, jobs.NewJob(key=f"tz:{uuid.uuid4()}", kind="tz", queue="q"))
        job.created_at = east
    with db.session() as s:
        back = s.scalars(select(Job.created_at).where(Job.id == job.id)).one()
        assert back == east and back.tzinfo is UTC and back.hour == 8
        # Comparisons bind through the type too, so an aware bound matches across zones.
        assert s.scalars(select(Job.id).where(Job.id == job.id,
                                              Job.created_at < east + timedelta(seconds=1))).one()
    with pytest.raises(StatementError, match="naive datetime"), db.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(updated_at=datetime(2026, 6, 1, 8)))
    # Times from outside the database: naive means UTC, aware ones are converted.
    assert as_utc(datetime(2026, 6, 1, 8)) == datetime(2026, 6, 1, 8, tzinfo=UTC)
    assert as_utc(east).tzinfo is UTC and as_utc(east).hour == 8
