"""The web app: the operator token, cache headers for patient data, the admins' API docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from browser_support import collect_errors, start_web, stop
from conftest import REPO, Center
from core.db import get_database
from core.settings import get_settings
from viewer.accounts import add_user
from viewer.app import create_app
from viewer.auth import api_token
from viewer.headers import PatientDataHeaders

PASSWORD = "a long enough password 1"
STATIC = REPO / "viewer" / "static"


@pytest.fixture
def client(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    center.add_site()
    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def test_health_is_open_and_says_only_what_the_web_role_depends_on(
        client: TestClient) -> None:
    r = client.get("/healthz")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["role"] == "web"
    deps = body["dependencies"]
    assert set(deps) == {"database", "broker", "orthanc"}
    assert deps["database"]["status"] == "ok" and deps["broker"]["status"] == "ok"
    # No Orthanc runs here: still 200 (liveness), not ready, and no error message (the
    # probe is public; the message is in the log).
    assert deps["orthanc"]["status"] == "down" and deps["orthanc"]["error"]
    assert body["ready"] is False
    assert set(deps["orthanc"]) == {"status", "latency_ms", "error"}


def test_api_requires_the_operator_token(client: TestClient) -> None:
    r = client.get("/api/status")
    assert r.status_code == 401 and r.json()["detail"] == "missing bearer token"
    r = client.get("/api/status", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    token = api_token(get_settings())
    r = client.get("/api/status", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    sites = r.json()["sites"]
    assert [s["site_id"] for s in sites] == ["county-a"] and sites[0]["received"] == 0


# Answers with patient data stay out of shared workstations' caches ------------------
def _signed_in(client: TestClient, username: str, roles: list[str]) -> TestClient:
    with get_database(get_settings().database_url).session() as s:
        _, uri = add_user(s, get_settings(), username=username, display_name=username,
                          password=PASSWORD, roles=roles, sites=(), all_sites=True,
                          actor="test")
    api = TestClient(client.app)
    r = api.post("/api/auth/login", json={"username": username, "password": PASSWORD,
                                          "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    api.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return api


def test_api_and_share_answers_are_never_stored(client: TestClient) -> None:
    operator = {"Authorization": f"Bearer {api_token(get_settings())}"}
    reader = _signed_in(client, "dr.cache", ["radiologist"])
    answers = [client.get("/api/status", headers=operator),
               client.get("/api/worklist"),                    # 401
               reader.get("/api/worklist"),
               reader.get("/api/dashboard/turnaround.png"),
               client.get("/share/not-a-token"),               # 404 page
               client.post("/api/auth/login", json={})]        # 422
    for r in answers:
        assert r.headers["cache-control"] == "no-store", (r.request.url, r.headers)
        assert r.headers["x-content-type-options"] == "nosniff", r.request.url
    # nosniff on every answer, the liveness probe and the pages included.
    for url in ("/healthz", "/", "/login"):
        r = client.get(url, follow_redirects=False)
        assert r.headers["x-content-type-options"] == "nosniff", url
    # DICOMweb: private, no-store, also on a refusal.
    r = client.get("/dicom-web/studies")
    assert r.status_code == 401 and r.headers["cache-control"] == "private, no-store"
    # Signing out asks the browser to drop what it cached for this origin.
    r = reader.post("/api/auth/logout")
    assert r.status_code == 204 and r.headers["clear-site-data"] == '"cache"'


def test_cache_rules_override_api_routes_but_keep_dicomweb_choice() -> None:
    """A route's own Cache-Control stands on /dicom-web (the proxy decides) but never on
    /api; the built front end's assets keep their long cache."""
    app = FastAPI()
    app.add_middleware(PatientDataHeaders)
    cached = {"Cache-Control": "public, max-age=600"}

    @app.get("/api/thing")
    def thing() -> Response:
        return Response("x", headers=cached)

    @app.get("/dicom-web/studies/{uid}")
    def study(uid: str) -> Response:
        return Response(uid, headers={"Cache-Control": "private, max-age=30"})

    @app.get("/assets/app.js")
    def asset() -> Response:
        return Response("js", headers=cached)

    c = TestClient(app)
    assert c.get("/api/thing").headers["cache-control"] == "no-store"
    assert c.get("/dicom-web/studies/1.2").headers["cache-control"] == "private, max-age=30"
    r = c.get("/assets/app.js")
    assert r.headers["cache-control"] == "public, max-age=600"
    assert r.headers["x-content-type-options"] == "nosniff"


# API docs: admins and the operator only, from local assets -------------------------
DOCS_URLS = ("/docs", "/openapi.json", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css")


def test_docs_need_an_admin_or_the_operator_token(client: TestClient) -> None:
    require_docs_build()
    for url in (*DOCS_URLS, "/redoc", "/docs/oauth2-redirect"):
        assert client.get(url).status_code in (401, 404), url
    for url in DOCS_URLS:
        assert client.get(url).status_code == 401, url
    reader = _signed_in(client, "dr.docs", ["radiologist", "cardiologist"])
    for url in DOCS_URLS:
        assert reader.get(url).status_code == 403, url

    admin = _signed_in(client, "it.docs", ["admin"])
    page = admin.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    # Everything the page loads comes from this server: no CDN on an offline network.
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in page.text and "https://" not in page.text
    # The inline start-up script is allowed by its hash, nothing else inline.
    csp = page.headers["content-security-policy"]
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src "))
    assert "'sha256-" in script_src and "unsafe" not in script_src
    assert page.headers["cache-control"] == "no-store"
    for url in DOCS_URLS[1:]:
        r = admin.get(url)
        assert r.status_code == 200 and r.content, url
    assert admin.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith(
        "text/javascript")
    assert admin.get("/docs/package.json").status_code == 404
    assert "/api/worklist" in admin.get("/openapi.json").json()["paths"]

    operator = {"Authorization": f"Bearer {api_token(get_settings())}"}
    assert client.get("/openapi.json", headers=operator).status_code == 200
    assert client.get("/docs", headers=operator).status_code == 200


def require_docs_build() -> None:
    if not (STATIC / "docs" / "swagger-ui-bundle.js").is_file():
        pytest.fail("the front end is not built: cd viewer && npm ci && npm run build")


def test_docs_render_offline_under_their_csp(center: Center, browser: Any) -> None:
    """Swagger UI starts under the page's CSP with nothing from another host (Chromium)."""
    require_docs_build()
    web = start_web(center)
    try:
        token = api_token(center.settings)
        context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {token}"})
        page = context.new_page()
        errors = collect_errors(page)
        hosts: set[str] = set()
        page.on("request", lambda req: hosts.add(urlsplit(req.url).netloc))
        page.goto(f"http://127.0.0.1:{center.web_port}/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        assert page.locator(".opblock").count() > 20
        assert hosts == {f"127.0.0.1:{center.web_port}"}, hosts
        assert not errors, errors
        context.close()
    finally:
        stop(web)
