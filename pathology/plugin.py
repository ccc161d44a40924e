"""What the pathology reading domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs, scheduler
from pathology import frozen, report_prefill
from pathology.intake import JOB_KIND as INTAKE_JOB_KIND
from pathology.intake import run_pathology_intake
from reports import registry as reports

#: How often the scheduler looks for unanswered frozen-section pages (seconds).
ESCALATION_CHECK_S = 30.0


def register() -> None:
    """Job handlers (intake + quality gate), the frozen-section escalation, the report."""
    jobs.register_db_handler(INTAKE_JOB_KIND, run_pathology_intake)
    scheduler.register_periodic("pathology.frozen_escalation", ESCALATION_CHECK_S,
                                frozen.escalate_unanswered)
    reports.register_prefill(report_prefill.PREFILL_KINDS, report_prefill.pathology_prefill)
    reports.register_templates(report_prefill.TEMPLATES_DIR)
