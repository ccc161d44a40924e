"""FastAPI application factory."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.db import get_database
from core.errors import RDCError
from core.settings import get_settings
from core.stats import job_counts, site_status
from viewer.auth import Operator
from viewer.auth_api import router as auth_router
from viewer.deployment import check_production, trust_proxy_headers
from viewer.dicomweb_proxy import router as dicomweb_router
from viewer.ecg_api import router as ecg_router
from viewer.front_door_api import router as front_door_router
from viewer.frontend_routes import DEFAULT_STATIC_DIR, mount_docs, mount_frontend
from viewer.headers import PatientDataHeaders
from viewer.reports_api import router as reports_router
from viewer.worklist_api import router as worklist_router


def create_app() -> FastAPI:
    settings = get_settings()
    check_production(settings)  # no session cookie over plain HTTP in production
    # No open /docs, /redoc or /openapi.json: mount_docs serves them to admins and the
    # operator token, with Swagger UI from the build instead of a CDN.
    app = FastAPI(title=settings.center_name, version="0.1.0",
                  description="Regional imaging and diagnostic center API.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(PatientDataHeaders)
    trust_proxy_headers(app, settings)  # added last: it runs first, so all see the client

    @app.exception_handler(RDCError)
    def rdc_error(_request: Request, exc: RDCError) -> JSONResponse:
        # The one place where domain errors become HTTP answers.
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__},
                            status_code=exc.http_status)

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

    app.include_router(auth_router)
    app.include_router(front_door_router)
    app.include_router(worklist_router)
    app.include_router(reports_router)
    app.include_router(ecg_router)
    app.include_router(dicomweb_router)
    static_dir = settings.web_static_dir or DEFAULT_STATIC_DIR
    mount_docs(app, static_dir)
    mount_frontend(app, static_dir)  # last: the SPA answers what the API does not
    return app
