"""How ``rdc web`` serves the web app: uvicorn with its C parts, several processes, no
per-request access log.

Why each:

* **httptools and uvloop** (named explicitly, so that a missing one fails at start
  instead of uvicorn quietly falling back to its pure-Python h11 parser): the slide
  viewer asks for tiles by the hundred, and per request the pure-Python HTTP stack cost
  more than the tile itself.
* **Several worker processes** (``RDC_WEB_WORKERS``, 0 = one per CPU up to 4): one
  Python process uses one core.  Nothing a request depends on is held only in one
  process: sessions, sign-in lockouts (:mod:`viewer.login_throttle`) and the audit log
  are in the database; what a process keeps (slide and pyramid caches, the tile route's
  5-second authentication cache, the DICOMweb audit window) is a cache that each
  worker learns on its own.
* **No access log**: uvicorn's line per request cost a measurable share of a tile; the
  center audits what matters (views, signatures, deliveries) in its own audit log, and
  errors still go to the log.  Request counts and latencies are metrics instead
  (``rdc_http_request_duration_seconds``, :mod:`viewer.request_metrics`), which every
  worker writes to the web role's metrics directory and ``rdc web`` serves on the
  role's metrics port (core/metrics.py).
* **uvicorn's own lines go through the center's logging** (no ``log_config`` of its
  own): JSON lines like every other line of the role (core/log_format.py).

Each worker is a fresh process, so :func:`create_worker_app` does per process what
``rdc web`` did once before uvicorn started: logging and the domains' registrations.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from core.settings import Settings, get_settings

#: The most worker processes chosen when ``RDC_WEB_WORKERS`` is 0 (auto).
AUTO_MAX_WORKERS = 4


def web_workers(settings: Settings) -> int:
    """How many web app processes to run (``RDC_WEB_WORKERS``; 0 = CPUs, at most 4)."""
    if settings.web_workers:
        return settings.web_workers
    return max(1, min(AUTO_MAX_WORKERS, os.cpu_count() or 1))


def create_worker_app() -> FastAPI:
    """The app as one worker process serves it (uvicorn calls this in each worker)."""
    from rdc.cli import setup_logging
    from rdc.domains import load_domains
    from viewer.app import create_app

    settings = get_settings()
    setup_logging(settings, "web")
    load_domains()  # the domains' report templates and prefill (rdc/domains.py)
    return create_app()


def serve(settings: Settings) -> None:
    """Run the web app in the foreground until interrupted."""
    import uvicorn

    from core.db import migrate
    from core.metrics import serve_role

    # Before the workers start: they inherit the role's metrics directory.
    serve_role("web", settings)
    workers = web_workers(settings)
    if workers > 1:
        # The schema is brought to head here, once, before the worker processes start:
        # each would otherwise migrate on its first request, and two processes migrating
        # one fresh database at once collide.  (One process migrates on first use, so
        # it starts even while the database is still down.)
        migrate(settings.database_url)
    # Proxy headers are the app's business (RDC_TRUSTED_PROXIES, viewer/deployment.py):
    # uvicorn's own handling would believe any X-Forwarded-For from 127.0.0.1.
    uvicorn.run("rdc.web_server:create_worker_app", factory=True, host=settings.web_host,
                port=settings.web_port, workers=workers, http="httptools",
                loop="uvloop", access_log=False, log_level="info", proxy_headers=False,
                log_config=None)
