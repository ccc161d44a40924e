"""Fixtures that run the real thing: Orthanc, the gateway process, a Celery worker,
Redis, PostgreSQL or SQLite.  A missing dependency fails loudly, never skips.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from core.db import Database, get_database
from core.orthanc_client import OrthancClient
from core.orthanc_process import start_orthanc, stop_process
from core.settings import Settings, get_settings
from core.sites import SiteSpec, add_site
from rdc.domains import load_domains

# Tests run jobs in-process (core.jobs.execute) as a worker would: declare every
# domain's job kinds the way `rdc worker` does, once for the session.
load_domains()

REPO = Path(__file__).resolve().parent.parent
#: The browser fixture (Debian's Chromium through Playwright) for the browser tests.
pytest_plugins = ["browser_support"]
PG_ADMIN_URL = os.environ.get("RDC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("RDC_TEST_REDIS_HOST", "127.0.0.1")

SENDER_AE = "COUNTY_A"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: Ports below the ephemeral range that other services of a test machine commonly use.
_TAKEN = {11211, 15672, 25672, 27017}


def free_port() -> int:
    """A loopback port that is free now, for a center or peer started next.

    Chosen at random *below* the kernel's ephemeral range: a port the kernel handed out
    with ``bind(0)`` is also what it hands to this machine's outbound connections (to
    PostgreSQL, Redis, Orthanc...), so one could take it between this call and the
    server's bind (Orthanc once failed to start that way on a busy CI machine).
    """
    low, _high = _ephemeral_range()
    top = max(low - 1, 20000)
    for _ in range(500):
        port = random.randint(10000, top)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_port(port: int, timeout: float = 30.0,
              proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


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


@pytest.fixture(scope="session", autouse=True)
def _tools_present() -> None:
    for tool in ("Orthanc", "storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is required (apt-get install orthanc dcmtk): run ./bootstrap.sh")


# The center under test ------------------------------------------------------------
@dataclass
class Center:
    """One center with its own home, ports, database and broker."""

    home: Path
    db_url: str
    broker_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway_port: int = field(default_factory=free_port)
    orthanc_http_port: int = field(default_factory=free_port)
    orthanc_dicom_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    orthanc_proc: subprocess.Popen[bytes] | None = None
    gateway_proc: subprocess.Popen[bytes] | None = None
    worker_proc: subprocess.Popen[bytes] | None = None
    gateway_ae: str = "RDC_CENTER"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDC_")}
        env.update({
            "RDC_HOME": str(self.home),
            "RDC_GATEWAY_AE": self.gateway_ae,
            "RDC_GATEWAY_PORT": str(self.gateway_port),
            "RDC_ORTHANC_HTTP_PORT": str(self.orthanc_http_port),
            "RDC_ORTHANC_DICOM_PORT": str(self.orthanc_dicom_port),
            "RDC_WEB_PORT": str(self.web_port),
            "RDC_DATABASE_URL": self.db_url,
            "RDC_BROKER_URL": self.broker_url,
            "RDC_STUDY_INACTIVITY_S": "3",
            "RDC_MONITOR_INTERVAL_S": "0.5",
            "RDC_UPLOAD_RETRY_MAX_S": "2",
            "RDC_SPOOL_MIN_FREE_MB": "64",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        })
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        keys = {k.removeprefix("RDC_").lower(): v for k, v in self.env.items()
                if k.startswith("RDC_")}
        return Settings(**keys)

    @property
    def db(self) -> Database:
        return get_database(self.settings.database_url)

    def orthanc(self) -> OrthancClient:
        return OrthancClient.from_settings(self.settings, retries=1)

    # Processes ----------------------------------------------------------------
    def start_orthanc(self) -> None:
        self.orthanc_proc = start_orthanc(self.settings)

    def stop_orthanc(self) -> None:
        if self.orthanc_proc is not None:
            stop_process(self.orthanc_proc)
            self.orthanc_proc = None

    def _rdc(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        out = open(self.home / f"{log}.test.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "rdc", *args], env=self.env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)

    def start_gateway(self) -> None:
        self.gateway_proc = self._rdc("gateway", log="gateway")
        wait_port(self.gateway_port, 60, self.gateway_proc)

    def stop_gateway(self) -> None:
        if self.gateway_proc is not None and self.gateway_proc.poll() is None:
            self.gateway_proc.send_signal(signal.SIGTERM)
            self.gateway_proc.wait(30)
        self.gateway_proc = None

    def kill_gateway(self) -> None:
        assert self.gateway_proc is not None
        self.gateway_proc.kill()
        self.gateway_proc.wait(10)
        self.gateway_proc = None

    def start_worker(self) -> None:
        self.worker_proc = self._rdc("worker", "--concurrency", "1", log="worker")

    def stop_worker(self) -> None:
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            self.worker_proc.send_signal(signal.SIGTERM)
            try:
                self.worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                self.worker_proc.kill()
        self.worker_proc = None

    def rdc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rdc", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def add_site(self, site_id: str = "county-a", ae_title: str = SENDER_AE,
                 allowed: tuple[str, ...] = ("127.0.0.1/32", "::1"), **kw: Any) -> None:
        spec = SiteSpec(id=site_id, name=f"{site_id} hospital", ae_title=ae_title,
                        host="127.0.0.1", port=kw.pop("port", 11199), allowed_addresses=allowed,
                        **kw)
        with self.db.session() as s:
            add_site(s, spec, actor="test")

    def spool_files(self, sub: str = "ready") -> list[Path]:
        """Files in one spool folder (``ready``, ``tmp``, ``unacknowledged``, ``failed``)."""
        d = self.home / "spool" / sub
        return sorted(d.iterdir()) if d.exists() else []

    def logs(self) -> str:
        parts = []
        for p in sorted(self.home.glob("*.test.log")) + sorted((self.home / "logs").glob("*.log")):
            parts.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def shutdown(self) -> None:
        self.stop_worker()
        self.stop_gateway()
        self.stop_orthanc()


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
