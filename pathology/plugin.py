"""What the pathology reading domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs
from pathology.intake import JOB_KIND as INTAKE_JOB_KIND
from pathology.intake import run_pathology_intake


def register() -> None:
    """Job handlers (intake + quality gate), the frozen-section escalation, the report."""
    jobs.register_handler(INTAKE_JOB_KIND, run_pathology_intake)
