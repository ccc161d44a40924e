"""FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.errors import RDCError
from core.health import web_dependencies
from core.settings import get_settings
from viewer.api import auth, dicomweb, ecg, front_door, lab, ops, pathology, reports, worklist
from viewer.deployment import check_production, trust_proxy_headers
from viewer.frontend_routes import DEFAULT_STATIC_DIR, mount_docs, mount_frontend
from viewer.headers import PatientDataHeaders
from viewer.request_metrics import RequestMetrics


def create_app() -> FastAPI:
    settings = get_settings()
    check_production(settings)  # no session cookie over plain HTTP in production
    # No open /docs, /redoc or /openapi.json: mount_docs serves them to admins and the
    # operator token, with Swagger UI from the build instead of a CDN.
    app = FastAPI(title=settings.center_name, version="0.1.0",
                  description="Regional imaging and diagnostic center API.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(PatientDataHeaders)
    app.add_middleware(RequestMetrics)  # outside the headers: it times them too
    app.state.health = web_dependencies(settings)  # what /healthz reports
    trust_proxy_headers(app, settings)  # added last: it runs first, so all see the client

    @app.exception_handler(RDCError)
    def rdc_error(_request: Request, exc: RDCError) -> JSONResponse:
        # The one place where domain errors become HTTP answers.
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__},
                            status_code=exc.http_status)

    for api in (ops, auth, front_door, worklist, reports, ecg, pathology, lab, dicomweb):
        app.include_router(api.router)
    static_dir = settings.web_static_dir or DEFAULT_STATIC_DIR
    mount_docs(app, static_dir)
    mount_frontend(app, static_dir)  # last: the SPA answers what the API does not
    return app
