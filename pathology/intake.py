"""The ``pathology_intake`` job: a complete SM study becomes (part of) a pathology case."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core import jobs
from core.models import Job

JOB_KIND = "pathology_intake"


def run_pathology_intake(session: Session, job: Job) -> None:
    """Create the case and its slides, and grade each new slide (being built)."""
    raise jobs.TransientJobError("pathology intake is not built yet")
