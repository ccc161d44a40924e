"""The center's scheduler: periodic tasks, run by one process per center.

Recovery must not depend on the process that takes studies in: when it ran in the
gateway's monitor thread, a stopped gateway stopped delivery retries and stale-job
recovery with it.  ``rdc scheduler`` (a child of ``rdc up``) runs this loop instead.

* **Registry.**  A package declares a task from its ``plugin.register()`` (see
  ``rdc/domains.py``) with :func:`register_periodic`; core's own task, stale-job
  recovery, is built in (:data:`BUILTIN`).  A name is taken once: two packages cannot
  both claim one.
* **A run** is one call of the task's function in one transaction, which the scheduler
  commits; jobs it queues with ``core.jobs.enqueue_after_commit`` go to the broker once
  that commit is visible.  A run that raises is rolled back, logged, and audited once
  per streak of failures (``scheduler.task_failed``, then ``scheduler.task_recovered``),
  so a database outage does not write an audit record every two seconds; the loop goes on
  with the other tasks and tries the failed one again at its next interval.
* **No overlap.**  One thread runs the tasks one after the other, and a task's next run
  is counted from the end of its last, so a slow run is never joined by a second one.
* **One scheduler per center.**  The loop runs tasks only while it holds the center's
  scheduler lock (:class:`SchedulerLock`): on PostgreSQL a session advisory lock on a
  connection held for the purpose (two ``rdc up`` on different nodes sharing the database
  elect one; the other waits in standby and takes over when the first one's connection
  closes), on SQLite an ``flock`` on a file beside the database file (SQLite is one
  machine's file, so a file lock covers every process that can open it).  The tasks are
  idempotent anyway (a second run finds the jobs already queued), so the lock saves
  duplicate messages and work, not correctness.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from core import audit, jobs, metrics
from core.db import Database, get_database
from core.settings import Settings

log = logging.getLogger(__name__)

#: A periodic task: does its work in the given session (the scheduler commits it).
PeriodicFn = Callable[[Session, Settings], object]


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    fn: PeriodicFn
    #: Seconds between the end of one run and the start of the next; ``None``: the
    #: center's monitor interval (``RDC_MONITOR_INTERVAL_S``).
    interval_s: float | None = None

    def interval(self, settings: Settings) -> float:
        return self.interval_s if self.interval_s is not None else settings.monitor_interval_s


def _recover_stale_jobs(session: Session, settings: Settings) -> list[int]:
    return jobs.requeue_stale(session, settings.job_stale_after_s)


#: Core's own periodic tasks.  Machine jobs queued or running for longer than
#: ``RDC_JOB_STALE_AFTER_S`` lost their message (a broker or worker restart) or their
#: worker: they are queued again.
BUILTIN: tuple[PeriodicTask, ...] = (
    PeriodicTask("jobs.recover_stale", _recover_stale_jobs),
)

_TASKS: dict[str, PeriodicTask] = {}
_registry_lock = threading.Lock()


def register_periodic(name: str, interval_s: float | None, fn: PeriodicFn) -> None:
    """Declare a task that the scheduler runs every ``interval_s`` seconds (``None``: the
    center's monitor interval).  Called from a package's ``plugin.register()``.

    A name already taken, by core or another package, is refused; registering the same
    function again under its name is a no-op.
    """
    if interval_s is not None and interval_s <= 0:
        raise ValueError(f"periodic task {name!r}: interval must be positive, not {interval_s}")
    task = PeriodicTask(name, fn, interval_s)
    with _registry_lock:
        taken = next((t for t in BUILTIN if t.name == name), None) or _TASKS.get(name)
        if taken is not None:
            if taken == task:
                return
            raise ValueError(f"periodic task {name!r} is already registered ({taken.fn!r}); "
                             f"two packages cannot claim one name")
        _TASKS[name] = task


def periodic_tasks() -> tuple[PeriodicTask, ...]:
    """Core's tasks, then the registered ones in registration order."""
    with _registry_lock:
        return BUILTIN + tuple(_TASKS.values())


# The lock ---------------------------------------------------------------------------
#: The PostgreSQL advisory lock key of the scheduler ("rdc_schd"); advisory locks are
#: per database, so centers sharing a PostgreSQL server do not contend.
PG_LOCK_KEY = 0x7264635F73636864


class SchedulerLock:
    """The center's one-scheduler lock (see the module doc).  Not thread-safe: the
    scheduler's loop is its only user.  :meth:`hold` takes it or confirms it is still
    held; it never blocks."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.dialect = db.engine.dialect.name
        self._conn: Connection | None = None
        self._fd: int | None = None
        self.path: Path | None = None
        if self.dialect != "postgresql":
            database = db.engine.url.database
            if self.dialect == "sqlite" and database and database != ":memory:":
                self.path = Path(database).with_name(Path(database).name + ".scheduler.lock")
            else:
                self.path = settings.home / "run" / "scheduler.lock"

    @property
    def where(self) -> str:
        return (f"PostgreSQL advisory lock {PG_LOCK_KEY}" if self.path is None
                else f"file lock {self.path}")

    def hold(self) -> bool:
        """Whether this process holds the lock now, taking it if it is free."""
        if self.path is not None:
            return self._hold_file(self.path)
        return self._hold_pg()

    def _hold_file(self, path: Path) -> bool:
        import fcntl

        if self._fd is not None:
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _hold_pg(self) -> bool:
        if self._conn is not None:
            try:  # the lock lives as long as this connection
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("scheduler.lock_connection_lost; taking the lock again",
                            exc_info=True)
                self._drop_conn()
        try:
            # Autocommit: the connection sits idle between checks, never idle in a
            # transaction (which a server's idle_in_transaction timeout would end).
            conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception:
            log.warning("scheduler.lock_unavailable", exc_info=True)
            return False
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                    {"key": PG_LOCK_KEY}).scalar())
        except Exception:
            log.warning("scheduler.lock_unavailable", exc_info=True)
            got = False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # never back to the pool: it may hold the lock
                self._conn.close()
            except Exception:
                log.debug("scheduler.lock_connection_close_failed", exc_info=True)
            self._conn = None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": PG_LOCK_KEY})
            except Exception:  # closing the connection below drops it anyway
                log.debug("scheduler.unlock_failed", exc_info=True)
            self._drop_conn()


# The loop ---------------------------------------------------------------------------
#: How often a scheduler in standby tries the lock again.
STANDBY_POLL_S = 5.0


def _audit(db: Database, action: str, name: str, detail: dict[str, Any]) -> None:
    try:
        with db.session() as s:
            audit.append(s, actor="scheduler", action=action, object_type="periodic_task",
                         object_id=name, detail=detail)
    except Exception:
        log.exception("scheduler.audit_failed action=%s task=%s", action, name)


def _count_run(name: str, outcome: str, started: float) -> None:
    metrics.SCHEDULER_RUNS.labels(task=name, outcome=outcome).inc()
    metrics.SCHEDULER_RUN_SECONDS.labels(task=name).observe(time.monotonic() - started)


def run_task(db: Database, settings: Settings, task: PeriodicTask) -> object:
    """One run of ``task`` in its own transaction (raises what the task raised)."""
    with db.session() as s:
        return task.fn(s, settings)


def run_scheduler(settings: Settings, stop: threading.Event, *,
                  db: Database | None = None) -> None:
    """Run every periodic task when due until ``stop`` is set (see the module doc)."""
    db = db or get_database(settings.database_url)
    lock = SchedulerLock(db, settings)
    tasks = periodic_tasks()
    next_run = {t.name: 0.0 for t in tasks}
    failing: set[str] = set()
    active: bool | None = None
    log.info("scheduler.start tasks=%s lock=%s", [t.name for t in tasks], lock.where)
    try:
        while not stop.is_set():
            held = lock.hold()
            if held != active:
                log.info("scheduler.%s lock=%s", "active" if held else
                         "standby (another scheduler holds the lock)", lock.where)
                active = held
            if not held:
                stop.wait(STANDBY_POLL_S)
                continue
            for task in tasks:
                if stop.is_set() or time.monotonic() < next_run[task.name]:
                    continue
                started = time.monotonic()
                try:
                    run_task(db, settings, task)
                except Exception as e:
                    _count_run(task.name, "failed", started)
                    log.exception("scheduler.task_failed task=%s", task.name)
                    if task.name not in failing:
                        failing.add(task.name)
                        _audit(db, "scheduler.task_failed", task.name,
                               {"error": f"{type(e).__name__}: {e}"[:2000]})
                else:
                    _count_run(task.name, "ok", started)
                    if task.name in failing:
                        failing.discard(task.name)
                        log.info("scheduler.task_recovered task=%s", task.name)
                        _audit(db, "scheduler.task_recovered", task.name, {})
                next_run[task.name] = time.monotonic() + task.interval(settings)
            wait = min(next_run.values(), default=time.monotonic() + STANDBY_POLL_S)
            stop.wait(min(STANDBY_POLL_S, max(0.05, wait - time.monotonic())))
    finally:
        lock.release()
        log.info("scheduler.stop")
