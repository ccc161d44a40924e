"""Celery tasks: thin, by ID, idempotent.  The logic lives in :mod:`core.jobs`.

The worker entry point imports the domain modules that register job handlers
before it starts, so the core never imports a domain package.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_shutdown

from core import jobs, metrics
from core.db import get_database
from core.log_context import log_context
from core.queue import get_app
from core.settings import get_settings
from core.states import JobState

app = get_app()


@app.task(name="rdc.run_job", bind=True, max_retries=5)  # type: ignore[untyped-decorator]
def run_job(self: object, job_id: int, key: str | None = None) -> str:
    settings = get_settings()
    db = get_database(settings.database_url)
    with log_context(job_id=int(job_id)):
        outcome = jobs.execute(db, int(job_id), expected_key=key, lease_s=settings.job_lease_s)
    if outcome == jobs.BUSY:
        # Another worker holds the job (a batch claimed it); look again after a while.
        # If that worker died, its lease runs out and this message runs the job.
        raise self.retry(countdown=max(1.0, settings.job_lease_s / 3),  # type: ignore[attr-defined]
                         max_retries=10_000)
    if outcome == JobState.QUEUED:
        # Transient failure: come back later with backoff.
        retries = getattr(getattr(self, "request", None), "retries", 0) or 0
        raise self.retry(countdown=min(300, 5 * 2 ** retries))  # type: ignore[attr-defined]
    return outcome


@worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _pool_process_exits(pid: int | None = None, **_: Any) -> None:
    """A pool process leaves the worker's metrics (its counters stay in the sums)."""
    if pid is not None:
        metrics.process_exited(pid)
