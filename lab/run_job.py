"""The ``lab_run`` job: what happens to an analyzer run once it is stored.

In order, in the worker's one transaction: the run's QC (Westgard, lab/qc.py) holds the
patient results of failed analytes; autoverification judges the run's results
(lab/autoverify.py); the autoverified ones go back to their sites (lab/results_out.py);
each critical one opens its closed-loop notice (lab/critical.py).  One transaction so
that a result is never released before its QC was looked at, and a failure leaves the
run as it was for the retry.

Idempotent when the job runs twice: QC is evaluated once per run (the run's state says
so), only pending results are judged, a result already carried by a message is not sent
again, and a critical notice is opened once per result.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.jobs import SkipJob
from core.models import Job
from core.models.lab import LabResult, LabRun
from lab import autoverify, critical, qc, results_out
from lab.states import ResultState

log = logging.getLogger(__name__)

JOB_KIND = "lab_run"
#: The run's state once QC and autoverification are done.
EVALUATED = "evaluated"


def process_run(session: Session, run_id: int, now: datetime | None = None) -> dict[str, int]:
    """QC, autoverification, release and critical notices of one run; counts by outcome."""
    run = session.get(LabRun, run_id)
    if run is None:
        raise SkipJob(f"lab run {run_id} does not exist")
    moment = now or datetime.now(UTC)
    if run.state != EVALUATED:
        qc.evaluate_run(session, run, now=moment)
    autoverify.verify_run(session, run_id, now=moment)
    results = list(session.scalars(
        select(LabResult).where(LabResult.run_id == run_id).order_by(LabResult.id)))
    to_release = [r for r in results
                  if r.state == ResultState.AUTOVERIFIED and r.message_id is None]
    if to_release:
        results_out.release(session, to_release, actor=autoverify.ACTOR)
    criticals = [r for r in results if r.critical
                 and r.state not in (ResultState.REJECTED, ResultState.RERUN)]
    for r in criticals:
        # Censored values (">10" beyond the measuring range) too: a critical value is
        # never left un-notified (lab.critical reads them back with the comparator).
        critical.open_notice(session, r, now=moment)
    run.state = EVALUATED
    session.flush()
    return {"results": len(results),
            "autoverified": sum(r.state == ResultState.AUTOVERIFIED for r in results),
            "held": sum(r.state == ResultState.HELD for r in results),
            "released": len(to_release), "critical": len(criticals)}


def run_lab_run(session: Session, job: Job) -> None:
    """Job handler (core.jobs.register_handler(JOB_KIND, run_lab_run)): params
    {"run_id": id}."""
    params = job.params or {}
    try:
        run_id = int(params["run_id"])
    except (KeyError, TypeError, ValueError) as e:
        raise SkipJob(f"lab_run job without a valid run_id: {params!r}") from e
    process_run(session, run_id)
