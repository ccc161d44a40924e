"""The center's scheduler (core/scheduler.py, ``rdc scheduler``): recovery without the gateway.

Delivery retries and stale-job recovery used to run in the gateway's monitor thread, so
a stopped gateway stopped them.  Here the gateway never runs: the scheduler process and a
worker alone bring a due retry and a job whose worker died to the county's PACS.  Then the
registry and the one-scheduler-per-center lock, on the same real database.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import core.queue
from conftest import Center, free_port, wait_until
from core import jobs, scheduler
from core.models import AuditRecord, Delivery, Job
from core.states import JobState
from rdc.supervisor import center_specs, port_listening
from test_delivery import (
    CountySCP,
    audit_actions,
    job_of,
    make_outputs,
    register_site,
    reload,
    schedule,
    signed_version,
    upload,
)


def _lost(*_: Any, **__: Any) -> None:
    """A broker that loses the message (a restart between commit and delivery)."""


def test_scheduler_retries_a_due_delivery_and_recovers_a_stale_job_with_no_gateway(
        env_center: Center, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = env_center
    c.start_orthanc()
    port = free_port()  # the county PACS is down for the first attempt
    register_site(c, "county-a", "COUNTY_A", port)
    retried, recovered = make_outputs("Retried by the scheduler."), make_outputs("Recovered.")
    upload(c, retried)
    upload(c, recovered)
    with monkeypatch.context() as m:
        m.setattr(core.queue, "enqueue_job", _lost)  # no stray messages: only recovery queues
        a = schedule(c, signed_version(c, "county-a", retried), "county-a")
        b = schedule(c, signed_version(c, "county-a", recovered), "county-a")
    first_a, job_b = job_of(c, a.id), job_of(c, b.id)

    # A: its first attempt failed; make its backoff (30 s) over already.
    assert jobs.execute(c.db, first_a) == "failed"
    # B: a worker took its job and died before the attempt began: running, untouched for
    # an hour, and no message left in the broker.
    with c.db.session() as s:
        delivery_a = s.get(Delivery, a.id)
        assert delivery_a is not None and delivery_a.state == "failed"
        delivery_a.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
        job = s.get(Job, job_b)
        assert job is not None and job.state == JobState.QUEUED
        job.state = JobState.RUNNING
        job.attempts = 1
        job.updated_at = datetime.now(UTC) - timedelta(hours=1)

    scp = CountySCP(port, tmp_path / "county").start()
    try:
        c.extra_env["RDC_JOB_STALE_AFTER_S"] = "60"
        c.start_worker()
        sched = c._rdc("scheduler", log="scheduler")
        try:
            assert c.gateway_proc is None and not port_listening(c.gateway_port)
            wait_until(lambda: reload(c, a.id).state == "sent" and reload(c, b.id).state == "sent",
                       90, f"both deliveries sent by the scheduler and worker\n{c.logs()}")
            assert sched.poll() is None, c.logs()
        finally:
            sched.terminate()
            assert sched.wait(30) == 0, c.logs()
    finally:
        scp.stop()

    assert not port_listening(c.gateway_port)  # no gateway at any time
    assert scp.received == Counter({uid: 1 for uid, _ in [*retried.values(),
                                                          *recovered.values()]})
    sent_a, sent_b = reload(c, a.id), reload(c, b.id)
    assert sent_a.attempts == 2 and sent_a.job_id != first_a
    assert sent_b.attempts == 1 and sent_b.job_id == job_b
    assert "delivery.requeue" in audit_actions(c, a.id)
    assert "delivery.requeue" not in audit_actions(c, b.id)
    log_text = (c.home / "logs" / "scheduler.log").read_text()
    assert f"job.requeue_stale job_id={job_b} kind=deliver" in log_text
    assert "scheduler.active" in log_text and "scheduler.stop" in log_text


def test_only_one_scheduler_runs_per_center_and_a_failing_task_is_audited_once(
        center_any_db: Center) -> None:
    c = center_any_db  # PostgreSQL: an advisory lock; SQLite: a file lock by the database
    settings, db = c.settings, c.db
    first, second = scheduler.SchedulerLock(db, settings), scheduler.SchedulerLock(db, settings)
    assert first.hold() and first.hold()  # taken, then confirmed
    assert not second.hold()  # another process (a second `rdc up`) waits in standby
    first.release()
    assert second.hold()
    second.release()

    # A task that fails keeps the loop going: the other tasks still run, the failure is
    # audited once for the streak, and its recovery once.
    runs: list[str] = []
    fail = threading.Event()
    fail.set()

    def flaky(_session: object, _settings: object) -> None:
        runs.append("flaky")
        if fail.is_set():
            raise RuntimeError("the site registry is unreadable")

    name = f"test.flaky.{os.getpid()}"
    scheduler.register_periodic(name, 0.05, flaky)
    scheduler.register_periodic(name, 0.05, flaky)  # the same declaration again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        scheduler.register_periodic(name, 0.05, lambda _s, _t: None)
    with pytest.raises(ValueError, match="already registered"):
        scheduler.register_periodic("jobs.recover_stale", None, flaky)
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_scheduler, args=(settings, stop),
                              kwargs={"db": db})
    try:
        thread.start()
        wait_until(lambda: runs.count("flaky") >= 5, 20, "the failing task tried again")
        fail.clear()
        count = len(runs)
        wait_until(lambda: len(runs) >= count + 3, 20, "the task ran again after recovering")
    finally:
        stop.set()
        thread.join(20)
        scheduler._TASKS.pop(name, None)
    assert not thread.is_alive()
    with db.session() as s:
        actions = list(s.scalars(select(AuditRecord.action).where(
            AuditRecord.object_type == "periodic_task", AuditRecord.object_id == name)
            .order_by(AuditRecord.seq)))
    assert actions == ["scheduler.task_failed", "scheduler.task_recovered"]
    assert "scheduler" in [spec.name for spec in center_specs(settings)]
