"""Request latency of the web app for Prometheus, by route template.

The label is the route's template (``/api/reports/{report_id}``), never the raw path:
a path holds IDs and tokens (share links), and one label value per study would grow
the metrics without bound.  A path no route serves is ``unmatched``, a method outside
HTTP's usual ones ``other``, and the status is its class (``2xx``).

A plain ASGI middleware, like :mod:`viewer.headers`: the time runs until the answer's
last byte is handed on, so a streamed DICOMweb answer counts whole, and the stream
passes through untouched.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope) -> str:
    """The template of the route that served ``scope`` (set by the router), else
    ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class RequestMetrics:
    """ASGI middleware observing ``rdc_http_request_duration_seconds`` per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope.get("method", "")
            metrics.HTTP_REQUEST_SECONDS.labels(
                route=route_label(scope), method=method if method in METHODS else "other",
                status=metrics.status_class(status)).observe(time.perf_counter() - started)
