"""``rdc web`` with several worker processes (RDC_WEB_WORKERS): one center to its users
whichever process answers.

Sessions, sign-out and sign-in lockouts live in the database, so a request on a new
connection (which the kernel may hand to any worker) sees the same state as the last
one; uvicorn's per-request access log is off (rdc/web_server.py says why).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from conftest import REPO, TEST_PASSWORD, Center, wait_port
from core.settings import Settings, get_settings
from rdc.web_server import AUTO_MAX_WORKERS, web_workers
from viewer.accounts import add_user
from viewer.auth import SESSION_COOKIE

WORKERS = 2
#: New connections per check: enough that both workers answer some of them.
CONNECTIONS = 24


def test_worker_count_from_settings(tmp_path: Path) -> None:
    auto = Settings(home=tmp_path, web_workers=0)
    assert web_workers(auto) == max(1, min(AUTO_MAX_WORKERS, os.cpu_count() or 1))
    assert web_workers(Settings(home=tmp_path, web_workers=3)) == 3
    with pytest.raises(ValueError):
        Settings(home=tmp_path, web_workers=-1)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread may end between the listing and the read
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def _each_new_connection(base: str, path: str, headers: dict[str, str]) -> list[int]:
    """``GET path`` on :data:`CONNECTIONS` fresh connections; the status codes."""
    codes = []
    for _ in range(CONNECTIONS):
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            codes.append(c.get(path).status_code)
    return codes


def _code(uri: str) -> str:
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    return totp.now()


def _login(base: str, username: str, password: str, totp: str) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=30) as c:
        return c.post("/api/auth/login",
                      json={"username": username, "password": password, "totp": totp})


def test_sessions_and_lockouts_hold_across_workers(env_center: Center) -> None:
    c = env_center
    with c.db.session() as s:
        _, uri = add_user(s, get_settings(), username="dr-workers", display_name="Dr W",
                          password=TEST_PASSWORD, roles=["pathologist"], all_sites=True,
                          actor="test")
        _, uri2 = add_user(s, get_settings(), username="dr-locked", display_name="Dr L",
                           password=TEST_PASSWORD, roles=["pathologist"], all_sites=True,
                           actor="test")
    c.home.mkdir(parents=True, exist_ok=True)
    log_path = c.home / "web.workers.log"
    env = {**c.env, "RDC_WEB_WORKERS": str(WORKERS)}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{c.web_port}"
    try:
        wait_port(c.web_port, 90, proc)
        deadline = time.monotonic() + 60
        while len(_children(proc.pid)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= WORKERS, (workers, log_path.read_text())
        # Every worker must have started its app (each loads the domains itself).
        deadline = time.monotonic() + 60
        while log_path.read_text().count("Application startup complete") < WORKERS \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert log_path.read_text().count("Application startup complete") >= WORKERS, \
            log_path.read_text()

        r = _login(base, "dr-workers", TEST_PASSWORD, _code(uri))
        assert r.status_code == 200, r.text
        token = r.cookies.get(SESSION_COOKIE)
        assert token
        headers = {"Cookie": f"{SESSION_COOKIE}={token}", "X-CSRF-Token": r.json()["csrf_token"]}
        assert _each_new_connection(base, "/api/auth/me", headers) == [200] * CONNECTIONS

        # Signed out on one connection: refused on every other, whichever worker.
        with httpx.Client(base_url=base, headers=headers, timeout=30) as cl:
            assert cl.post("/api/auth/logout").status_code == 204
        assert _each_new_connection(base, "/api/auth/me", headers) == [401] * CONNECTIONS

        # Wrong passwords spread over new connections (so over the workers) add up to
        # one lockout: then even the right password is refused.
        limit = get_settings().login_max_failures
        for _ in range(limit):
            bad = _login(base, "dr-locked", "not the password at all", "000000")
            assert bad.status_code in (401, 403), bad.text
        locked = _login(base, "dr-locked", TEST_PASSWORD, _code(uri2))
        assert locked.status_code == 403 and "locked" in locked.json()["detail"], locked.text

        # No access log line per request (errors and startup still go to the log).
        assert "GET /api/auth/me" not in log_path.read_text()
        assert f"{WORKERS} worker(s)" in log_path.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # The workers go with the parent: nothing is left behind. The parent's other child
    # (multiprocessing's resource tracker) ends when its pipe closes, just after the
    # parent, so this waits a few seconds rather than looking once.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.2)
    assert all(_gone(pid) for pid in workers), [(pid, _state(pid)) for pid in workers]


def _state(pid: int) -> str:
    try:
        return next((line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                     if line.startswith(("Name:", "State:"))), "")
    except FileNotFoundError:
        return "gone"


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return True
