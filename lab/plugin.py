"""What the lab center declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import jobs, scheduler
from core.settings import Settings

#: How often the scheduler looks for critical values nobody acknowledged in time (seconds).
#: The tiers' own timers (RDC_LAB_CRITICAL_ESCALATION_S) decide who is due; this is only
#: how late past its time an escalation may be.
ESCALATION_CHECK_S = 10.0


def _escalate(session: Session, settings: Settings) -> object:
    from lab import critical

    return critical.escalate_due(session, settings)


def register() -> None:
    """The ``lab_run`` job (a run's QC, autoverification, release and critical notices),
    the periodic critical-value escalation and the stability re-check of waiting tubes."""
    from lab import run_job, stability

    jobs.register_handler(run_job.JOB_KIND, run_job.run_lab_run)
    scheduler.register_periodic("lab.critical_escalation", ESCALATION_CHECK_S, _escalate)
    # Tubes waiting at the center that pass their stability window are held before
    # anyone puts them on an analyzer.
    scheduler.register_periodic(stability.RECHECK_TASK, stability.RECHECK_S,
                                stability.recheck_waiting)
