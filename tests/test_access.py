"""Who may see what, over HTTP against a real Orthanc and gateway: a matrix of users x
routes x another site's objects, DICOMweb through the app, cloud film links, and
patient-supplied text that must stay text."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pyotp
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import REPO, Center, wait_until
from core.models import Study
from core.settings import get_settings
from core.sites import SiteSpec, add_site
from pacs_gateway.dcmtk import storescu
from viewer.accounts import add_user
from viewer.app import create_app
from viewer.auth import api_token

PASSWORD = "a long enough password 1"
PASSPHRASE = "correct horse battery"
XSS = "<script>alert(1)</script>^<img src=x onerror=alert(2)>"


@pytest.fixture
def world(center: Center, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
          ) -> Iterator[tuple[Center, dict[str, int]]]:
    """Two sites, each with one study; the site A patient's name is an XSS payload."""
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    c = center
    c.start_orthanc()
    with c.db.session() as s:
        for site, ae in (("county-a", "COUNTY_A"), ("county-b", "COUNTY_B")):
            add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=ae,
                                 host="127.0.0.1", port=11199,
                                 allowed_addresses=("127.0.0.1/32",), inactivity_s=1),
                     actor="test")
    c.start_gateway()
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
    with c.db.session() as s:
        _, uri = add_user(s, get_settings(), username=username, display_name=username,
                          password=PASSWORD, roles=roles, sites=sites or (),
                          all_sites=sites is None, actor="test")
    api = TestClient(create_app())
    r = api.post("/api/auth/login", json={"username": username, "password": PASSWORD,
                                          "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    api.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return api


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
