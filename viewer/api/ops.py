"""Operations routes: liveness and the per-site counts scripts watch."""

from __future__ import annotations

from fastapi import APIRouter, Request

from core.health import DependencyChecks
from core.stats import job_counts, site_status
from viewer.deps import Operator, SessionDep
from viewer.schemas import DependencyOut, HealthOut, SiteStatusOut, StatusOut

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz(request: Request) -> HealthOut:
    """Liveness probe for load balancers: 200 with ``status: ok`` while this process
    answers, whatever its dependencies do (a web app restarted for a database outage
    would not bring the database back).  ``dependencies`` says whether the database,
    the broker and Orthanc answer (core/health.py: checked with short deadlines, at most
    a few seconds old) and ``ready`` whether all of them do.  Says nothing about
    patients."""
    checks: DependencyChecks | None = getattr(request.app.state, "health", None)
    report = checks.report() if checks is not None else {}
    return HealthOut(status="ok", role="web", ready=all(d.ok for d in report.values()),
                     dependencies={name: DependencyOut(status=d.status, latency_ms=d.latency_ms,
                                                       error=d.error)
                                   for name, d in report.items()})


@router.get("/api/status")
def api_status(s: SessionDep, _: Operator) -> StatusOut:
    """Per-site instance counts and job states."""
    return StatusOut(sites=[SiteStatusOut.model_validate(r) for r in site_status(s)],
                     jobs=job_counts(s))
