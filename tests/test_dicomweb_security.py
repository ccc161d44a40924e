"""The DICOMweb proxy against a site-limited account that tries to leave its sites.

A real ``rdc web`` (uvicorn) in front of a real Orthanc and gateway; requests are
sent with ``http.client`` so that the path reaches the server exactly as written
(an HTTP client library would remove dot segments before sending).  Every
traversal variant the issue found, and foreign study/series/instance UIDs, must
answer 404; Orthanc's REST root must never answer through the app; QIDO paging
must hold after the site filter; access is audited, aggregated per study.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pyotp
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from browser_support import start_web, stop
from conftest import Center, wait_until
from core.models import AIResult, AuditRecord, Report, ReportVersion, Study
from core.orthanc_client import OrthancClient, OrthancRejected
from core.settings import get_settings
from devkit.dcmtk import storescu
from viewer.accounts import add_user
from viewer.dicomweb_access import visible_objects
from viewer.dicomweb_paths import BadPath, Resource, parse

PASSWORD = "a long enough password 1"
SECRET_PATIENT = "SECRET-A-PATIENT"


# The grammar on its own -----------------------------------------------------------

@pytest.mark.parametrize("path,resource", [
    ("/dicom-web/studies", Resource.SEARCH_STUDIES),
    ("/dicom-web/studies/1.2.3", Resource.STUDY),
    ("/dicom-web/studies/1.2.3/metadata", Resource.STUDY_METADATA),
    ("/dicom-web/studies/1.2.3/series", Resource.SEARCH_SERIES),
    ("/dicom-web/studies/1.2.3/instances", Resource.SEARCH_INSTANCES),
    ("/dicom-web/studies/1.2.3/series/1.2.4", Resource.SERIES),
    ("/dicom-web/studies/1.2.3/series/1.2.4/metadata", Resource.SERIES_METADATA),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances", Resource.SEARCH_SERIES_INSTANCES),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5", Resource.INSTANCE),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/metadata",
     Resource.INSTANCE_METADATA),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1,2,10", Resource.FRAMES),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered", Resource.RENDERED),
    ("/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/thumbnail", Resource.THUMBNAIL),
])
def test_grammar_accepts_the_dicomweb_resources(path: str, resource: Resource) -> None:
    target = parse(path)
    assert target.resource is resource
    # The upstream path is rebuilt from the parts and parses back to the same UIDs.
    up = target.upstream_path()
    assert ".." not in up and "%" not in up
    if target.study:
        assert up.startswith(f"/dicom-web/studies/{target.study}")


@pytest.mark.parametrize("path", [
    "/dicom-web/studies/1.2.3/..%2F1.2.9/metadata",
    "/dicom-web/studies/1.2.3/%2E%2E/1.2.9/metadata",
    "/dicom-web/studies/1.2.3/..%5C1.2.9/metadata",
    "/dicom-web/studies/1.2.3/../1.2.9/metadata",
    "/dicom-web/studies/1.2.3/./metadata",
    "/dicom-web/studies/1.2.3/x/..%2F..%2F..%2F..%2Finstances",
    "/dicom-web/studies/1.2.3/x/../../../../system",
    "/dicom-web/studies/1.2.3//metadata",
    "/dicom-web/studies/1.2.3/series/1.2.4\\..\\..",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/0",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1;x",
    "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/file",
    "/dicom-web/studies/1.2.3/series/1.2.4/rendered",
    "/dicom-web/studies/01.2.3/metadata",
    "/dicom-web/studies/1.2.3a/metadata",
    "/dicom-web/studies/" + "1." * 40 + "1/metadata",
    "/dicom-web/series",
    "/dicom-web/studies/1.2.3/metadata/",
])
def test_grammar_refuses_everything_else(path: str) -> None:
    with pytest.raises(BadPath):
        parse(path)


@pytest.mark.parametrize("path", ["/a/../system", "/a/..%2Fb", "/a/%2E%2E/b", "/a\\..\\b",
                                  "/a//b", "a/b", "/dicom-web/studies/./x"])
def test_orthanc_client_refuses_paths_that_normalise(path: str) -> None:
    client = OrthancClient("http://127.0.0.1:9", "u", "p", retries=0)
    with pytest.raises(OrthancRejected):
        client.get(path)


# Against the real center ----------------------------------------------------------

@dataclass
class World:
    c: Center
    web: subprocess.Popen[bytes]
    studies: dict[str, list[str]]  # site -> study UIDs
    series: dict[str, str]  # study UID -> series UID
    sops: dict[str, str]  # study UID -> SOP instance UID


def _send(c: Center, tmp_path: Path, site: str, ae: str, patient: str) -> tuple[str, str, str]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = f"{patient}^X", patient
    path = tmp_path / f"{ds.StudyInstanceUID}.dcm"
    ds.save_as(path)
    assert storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=ae,
                    called_ae=c.gateway_ae).succeeded
    uid = str(ds.StudyInstanceUID)

    def complete() -> bool:
        with c.db.session() as s:
            st = s.scalar(select(Study).where(Study.study_uid == uid))
            return st is not None and st.state == "complete"
    wait_until(complete, 60, f"study of {site} to complete")
    return uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


@pytest.fixture
def world(two_sites: Center, tmp_path: Path) -> Iterator[World]:
    c = two_sites
    studies: dict[str, list[str]] = {"county-a": [], "county-b": []}
    series: dict[str, str] = {}
    sops: dict[str, str] = {}
    for site, ae, patient in (("county-a", "COUNTY_A", SECRET_PATIENT),
                              ("county-b", "COUNTY_B", "B-ONE"),
                              ("county-b", "COUNTY_B", "B-TWO")):
        st, se, sop = _send(c, tmp_path, site, ae, patient)
        studies[site].append(st)
        series[st], sops[st] = se, sop
    web = start_web(c)
    try:
        yield World(c, web, studies, series, sops)
    finally:
        stop(web)
        get_settings.cache_clear()


def _sign_in(w: World, username: str, roles: list[str], sites: list[str] | None) -> str:
    """A person's session cookie header value."""
    with w.c.db.session() as s:
        _, uri = add_user(s, get_settings(), username=username, display_name=username,
                          password=PASSWORD, roles=roles, sites=sites or (),
                          all_sites=sites is None, actor="test")
    r = httpx.post(f"http://127.0.0.1:{w.c.web_port}/api/auth/login",
                   json={"username": username, "password": PASSWORD,
                         "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    return f"rdc_session={r.cookies['rdc_session']}"


def _raw_get(w: World, path: str, cookie: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` exactly as written: no client-side normalisation of dots or escapes."""
    conn = http.client.HTTPConnection("127.0.0.1", w.c.web_port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Cookie", cookie)
        conn.putheader("Accept", "*/*")
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _traversals(own: str, other: str, other_series: str, other_sop: str,
                orthanc_instance: str) -> list[str]:
    base = f"/dicom-web/studies/{own}"
    up4 = "..%2F..%2F..%2F..%2F"
    return [
        f"{base}/..%2F{other}/metadata",
        f"{base}/..%2F{other}/series/{other_series}/instances/{other_sop}/frames/1",
        f"{base}/..%2F{other}/series/{other_series}/instances/{other_sop}/rendered",
        f"{base}/%2E%2E/{other}/metadata",
        f"{base}/%2e%2e%2f{other}/metadata",
        f"{base}/..%5C{other}/metadata",
        f"{base}/../{other}/metadata",
        f"{base}/./../{other}/metadata",
        f"{base}/x/{up4}instances",
        f"{base}/x/{up4}patients%3Fexpand",
        f"{base}/x/{up4}system",
        f"{base}/x/{up4}instances%2F{orthanc_instance}%2Ffile",
        f"{base}/x/../../../../system",
        f"{base}/x/../../../../instances/{orthanc_instance}/file",
        f"{base}/x/%2E%2E/%2E%2E/%2E%2E/%2E%2E/system",
        f"{base}/x/..%5C..%5C..%5C..%5Csystem",
        f"{base}/series/{other_series}/..%2F..%2F..%2F..%2Fsystem",
        f"/dicom-web/studies/{other}",
        f"/dicom-web/studies/{other}/metadata",
        f"/dicom-web/studies/{other}/series",
        f"/dicom-web/studies/{other}/series/{other_series}/metadata",
        f"/dicom-web/studies/{other}/series/{other_series}/instances/{other_sop}/frames/1",
        f"/dicom-web/studies/{other}/series/{other_series}/instances/{other_sop}/thumbnail",
        # Own study, foreign series or instance:
        f"{base}/series/{other_series}/metadata",
        f"{base}/series/{other_series}",
        f"{base}/series/{other_series}/instances/{other_sop}/frames/1",
        f"{base}/series/{other_series}/instances/{other_sop}/rendered",
    ]


def test_site_limited_account_cannot_leave_its_sites(world: World) -> None:
    w = world
    other = w.studies["county-a"][0]
    own = w.studies["county-b"][0]
    with w.c.orthanc() as o:
        orthanc_instance = o.find_instance(w.sops[other])
    assert orthanc_instance
    paths = _traversals(own, other, w.series[other], w.sops[other], orthanc_instance)
    # Own study with the other study's instance in its own series path, too.
    paths.append(f"/dicom-web/studies/{own}/series/{w.series[own]}/instances/"
                 f"{w.sops[other]}/frames/1")
    for role in ("site_user", "radiologist"):
        cookie = _sign_in(w, f"b-{role.replace('_', '-')}", [role], ["county-b"])
        # The account does reach its own images: the refusals below are not a broken proxy.
        status, headers, body = _raw_get(
            w, f"/dicom-web/studies/{own}/series/{w.series[own]}/metadata", cookie)
        assert status == 200, body[:300]
        assert headers["cache-control"] == "private, no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert w.sops[own] in body.decode()
        for path in paths:
            status, _, body = _raw_get(w, path, cookie)
            assert status == 404, f"{role} {path}: {status} {body[:300]!r}"
            text = body.decode(errors="replace")
            assert SECRET_PATIENT not in text, path
            for marker in ("ApiVersion", "DicomAet", "MainDicomTags", "DICM"):
                assert marker not in text, f"{path} reached Orthanc: {text[:200]}"


def test_orthanc_rest_root_is_never_reachable(world: World) -> None:
    """Even an all-sites account: the app serves DICOMweb only, not Orthanc's REST API."""
    w = world
    cookie = _sign_in(w, "all-reader", ["radiologist"], None)
    own = w.studies["county-b"][0]
    for tail in ("system", "patients", "instances", "tools/lookup", "statistics",
                 "modalities", "studies"):
        for path in (f"/dicom-web/studies/{own}/x/..%2F..%2F..%2F..%2F{tail}",
                     f"/dicom-web/studies/{own}/x/../../../../{tail}",
                     f"/dicom-web/studies/{own}/%2E%2E/%2E%2E/%2E%2E/{tail}",
                     f"/dicom-web/..%2F{tail}", f"/dicom-web/../{tail}"):
            status, _, body = _raw_get(w, path, cookie)
            assert status == 404, f"{path}: {status} {body[:200]!r}"
            assert b"ApiVersion" not in body and b"DicomAet" not in body


def test_unknown_query_parameters_are_refused(world: World) -> None:
    w = world
    cookie = _sign_in(w, "b-reader", ["radiologist"], ["county-b"])
    own = w.studies["county-b"][0]
    inst = (f"/dicom-web/studies/{own}/series/{w.series[own]}/instances/{w.sops[own]}")
    status, headers, body = _raw_get(w, f"{inst}/rendered?viewport=64,64", cookie)
    assert status == 200 and headers["content-type"].startswith("image/"), body[:200]
    for bad in (f"{inst}/rendered?viewport=64,64&x=..%2F..%2Fsystem",
                f"{inst}/frames/1?expand", "/dicom-web/studies?limit=abc",
                "/dicom-web/studies?..%2Fsystem=1"):
        status, _, body = _raw_get(w, bad, cookie)
        assert status == 400, f"{bad}: {status} {body[:200]!r}"


def test_qido_paging_for_a_site_limited_account(world: World) -> None:
    w = world
    cookie = _sign_in(w, "b-pager", ["radiologist"], ["county-b"])
    pages = []
    for offset in (0, 1, 2):
        status, _, body = _raw_get(w, f"/dicom-web/studies?limit=1&offset={offset}", cookie)
        assert status == 200
        pages.append([d["0020000D"]["Value"][0] for d in json.loads(body)])
    assert [len(p) for p in pages] == [1, 1, 0], pages
    assert {pages[0][0], pages[1][0]} == set(w.studies["county-b"])
    status, _, body = _raw_get(w, "/dicom-web/studies?limit=10", cookie)
    assert sorted(d["0020000D"]["Value"][0] for d in json.loads(body)) == sorted(
        w.studies["county-b"])
    # Matching keys still reach Orthanc: a search by patient ID finds only that study.
    status, _, body = _raw_get(w, "/dicom-web/studies?PatientID=B-TWO", cookie)
    assert [d["0020000D"]["Value"][0] for d in json.loads(body)] == [w.studies["county-b"][1]]
    for match in ("PatientName=B-TWO%5EX", "PatientName=B-TWO^X", "PatientName=B-TW*"):
        status, _, body = _raw_get(w, f"/dicom-web/studies?{match}", cookie)
        assert status == 200, body[:200]
        assert [d["0020000D"]["Value"][0] for d in json.loads(body)] == [
            w.studies["county-b"][1]], match
    # A value the archive cannot match literally is refused, not silently unmatched.
    for bad in ("PatientName=B%20TWO", "PatientName=%E6%9D%8E*", "PatientName=a%26b",
                "PatientName=%25"):
        status, _, body = _raw_get(w, f"/dicom-web/studies?{bad}", cookie)
        assert status == 400 and b"wildcards" in body, (bad, status, body[:200])
    # The other site's patient is not found even when searched for by ID.
    status, _, body = _raw_get(w, f"/dicom-web/studies?PatientID={SECRET_PATIENT}", cookie)
    assert json.loads(body) == []


def test_admin_reads_no_images(world: World) -> None:
    w = world
    cookie = _sign_in(w, "an-admin", ["admin"], None)
    own = w.studies["county-b"][0]
    for path in ("/dicom-web/studies", f"/dicom-web/studies/{own}/metadata",
                 f"/dicom-web/studies/{own}/series/{w.series[own]}/metadata"):
        status, _, _ = _raw_get(w, path, cookie)
        assert status == 403, path


def test_image_access_is_audited_once_per_study(world: World) -> None:
    w = world
    cookie = _sign_in(w, "b-auditee", ["radiologist"], ["county-b"])
    own = w.studies["county-b"][0]
    inst = f"/dicom-web/studies/{own}/series/{w.series[own]}/instances/{w.sops[own]}"
    assert _raw_get(w, f"/dicom-web/studies/{own}/series/{w.series[own]}/metadata",
                    cookie)[0] == 200
    for _ in range(20):
        assert _raw_get(w, f"{inst}/frames/1", cookie)[0] == 200
    # A refused request is not an access.
    assert _raw_get(w, f"/dicom-web/studies/{w.studies['county-a'][0]}/metadata",
                    cookie)[0] == 404
    with w.c.db.session() as s:
        rows = s.scalars(select(AuditRecord).where(
            AuditRecord.action == "dicomweb.access",
            AuditRecord.actor == "b-auditee")).all()
        assert [(r.object_type, r.object_id) for r in rows] == [("study", own)]


def test_ai_and_report_outputs_belong_to_their_study(world: World) -> None:
    """The SR/SEG a model wrote and the signed report's SR/PDF are the study's objects
    in the center's database; another study's rows never lend them."""
    w = world
    own = w.studies["county-b"][0]
    with w.c.db.session() as s:
        study = s.scalar(select(Study).where(Study.study_uid == own))
        assert study is not None
        s.add(AIResult(study_id=study.id, series_uid=w.series[own], model_name="m",
                       model_version="1", device="cpu", duration_ms=1.0, sr_sop_uid="1.2.3",
                       seg_sop_uid="1.2.4"))
        report = Report(subject_type="study", subject_id=str(study.id), study_id=study.id,
                        site_id=study.site_id, template_id="t", template_version="1")
        s.add(report)
        s.flush()
        s.add(ReportVersion(report_id=report.id, number=1, sr_series_uid="1.9.1",
                            sr_sop_uid="1.9.2", pdf_series_uid="1.9.3", pdf_sop_uid="1.9.4"))
        s.flush()
        from ai_models.output_uids import result_uids
        uids = result_uids(w.series[own], "m", "1")
        found = visible_objects(s, (study.id,))
        assert found[w.series[own]] == {w.sops[own]}
        assert found[uids.sr_series] == {uids.sr}
        assert found[uids.seg_series] == {uids.seg}
        assert found["1.9.1"] == {"1.9.2"} and found["1.9.3"] == {"1.9.4"}
        other = s.scalar(select(Study).where(Study.study_uid == w.studies["county-a"][0]))
        assert other is not None
        assert visible_objects(s, (other.id,)) == {w.series[other.study_uid]:
                                                   {w.sops[other.study_uid]}}
        s.rollback()


def test_every_forwarding_route_refuses_traversal(world: World) -> None:
    """Routes that turn a path into an Orthanc request or a file (study view, ECG,
    report, share links, the front end's assets) answer 4xx to encoded traversal and
    to the other site's IDs, and never leak the other site's patient."""
    w = world
    cookie = _sign_in(w, "b-walker", ["radiologist", "cardiologist"], ["county-b"])
    with w.c.db.session() as s:
        ids = {st.study_uid: st.id for st in s.scalars(select(Study))}
    own, other = ids[w.studies["county-b"][0]], ids[w.studies["county-a"][0]]
    assert _raw_get(w, f"/api/studies/{own}", cookie)[0] == 200
    paths = []
    for route in ("/api/studies/{}", "/api/studies/{}/report", "/api/ecg/{}",
                  "/api/reports/{}", "/api/reports/{}/pdf"):
        paths += [route.format(other),
                  route.format(f"{own}%2F..%2F{other}"), route.format(f"{own}/../{other}"),
                  route.format(f"..%2F{other}"), route.format(f"%2E%2E%2F{other}"),
                  route.format(f"{own}..%5C{other}")]
    paths += ["/share/..%2F..%2Fapi%2Fstudies", "/share/x/images/..%2F1",
              "/share/x/images/0%2F..%2F..%2F..%2Fsystem",
              "/assets/..%2F..%2F..%2Fpyproject.toml", "/assets/../../../pyproject.toml",
              "/assets/%2E%2E/%2E%2E/%2E%2E/pyproject.toml", "/assets/..%5C..%5Cindex.html",
              "/..%2F..%2Fpyproject.toml", "/%2E%2E/%2E%2E/core/settings.py"]
    for path in paths:
        status, _, body = _raw_get(w, path, cookie)
        assert 400 <= status < 500, f"{path}: {status} {body[:200]!r}"
        text = body.decode(errors="replace")
        assert SECRET_PATIENT not in text and "[project]" not in text, path
        assert "ApiVersion" not in text and "class Settings" not in text, path
