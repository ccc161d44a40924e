"""Every role of every node says it is alive, in the center's database.

With several nodes, ``rdc status`` on one of them must show all of them: which
gateways, workers, web apps and Orthancs run, where, since when, and which fell
silent.  The database is the one thing every node shares, so each role writes its row
(``node_heartbeats``: node, role, host, pid, ports) every ``interval_s`` from a
daemon thread, and marks it stopped when it stops cleanly.  A row not written for
three intervals belongs to a node that is down, hung or cut off: ``rdc status`` says
"silent" and how long.

A failed write is logged and retried on the next beat: the heartbeat must never take
a role down (a gateway keeps taking studies while the database recovers).

The Celery worker forks its pool processes while this thread runs.  A fork in the
middle of a beat would copy locks the thread holds (SQLAlchemy's mapper configuration
lock, a connection pool's) into the child, held forever there: the child hung on its
first query.  So a beat holds a lock that ``os.register_at_fork`` takes before every
fork, and the beat has an engine of its own, disposed after each beat, never the
process's cached one that the children use.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import configure_mappers

from core.db import Database
from core.models import NodeHeartbeat

log = logging.getLogger(__name__)

#: Seconds between beats; a row older than SILENT_AFTER beats is "silent".
INTERVAL_S = 10.0
SILENT_AFTER = 3


def beat(db: Database, node: str, role: str, *, detail: dict[str, Any] | None = None,
         started: datetime | None = None, stopped: bool = False) -> None:
    """Write the row of ``node``/``role`` now (insert or update)."""
    now = datetime.now(UTC)
    with db.session() as s:
        row = s.get(NodeHeartbeat, (node, role))
        if row is None:
            row = NodeHeartbeat(node=node, role=role, started_at=started or now)
            s.add(row)
        elif started is not None:
            row.started_at = started
        row.host = socket.gethostname()[:255]
        row.pid = os.getpid()
        row.seen_at = now
        row.stopped_at = now if stopped else None
        if detail is not None:
            row.detail = detail


class Heartbeat:
    """The beating thread of one role (``start()`` at start-up, ``stop()`` at the end)."""

    def __init__(self, database_url: str, node: str, role: str, detail: dict[str, Any],
                 interval_s: float = INTERVAL_S) -> None:
        self.database_url, self.node, self.role, self.detail = database_url, node, role, detail
        self.interval_s = interval_s
        #: Held for a whole beat, and by every fork of this process (see the module).
        self._beat_lock = threading.Lock()
        self._db: Database | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = datetime.now(UTC)

    def start(self) -> Heartbeat:
        configure_mappers()  # once, here: never inside a beat that a fork could copy
        os.register_at_fork(before=self._beat_lock.acquire,
                            after_in_parent=self._beat_lock.release,
                            after_in_child=self._beat_lock.release)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.role}",
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self, *, first: bool = False, stopped: bool = False) -> None:
        with self._beat_lock:
            try:
                # Opened here, not at start-up: a role starts while the database is down,
                # and beats once it is back (the role itself migrates it).
                if self._db is None:
                    self._db = Database(self.database_url)
                beat(self._db, self.node, self.role, detail=self.detail,
                     started=self._started if first else None, stopped=stopped)
            except Exception:
                log.warning("heartbeat.failed node=%s role=%s", self.node, self.role,
                            exc_info=True)
            finally:
                if self._db is not None:
                    self._db.dispose()  # no connection outlives the beat

    def _run(self) -> None:
        # The first beat too: a database that is down must not hold up the role's start.
        self._beat(first=True)
        while not self._stop.wait(self.interval_s):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._beat(stopped=True)


@dataclass(frozen=True)
class NodeState:
    node: str
    role: str
    host: str
    pid: int
    state: str  # "up", "stopped" or "silent"
    since: datetime
    seen_at: datetime
    detail: dict[str, Any]


def node_states(db: Database, now: datetime | None = None,
                interval_s: float = INTERVAL_S) -> list[NodeState]:
    """Every role of every node that ever reported, with what it is now."""
    now = now or datetime.now(UTC)
    silent_after = timedelta(seconds=interval_s * SILENT_AFTER)
    out = []
    with db.session() as s:
        for row in s.scalars(select(NodeHeartbeat).order_by(NodeHeartbeat.node,
                                                            NodeHeartbeat.role)):
            if row.stopped_at is not None:
                state, since = "stopped", row.stopped_at
            elif now - row.seen_at > silent_after:
                state, since = "silent", row.seen_at
            else:
                state, since = "up", row.started_at
            out.append(NodeState(row.node, row.role, row.host, row.pid, state, since,
                                 row.seen_at, dict(row.detail or {})))
    return out
