"""Jobs: creation keyed by what they process, and their execution protocol.

Domain packages register a handler per job kind; the worker task only loads
the job by ID, moves it through its state machine and calls the handler.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit, metrics
from core import queue as job_queue
from core.db import Database, after_commit
from core.log_context import log_context
from core.models import Job
from core.states import JobState, check_transition

log = logging.getLogger(__name__)

#: Queues whose jobs are done by people (worklists), not by workers.
HUMAN_QUEUES = frozenset({"reading"})


class TransientJobError(Exception):
    """The job may succeed if tried again later (a service was down)."""


class SkipJob(Exception):
    """The job does not apply to its object; the message says why, for people."""


class JobFailed(Exception):
    """The handler did its work and its outcome is a failure, already recorded where it
    belongs (a delivery attempt that the site refused): the job ends ``failed`` with this
    message, logged without a traceback since nothing in the code went wrong."""


Handler = Callable[[Session, Job], None]
_HANDLERS: dict[str, Handler] = {}


DbHandler = Callable[[Database, Job], None]
_DB_HANDLERS: dict[str, DbHandler] = {}


def register_db_handler(kind: str, fn: DbHandler) -> None:
    """Declare the handler of ``kind`` that opens its own sessions (it gets a detached job).

    For work that commits as it goes, such as a batch that claims and finishes
    other jobs: on SQLite, a long transaction held open around those commits
    would see a stale snapshot and could not write the job's state afterwards.
    The handler's own writes must then be idempotent, since the job's state is
    recorded in a separate transaction.

    Called from a domain's ``plugin.register()`` (see ``rdc/domains.py``), never at
    import time, so that which kinds run is declared in one place.
    """
    _check_free(kind, fn)
    _DB_HANDLERS[kind] = fn


def register_handler(kind: str, fn: Handler) -> None:
    """Declare the function that runs jobs of ``kind`` inside the worker's session."""
    _check_free(kind, fn)
    _HANDLERS[kind] = fn


def _check_free(kind: str, fn: object) -> None:
    taken = _HANDLERS.get(kind) or _DB_HANDLERS.get(kind)
    if taken is not None and taken is not fn:
        raise ValueError(f"job kind {kind!r} is already handled by {taken!r}; "
                         f"two domains cannot claim one kind")


def registered_kinds() -> frozenset[str]:
    """The job kinds some domain has declared (``rdc check`` and the worker use it)."""
    return frozenset(_HANDLERS) | frozenset(_DB_HANDLERS)


@dataclass(frozen=True)
class NewJob:
    key: str
    kind: str
    queue: str
    study_id: int | None = None
    priority: int = 5
    rule: str = ""
    params: dict[str, Any] | None = None


def create_job(session: Session, spec: NewJob) -> tuple[Job, bool]:
    """Create the job unless one with the same key exists; returns (job, created)."""
    existing = session.scalar(select(Job).where(Job.key == spec.key))
    if existing is not None:
        return existing, False
    job = Job(key=spec.key, kind=spec.kind, queue=spec.queue, study_id=spec.study_id,
              priority=spec.priority, rule=spec.rule, params=spec.params or {},
              state=JobState.QUEUED)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # Another process created it between our look-up and insert.
        found = session.scalar(select(Job).where(Job.key == spec.key))
        assert found is not None
        return found, False
    audit.append(session, actor="system", action="job.create", object_type="job",
                 object_id=str(job.id), detail={"key": job.key, "kind": job.kind,
                                                "queue": job.queue, "rule": job.rule})
    return job, True


def enqueue_after_commit(session: Session, job: Job) -> None:
    """Hand ``job`` to the queue by ID once ``session`` has committed.

    Only then is the job's row visible to the worker that gets the message.  For a
    job that exists already and needs another message: stale-job recovery, a
    delivery attempt nudged again.
    """
    after_commit(session, partial(job_queue.enqueue_job, job.id, job.key, job.queue,
                                  job.priority))


def submit(session: Session, spec: NewJob) -> tuple[Job, bool]:
    """Create the job (see :func:`create_job`) and, when it is new and machine work,
    queue it once the session commits; returns (job, created).

    The one way a package starts work: a job that existed already was queued by
    whoever created it, and a job on a human queue (:data:`HUMAN_QUEUES`) waits on
    a worklist, never in the broker.
    """
    job, created = create_job(session, spec)
    if created and job.queue not in HUMAN_QUEUES:
        enqueue_after_commit(session, job)
    return job, created


def _move(job: Job, new: JobState) -> None:
    check_transition(JobState, job.state, new)
    job.state = new
    job.updated_at = datetime.now(UTC)


BUSY = "busy"


def _held(job: Job, lease_s: float | None) -> bool:
    """A running job touched within its lease is being worked on by someone."""
    if lease_s is None or job.state != JobState.RUNNING:
        return False
    return datetime.now(UTC) - job.updated_at < timedelta(seconds=lease_s)


def execute(db: Database, job_id: int, max_attempts: int = 5,
            expected_key: str | None = None, lease_s: float | None = None) -> str:
    """Run one job by ID.  Safe to call again for the same job: a finished job is skipped.

    A message whose key does not match the job with that ID was meant for
    another database (a broker shared or reused by another center) and is
    dropped; so is a message for a job that people, not workers, do.
    Returns the job's final state for this attempt.
    """
    with db.session() as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            log.warning("job.missing job_id=%s", job_id)
            return "missing"
        if expected_key is not None and job.key != expected_key:
            log.error("job.foreign_message job_id=%s key=%r ours=%r", job_id, expected_key,
                      job.key)
            return "foreign"
        if job.queue in HUMAN_QUEUES:
            log.error("job.human_job_on_queue job_id=%s queue=%s", job_id, job.queue)
            return "not-for-workers"
        if job.state in (JobState.SUCCEEDED, JobState.SKIPPED, JobState.DEAD):
            log.info("job.skip job_id=%s state=%s", job_id, job.state)
            return str(job.state)
        if _held(job, lease_s):
            log.info("job.busy job_id=%s", job_id)
            return BUSY
        if job.state == JobState.FAILED:
            _move(job, JobState.QUEUED)
        if job.state == JobState.QUEUED:
            _move(job, JobState.RUNNING)
        job.updated_at = datetime.now(UTC)
        job.attempts += 1
        kind = job.kind
        created_at, study_id = job.created_at, job.study_id
    with log_context(job_id=job_id, study_id=study_id):
        if kind in _DB_HANDLERS:
            return _execute_self_managed(db, job_id, kind, max_attempts, created_at)
        return _execute_in_session(db, job_id, kind, max_attempts, created_at)


def _execute_in_session(db: Database, job_id: int, kind: str, max_attempts: int,
                        created_at: datetime | None) -> str:
    fn = _HANDLERS.get(kind)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        started = time.monotonic()
        try:
            if fn is None:
                raise LookupError(f"no handler registered for job kind {kind!r}: is its domain "
                                  f"listed in rdc/domains.py?")
            with s.begin_nested():
                fn(s, job)
            error = None
        except Exception as e:
            error = e
        run_s = time.monotonic() - started
        outcome = _record(s, job, kind, error, max_attempts)
    _observe(kind, outcome, created_at, run_s)
    log.info("job.done job_id=%s kind=%s state=%s", job_id, kind, outcome)
    return str(outcome)


def _observe(kind: str, outcome: str, created_at: datetime | None,
             run_s: float | None = None) -> None:
    """Count a job's recorded outcome in the worker's metrics (core/metrics.py)."""
    metrics.JOBS.labels(kind=kind, outcome=outcome).inc()
    if outcome in (JobState.FAILED, JobState.DEAD):
        metrics.JOB_FAILURES.labels(kind=kind).inc()
    if run_s is not None:
        metrics.JOB_RUN_SECONDS.labels(kind=kind).observe(run_s)
    latency = metrics.seconds_since(created_at)
    if outcome != JobState.QUEUED and latency is not None:  # QUEUED: not finished yet
        metrics.JOB_LATENCY_SECONDS.labels(kind=kind).observe(latency)


def _record(s: Session, job: Job, kind: str, error: Exception | None,
            max_attempts: int) -> JobState:
    """Move ``job`` to the state its handler's outcome calls for, with an audit record."""
    if error is None:
        outcome = JobState.SUCCEEDED
        job.error = None
    elif isinstance(error, SkipJob):
        job.error = f"skipped: {error}"
        outcome = JobState.SKIPPED
        log.info("job.skipped job_id=%s kind=%s reason=%s", job.id, kind, error)
    elif isinstance(error, JobFailed):
        job.error = str(error)
        outcome = JobState.FAILED
        log.warning("job.failed job_id=%s kind=%s reason=%s", job.id, kind, error)
    elif isinstance(error, TransientJobError):
        job.error = f"transient: {error}"
        outcome = JobState.QUEUED if job.attempts < max_attempts else JobState.DEAD
    else:
        job.error = "".join(traceback.format_exception_only(error)).strip()
        log.error("job.failed job_id=%s kind=%s", job.id, kind, exc_info=error)
        outcome = JobState.FAILED
    _move(job, outcome)
    audit.append(s, actor="worker", action=f"job.{outcome}", object_type="job",
                 object_id=str(job.id), detail={"kind": kind, "error": job.error})
    return outcome


def _execute_self_managed(db: Database, job_id: int, kind: str, max_attempts: int,
                          created_at: datetime | None = None) -> str:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
    started = time.monotonic()
    try:
        _DB_HANDLERS[kind](db, job)
        error: Exception | None = None
    except Exception as e:
        error = e
    run_s = time.monotonic() - started
    with db.session() as s:
        current = s.get(Job, job_id, with_for_update=True)
        assert current is not None
        if current.state != JobState.RUNNING:  # finished meanwhile by a duplicate run
            log.info("job.already_finished job_id=%s state=%s", job_id, current.state)
            return str(current.state)
        outcome = _record(s, current, kind, error, max_attempts)
    _observe(kind, outcome, created_at, run_s)
    log.info("job.done job_id=%s kind=%s state=%s", job_id, kind, outcome)
    return str(outcome)


def claim_queued(db: Database, kind: str, key_prefix: str, limit: int,
                 exclude: set[int]) -> list[int]:
    """Move up to ``limit`` queued jobs of ``kind`` whose key starts with ``key_prefix``
    to running, highest priority and oldest first; returns their IDs.

    This is how a worker fills a batch: the jobs' own messages stay in the broker
    and find the jobs finished when they arrive, so nothing is acknowledged early.
    Each claim is one conditional UPDATE, so two workers never claim the same job.
    """
    if limit <= 0:
        return []
    with db.session() as s:
        candidates = list(s.scalars(
            select(Job.id).where(Job.kind == kind, Job.state == JobState.QUEUED,
                                 Job.key.startswith(key_prefix, autoescape=True),
                                 Job.id.not_in(exclude or {-1}))
            .order_by(Job.priority.desc(), Job.id).limit(limit * 2)))
    claimed: list[int] = []
    for job_id in candidates:
        if len(claimed) >= limit:
            break
        with db.session() as s:
            moved = s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(state=JobState.RUNNING, attempts=Job.attempts + 1,
                        updated_at=datetime.now(UTC)))
            if getattr(moved, "rowcount", 0) == 1:
                claimed.append(job_id)
    return claimed


def finish_claimed_many(db: Database,
                        outcomes: Sequence[tuple[int, JobState, str | None]]) -> None:
    """Record the outcomes of jobs a batch claimed (see :func:`claim_queued`), in one
    transaction.

    One commit per batch instead of one per job: on SQLite each commit is an fsync
    and a turn of the database's single write lock.
    """
    if not outcomes:
        return
    finished: list[tuple[str, JobState, datetime | None]] = []
    with db.session() as s:
        for job_id, outcome, error in outcomes:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.RUNNING:
                continue
            _move(job, outcome)
            finished.append((job.kind, outcome, job.created_at))
            job.error = error
            audit.append(s, actor="worker", action=f"job.{outcome}", object_type="job",
                         object_id=str(job_id), detail={"kind": job.kind, "error": error,
                                                        "batched": True})
    for kind, outcome, created_at in finished:
        _observe(kind, outcome, created_at)


def touch(db: Database, job_ids: list[int]) -> None:
    """Keep long-running jobs from looking stale (see :func:`stale_jobs`)."""
    with db.session() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids), Job.state == JobState.RUNNING)
                  .values(updated_at=datetime.now(UTC)))


def stale_jobs(session: Session, older_than_s: float) -> list[Job]:
    """Machine jobs queued or running for too long: their message may have been lost."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    rows = session.scalars(
        select(Job).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]),
                          Job.updated_at < cutoff, Job.queue.not_in(HUMAN_QUEUES))
    ).all()
    for job in rows:
        if job.state == JobState.RUNNING:
            _move(job, JobState.QUEUED)
        job.updated_at = datetime.now(UTC)
    return list(rows)


def requeue_stale(session: Session, older_than_s: float) -> list[int]:
    """Queue again every stale job (see :func:`stale_jobs`) once ``session`` commits;
    returns their IDs.  A periodic task of the center's scheduler (``core.scheduler``).
    A duplicate message is harmless: :func:`execute` skips a finished job."""
    ids: list[int] = []
    for job in stale_jobs(session, older_than_s):
        log.warning("job.requeue_stale job_id=%s kind=%s", job.id, job.kind)
        metrics.JOBS_REQUEUED_STALE.labels(kind=job.kind).inc()
        enqueue_after_commit(session, job)
        ids.append(job.id)
    return ids
