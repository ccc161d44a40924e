"""The front end's API calls against the app's OpenAPI document (the contract).

Every route's request and answer are declared in :mod:`viewer.schemas`, so
``/openapi.json`` (``/docs`` for administrators) is the contract, instead of a hand-kept
list (``viewer/API_CONTRACT.md`` keeps only what a schema cannot say).  This test reads
the front end's sources (``viewer/frontend/src``) for the calls they make:
``api('METHOD', '/path')`` and the ``/api/...`` links they set (PDFs, the turnaround
chart); each must exist in the served document with that method.  A renamed or removed
route, or a new call to a route that does not exist, fails here before any browser test
runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import REPO, Center
from core.settings import get_settings
from viewer.app import create_app
from viewer.auth import api_token

FRONTEND = REPO / "viewer" / "frontend" / "src"
#: ``api('GET', '/api/x')`` or with a template literal: ``api('POST', `/api/r/${id}/sign`)``.
_API_CALL = re.compile(r"""\bapi\(\s*'([A-Z]+)'\s*,\s*(['`])(/[^'`]*)\2""")
#: Any other literal that names an API path: a link (PDF) or an image (chart) the
#: browser GETs itself (not a prefix the client compares a path with).
_API_LITERAL = re.compile(r"""(?<!startsWith\()(['`])(/api/[^'`\s]*)\1""")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_LINE_COMMENT = re.compile(r"(^|\s)//.*$", re.MULTILINE)
_TEMPLATE_PART = re.compile(r"\$\{[^}]*\}")
_PATH_PARAM = re.compile(r"^\{[^}]+\}$")


def frontend_calls() -> set[tuple[str, str]]:
    """(method, path) of every API call in the front end's sources; a ``${...}`` part of
    a path is one segment whose value is unknown (``*``), a query string is dropped."""
    calls: set[tuple[str, str]] = set()
    for source in sorted(FRONTEND.rglob("*.js")) + sorted(FRONTEND.rglob("*.ts")):
        text = _LINE_COMMENT.sub(r"\1", _BLOCK_COMMENT.sub("", source.read_text()))
        spans = []
        for m in _API_CALL.finditer(text):
            calls.add((m.group(1), _normal(m.group(3))))
            spans.append(m.span(3))
        for m in _API_LITERAL.finditer(text):
            if not any(a <= m.start(2) < b for a, b in spans):
                calls.add(("GET", _normal(m.group(2))))
    return calls


def _normal(path: str) -> str:
    return _TEMPLATE_PART.sub("*", path.split("?", 1)[0])


def matches(call_path: str, route: str) -> bool:
    """Whether a front-end path can reach ``route`` (an OpenAPI path with ``{params}``):
    segment by segment, equal, or a ``*`` of the call, or a parameter of the route."""
    got, want = call_path.strip("/").split("/"), route.strip("/").split("/")
    return len(got) == len(want) and all(
        g == w or g == "*" or _PATH_PARAM.match(w) is not None
        for g, w in zip(got, want, strict=True))


def routes_for(openapi: dict[str, Any], method: str, path: str) -> list[str]:
    return [route for route, ops in openapi["paths"].items()
            if method.lower() in ops and matches(path, route)]


@pytest.fixture
def openapi(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The document as the app serves it at ``/openapi.json`` (operator token)."""
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        r = c.get("/openapi.json",
                  headers={"Authorization": f"Bearer {api_token(get_settings())}"})
        assert r.status_code == 200, r.text
        yield r.json()
    get_settings.cache_clear()


def test_the_scanner_finds_the_front_ends_calls() -> None:
    calls = frontend_calls()
    # A broken pattern would find nothing and pass everything: pin a few known calls.
    for known in [("POST", "/api/auth/login"), ("GET", "/api/worklist"),
                  ("POST", "/api/reports/*/sign"), ("GET", "/api/reports/*/pdf"),
                  ("GET", "/api/dashboard/turnaround.png"), ("PUT", "/api/ecg/*")]:
        assert known in calls, f"{known} not found in the front end; calls: {sorted(calls)}"
    assert len(calls) >= 20


def test_every_front_end_call_is_a_route_of_the_app(openapi: dict[str, Any]) -> None:
    missing = [f"{method} {path}" for method, path in sorted(frontend_calls())
               if not routes_for(openapi, method, path)]
    assert not missing, f"the front end calls routes the app does not have: {missing}"
    # The matcher itself refuses what the app does not serve.
    assert not routes_for(openapi, "DELETE", "/api/worklist")
    assert not routes_for(openapi, "GET", "/api/reports/*/pdf/extra")
    assert not routes_for(openapi, "POST", "/api/no-such-thing")


def test_the_image_viewer_reaches_dicomweb_through_the_app(openapi: dict[str, Any]) -> None:
    # Cornerstone builds DICOMweb URLs under DICOMWEB_BASE; the app proxies all of them.
    base = re.search(r"DICOMWEB_BASE\s*=\s*'([^']+)'",
                     (FRONTEND / "viewer" / "cornerstone.js").read_text())
    assert base is not None and base.group(1) == "/dicom-web"
    assert "get" in openapi["paths"]["/dicom-web/studies"]
    assert "get" in openapi["paths"]["/dicom-web/studies/{_path}"]


def test_json_routes_declare_their_answers(openapi: dict[str, Any]) -> None:
    """Every JSON route names its answer's schema: the document is the contract."""
    untyped = []
    for route, ops in openapi["paths"].items():
        for method, op in ops.items():
            for status, answer in op.get("responses", {}).items():
                if not status.startswith("2") or status == "204":
                    continue
                content = answer.get("content", {})
                if "application/json" not in content:
                    continue  # a PDF, an image, a page, a DICOMweb answer
                schema = content["application/json"].get("schema", {})
                if not schema or schema == {"type": "object"} or (
                        schema.get("type") == "object" and "additionalProperties" in schema
                        and "properties" not in schema):
                    untyped.append(f"{method.upper()} {route}")
    assert not untyped, f"routes that answer untyped JSON: {untyped}"
