"""Who may see what, over HTTP against a real Orthanc and gateway: a matrix of users x
routes x another site's objects, DICOMweb through the app, cloud film links, and
patient-supplied text that must stay text."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import REPO, Center, signed_in_client, wait_until
from core.models import AIFinding, AIResult, ECGAnalysis, ReportVersion, ShareLink, Study
from core.settings import get_settings
from devkit.dcmtk import storescu
from viewer.accounts import ROLES
from viewer.app import create_app
from viewer.auth import READING_ROLES, api_token
from viewer.worklist import READER_ROLES

PASSWORD = "a long enough password 1"
PASSPHRASE = "correct horse battery"
XSS = "<script>alert(1)</script>^<img src=x onerror=alert(2)>"


@pytest.fixture
def world(two_sites: Center, tmp_path: Path) -> Iterator[tuple[Center, dict[str, int]]]:
    """Two sites, each with one study; the site A patient's name is an XSS payload."""
    c = two_sites
    ids: dict[str, int] = {}
    for site, ae, name in (("county-a", "COUNTY_A", XSS), ("county-b", "COUNTY_B", "ROE^B")):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = name, f"ID-{site}"
        path = tmp_path / f"{site}.dcm"
        ds.save_as(path)
        assert storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=ae,
                        called_ae=c.gateway_ae).succeeded

        def complete(site: str = site) -> int | None:
            with c.db.session() as s:
                st = s.scalar(select(Study).where(Study.site_id == site))
                return st.id if st is not None and st.state == "complete" else None
        ids[site] = int(wait_until(complete, 60, f"the {site} study to complete"))
    yield c, ids
    get_settings.cache_clear()


def client_for(c: Center, username: str, roles: list[str], sites: list[str] | None,
               ) -> TestClient:
    client: TestClient = signed_in_client(c, username, roles, sites, PASSWORD)
    return client


def _issue_key(c: Center, reader: str) -> None:
    env = {**c.env, "RDC_KEY_PASSPHRASE": PASSPHRASE}
    r = subprocess.run([sys.executable, "-m", "rdc", "keys", "issue", reader, "--name",
                        reader], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_access_matrix_dicomweb_share_links_and_xss(world: tuple[Center, dict[str, int]],
                                                   ) -> None:
    c, ids = world
    a, b = ids["county-a"], ids["county-b"]
    with c.db.session() as s:
        uid = {site: s.get(Study, i).study_uid for site, i in ids.items()}  # type: ignore[union-attr]
    center_reader = client_for(c, "dr.all", ["radiologist"], None)
    reader_a = client_for(c, "dr.a", ["radiologist"], ["county-a"])
    site_user_b = client_for(c, "clerk.b", ["site_user"], ["county-b"])

    # The center's reader sees both; each county account only its own.
    wl = center_reader.get("/api/worklist").json()
    assert {i["study_id"] for i in wl["items"]} == {a, b}
    assert [i["study_id"] for i in reader_a.get("/api/worklist").json()["items"]] == [a]
    assert [i["study_id"] for i in site_user_b.get("/api/worklist").json()["items"]] == [b]

    # A report of site B, signed, with a cloud film link.
    _issue_key(c, "dr.all")
    rid_b = center_reader.post(f"/api/studies/{b}/report").json()["id"]
    r = center_reader.put(f"/api/reports/{rid_b}/draft", json={"fields": {
        "technique": "Axial CT.", "findings": "Normal.", "impression": "Normal."}})
    assert r.status_code == 200, r.text
    r = center_reader.post(f"/api/reports/{rid_b}/sign", json={"passphrase": PASSPHRASE})
    assert r.status_code == 200, r.text
    link = center_reader.post(f"/api/reports/{rid_b}/share", json={"hours": 1})
    assert link.status_code == 201, link.text
    link_id, link_url = link.json()["id"], link.json()["url"]

    # Site A's reader asks for every kind of site B object: never shown.
    series_b = center_reader.get(f"/api/studies/{b}").json()["series"][0]
    sop_b = series_b["instances"][0]
    base = f"/dicom-web/studies/{uid['county-b']}"
    inst = f"{base}/series/{series_b['series_uid']}/instances/{sop_b}"
    foreign = [
        ("GET", f"/api/studies/{b}"), ("POST", f"/api/studies/{b}/claim"),
        ("POST", f"/api/studies/{b}/release"), ("POST", f"/api/studies/{b}/report"),
        ("GET", f"/api/reports/{rid_b}"), ("PUT", f"/api/reports/{rid_b}/draft"),
        ("POST", f"/api/reports/{rid_b}/addenda"), ("POST", f"/api/reports/{rid_b}/share"),
        ("POST", f"/api/reports/{rid_b}/sign"), ("DELETE", f"/api/share/{link_id}"),
        ("GET", f"{base}/series"), ("GET", f"{base}/metadata"), ("GET", f"{inst}/frames/1"),
        ("GET", f"{inst}/rendered"), ("GET", f"{inst}/metadata"), ("GET", base),
    ]
    bodies = {"PUT": {"fields": {}}, "POST": {"passphrase": PASSPHRASE, "hours": 1,
                                              "fields": {}}}
    for who in (reader_a,):
        for method, url in foreign:
            r = who.request(method, url, json=bodies.get(method))
            assert r.status_code in (403, 404), (method, url, r.status_code, r.text)
    # A county clerk may look but not read or sign.
    for method, url in [("POST", f"/api/studies/{b}/claim"),
                        ("POST", f"/api/studies/{b}/report"),
                        ("PUT", f"/api/reports/{rid_b}/draft"),
                        ("POST", f"/api/reports/{rid_b}/sign")]:
        r = site_user_b.request(method, url, json=bodies.get(method))
        assert r.status_code == 403, (method, url, r.status_code, r.text)
    # QIDO search through the app lists only the caller's sites.
    found = reader_a.get("/dicom-web/studies").json()
    assert [d["0020000D"]["Value"][0] for d in found] == [uid["county-a"]]
    # Without a session nothing is served, images included.
    anonymous = TestClient(create_app())
    for url in (f"{inst}/frames/1", "/api/worklist", f"/api/studies/{a}"):
        assert anonymous.get(url).status_code == 401
    # Their own study's frames do come through the proxy, from the real Orthanc.
    study_a = reader_a.get(f"/api/studies/{a}").json()
    series_a = study_a["series"][0]
    frame = reader_a.get(f"/dicom-web/studies/{uid['county-a']}/series/"
                         f"{series_a['series_uid']}/instances/{series_a['instances'][0]}"
                         "/frames/1")
    assert frame.status_code == 200 and frame.headers["content-type"].startswith("multipart")
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert original.PixelData in frame.content

    # Patient text is data: JSON carries it verbatim, the share page escapes it.
    assert study_a["patient_name"] == XSS

    # Cloud film: opens without login, is audited, dies when revoked.
    page = anonymous.get(link_url)
    assert page.status_code == 200 and "Normal." in page.text
    assert anonymous.get(link_url + "/images/0").headers["content-type"] == "image/png"
    assert center_reader.delete(f"/api/share/{link_id}").status_code == 204
    gone = anonymous.get(link_url)
    assert gone.status_code == 410 and "revoked" in gone.text
    assert anonymous.get("/share/not-a-token").status_code == 404


def test_share_page_escapes_patient_text(world: tuple[Center, dict[str, int]]) -> None:
    c, ids = world
    reader = client_for(c, "dr.all", ["radiologist"], None)
    _issue_key(c, "dr.all")
    a = ids["county-a"]
    rid = reader.post(f"/api/studies/{a}/report").json()["id"]
    reader.put(f"/api/reports/{rid}/draft", json={"fields": {
        "technique": "Axial CT.", "findings": "<b>bold</b> <script>x()</script>",
        "impression": "Normal."}})
    assert reader.post(f"/api/reports/{rid}/sign",
                       json={"passphrase": PASSPHRASE}).status_code == 200
    url = reader.post(f"/api/reports/{rid}/share", json={"hours": 1}).json()["url"]
    page = TestClient(create_app()).get(url)
    assert page.status_code == 200
    assert "<script>" not in page.text and "onerror=alert" not in page.text.replace(
        "&lt;img src=x onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # The API hands the text back verbatim (JSON), for the front end to show as text.
    token = api_token(get_settings())
    data = TestClient(create_app()).get(f"/api/reports/{rid}",
                                        headers={"Authorization": f"Bearer {token}"}).json()
    assert "<script>x()</script>" in data["versions"][0]["fields"]["findings"]


# Every role against every route -----------------------------------------------------
#: Roles that see patient data of their sites (viewer.auth.READING_ROLES).
READING = frozenset({"radiologist", "cardiologist", "pathologist", "lab_reviewer",
                     "site_user"})
#: Roles that claim, write and sign reports (viewer.worklist.READER_ROLES).
REPORTING = READING - {"site_user"}
MISSING = 999_999
MISSING_UID = "1.2.826.0.1.3680043.9.9999.1"
ANON, OPERATOR = "anonymous", "operator"
PUBLIC = "everyone"


@dataclass(frozen=True)
class Expect:
    """Who may use a route, and what an admitted caller gets here.

    ``allowed``: roles admitted (the operator token always is, unless ``operator`` says
    otherwise), or :data:`PUBLIC`.  Refused callers get 401 without a session, 403 with
    one.  An admitted caller gets ``ok``: 404 on object routes, since site-limited
    accounts ask for the other site's objects and all-sites callers for missing ones.
    """

    allowed: frozenset[str] | str
    ok: int = 404
    operator: int | None = None
    body: dict[str, Any] | None = None


def _signed_in(roles: frozenset[str]) -> Expect:
    return Expect(roles, ok=200)


ADMIN = frozenset({"admin"})
ALL_ROLES = frozenset(ROLES)
#: The pathology center (tests/test_pathology_access.py has its own, finer matrix).
PATHOLOGIST = frozenset({"pathologist"})
PATHOLOGY_VIEW = frozenset({"pathologist", "admin", "site_user"})
#: The lab center (tests/test_lab_access.py has its own, finer matrix).
LAB_REVIEWER = frozenset({"lab_reviewer"})
LAB_VIEW = frozenset({"lab_reviewer", "site_user"})
#: (method, path as the app declares it) → expectation.  A route of the app missing
#: here fails the test: a new route must say who may use it.
MATRIX: dict[tuple[str, str], Expect] = {
    ("GET", "/healthz"): Expect(PUBLIC, ok=200),
    ("GET", "/"): Expect(PUBLIC, ok=200),
    ("GET", "/index.html"): Expect(PUBLIC, ok=200),
    ("GET", "/login"): Expect(PUBLIC, ok=307),
    ("GET", "/assets"): Expect(PUBLIC, ok=200),
    ("POST", "/api/auth/login"): Expect(PUBLIC, ok=422, body={}),
    ("GET", "/api/auth/me"): _signed_in(ALL_ROLES),
    ("GET", "/api/sites"): _signed_in(ALL_ROLES),
    ("GET", "/api/status"): _signed_in(ADMIN),
    ("GET", "/openapi.json"): _signed_in(ADMIN),
    ("GET", "/docs"): _signed_in(ADMIN),
    ("GET", "/docs/{name}"): _signed_in(ADMIN),
    ("GET", "/api/admin/users"): _signed_in(ADMIN),
    ("POST", "/api/admin/users"): Expect(ADMIN, ok=422, body={}),
    ("POST", "/api/admin/users/{user_id}/disable"): Expect(ADMIN),
    ("POST", "/api/admin/users/{user_id}/enable"): Expect(ADMIN),
    ("POST", "/api/admin/users/{user_id}/reset-totp"): Expect(ADMIN),
    ("GET", "/api/admin/front-door"): _signed_in(ADMIN),
    ("GET", "/api/worklist"): _signed_in(READING),
    ("GET", "/api/studies/{study_id}"): Expect(READING),
    ("POST", "/api/studies/{study_id}/claim"): Expect(REPORTING, operator=403),
    ("POST", "/api/studies/{study_id}/release"): Expect(REPORTING | ADMIN),
    ("GET", "/api/studies/{study_id}/report"): Expect(REPORTING),
    ("POST", "/api/studies/{study_id}/report"): Expect(REPORTING),
    ("GET", "/api/reports"): _signed_in(READING),
    ("GET", "/api/reports/{report_id}"): Expect(READING),
    ("GET", "/api/reports/{report_id}/pdf"): Expect(READING),
    ("PUT", "/api/reports/{report_id}/draft"): Expect(REPORTING, body={"fields": {}}),
    ("POST", "/api/reports/{report_id}/sign"): Expect(REPORTING, operator=403,
                                                      body={"passphrase": PASSPHRASE}),
    ("POST", "/api/reports/{report_id}/addenda"): Expect(REPORTING, body={"fields": {}}),
    ("POST", "/api/reports/{report_id}/share"): Expect(READING, body={"hours": 1}),
    ("DELETE", "/api/share/{link_id}"): Expect(READING),
    ("GET", "/share/{token}"): Expect(PUBLIC),
    ("GET", "/share/{token}/images/{index}"): Expect(PUBLIC),
    ("POST", "/api/ai-findings/{finding_id}/review"): Expect(REPORTING,
                                                             body={"decision": "accepted"}),
    ("GET", "/api/dashboard/turnaround"): _signed_in(REPORTING | ADMIN),
    ("GET", "/api/dashboard/turnaround.png"): _signed_in(REPORTING | ADMIN),
    ("GET", "/api/deliveries"): _signed_in(ALL_ROLES),
    ("POST", "/api/deliveries/{delivery_id}/resend"): Expect(ADMIN),
    ("GET", "/api/ecg/queue"): _signed_in(frozenset({"cardiologist"})),
    ("GET", "/api/ecg/{analysis_id}"): Expect(frozenset({"cardiologist"})),
    ("PUT", "/api/ecg/{analysis_id}"): Expect(frozenset({"cardiologist"}), body={}),
    ("GET", "/api/pathology/cases"): _signed_in(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/cases/{case_id}"): Expect(PATHOLOGY_VIEW),
    ("POST", "/api/pathology/cases/{case_id}/claim"): Expect(PATHOLOGIST),
    ("POST", "/api/pathology/cases/{case_id}/release"): Expect(PATHOLOGIST),
    ("POST", "/api/pathology/cases/{case_id}/call"): Expect(PATHOLOGIST, body={"text": "x"}),
    ("POST", "/api/pathology/cases/{case_id}/consults"): Expect(
        PATHOLOGIST, body={"consultant_id": MISSING, "question": "x"}),
    ("POST", "/api/pathology/cases/{case_id}/report"): Expect(PATHOLOGIST),
    ("POST", "/api/pathology/cases/{case_id}/sign"): Expect(PATHOLOGIST,
                                                            body={"passphrase": PASSPHRASE}),
    ("POST", "/api/pathology/cases/{case_id}/amend"): Expect(PATHOLOGIST, body={"fields": {}}),
    ("GET", "/api/pathology/slides/{slide_id}/pyramid"): Expect(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/tiles/{level}/{col}/{row}"): Expect(
        PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/thumbnail"): Expect(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/label"): Expect(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/overlays/qc"): Expect(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/overlays/ai"): Expect(PATHOLOGY_VIEW),
    ("GET", "/api/pathology/slides/{slide_id}/annotations"): Expect(PATHOLOGY_VIEW),
    ("POST", "/api/pathology/slides/{slide_id}/annotations"): Expect(
        PATHOLOGIST, body={"annotations": [{"kind": "point", "coords": [[1, 1]]}]}),
    ("GET", "/api/pathology/consultants"): _signed_in(PATHOLOGIST),
    # Consults are a person's: the operator token has none to list.
    ("GET", "/api/pathology/consults"): Expect(PATHOLOGIST, ok=200, operator=403),
    ("POST", "/api/pathology/consults/{consult_id}/answer"): Expect(PATHOLOGIST,
                                                                    body={"answer": "x"}),
    ("POST", "/api/pathology/consults/{consult_id}/grade"): Expect(
        PATHOLOGIST, body={"concordance": "minor"}),
    ("GET", "/api/pathology/pages"): _signed_in(PATHOLOGIST | ADMIN),
    ("GET", "/api/pathology/dashboard"): _signed_in(PATHOLOGIST | ADMIN),
    ("GET", "/api/lab/held"): _signed_in(LAB_REVIEWER),
    ("GET", "/api/lab/results/{result_id}"): Expect(LAB_VIEW),
    ("POST", "/api/lab/results/{result_id}/review"): Expect(
        LAB_REVIEWER, body={"action": "rerun", "reason": "x"}),
    # Signing is a person's act; the ids are in the body (a missing one: 404).
    ("POST", "/api/lab/sign"): Expect(LAB_REVIEWER, operator=403, body={
        "result_ids": [MISSING], "passphrase": PASSPHRASE}),
    # Without analyzer, test and level: 422 once admitted.
    ("GET", "/api/lab/qc/chart"): Expect(LAB_REVIEWER, ok=422),
    ("GET", "/api/lab/qc/chart.png"): Expect(LAB_REVIEWER, ok=422),
    ("GET", "/api/lab/critical"): _signed_in(LAB_VIEW),
    ("POST", "/api/lab/critical/{notice_id}/ack"): Expect(
        LAB_VIEW, body={"name": "x", "readback": "1"}),
    ("GET", "/api/lab/dashboard"): _signed_in(LAB_REVIEWER | ADMIN),
    ("GET", "/api/lab/specimens/{accession}/timeline"): Expect(LAB_VIEW),
    ("GET", "/api/lab/specimens/{accession}/label.pdf"): Expect(LAB_VIEW),
    ("GET", "/api/lab/boxes/{box_code}"): Expect(LAB_VIEW),
    # An empty bundle: 422 naming what is missing (the operator: no site named).
    ("POST", "/api/lab/orders/fhir"): Expect(frozenset({"site_user"}), ok=422, body={}),
    ("GET", "/api/lab/orders/{order_id}/fhir"): Expect(LAB_VIEW),
    # Without site, patient and visit: 422 once admitted.
    ("GET", "/api/lab/visits/report.pdf"): Expect(LAB_VIEW, ok=422),
    ("GET", "/dicom-web/studies"): _signed_in(READING),
    ("GET", "/dicom-web/studies/{_path:path}"): Expect(READING),
    # Last: it ends the session.
    ("POST", "/api/auth/logout"): Expect(PUBLIC, ok=204),
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD folded into GET)."""
    found: set[tuple[str, str]] = set()
    for rc in iter_route_contexts(create_app().routes):
        assert rc.path is not None
        methods = getattr(rc.original_route, "methods", None) or {"GET"}  # a mount: GET
        found |= {(m, rc.path) for m in methods if m != "HEAD"}
    return found


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    all_sites: bool
    client: TestClient


def _status_expected(route: Expect, who: Caller) -> int:
    if route.allowed == PUBLIC:
        return route.ok
    if who.name == ANON:
        return 401
    if who.name == OPERATOR:
        return route.operator if route.operator is not None else route.ok
    assert isinstance(route.allowed, frozenset)
    return route.ok if who.roles & route.allowed else 403


def test_every_role_against_every_route(world: tuple[Center, dict[str, int]]) -> None:
    """Every role (a site A account each, plus an all-sites admin), the operator token and
    an anonymous client against every route of the app: who is refused (401/403), and
    that an admitted site A account finds none of site B's objects (404)."""
    c, ids = world
    assert (READING, REPORTING) == (frozenset(READING_ROLES), frozenset(READER_ROLES))
    routes = app_routes()
    assert not routes - set(MATRIX), f"routes without a row in MATRIX: {routes - set(MATRIX)}"
    assert not set(MATRIX) - routes, f"rows of MATRIX for no route: {set(MATRIX) - routes}"
    a, b = ids["county-a"], ids["county-b"]
    token = api_token(get_settings())
    operator_client = TestClient(create_app(), headers={"Authorization": f"Bearer {token}"})
    callers = [Caller(ANON, frozenset(), False, TestClient(create_app())),
               Caller(OPERATOR, frozenset(), True, operator_client)]
    for role in sorted(ROLES):
        name = role.replace("_", "-") + ".a"
        callers.append(Caller(name, frozenset({role}), False,
                              client_for(c, name, [role], ["county-a"])))
    callers.append(Caller("admin.all", ADMIN, True, client_for(c, "admin.all", ["admin"],
                                                                None)))

    # Site B's objects: a report (with a cloud film link), an AI finding, an ECG.
    r = operator_client.post(f"/api/studies/{b}/report")
    assert r.status_code == 201, r.text
    rid_b = r.json()["id"]
    with c.db.session() as s:
        study_b = s.get(Study, b)
        assert study_b is not None
        uid_b, uid_a = study_b.study_uid, s.get(Study, a).study_uid  # type: ignore[union-attr]
        version = s.scalar(select(ReportVersion).where(ReportVersion.report_id == rid_b))
        assert version is not None
        link = ShareLink(token_hash="0" * 64, report_version_id=version.id,
                         expires_at=datetime.now(UTC) + timedelta(hours=1))
        result = AIResult(study_id=b, series_uid="1.2.3", model_name="m", model_version="1",
                          device="cpu", duration_ms=1.0, sr_sop_uid=generate_uid())
        s.add_all([link, result])
        s.flush()
        finding = AIFinding(result_id=result.id, study_id=b, label="x", probability=0.9,
                            threshold=0.5, positive=True, critical=False)
        ecg = ECGAnalysis(study_id=b, sop_instance_uid=generate_uid(), series_uid="1.2.3",
                          analysis_version="1", result={})
        s.add_all([finding, ecg])
        s.flush()
        foreign = {"study_id": b, "report_id": rid_b, "link_id": link.id,
                   "finding_id": finding.id, "analysis_id": ecg.id, "_path": f"{uid_b}/series"}
    missing = {"study_id": MISSING, "report_id": MISSING, "link_id": MISSING,
               "finding_id": MISSING, "analysis_id": MISSING, "_path": f"{MISSING_UID}/series"}
    asset = next(p.name for p in sorted((REPO / "viewer" / "static" / "assets").iterdir()))
    fixed = {"user_id": MISSING, "delivery_id": MISSING, "token": "not-a-token", "index": 0,
             "name": "swagger-ui.css", "case_id": MISSING, "slide_id": MISSING,
             "consult_id": MISSING, "level": 0, "col": 0, "row": 0,
             "result_id": MISSING, "notice_id": MISSING, "order_id": MISSING,
             "accession": "L99999999", "box_code": "BOX-MISSING"}

    def url(path: str, who: Caller) -> str:
        if path == "/assets":
            return f"/assets/{asset}"
        values = {**fixed, **(missing if who.all_sites else foreign)}
        return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(values[m.group(1)]), path)

    wrong: list[str] = []
    for (method, path), route in MATRIX.items():
        for who in callers:
            r = who.client.request(method, url(path, who), json=route.body,
                                   follow_redirects=False)
            want = _status_expected(route, who)
            if r.status_code != want:
                wrong.append(f"{who.name:16} {method:6} {url(path, who)}: {r.status_code}, "
                             f"expected {want} {r.text[:120]!r}")
    assert not wrong, "\n".join(wrong)

    # Admitted callers do get their own site's data; admin gets none of it.  (The
    # matrix ended with signing out: new sessions.)
    fresh = {n: client_for(c, n + "2", [role], ["county-a"])
             for n, role in (("radiologist.a", "radiologist"), ("site-user.a", "site_user"),
                             ("admin.a", "admin"))}
    for name in ("radiologist.a", "site-user.a"):
        api = fresh[name]
        assert [i["study_id"] for i in api.get("/api/worklist").json()["items"]] == [a]
        assert api.get(f"/api/studies/{a}").status_code == 200, name
        series = api.get(f"/dicom-web/studies/{uid_a}/series")
        assert series.status_code == 200, (name, series.text)
    for url_a in ("/api/worklist", f"/api/studies/{a}", f"/dicom-web/studies/{uid_a}/series",
                  "/dicom-web/studies", "/api/reports"):
        assert fresh["admin.a"].get(url_a).status_code == 403, url_a
    assert operator_client.get(f"/api/studies/{b}").status_code == 200
