"""core.notify: the shared best-effort webhook POST, against a real HTTP server.

It must deliver the JSON body, and for every way a pager can fail (an error status, a
refused connection, a timeout, a malformed URL, a body that is not JSON) return a
failed outcome naming the reason without raising.  :class:`Receiver` is shared with
tests/test_lab_critical.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import free_port
from core import notify


class Receiver:
    """A real HTTP server in a thread recording every JSON body POSTed to it.

    ``status`` is its answer; ``delay_s`` how long it waits before answering.
    """

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                outer.paths.append(self.path)
                outer.bodies.append(json.loads(self.rfile.read(length)))
                if delay_s:
                    time.sleep(delay_s)
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.close()


def test_posts_the_json_body_and_reports_ok(receiver: Receiver) -> None:
    outcome = notify.post_webhook(receiver.url, {"kind": "test", "value": 7.1, "n": [1, 2]})
    assert outcome.ok and outcome.status == 200 and outcome.error == ""
    assert outcome.outcome == "ok 200"
    assert receiver.bodies == [{"kind": "test", "value": 7.1, "n": [1, 2]}]
    assert receiver.paths == ["/hook"]
    assert outcome.as_detail()["ok"] is True
    assert outcome.url == receiver.url.removesuffix("/hook")


def test_the_secret_in_a_pager_url_is_never_repeated() -> None:
    hook = Receiver(status=500)
    secret = hook.url.replace("://", "://svc:pw@") + "/T123/B456?token=S3CRET"
    try:
        failed = notify.post_webhook(secret, {"kind": "test"})
        refused = notify.post_webhook(f"http://127.0.0.1:{free_port()}/x?token=S3CRET", {})
    finally:
        hook.close()
    for outcome in (failed, refused):
        assert not outcome.ok
        text = json.dumps(outcome.as_detail()) + outcome.outcome
        assert "S3CRET" not in text and "pw" not in text and "T123" not in text
    assert failed.url == hook.url.removesuffix("/hook") and "500" in failed.error
    assert notify.redacted("https://[::1]:8443/a?b=c") == "https://[::1]:8443"
    assert notify.redacted("not a url") == "<invalid url>"


@pytest.mark.parametrize("status", [500, 404])
def test_an_error_status_is_a_failure_not_an_exception(status: int) -> None:
    hook = Receiver(status=status)
    try:
        outcome = notify.post_webhook(hook.url, {"kind": "test"})
    finally:
        hook.close()
    assert not outcome.ok and outcome.status == status
    assert outcome.error.startswith("HTTPStatusError") and f"answered {status}" in outcome.error
    assert outcome.outcome.startswith("failed: HTTPStatusError")
    assert hook.bodies == [{"kind": "test"}]  # it was delivered, and refused


def test_a_refused_connection_is_a_failure() -> None:
    outcome = notify.post_webhook(f"http://127.0.0.1:{free_port()}/none", {"kind": "test"})
    assert not outcome.ok and outcome.status is None
    assert outcome.error.startswith("ConnectError")


def test_a_slow_pager_times_out_within_the_limit() -> None:
    hook = Receiver(delay_s=2.0)
    try:
        started = time.monotonic()
        outcome = notify.post_webhook(hook.url, {"kind": "test"}, timeout_s=0.3)
        took = time.monotonic() - started
    finally:
        hook.close()
    assert not outcome.ok and "Timeout" in outcome.error
    assert took < 1.5


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", ""])
def test_a_malformed_url_is_a_failure(url: str) -> None:
    outcome = notify.post_webhook(url, {"kind": "test"})
    assert not outcome.ok and outcome.status is None and outcome.error


def test_a_body_that_is_not_json_is_a_failure(receiver: Receiver) -> None:
    outcome = notify.post_webhook(receiver.url, {"kind": object()})
    assert not outcome.ok and "TypeError" in outcome.error
    assert receiver.bodies == []
