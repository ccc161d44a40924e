"""What the web app needs to be served safely behind a reverse proxy (docs/DEPLOYMENT.md).

Two things, both decided here once for ``rdc web``, ``rdc up`` and :func:`viewer.app.create_app`:

* **Who the client is.**  Behind nginx every request comes from the proxy's address, so
  sign-in lockouts (per username and client address) and the audit log would see one
  address for everybody.  The proxy names the client in ``X-Forwarded-For`` and the
  scheme in ``X-Forwarded-Proto``, but anybody can send those headers, so they are
  believed only when the TCP peer is one of ``RDC_TRUSTED_PROXIES``; the client is then
  the right-most address that is not itself a trusted proxy (the one the proxy saw).
  Uvicorn's own proxy-header handling is switched off in ``rdc web`` (it trusts
  127.0.0.1 by default), so this app-level middleware is the only place it happens,
  and tests of the app see exactly what production does.
* **Secure cookies in production.**  With ``RDC_ENVIRONMENT=production`` the web app
  refuses to start when ``RDC_SESSION_COOKIE_SECURE`` is explicitly false: a session
  cookie without ``Secure`` is sent over plain HTTP, where anyone on the hospital
  network can read it and take over the session of whoever signed in.
"""

from __future__ import annotations

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.errors import ConfigurationError
from core.settings import Settings


class InsecureDeployment(ConfigurationError):
    """The web app would run in production in a way that exposes sessions."""


def production_problems(settings: Settings) -> list[str]:
    """Why the web app must not run with these settings (empty: it may)."""
    if settings.environment != "production":
        return []
    problems = []
    if not settings.cookie_secure:
        problems.append(
            "RDC_SESSION_COOKIE_SECURE is false in production: the session cookie would "
            "also travel over plain HTTP, where anyone on the network can copy it and "
            "take over the session. Serve the web app over HTTPS behind a reverse proxy "
            "(see docs/DEPLOYMENT.md) and remove RDC_SESSION_COOKIE_SECURE (it is on by "
            "default in production)")
    return problems


def check_production(settings: Settings) -> None:
    """Raise :class:`InsecureDeployment` naming every problem of :func:`production_problems`."""
    problems = production_problems(settings)
    if problems:
        raise InsecureDeployment("the web app refuses to start: " + "; ".join(problems))


def trust_proxy_headers(app: FastAPI, settings: Settings) -> None:
    """Believe ``X-Forwarded-For``/``-Proto`` from ``RDC_TRUSTED_PROXIES`` only (if any)."""
    proxies = settings.trusted_proxy_list
    if proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
