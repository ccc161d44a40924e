"""Is what a role depends on reachable?  The database, the broker and Orthanc, checked
in the background with short deadlines, the answer cached for a few seconds.

A liveness probe is polled often (load balancers, ``rdc up``'s tests four times a
second) and must answer at once even while a dependency hangs: so each check runs in
a daemon thread of its own with a deadline, one at a time per dependency (a check that
still hangs is reported as ``timeout`` and not started again beside itself), and a
report is reused for :attr:`DependencyChecks.ttl_s`.

A report says only ``ok``, ``down`` or ``timeout``, the check's latency and the
exception's type: the probe is public, and an error message may name hosts and
users.  The message goes to the log instead (once per change of a dependency's state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from core.settings import Settings

log = logging.getLogger(__name__)

#: A check returns normally when the dependency answers and raises otherwise.
Check = Callable[[], None]


@dataclass(frozen=True)
class DependencyStatus:
    status: Literal["ok", "down", "timeout"]
    #: How long the check took (None: it has not finished).
    latency_ms: float | None = None
    #: The exception's type when down (never its message: the report is public).
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Probe:
    """One dependency's check, run in its own thread at most once at a time."""

    def __init__(self, name: str, check: Check) -> None:
        self.name = name
        self.check = check
        self.done = threading.Event()
        self.done.set()
        self.result = DependencyStatus("timeout")
        self.last_status: str | None = None

    def start(self) -> None:
        if not self.done.is_set():
            return  # the previous check still runs (hangs): it is the one to wait for
        self.done.clear()
        threading.Thread(target=self._run, name=f"health-{self.name}", daemon=True).start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.check()
        except Exception as e:
            result = DependencyStatus("down", round((time.perf_counter() - started) * 1000, 1),
                                      type(e).__name__)
            if self.last_status != "down":
                log.warning("health.down dependency=%s error=%s: %s", self.name,
                            type(e).__name__, e)
        else:
            result = DependencyStatus("ok", round((time.perf_counter() - started) * 1000, 1))
            if self.last_status not in (None, "ok"):
                log.info("health.up dependency=%s", self.name)
        self.last_status = result.status
        self.result = result
        self.done.set()


class DependencyChecks:
    """The dependencies of one role, checked on demand (see the module doc)."""

    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float = 3.0,
                 ttl_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self._probes = {name: _Probe(name, check) for name, check in checks.items()}
        self._lock = threading.Lock()
        self._report: dict[str, DependencyStatus] | None = None
        self._at = 0.0

    def report(self) -> dict[str, DependencyStatus]:
        """Each dependency's status, at most ``ttl_s`` old; waits at most ``timeout_s``."""
        with self._lock:
            if self._report is not None and time.monotonic() - self._at < self.ttl_s:
                return self._report
            for probe in self._probes.values():
                probe.start()
            deadline = time.monotonic() + self.timeout_s
            report: dict[str, DependencyStatus] = {}
            for name, probe in self._probes.items():
                if probe.done.wait(max(0.0, deadline - time.monotonic())):
                    report[name] = probe.result
                else:
                    report[name] = DependencyStatus("timeout")
            self._report, self._at = report, time.monotonic()
            return report


# The checks -----------------------------------------------------------------------------
def check_database(settings: Settings, timeout_s: float) -> Check:
    """``SELECT 1`` on the center's database (migrated on its first use)."""

    def check() -> None:
        from sqlalchemy import text

        from core.db import get_database

        with get_database(settings.database_url).engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return check


def check_broker(settings: Settings, timeout_s: float) -> Check:
    """A connection to the job queue's broker (Redis, RabbitMQ or the folder)."""

    def check() -> None:
        from kombu.connection import Connection

        from core.queue import broker_options

        with Connection(settings.broker_url, connect_timeout=timeout_s,  # type: ignore[no-untyped-call]
                        transport_options=broker_options(settings)) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                   timeout=timeout_s)

    return check


def check_orthanc(settings: Settings, timeout_s: float) -> Check:
    """Orthanc's ``/system`` with the center's credentials."""

    def check() -> None:
        from core.orthanc_client import OrthancClient

        with OrthancClient.from_settings(settings, retries=0, timeout=timeout_s) as orthanc:
            orthanc.system()

    return check


def web_dependencies(settings: Settings, *, timeout_s: float = 3.0,
                     ttl_s: float = 5.0) -> DependencyChecks:
    """What the web app needs: the database (sessions, worklists), the broker (signed
    results are scheduled for delivery) and Orthanc (images, reports' objects)."""
    return DependencyChecks({
        "database": check_database(settings, timeout_s),
        "broker": check_broker(settings, timeout_s),
        "orthanc": check_orthanc(settings, timeout_s),
    }, timeout_s=timeout_s, ttl_s=ttl_s)
