"""Serve the built radiologists' front end (Vite output in ``viewer/static``).

The SPA is one ``index.html`` at ``/`` plus content-hashed files under ``/assets``
(scripts, styles, the DICOM decoder web worker and its WebAssembly codecs).  Every
response carries a strict Content-Security-Policy: scripts, workers and connections
only from this origin, no inline scripts, no framing.  Cornerstone3D needs two
allowances, and only those: ``'wasm-unsafe-eval'`` to compile its codecs, and inline
``style`` *attributes* (not ``<style>`` elements), which its SVG measurement labels set.

When the build is missing the pages answer 503 with the command that builds it, so
that an API-only checkout still starts.

The API docs (:func:`mount_docs`) are for administrators and scripts only: ``/docs``
(Swagger UI) and ``/openapi.json`` need an admin's session or the operator token.
Swagger UI comes from the build too (``static/docs``, copied from swagger-ui-dist by
the Vite build), never from a CDN, so it works on a hospital network without internet.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from viewer.auth import Operator

DEFAULT_STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    # Tool cursors are data: SVGs; decoded frames may be shown from blob: URLs.
    "img-src 'self' blob: data:",
    "style-src 'self'",
    "style-src-elem 'self'",
    "style-src-attr 'unsafe-inline'",
    "font-src 'self'",
    "media-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

# index.html names the current hashed assets, so it is always revalidated; the assets
# themselves never change under their name.
HTML_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"

NOT_BUILT_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Front end not built</title></head>
<body><h1>The web front end is not built</h1>
<p>The web front end is not built: run <code>./bootstrap.sh</code>
(or <code>cd viewer &amp;&amp; npm ci &amp;&amp; npm run build</code>) and reload.</p>
<p>The HTTP API works without it.</p></body></html>
"""

#: The Swagger UI files the Vite build copies into ``static/docs`` (vite.config.js).
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
               "swagger-ui.css": "text/css; charset=utf-8",
               "favicon-32x32.png": "image/png"}
DOCS_CACHE = "no-store"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

# Browsers refuse streaming compilation of WebAssembly served with another type.
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


def _not_built() -> HTMLResponse:
    return HTMLResponse(NOT_BUILT_HTML, status_code=503,
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-store",
                                 "Retry-After": "60"})


class _AssetFiles(StaticFiles):
    """StaticFiles with the security and caching headers, and 503 while unbuilt."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (self.directory is None
                                        or not os.path.isdir(self.directory)):
            await _not_built()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = ASSET_CACHE
        return response


def mount_frontend(app: FastAPI, static_dir: Path = DEFAULT_STATIC_DIR) -> None:
    """Serve the SPA from ``static_dir``: ``/`` (index.html) and ``/assets/...``.

    Call it after the API routers are included, so that it never shadows an API route.
    The build is looked up per request: building while the app runs needs no restart.
    Without ``static_dir/index.html`` the pages answer 503 with how to build them.
    """
    index = static_dir / "index.html"

    def serve_index() -> Response:
        if not index.is_file():
            return _not_built()
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={**SECURITY_HEADERS, "Cache-Control": HTML_CACHE})

    # Hash routing: the SPA itself needs only "/"; "/index.html" for direct links.
    app.add_api_route("/", serve_index, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/index.html", serve_index, methods=["GET", "HEAD"],
                      include_in_schema=False)

    def login_page() -> RedirectResponse:
        return RedirectResponse("/#/login", status_code=307)

    app.add_api_route("/login", login_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/assets", _AssetFiles(directory=static_dir / "assets", check_dir=False),
              name="frontend-assets")


def docs_content_security_policy(html: str) -> str:
    """The app's policy, with exactly the inline scripts of ``html`` allowed by hash.

    Swagger UI's page starts the UI with one inline script; hashing it keeps every
    other inline script (an injection) refused.  No ``'wasm-unsafe-eval'`` here.
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html))
    return "; ".join(f"script-src 'self' {hashes}".rstrip()
                     if directive.startswith("script-src ") else directive
                     for directive in CONTENT_SECURITY_POLICY.split("; "))


def mount_docs(app: FastAPI, static_dir: Path = DEFAULT_STATIC_DIR) -> None:
    """``/openapi.json``, ``/docs`` and its Swagger UI files, for admins and the operator.

    Create the app with ``docs_url=None, redoc_url=None, openapi_url=None`` so that
    FastAPI's own open, CDN-backed pages do not exist.
    """
    docs_dir = static_dir / "docs"

    def openapi(_: Operator) -> JSONResponse:
        return JSONResponse(app.openapi(), headers={"Cache-Control": DOCS_CACHE})

    def docs(_: Operator) -> Response:
        if not (docs_dir / "swagger-ui-bundle.js").is_file():
            return _not_built()
        page = get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} API",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png", oauth2_redirect_url=None)
        html = bytes(page.body).decode()
        return HTMLResponse(html, headers={
            **SECURITY_HEADERS, "Content-Security-Policy": docs_content_security_policy(html),
            "Cache-Control": DOCS_CACHE})

    def docs_asset(name: str, _: Operator) -> Response:
        if name not in DOCS_ASSETS:
            raise HTTPException(404, "not found")
        path = docs_dir / name
        if not path.is_file():
            return _not_built()
        return FileResponse(path, media_type=DOCS_ASSETS[name],
                            headers={**SECURITY_HEADERS, "Cache-Control": DOCS_CACHE})

    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/{name}", docs_asset, methods=["GET"], include_in_schema=False)
