"""Operations routes: liveness and the per-site counts scripts watch."""

from __future__ import annotations

from fastapi import APIRouter

from core.stats import job_counts, site_status
from viewer.deps import Operator, SessionDep
from viewer.schemas import HealthOut, SiteStatusOut, StatusOut

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> HealthOut:
    """Liveness probe for load balancers; says nothing about patients."""
    return HealthOut(status="ok")


@router.get("/api/status")
def api_status(s: SessionDep, _: Operator) -> StatusOut:
    """Per-site instance counts and job states."""
    return StatusOut(sites=[SiteStatusOut.model_validate(r) for r in site_status(s)],
                     jobs=job_counts(s))
