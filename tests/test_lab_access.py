"""Who may do what in the lab API, the refusals first: another site's result, notice,
specimen, box and order ids answer 404 exactly as missing ones; a wrong role 403; a
state-changing request without the session's CSRF header 403; a county account
(``site_user``) never reviews or signs; an acknowledgement replayed on an acknowledged
notice 409; accessions and box codes that look like traversal, or carry a newline,
are refused before any query.  Each refusal leaves the rows as they were.

Accounts: a lab reviewer and a county account at site A, a county account at B, a
radiologist, an administrator, and nobody signed in.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_lab_api import LabWorld, lab_world

from core.models import LabCriticalNotice, LabResult
from viewer.app import create_app

__all__ = ["lab_world"]  # the fixture, shared with the API tests


def _foreign_urls(ids: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every object route of the lab API with site B's ids (asked by site A accounts)."""
    return [
        ("GET", f"/api/lab/results/{ids['kb']}", None),
        ("POST", f"/api/lab/results/{ids['kb']}/review", {"action": "reject", "reason": "x"}),
        ("POST", "/api/lab/sign", {"result_ids": [ids["kb"]], "passphrase": "p"}),
        ("POST", f"/api/lab/critical/{ids['notice_b']}/ack",
         {"name": "x", "readback": "7.1"}),
        ("GET", f"/api/lab/specimens/{ids['acc_b']}/timeline", None),
        ("GET", f"/api/lab/specimens/{ids['acc_b']}/label.pdf", None),
        ("GET", f"/api/lab/boxes/{ids['box_b']}", None),
        ("GET", f"/api/lab/orders/{ids['order_b']}/fhir", None),
        ("GET", "/api/lab/visits/report.pdf?site=county-b&patient=PB1&visit=V1", None),
    ]


def _state(w: LabWorld) -> tuple[Any, ...]:
    with w.c.db.session() as s:
        kb, k = s.get(LabResult, w.ids["kb"]), s.get(LabResult, w.ids["k"])
        nb, na = (s.get(LabCriticalNotice, w.ids["notice_b"]),
                  s.get(LabCriticalNotice, w.ids["notice_a"]))
        assert kb is not None and k is not None and nb is not None and na is not None
        return (kb.state, kb.review_action, kb.signed_at, k.state, k.qc_hold, k.signed_at,
                nb.state, nb.ack_name, na.state, na.ack_name)


def test_another_sites_ids_answer_404_and_change_nothing(lab_world: LabWorld) -> None:
    w = lab_world
    before = _state(w)
    reviewer_a = w.client("lab.a", ["lab_reviewer"], ["county-a"])
    clerk_a = w.client("clerk.a", ["site_user"], ["county-a"])
    for method, url, body in _foreign_urls(w.ids):
        r = reviewer_a.request(method, url, json=body)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
        # The refusal reads as a missing object: the same words as for a missing id.
        assert "county-b" not in r.text and "ROE" not in r.text
    for method, url, body in _foreign_urls(w.ids):
        r = clerk_a.request(method, url, json=body)
        # The county account's routes: 404; review and sign are not its role: 403.
        want = 403 if "/review" in url or url.endswith("/sign") else 404
        assert r.status_code == want, (method, url, r.status_code, r.text)
    # Missing ids read the same.
    assert reviewer_a.get("/api/lab/results/999999").status_code == 404
    assert reviewer_a.get("/api/lab/boxes/NO-SUCH-BOX").status_code == 404
    # Lists hold the caller's sites only.
    held = reviewer_a.get("/api/lab/held").json()["results"]
    assert held and {r["site_id"] for r in held} == {"county-a"}
    notices = clerk_a.get("/api/lab/critical").json()["notices"]
    assert [n["id"] for n in notices] == [w.ids["notice_a"]]
    dash = reviewer_a.get("/api/lab/dashboard").json()["sites"]
    assert {row["site_id"] for row in dash} == {"county-a"}
    # A sign request with one foreign id among own ones signs nothing.
    mixed = reviewer_a.post("/api/lab/sign", json={"result_ids": [w.ids["na"], w.ids["kb"]],
                                                    "passphrase": "p"})
    assert mixed.status_code == 404
    assert _state(w) == before


def test_wrong_role_is_403_and_nobody_is_401(lab_world: LabWorld) -> None:
    w = lab_world
    ids = w.ids
    rad = w.client("rad.all", ["radiologist"], None)
    admin = w.client("admin.all", ["admin"], None)
    clerk_a = w.client("clerk.a2", ["site_user"], ["county-a"])
    anon = TestClient(create_app())
    reads = ["/api/lab/held", f"/api/lab/results/{ids['k']}", "/api/lab/critical",
             f"/api/lab/specimens/{ids['acc_a']}/timeline", f"/api/lab/boxes/{ids['box_a']}",
             "/api/lab/qc/chart?analyzer=CHEM1&test=K&level=1", "/api/lab/dashboard",
             f"/api/lab/orders/{ids['order_a']}/fhir"]
    for url in reads:
        assert anon.get(url).status_code == 401, url
        assert rad.get(url).status_code == 403, url
        want_admin = 200 if url == "/api/lab/dashboard" else 403
        assert admin.get(url).status_code == want_admin, url
    # A county account: no worklist, no QC, no dashboard, no review, no signing.
    for url in ("/api/lab/held", "/api/lab/qc/chart?analyzer=CHEM1&test=K&level=1",
                "/api/lab/qc/chart.png?analyzer=CHEM1&test=K&level=1", "/api/lab/dashboard"):
        assert clerk_a.get(url).status_code == 403, url
    before = _state(w)
    for action in ("release", "rerun", "reject"):
        r = clerk_a.post(f"/api/lab/results/{ids['k']}/review",
                         json={"action": action, "reason": "site says so"})
        assert r.status_code == 403, r.text
    r = clerk_a.post("/api/lab/sign", json={"result_ids": [ids["na"]], "passphrase": "p"})
    assert r.status_code == 403
    # An administrator acknowledges nothing, and orders nothing.
    assert admin.post(f"/api/lab/critical/{ids['notice_a']}/ack",
                      json={"name": "x", "readback": "6.9"}).status_code == 403
    assert rad.post("/api/lab/orders/fhir", json={}).status_code == 403
    assert _state(w) == before


def test_state_changes_need_the_csrf_header(lab_world: LabWorld) -> None:
    w = lab_world
    ids = w.ids
    reviewer = w.client("lab.csrf", ["lab_reviewer"], None)
    clerk = w.client("clerk.csrf", ["site_user"], ["county-a"])
    before = _state(w)
    for client, url, body in (
            (reviewer, f"/api/lab/results/{ids['k']}/review",
             {"action": "release", "reason": "x"}),
            (reviewer, "/api/lab/sign", {"result_ids": [ids["na"]], "passphrase": "p"}),
            (clerk, f"/api/lab/critical/{ids['notice_a']}/ack",
             {"name": "Nurse", "readback": "6.9"}),
            (clerk, "/api/lab/orders/fhir", {})):
        token = client.headers.pop("X-CSRF-Token")
        try:
            r = client.post(url, json=body)
            assert r.status_code == 403 and "CSRF" in r.text, (url, r.status_code, r.text)
            r = client.post(url, json=body, headers={"X-CSRF-Token": "forged"})
            assert r.status_code == 403, url
        finally:
            client.headers["X-CSRF-Token"] = token
    assert _state(w) == before


def test_replayed_acknowledgement_is_409(lab_world: LabWorld) -> None:
    w = lab_world
    clerk = w.client("clerk.ack", ["site_user"], ["county-a"])
    url = f"/api/lab/critical/{w.ids['notice_a']}/ack"
    first = clerk.post(url, json={"name": "Nurse Li", "readback": "6.9"})
    assert first.status_code == 200, first.text
    replay = clerk.post(url, json={"name": "Someone Else", "readback": "6.9"})
    assert replay.status_code == 409 and "already acknowledged" in replay.text
    reviewer = w.client("lab.ack", ["lab_reviewer"], None)
    assert reviewer.post(url, json={"name": "Dr X", "readback": "6.9"}).status_code == 409
    with w.c.db.session() as s:
        n = s.get(LabCriticalNotice, w.ids["notice_a"])
        assert n is not None and (n.ack_name, n.ack_by) == ("Nurse Li", "clerk.ack")
    # Bodies out of bounds: 422, nothing recorded.
    for body in ({"name": "", "readback": "6.9"}, {"name": "x", "readback": ""},
                 {"name": "x" * 201, "readback": "1"}, {"name": "x"}):
        assert clerk.post(f"/api/lab/critical/{w.ids['notice_b']}/ack",
                          json=body).status_code in (404, 422)


@pytest.mark.parametrize("accession", [
    "..", "..%2F..%2Fetc%2Fpasswd", "L00000001%0A", "L0000%00", "a.b", "%2E%2E",
    "L%2F..", "-L1", "L" * 40, "L1%20OR%201=1"])
def test_traversal_looking_accessions_are_refused(lab_world: LabWorld,
                                                   accession: str) -> None:
    w = lab_world
    reviewer = w.client("lab.trav", ["lab_reviewer"], None)
    for url in (f"/api/lab/specimens/{accession}/timeline",
                f"/api/lab/specimens/{accession}/label.pdf",
                f"/api/lab/boxes/{accession}"):
        r = reviewer.get(url)
        # Refused by the pattern (422), or by the router when it is no single segment.
        assert r.status_code in (404, 422), (url, r.status_code, r.text)
        assert r.headers.get("content-type", "").startswith("application/json"), url
        assert not r.content.startswith(b"%PDF")
    # A newline at the end is refused by the pattern itself (\Z, not $).
    r = reviewer.get("/api/lab/specimens/L00000001%0A/timeline")
    assert r.status_code == 422 and "accession" in r.text
    r = reviewer.get("/api/lab/visits/report.pdf",
                     params={"site": "county-a", "patient": "../P001", "visit": "V1"})
    assert r.status_code == 422
