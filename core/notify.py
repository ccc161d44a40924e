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

import httpx

log = logging.getLogger(__name__)

#: How long one POST may take: paging runs inside intake jobs and the scheduler, which
#: must not stall on a dead pager.
WEBHOOK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WebhookOutcome:
    """What one POST came to.  ``ok`` only for a 2xx answer."""

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
    failures with their reason in ``error`` (logged at warning).
    """
    status: int | None = None
    elapsed = 0.0
    try:
        response = httpx.post(url, json=dict(body), timeout=timeout_s)
        status = response.status_code
        elapsed = response.elapsed.total_seconds()
        response.raise_for_status()
    # Best effort by design: any failure (httpx's errors, an invalid URL, a body that is
    # not JSON) is reported to the caller, never raised into its transaction.
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("notify webhook %s failed: %s", url, error)
        return WebhookOutcome(url=url, ok=False, status=status, error=error,
                              elapsed_s=elapsed)
    return WebhookOutcome(url=url, ok=True, status=status, error="", elapsed_s=elapsed)
