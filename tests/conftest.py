"""Fixtures that run the real thing: Orthanc, the gateway process, a Celery worker,
Redis, PostgreSQL or SQLite.  A missing dependency fails loudly, never skips.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from core.db import Database, get_database
from core.settings import get_settings
from core.sites import SiteSpec, add_site
from devkit.center import REPO, SENDER_AE, Center
from devkit.ports import free_port, wait_port, wait_until
from rdc.domains import load_domains

# The harness lives in devkit (the benchmarks share it); the tests import it from here.
__all__ = ["REPO", "SENDER_AE", "Center", "free_port", "wait_port", "wait_until"]

# Tests run jobs in-process (core.jobs.execute) as a worker would: declare every
# domain's job kinds the way `rdc worker` does, once for the session.
load_domains()

#: The browser fixture (Debian's Chromium through Playwright) for the browser tests.
pytest_plugins = ["browser_support"]
PG_ADMIN_URL = os.environ.get("RDC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("RDC_TEST_REDIS_HOST", "127.0.0.1")


# Services that must already run on this machine ---------------------------------
@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database index of our own for this test session (fails if Redis is down).

    A database is claimed with a lock key so that parallel runs never share
    queues, and emptied when the session ends.
    """
    client = redis.Redis(host=REDIS_HOST, port=6379, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is required at {REDIS_HOST}:6379 for the tests: {e}")
    token = uuid.uuid4().hex
    for idx in sorted(range(1, 16), key=lambda _: uuid.uuid4().int):
        db = redis.Redis(host=REDIS_HOST, port=6379, db=idx)
        if db.set("rdc-test-claim", token, nx=True, ex=6 * 3600):
            db.flushdb()  # leftovers of an earlier, interrupted run
            db.set("rdc-test-claim", token, ex=6 * 3600)
            try:
                yield idx
            finally:
                db.flushdb()
            return
    pytest.fail("all Redis databases 1-15 are claimed by other test runs")


@pytest.fixture(scope="session")
def pg_admin() -> str:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL} for the tests: {e}")
    return PG_ADMIN_URL


def _create_pg_database(admin_url: str) -> tuple[str, str]:
    name = f"rdc_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_pg_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The two county sites of the tests that need sites but no running center.
TWO_SITES = ("county-a", "county-b")


def database_with_sites(backend: str, sqlite_path: Path, pg_admin_url: str | None,
                        sites: tuple[str, ...] = TWO_SITES) -> Iterator[Database]:
    """A migrated database (``backend``: "sqlite" at ``sqlite_path``, or "postgres", a
    database of its own dropped afterwards) with ``sites`` registered and no users."""
    name = None
    if backend == "sqlite":
        database = get_database(f"sqlite:///{sqlite_path}")
    else:
        assert pg_admin_url is not None, "PostgreSQL needs the pg_admin fixture"
        name, url = _create_pg_database(pg_admin_url)
        database = get_database(url)
    try:
        with database.session() as s:
            for site in sites:
                add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=site.upper(),
                                     host="127.0.0.1", port=104,
                                     allowed_addresses=("127.0.0.1",)), actor="test")
        yield database
    finally:
        database.dispose()
        get_database.cache_clear()
        if name is not None and pg_admin_url is not None:
            _drop_pg_database(pg_admin_url, name)


@pytest.fixture(scope="session", autouse=True)
def _tools_present() -> None:
    for tool in ("Orthanc", "storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is required (apt-get install orthanc dcmtk): run ./bootstrap.sh")


# The center under test (devkit.center.Center) -------------------------------------
def _make_center(tmp_path: Path, backend: str, broker_url: str, pg_admin_url: str | None,
                 ) -> Iterator[Center]:
    pg_name = None
    if backend == "postgres":
        assert pg_admin_url is not None
        pg_name, db_url = _create_pg_database(pg_admin_url)
    else:
        db_url = f"sqlite:///{tmp_path / 'home' / 'rdc.sqlite3'}"
    center = Center(home=tmp_path / "home", db_url=db_url, broker_url=broker_url)
    try:
        yield center
    finally:
        center.shutdown()
        get_database.cache_clear()
        if broker_url.startswith("redis://"):
            # Messages a test left queued (no worker ran) must not reach the next
            # test's worker, whose database reuses the same job IDs.
            r = redis.Redis.from_url(broker_url)
            stale = [k for k in r.scan_iter() if k != b"rdc-test-claim"]
            if stale:
                r.delete(*stale)
        if pg_name is not None and pg_admin_url is not None:
            _drop_pg_database(pg_admin_url, pg_name)


@pytest.fixture
def center(tmp_path: Path, redis_db: int) -> Iterator[Center]:
    """A center on SQLite and Redis (nothing started yet)."""
    yield from _make_center(tmp_path, "sqlite", f"redis://{REDIS_HOST}:6379/{redis_db}", None)


@pytest.fixture(params=["sqlite", "postgres", "embedded"])
def center_any_db(request: pytest.FixtureRequest, tmp_path: Path, redis_db: int,
                  pg_admin: str) -> Iterator[Center]:
    """The same center on SQLite + Redis, PostgreSQL + Redis, and the embedded default
    (SQLite + the filesystem broker, no server at all)."""
    if request.param == "embedded":
        yield from _make_center(tmp_path, "sqlite", "", None)
        return
    yield from _make_center(tmp_path, request.param, f"redis://{REDIS_HOST}:6379/{redis_db}",
                            pg_admin)


@pytest.fixture
def running(center_any_db: Center) -> Iterator[Center]:
    """Orthanc and the gateway running, one registered site (``COUNTY_A`` from loopback)."""
    c = center_any_db
    c.start_orthanc()
    c.add_site()
    c.start_gateway()
    yield c


#: The real ECG recordings (PhysioNet) the ECG tests read in place, never copied.
ECG_DATA = REPO.parent / "shared" / "data" / "ecg"


@pytest.fixture(scope="session", autouse=True)
def _ecg_data_present() -> None:
    """The ECG accuracy tests need the real recordings: a missing one fails, never skips."""
    missing = [n for n in ("100.hea", "100.dat", "100.atr", "s0010_re.hea", "s0010_re.dat")
               if not (ECG_DATA / n).exists()]
    if missing:
        pytest.fail(f"the real ECG recordings are missing from {ECG_DATA}: {', '.join(missing)}")


#: The password of the people the web tests create (long enough for the policy).
TEST_PASSWORD = "a long enough password 1"


def signed_in_client(c: Center, username: str, roles: list[str], sites: list[str] | None,
                     password: str = TEST_PASSWORD) -> Any:
    """A new person signed in to the app in-process (TestClient with its CSRF header);
    ``sites`` None means all sites."""
    import pyotp
    from fastapi.testclient import TestClient

    from viewer.accounts import add_user
    from viewer.app import create_app

    with c.db.session() as s:
        _, uri = add_user(s, get_settings(), username=username, display_name=username,
                          password=password, roles=roles, sites=sites or (),
                          all_sites=sites is None, actor="test")
    api = TestClient(create_app())
    r = api.post("/api/auth/login", json={"username": username, "password": password,
                                          "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    api.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return api


@pytest.fixture
def env_center(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[Center]:
    """The center's settings as this process's settings, so that job handlers and the
    queue run in the test (which read ``get_settings()``) talk to this center's Orthanc
    and Redis database; the user's own ``RDC_*`` variables are hidden meanwhile."""
    import core.queue

    for key in [k for k in os.environ if k.startswith("RDC_")]:
        monkeypatch.delenv(key)
    for key, value in center.env.items():
        if key.startswith("RDC_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    monkeypatch.setattr(core.queue, "_app", None)
    yield center
    get_settings.cache_clear()


@pytest.fixture
def two_sites(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[Center]:
    """Orthanc and the gateway running for two county sites (county-a/COUNTY_A and
    county-b/COUNTY_B, from loopback), with this process's settings pointing at them."""
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    center.start_orthanc()
    for site, ae in (("county-a", "COUNTY_A"), ("county-b", "COUNTY_B")):
        center.add_site(site, ae, allowed=("127.0.0.1/32",), inactivity_s=1)
    center.start_gateway()
    yield center
    get_settings.cache_clear()
