"""The web app: every route but the liveness probe needs the operator token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from conftest import Center
from core.settings import get_settings
from viewer.app import create_app
from viewer.auth import api_token


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


def test_health_is_open_but_says_nothing(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


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
