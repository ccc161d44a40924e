"""Response headers that keep patient data out of shared workstations' browser caches.

Reading rooms and county clerks' desks are shared computers, so nothing with patient
data may stay in the browser's cache after the person walks away:

* ``/api/...`` and ``/share/...`` (and the admins' ``/docs`` and ``/openapi.json``)
  always answer ``Cache-Control: no-store``, whatever the route set, errors included.
* ``/dicom-web/...`` keeps the ``Cache-Control`` the proxy chose (``private,
  no-store``); an answer without one gets ``private, no-store`` here.
* Every answer carries ``X-Content-Type-Options: nosniff``.
* Signing out answers ``Clear-Site-Data: "cache"``, so that a browser also drops
  anything it kept for this origin.

The built front end (``/``, ``/assets/...``) keeps its own caching: it holds no
patient data, and its content-hashed assets are immutable
(:mod:`viewer.frontend_routes`).

A plain ASGI middleware rather than ``BaseHTTPMiddleware``: it only rewrites the
response start, so streamed answers (DICOMweb frames) pass through untouched.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE = "no-store"
DICOMWEB_DEFAULT_CACHE = "private, no-store"
#: Paths whose answers may hold patient data (or describe the API): never stored.
NO_STORE_PREFIXES = ("/api/", "/share/", "/docs", "/openapi.json")
DICOMWEB_PREFIX = "/dicom-web/"
LOGOUT_PATH = "/api/auth/logout"


def cache_policy(path: str) -> tuple[str | None, bool]:
    """``(Cache-Control to set, whether to keep one the route set)`` for ``path``."""
    if path.startswith(NO_STORE_PREFIXES) or path in ("/api", "/share"):
        return NO_STORE, False
    if path.startswith(DICOMWEB_PREFIX) or path == DICOMWEB_PREFIX.rstrip("/"):
        return DICOMWEB_DEFAULT_CACHE, True
    return None, True


class PatientDataHeaders:
    """ASGI middleware applying :func:`cache_policy` and ``nosniff`` to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        cache, keep_route_value = cache_policy(path)
        logout = path == LOGOUT_PATH

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if cache is not None and not (keep_route_value and "cache-control" in headers):
                    headers["Cache-Control"] = cache
                if logout:
                    headers["Clear-Site-Data"] = '"cache"'
            await send(message)

        await self.app(scope, receive, send_with_headers)
