"""The center's outbound notification webhook: one best-effort JSON POST.

Why one helper: pathology pages a pathologist for a frozen section and the lab pages a
county site (and then the center) for a critical value; both tell the same paging
system (``RDC_NOTIFY_WEBHOOK_URL``).  The in-app notice is always written first, in the
caller's transaction, and is what the closed loop relies on; the webhook is best effort
on top of it.  So :func:`post_webhook` never raises: a pager that is down, slow, answers
an error or is misconfigured must not roll back the in-app notice.  It returns a
:class:`WebhookOutcome` that the caller records (its audit, the notice's steps), so a
failed page is never silent either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

#: How long one POST may take: paging runs inside intake jobs and the scheduler, which
#: must not stall on a dead pager.
WEBHOOK_TIMEOUT_S = 3.0


def redacted(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what a log, an audit record or a notice shown
    to a site may say about the pager.  Paging services put their secret in the path or
    the query (a Slack-style hook, ``?token=``), and a user may be in the netloc."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class WebhookOutcome:
    """What one POST came to.  ``ok`` only for a 2xx answer."""

    #: The pager's address without its path, query or credentials (:func:`redacted`).
    url: str
    ok: bool
    #: The HTTP status when the pager answered at all, else None.
    status: int | None
    #: "" when ok; else "<ExceptionType>: <message>" (connection refused, timeout, 5xx).
    error: str
    elapsed_s: float

    @property
    def outcome(self) -> str:
        """One word-ish line for a notice's steps: "ok 200" or "failed: ..."."""
        return f"ok {self.status}" if self.ok else f"failed: {self.error}"

    def as_detail(self) -> dict[str, Any]:
        """For an audit record's detail."""
        return {"url": self.url, "ok": self.ok, "status": self.status, "error": self.error,
                "elapsed_s": round(self.elapsed_s, 3)}


def post_webhook(url: str, body: Mapping[str, Any], *,
                 timeout_s: float = WEBHOOK_TIMEOUT_S) -> WebhookOutcome:
    """POST ``body`` as JSON to ``url``; never raises, returns what happened.

    A non-2xx answer, a refused connection, a timeout and a malformed URL are all
    failures with their reason in ``error`` (logged at warning); a redirect is not
    followed.  No outcome or log line names more of the URL than :func:`redacted`.
    """
    where = redacted(url)
    try:
        response = httpx.post(url, json=dict(body), timeout=timeout_s)
    # Best effort by design: any failure (httpx's errors, an invalid URL, a body that is
    # not JSON) is reported to the caller, never raised into its transaction.
    except Exception as exc:
        # Messages may quote the URL (and its secret): only the redacted form is kept.
        error = f"{type(exc).__name__}: {exc}".replace(url, where)
        log.warning("notify webhook %s failed: %s", where, error)
        return WebhookOutcome(url=where, ok=False, status=None, error=error, elapsed_s=0.0)
    status, elapsed = response.status_code, response.elapsed.total_seconds()
    if response.is_success:
        return WebhookOutcome(url=where, ok=True, status=status, error="", elapsed_s=elapsed)
    error = f"HTTPStatusError: {where} answered {status} {response.reason_phrase}".rstrip()
    log.warning("notify webhook %s failed: %s", where, error)
    return WebhookOutcome(url=where, ok=False, status=status, error=error, elapsed_s=elapsed)
