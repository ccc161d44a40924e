"""Audit records of ``rdc up`` (restarts, give-ups), written from a thread of their own.

The database can be slow or away exactly when processes crash (SQLite busy under
a burst, PostgreSQL restarting), and a restart must never wait for it.  So the
supervisor only queues a record; this thread appends it to the hash-chained log
with a few retries, and a record it cannot write goes to the supervisor's log in
full, so that the event is kept somewhere an operator can read it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from core import audit
from core.db import get_database

log = logging.getLogger(__name__)

ACTOR = "supervisor"

_Item = tuple[str, str, dict[str, Any]]


class SupervisorAudit:
    def __init__(self, database_url: str, *, retries: int = 3) -> None:
        self._url = database_url
        self._retries = retries
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="supervisor-audit", daemon=True)
        self._thread.start()

    def record(self, action: str, process: str, detail: dict[str, Any]) -> None:
        """Queue one record (actor ``supervisor``, object ``process``/``process``)."""
        self._queue.put((action, process, detail))

    def close(self, timeout: float = 15.0) -> None:
        """Write what is queued, waiting at most ``timeout``; log what is left."""
        self._queue.put(None)
        self._thread.join(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                log.error("supervisor.audit_unwritten action=%s process=%s detail=%s", *item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._write(item)

    def _write(self, item: _Item) -> None:
        action, process, detail = item
        for attempt in range(1, self._retries + 1):
            try:
                with get_database(self._url).session() as s:
                    audit.append(s, actor=ACTOR, action=action, object_type="process",
                                 object_id=process, detail=detail)
                return
            except Exception as e:
                if attempt == self._retries:
                    log.error("supervisor.audit_unwritten action=%s process=%s detail=%s "
                              "error=%r", action, process, detail, e)
                    return
                time.sleep(2.0 ** (attempt - 1))
