"""Who may do what in the pathology API: every route against every kind of account,
another site's ids, encoded traversal in ids, and the CSRF header.

Accounts: a pathologist at site A, a county account (site_user) at A and at B, a
radiologist, an administrator, and a pathologist at site B who was asked a consult on
site A's case (which lets them read that case, and only that case).  Another site's
case or slide answers 404 exactly as a missing one, never 403; a wrong role answers
403; nobody signed in, 401.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_pathology_api import World, world

from core.models import User
from viewer import pathology_views
from viewer.app import create_app
from viewer.auth import SESSION_COOKIE

__all__ = ["world"]  # the fixture, shared with the API tests

ANON, RAD, CLERK_B, CLERK_A, ADMIN, CONSULTANT, DR_A = (
    "anonymous", "radiologist", "clerk_b", "clerk_a", "admin", "consultant", "dr_a")
#: The order the accounts run in (the pathologist's acts last: claim, consult, report).
ACCOUNTS = (ANON, RAD, CLERK_B, CLERK_A, ADMIN, CONSULTANT, DR_A)
ANNOTATION = {"annotations": [{"kind": "point", "coords": [[10, 10]], "text": "x"}]}


def _expected(route: str, who: str) -> int | set[int]:
    """The status ``who`` gets from ``route`` on site A's case and slide."""
    reads = {"GET /cases/{case}", "GET /slides/{slide}/pyramid",
             "GET /slides/{slide}/tiles/0/0/0", "GET /slides/{slide}/thumbnail",
             "GET /slides/{slide}/label", "GET /slides/{slide}/overlays/qc",
             "GET /slides/{slide}/overlays/ai", "GET /slides/{slide}/annotations"}
    if who == ANON:
        return 401
    if who == RAD:
        return 403
    if route == "GET /cases":
        return 403 if who == RAD else 200
    if who in (CLERK_A, CLERK_B, ADMIN):
        if route in reads:
            return 404 if who == CLERK_B else 200
        if route in ("GET /pages", "GET /dashboard") and who == ADMIN:
            return 200
        return 403
    if who == CONSULTANT:
        if route in reads or route in ("GET /consultants", "GET /consults", "GET /pages",
                                       "GET /dashboard"):
            return 200
        return {"POST /slides/{slide}/annotations": 201,
                "POST /consults/{consult}/answer": 200}.get(route, 403)
    assert who == DR_A
    if route in reads or route.startswith("GET "):
        return 200
    acts: dict[str, int | set[int]] = {
        "POST /cases/{case}/claim": 200, "POST /cases/{case}/release": 200,
        "POST /slides/{slide}/annotations": 201, "POST /cases/{case}/call": 200,
        "POST /cases/{case}/consults": 201,
        # dr.a asked the consult: answering it is the consultant's.
        "POST /consults/{consult}/answer": 403,
        # The consultant answered before dr.a's turn: now it can be graded.
        "POST /consults/{consult}/grade": 200,
        "POST /cases/{case}/report": 201,
        # The draft's required fields are empty: the signing service refuses it.
        "POST /cases/{case}/sign": 422,
        # Not signed yet: nothing to amend.
        "POST /cases/{case}/amend": 409}
    return acts[route]


def _routes(consultant_id: int) -> list[tuple[str, dict[str, Any] | None]]:
    return [
        ("GET /cases", None),
        ("POST /cases/{case}/claim", None),
        ("POST /cases/{case}/release", None),
        ("GET /cases/{case}", None),
        ("GET /slides/{slide}/pyramid", None),
        ("GET /slides/{slide}/tiles/0/0/0", None),
        ("GET /slides/{slide}/thumbnail", None),
        ("GET /slides/{slide}/label", None),
        ("GET /slides/{slide}/overlays/qc", None),
        ("GET /slides/{slide}/overlays/ai", None),
        ("GET /slides/{slide}/annotations", None),
        ("POST /slides/{slide}/annotations", ANNOTATION),
        ("POST /cases/{case}/call", {"text": "benign"}),
        ("POST /cases/{case}/consults", {"consultant_id": consultant_id,
                                         "question": "second look?", "slide_ids": []}),
        ("GET /consultants", None),
        ("GET /consults", None),
        ("POST /consults/{consult}/answer", {"answer": "agree"}),
        ("POST /consults/{consult}/grade", {"concordance": "concordant"}),
        ("POST /cases/{case}/report", None),
        ("POST /cases/{case}/sign", {"passphrase": "not the key's passphrase"}),
        ("POST /cases/{case}/amend", {"fields": {}}),
        ("GET /pages", None),
        ("GET /dashboard", None),
    ]


def _url(route: str, ids: dict[str, int]) -> tuple[str, str]:
    method, path = route.split(" ", 1)
    return method, "/api/pathology" + path.format(**ids)


def _user_id(w: World, username: str) -> int:
    with w.c.db.session() as s:
        found = s.scalar(select(User.id).where(User.username == username))
    assert found is not None
    return int(found)


@pytest.fixture
def accounts(world: World) -> dict[str, TestClient]:
    w = world
    return {
        ANON: TestClient(create_app()),
        RAD: w.client("rad.all", ["radiologist"], None),
        CLERK_B: w.client("clerk.b", ["site_user"], ["county-b"]),
        CLERK_A: w.client("clerk.a", ["site_user"], ["county-a"]),
        ADMIN: w.client("admin.all", ["admin"], None),
        CONSULTANT: w.client("dr.b", ["pathologist"], ["county-b"]),
        DR_A: w.client("dr.a", ["pathologist"], ["county-a"]),
    }


def test_every_route_against_every_account(world: World,
                                           accounts: dict[str, TestClient]) -> None:
    w = world
    consultant_id = _user_id(w, "dr.b")
    routes = _routes(consultant_id)

    # Every pathology route of the app is in the matrix.
    spec = create_app().openapi()["paths"]
    served = {f"{m.upper()} {p.removeprefix('/api/pathology')}"
              for p, ops in spec.items() if p.startswith("/api/pathology")
              for m in ops}
    covered = {r.replace("tiles/0/0/0", "tiles/{level}/{col}/{row}")
               .replace("{case}", "{case_id}").replace("{slide}", "{slide_id}")
               .replace("{consult}", "{consult_id}") for r, _ in routes}
    assert served == covered, served ^ covered

    # The consult that lets dr.b (site B) read site A's case.
    asked = accounts[DR_A].post(f"/api/pathology/cases/{w.case_a}/consults", json={
        "consultant_id": consultant_id, "question": "Is this DCIS?",
        "slide_ids": [w.slide_a]})
    assert asked.status_code == 201, asked.text
    ids = {"case": w.case_a, "slide": w.slide_a, "consult": asked.json()["id"]}

    wrong: list[str] = []
    for who in ACCOUNTS:
        for route, body in routes:
            method, url = _url(route, ids)
            r = accounts[who].request(method, url, json=body)
            want = _expected(route, who)
            if r.status_code not in (want if isinstance(want, set) else {want}):
                wrong.append(f"{who} {route}: {r.status_code} (want {want}) {r.text[:120]}")
            if r.status_code == 404:
                assert r.headers["content-type"].startswith("application/json"), url
    assert not wrong, "\n".join(wrong)

    # The case listing is per site: each county account sees its own site's case only.
    def listed(who: str) -> list[int]:
        return [c["id"] for c in accounts[who].get("/api/pathology/cases?status=all")
                .json()["cases"]]
    assert listed(CLERK_A) == [w.case_a] and listed(CLERK_B) == [w.case_b]
    assert listed(DR_A) == [w.case_a] and listed(CONSULTANT) == [w.case_b]
    assert sorted(listed(ADMIN)) == sorted([w.case_a, w.case_b])


def test_other_sites_ids_are_not_found(world: World, accounts: dict[str, TestClient]) -> None:
    """Site A's pathologist asks for site B's case and slide by id: 404 everywhere, the
    same answer as for ids that do not exist; the consultant reads no other case of A."""
    w = world
    routes = _routes(_user_id(w, "dr.b"))
    foreign = {"case": w.case_b, "slide": w.slide_b, "consult": 999_999}
    missing = {"case": 999_999, "slide": 999_999, "consult": 999_999}
    site_routes = [(r, b) for r, b in routes if "{" in r]
    for ids in (foreign, missing):
        for route, body in site_routes:
            method, url = _url(route, ids)
            r = accounts[DR_A].request(method, url, json=body)
            assert r.status_code == 404, (route, ids, r.status_code, r.text)
            assert "county-b" not in r.text and "PATH-B" not in r.text
    # Before any consult, site B's pathologist reads nothing of site A's case.
    for route, body in site_routes:
        method, url = _url(route, {"case": w.case_a, "slide": w.slide_a2, "consult": 999_999})
        if method == "GET":
            r = accounts[CONSULTANT].request(method, url, json=body)
            assert r.status_code == 404, (route, r.status_code, r.text)


#: Ids with encoded dot segments and slashes, another site's slide, and numbers that
#: are not plain non-negative integers.
TRAVERSALS = [
    "/slides/{a}/tiles/0/..%2F..%2F/1",
    "/slides/{a}/tiles/0/0/..%2F..%2F1",
    "/slides/{a}/tiles/%2e%2e/0/0",
    "/slides/{a}/tiles/0/0/0%2F..%2F..%2F..%2Fsystem",
    "/slides/{a}/tiles/0/0/..",
    "/slides/..%2F{b}/pyramid",
    "/slides/{a}%2F..%2F{b}/pyramid",
    "/slides/{a}/..%2F..%2Fslides%2F{b}/pyramid",
    "/slides/{a}%00/pyramid",
    "/cases/{a}%2F..%2F{b}",
    "/slides/{b}/tiles/0/0/0",
    "/slides/{a}/tiles/0/0/0.5",
    "/slides/{a}/tiles/0/0/1e3",
    "/slides/{a}/tiles/0/0/-1",
    "/slides/{a}/tiles/0/0/99999999999",
]


def test_encoded_traversal_in_ids_is_refused(world: World,
                                             accounts: dict[str, TestClient]) -> None:
    w = world
    for path in TRAVERSALS:
        slides = "slides" in path
        url = "/api/pathology" + path.format(a=w.slide_a if slides else w.case_a,
                                             b=w.slide_b if slides else w.case_b)
        r = accounts[DR_A].get(url)
        assert r.status_code in (404, 422), (url, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/json"), url
    # Nothing of slide B came back to site A's pathologist along the way.
    assert accounts[DR_A].get(f"/api/pathology/slides/{w.slide_a}/tiles/0/0/0"
                              ).status_code == 200


def test_state_changes_need_the_csrf_header(world: World,
                                            accounts: dict[str, TestClient]) -> None:
    w = world
    dr_a = accounts[DR_A]
    token = dr_a.headers.pop("X-CSRF-Token")
    ids = {"case": w.case_a, "slide": w.slide_a, "consult": 1}
    for route, body in _routes(_user_id(w, "dr.b")):
        method, url = _url(route, ids)
        if method == "GET":
            continue
        r = dr_a.request(method, url, json=body)
        assert r.status_code == 403, (route, r.status_code, r.text)
        assert "CSRF" in r.json()["detail"]
        r = dr_a.request(method, url, json=body, headers={"X-CSRF-Token": token + "x"})
        assert r.status_code == 403, (route, r.status_code, r.text)
    # Nothing happened: not claimed, no call, no consult, no annotation stored.
    dr_a.headers["X-CSRF-Token"] = token
    case = dr_a.get(f"/api/pathology/cases/{w.case_a}").json()
    assert case["assigned_to"] is None and case["consults"] == []
    assert "call" not in [t["step"] for t in case["timeline"]]
    assert dr_a.get(f"/api/pathology/slides/{w.slide_a}/annotations").json() == \
        {"annotations": []}


def test_signed_out_viewer_loses_tiles_within_the_cache_window(
        world: World, accounts: dict[str, TestClient]) -> None:
    """Tile requests remember who is asking for a few seconds (viewer.pathology_views.
    TILE_AUTH_TTL_S); a signed-out session is refused once that window has passed, and
    every other route refuses it at once."""
    w = world
    dr_a = accounts[DR_A]
    url = f"/api/pathology/slides/{w.slide_a}/tiles/0/0/0"
    assert dr_a.get(url).status_code == 200
    token = dr_a.cookies.get(SESSION_COOKIE)
    assert token
    assert dr_a.post("/api/auth/logout").status_code == 204
    dr_a.cookies.set(SESSION_COOKIE, token)  # a copy of the ended session's cookie
    ended = dr_a.get(f"/api/pathology/slides/{w.slide_a}/pyramid")
    assert ended.status_code == 401 and "session expired" in ended.json()["detail"]
    time.sleep(pathology_views.TILE_AUTH_TTL_S + 0.5)
    refused = dr_a.get(url)
    assert refused.status_code == 401 and "session expired" in refused.json()["detail"]
    # A new sign-in reads tiles again.
    again = w.client("dr.a.again", ["pathologist"], ["county-a"])
    assert again.get(url).status_code == 200
