"""Every refusal at the DICOM port is audited, and a flood costs a bounded number of rows.

A refused peer (no slot, garbage bytes, a partial PDU or nothing at all before the
deadline, an unknown AE title or address) must leave a trace in the hash-chained
audit log, but one client hammering the port must not be able to write a durable
row per attempt.  Refusals are therefore aggregated per peer address and window:

* the first ``burst`` refusals of each category (``connection``: before or without
  an A-ASSOCIATE-RQ; ``association``: an A-ASSOCIATE-RJ) of a window are written
  individually, with their full detail;
* the rest are only counted, and when the window ends one ``refusal.summary`` row
  per peer reports how many refusals the window held, of which kinds, and how many
  had no row of their own.

So a peer costs at most ``2 * burst + 1`` rows per window, however fast it knocks.
Rows are written by a thread of its own: the acceptor thread, which refuses
connections at line rate, never waits for the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core import audit, metrics
from core.db import Database

log = logging.getLogger(__name__)

CATEGORIES = ("connection", "association")
#: Peers tracked in one window at most; more go into one ``*`` bucket, so that
#: many addresses cannot grow memory (or the rows) without bound either.
MAX_PEERS = 1000
#: Rows kept for a retry while the database is unavailable.
MAX_PENDING_ROWS = 10_000


@dataclass(frozen=True)
class _Row:
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]


@dataclass
class _Window:
    peer: str
    opened: float
    opened_at: datetime
    total: int = 0
    individually: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    calling_aes: Counter[str] = field(default_factory=Counter)

    @property
    def unaudited(self) -> int:
        return self.total - sum(self.individually.values())


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


class RefusalAuditor:
    """Aggregates refusals per peer and window and appends them to the audit chain."""

    def __init__(self, db: Database, window_s: float, burst: int) -> None:
        self.db = db
        self.window_s = window_s
        self.burst = burst
        self._windows: dict[str, _Window] = {}
        self._rows: deque[_Row] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Refusals seen and rows written since start (for logs and tests).
        self.refusals = 0
        self.rows_written = 0

    # Recording ---------------------------------------------------------------
    def refuse(self, peer: str, *, category: str, kind: str, action: str, object_id: str,
               detail: dict[str, Any], calling_ae: str | None = None) -> None:
        """Count one refusal; queue its own row if the peer's window has room for it."""
        assert category in CATEGORIES, category
        metrics.GATEWAY_REFUSALS.labels(category=category, kind=kind).inc()
        now = time.monotonic()
        with self._cond:
            self.refusals += 1
            key = peer
            window = self._windows.get(key)
            if window is not None and now - window.opened >= self.window_s:
                self._close_window(window)
                window = None
            if window is None:
                if len(self._windows) >= MAX_PEERS:
                    key = "*"
                    window = self._windows.get(key)
                if window is None:
                    window = _Window(key, now, datetime.now(UTC))
                    self._windows[key] = window
            window.total += 1
            window.kinds[kind] += 1
            if calling_ae:
                window.calling_aes[calling_ae] += 1
            if window.individually[category] < self.burst:
                window.individually[category] += 1
                self._queue(_Row(action, "association" if category == "association"
                                 else "connection", object_id, detail))
                log.warning("gateway.refused peer=%s kind=%s %s", peer, kind,
                            detail.get("reason", ""))
            self._cond.notify()

    def tls_refusal(self, peer: str, category: str, detail: dict[str, Any]) -> None:
        """A refusal sink for the TLS port (``pacs_gateway.tls.RefusalSink``), so that
        failed handshakes are aggregated like every other refusal."""
        self.refuse(peer, category="connection", kind=f"tls-{category}", action="tls.refuse",
                    object_id=peer, detail=detail)

    def _queue(self, row: _Row) -> None:
        if len(self._rows) >= MAX_PENDING_ROWS:
            log.error("gateway.refusal_audit_backlog dropping row action=%s", row.action)
            return
        self._rows.append(row)

    def _close_window(self, window: _Window) -> None:
        """Called with the lock held: the window's summary row, if it has one to write."""
        self._windows.pop(window.peer, None)
        if window.unaudited <= 0:
            return
        detail = {
            "peer": window.peer,
            "window_start": _iso(window.opened_at),
            "window_end": _iso(datetime.now(UTC)),
            "window_s": self.window_s,
            "refusals": window.total,
            "audited_individually": sum(window.individually.values()),
            "not_audited_individually": window.unaudited,
            "kinds": dict(window.kinds),
            "calling_aes": dict(window.calling_aes.most_common(20)),
        }
        log.warning("gateway.refusal_summary peer=%s refusals=%s kinds=%s", window.peer,
                    window.total, dict(window.kinds))
        self._queue(_Row("refusal.summary", "peer", window.peer, detail))

    # Writing -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gateway-refusal-audit",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close every window (its summary is written now) and write what is queued."""
        with self._cond:
            self._stopping = True
            for window in list(self._windows.values()):
                self._close_window(window)
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(15)
        else:
            self._write(self._take())

    def _take(self) -> list[_Row]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def _expire(self, now: float) -> float:
        """Close the windows that ended; seconds until the next one ends."""
        nxt = self.window_s
        for window in list(self._windows.values()):
            left = window.opened + self.window_s - now
            if left <= 0:
                self._close_window(window)
            else:
                nxt = min(nxt, left)
        return nxt

    def _run(self) -> None:
        while True:
            with self._cond:
                timeout = self._expire(time.monotonic())
                if not self._rows and not self._stopping:
                    self._cond.wait(timeout)
                    self._expire(time.monotonic())
                rows = self._take()
                stopping = self._stopping
            if rows and not self._write(rows):
                with self._cond:
                    self._rows.extendleft(reversed(rows))
                if stopping:
                    return
                time.sleep(1.0)
                continue
            if stopping:
                with self._cond:
                    if not self._rows:
                        return

    def _write(self, rows: list[_Row]) -> bool:
        if not rows:
            return True
        try:
            with self.db.session() as s:
                for row in rows:
                    audit.append(s, actor="gateway", action=row.action,
                                 object_type=row.object_type, object_id=row.object_id,
                                 detail=row.detail)
        except Exception:
            log.exception("gateway.refusal_audit_failed rows=%d", len(rows))
            return False
        self.rows_written += len(rows)
        return True
