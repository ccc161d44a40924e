"""FastAPI application factory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from core.db import get_database
from core.settings import get_settings
from core.stats import job_counts, site_status
from viewer.auth import require_operator

Operator = Annotated[str, Depends(require_operator)]


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title=settings.center_name, version="0.1.0",
                  description="Regional imaging and diagnostic center API.")

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness probe for load balancers; says nothing about patients."""
        return {"status": "ok"}

    @app.get("/api/status", tags=["ops"])
    def api_status(_: Operator) -> dict[str, Any]:
        """Per-site instance counts and job states."""
        db = get_database(settings.database_url)
        with db.session() as s:
            return {"sites": [asdict(r) for r in site_status(s)], "jobs": job_counts(s)}

    return app
