"""What the real-center browser tests share: the web app as a process, signing keys,
Debian's Chromium through Playwright, numbered screenshots and console errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest

from conftest import REPO, Center, wait_port

CHROMIUM = Path(os.environ.get("RDC_CHROMIUM", "/usr/bin/chromium"))
#: The test build of the front end (``npm run build:test``): the production build has no
#: ``window.__rdc`` hook, which these tests read the viewer through.
STATIC = REPO / "viewer" / "static-test"
SCREENSHOTS = Path(os.environ.get("RDC_SCREENSHOT_DIR", REPO / "var" / "screenshots"))
PASSWORD = "a long enough password 1"
PASSPHRASE = "correct horse battery"


def start_web(c: Center) -> subprocess.Popen[bytes]:
    """``rdc web`` for the center, as a process, once it listens; it serves the test
    build of the front end (:data:`STATIC`)."""
    c.home.mkdir(parents=True, exist_ok=True)
    out = open(c.home / "web.test.log", "ab")
    env = {**c.env, "RDC_WEB_STATIC_DIR": str(STATIC)}
    proc = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=env, cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT)
    # Generous: on 2 loaded cores the app (with every domain) has taken over 60 s to start.
    wait_port(c.web_port, 180, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def issue_key(c: Center, user: str, name: str) -> None:
    """An Ed25519 signing key for ``user`` under :data:`PASSPHRASE`, through the CLI."""
    env = {**c.env, "RDC_KEY_PASSPHRASE": PASSPHRASE}
    out = subprocess.run([sys.executable, "-m", "rdc", "keys", "issue", user, "--name", name,
                          "--algorithm", "ed25519"], env=env, capture_output=True, text=True,
                         timeout=120, check=False, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr


def require_front_end() -> None:
    if not (STATIC / "index.html").is_file():
        pytest.fail("the front end's test build is missing: cd viewer && npm run build:test")


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never a downloaded browser); WebGL through SwiftShader,
    since these machines have no GPU."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (./bootstrap.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: .venv/bin/pip install playwright "
                    "(the system Chromium is used; never run 'playwright install')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--use-angle=swiftshader",
                                    "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        try:
            yield b
        finally:
            b.close()


class Shots:
    """Numbered screenshots ``<prefix>-NN-<step>.png``, kept as the test's artifacts."""

    def __init__(self, page: Any, prefix: str) -> None:
        self.page, self.prefix, self.n = page, prefix, 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{prefix}-[0-9][0-9]-*.png"):
            old.unlink()

    def __call__(self, step: str, full_page: bool = False) -> Path:
        self.n += 1
        path = SCREENSHOTS / f"{self.prefix}-{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 2000, path
        return path


def collect_errors(page: Any) -> list[str]:
    """Console errors and page errors of ``page``, as they happen."""
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        # Expected: the app asks /api/auth/me once before anyone has signed in; the
        # server answers 401 and Chromium logs the failed fetch as a console error,
        # which the app handles by showing the login page.
        if "401" in msg.text and url.endswith("/api/auth/me"):
            return
        errors.append(f"console.error: {msg.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


class Codes:
    """Fresh TOTP codes for one account's successive sign-ins.  The server takes the code
    of the current step or the next one, each step once (no replay), so a second sign-in
    within the same 30 s uses the next step's code, and a third waits for the clock."""

    def __init__(self, uri: str) -> None:
        totp = pyotp.parse_uri(uri)
        assert isinstance(totp, pyotp.TOTP), uri
        self.totp, self.last = totp, -1

    def next(self) -> str:
        while True:
            current = self.totp.timecode(datetime.now(UTC))
            step = max(self.last + 1, current)
            if step <= current + 1:
                self.last = step
                return str(self.totp.generate_otp(step))
            time.sleep(1)


def sign_in(page: Any, username: str, codes: Codes, prefix: str = "login") -> None:
    """Fill and submit the sign-in form (``prefix`` ``reauth``: the dialog over a page,
    whose username is already there)."""
    page.get_by_test_id(f"{prefix}-form").wait_for(state="visible")
    if prefix == "login":
        page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id(f"{prefix}-password").fill(PASSWORD)
    page.get_by_test_id(f"{prefix}-totp").fill(codes.next())
    page.get_by_test_id(f"{prefix}-submit").click()
