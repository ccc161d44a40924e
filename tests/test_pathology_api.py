"""The pathology API against a real Orthanc with its WSI plugin and real DICOM WSI:
the case worklist, claim and open, the slide pyramid, tiles (the exact bytes Orthanc
serves), thumbnail and label, the QC and AI overlays, the frozen call, consults, and
the synoptic report signed through the report service.

The world (two county sites, a case at each, three slides) is seeded straight into the
database, as the intake job would leave it, so that these tests check the web edge and
nothing else; the slides themselves are real DICOM WSI in a real Orthanc.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import REPO, Center, signed_in_client
from core.models import (
    AIResult,
    AuditRecord,
    PathologyCase,
    PathologyEvent,
    PathologySlide,
    Study,
)
from core.settings import get_settings
from devkit.wsi_samples import synthetic_wsi_dicom
from viewer import pathology_views

PASSPHRASE = "correct horse battery"


# Real DICOM WSI ---------------------------------------------------------------------


def make_wsi(out_dir: Path, *, width: int = 1024, height: int = 768, seed: int = 0,
             accession: str = "PATH-1", patient_id: str = "P1", slide_number: int = 1,
             label: bool = False) -> tuple[str, str, list[bytes]]:
    """A small real DICOM WSI (devkit.wsi_samples: a synthetic H&E slide through the
    dicomizer, 256-pixel JPEG tiles, TILED_FULL), with its label image in a series of
    its own when ``label``: (study uid, series uid, the files' bytes, label last)."""
    files = synthetic_wsi_dicom(out_dir / f"{accession}-{slide_number}", width=width,
                                height=height, seed=seed, accession=accession,
                                patient_id=patient_id, slide_number=slide_number,
                                label=label, tile=256)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), \
        [f.read_bytes() for f in files]


# The world ------------------------------------------------------------------------------


@dataclass
class World:
    c: Center
    case_a: int
    case_b: int
    slide_a: int
    slide_a2: int
    slide_b: int
    study_a: int
    series: dict[int, str]
    orthanc_series: dict[int, str]
    label_file: bytes

    def client(self, username: str, roles: list[str], sites: list[str] | None) -> TestClient:
        client: TestClient = signed_in_client(self.c, username, roles, sites)
        return client


def _upload(c: Center, files: list[bytes]) -> str:
    with c.orthanc() as o:
        series = [str(o.upload_instance(data)["ParentSeries"]) for data in files]
    return series[0]


@pytest.fixture
def world(center: Center, monkeypatch: pytest.MonkeyPatch,
          tmp_path: Path) -> Iterator[World]:
    """Orthanc (with its WSI plugin) and two sites; case PATH-A at county-a with two
    slides (the first with a label image, a failed QC grade and an AI heat map), case
    PATH-B at county-b with one slide."""
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    pathology_views.reset_caches()
    center.start_orthanc()
    center.add_site("county-a", "COUNTY_A", accepts_results=True)
    center.add_site("county-b", "COUNTY_B")
    study_uid_a, series_a, files_a = make_wsi(tmp_path, seed=1, accession="PATH-A",
                                              label=True)
    same_study, series_a2, files_a2 = make_wsi(tmp_path, seed=2, accession="PATH-A",
                                               width=768, height=512, slide_number=2)
    assert same_study == study_uid_a  # one accession, one study
    study_uid_b, series_b, files_b = make_wsi(tmp_path, seed=3, accession="PATH-B",
                                              patient_id="P2")
    oseries = {series_a: _upload(center, files_a), series_a2: _upload(center, files_a2),
               series_b: _upload(center, files_b)}
    now = datetime.now(UTC)
    with center.db.session() as s:
        ids: dict[str, int] = {}
        for site, uid, acc in (("county-a", study_uid_a, "PATH-A"),
                               ("county-b", study_uid_b, "PATH-B")):
            study = Study(site_id=site, study_uid=uid, accession_number=acc,
                          patient_id="P1", patient_name="DOE^JANE", modalities=["SM"],
                          state="complete", completed_at=now)
            s.add(study)
            s.flush()
            case = PathologyCase(site_id=site, accession_number=acc, patient_id="P1",
                                 patient_name="DOE^JANE", organ="breast",
                                 urgency="frozen" if site == "county-a" else "routine",
                                 state="qc_passed", primary_study_id=study.id,
                                 due_at=now + timedelta(hours=1), received_at=now)
            s.add(case)
            s.flush()
            ids[f"study-{site}"], ids[f"case-{site}"] = study.id, case.id
        slides: list[int] = []
        for key, case_key, study_key, series_uid, w, h, levels, grade in (
                ("a", "case-county-a", "study-county-a", series_a, 1024, 768, 2, "fail"),
                ("a2", "case-county-a", "study-county-a", series_a2, 768, 512, 2, "pass"),
                ("b", "case-county-b", "study-county-b", series_b, 1024, 768, 2, "pass")):
            slide = PathologySlide(
                case_id=ids[case_key], study_id=ids[study_key], series_uid=series_uid,
                orthanc_series_id=oseries[series_uid] if key != "a2" else "",
                part="A", block=f"A{len(slides) + 1}", stain="H&E", width=w, height=h,
                levels=levels, mpp=0.25, qc_grade=grade,
                qc_reasons=["42% of tissue tiles are blurred"] if grade == "fail" else [],
                qc_metrics={"blur_tiles": [[0, 0, 256, 256]], "pen_boxes": [],
                            "missing": [], "tissue_fraction": 0.5} if grade == "fail"
                else {})
            s.add(slide)
            s.flush()
            slides.append(slide.id)
            ids[f"slide-{key}"] = slide.id
        s.add(AIResult(study_id=ids["study-county-a"], series_uid=series_a,
                       model_name="tile-demo", model_version="1", device="cpu",
                       duration_ms=1.0, sr_sop_uid=str(generate_uid()),
                       heatmap={"rows": 2, "cols": 3, "cell_px": 341.0,
                                "labels": ["tumour"],
                                "values": [[0.1, 0.9, 0.2], [0.0, 0.3, 0.5]]}))
    world = World(c=center, case_a=ids["case-county-a"], case_b=ids["case-county-b"],
              slide_a=ids["slide-a"], slide_a2=ids["slide-a2"], slide_b=ids["slide-b"],
              study_a=ids["study-county-a"],
              series={ids["slide-a"]: series_a, ids["slide-a2"]: series_a2,
                      ids["slide-b"]: series_b},
              orthanc_series={ids["slide-a"]: oseries[series_a],
                              ids["slide-a2"]: oseries[series_a2],
                              ids["slide-b"]: oseries[series_b]},
                  label_file=files_a[-1])
    yield world
    pathology_views.reset_caches()
    get_settings.cache_clear()


def events(w: World, case_id: int, step: str) -> list[PathologyEvent]:
    with w.c.db.session() as s:
        return list(s.scalars(select(PathologyEvent).where(
            PathologyEvent.case_id == case_id, PathologyEvent.step == step)))


def audited(w: World, action: str) -> list[AuditRecord]:
    with w.c.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


# Tests --------------------------------------------------------------------------------


def test_worklist_claim_and_open_case(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    dr_a2 = w.client("dr.a2", ["pathologist"], ["county-a"])
    clerk_a = w.client("clerk.a", ["site_user"], ["county-a"])

    listed = dr_a.get("/api/pathology/cases")
    assert listed.status_code == 200, listed.text
    cases = listed.json()["cases"]
    assert [c["id"] for c in cases] == [w.case_a]
    item = cases[0]
    assert item["slide_count"] == 2 and item["qc"] == "fail" and item["mine"] is False
    assert item["urgency"] == "frozen" and item["stains"] == ["H&E"]
    assert [c["id"] for c in clerk_a.get("/api/pathology/cases").json()["cases"]] == [w.case_a]
    assert dr_a.get("/api/pathology/cases?status=bogus").status_code == 422

    r = dr_a.post(f"/api/pathology/cases/{w.case_a}/claim")
    assert r.status_code == 200, r.text
    assert r.json()["mine"] is True and r.json()["state"] == "assigned"
    taken = dr_a2.post(f"/api/pathology/cases/{w.case_a}/claim")
    assert taken.status_code == 409
    assert taken.json()["detail"] == f"case {w.case_a} is being read by dr.a"
    mine = dr_a.get("/api/pathology/cases?mine=true").json()["cases"]
    assert [c["id"] for c in mine] == [w.case_a]
    assert dr_a2.get("/api/pathology/cases?mine=true").json()["cases"] == []

    opened = dr_a.get(f"/api/pathology/cases/{w.case_a}")
    assert opened.status_code == 200, opened.text
    detail = opened.json()
    assert detail["state"] == "in_review"  # the holder opening it starts the review
    assert detail["study_id"] == w.study_a and detail["report"] is None
    slides = {s["id"]: s for s in detail["slides"]}
    assert set(slides) == {w.slide_a, w.slide_a2}
    a = slides[w.slide_a]
    assert a["series_uid"] == w.series[w.slide_a] and (a["width"], a["height"]) == (1024, 768)
    assert a["qc_grade"] == "fail" and a["qc_reasons"] == ["42% of tissue tiles are blurred"]
    assert (a["has_label_image"], a["has_heatmap"]) == (True, True)
    assert slides[w.slide_a2]["has_label_image"] is False
    assert slides[w.slide_a2]["has_heatmap"] is False
    assert "claimed" in [t["step"] for t in detail["timeline"]]
    views = audited(w, "pathology.case_view")
    assert [(v.actor, v.object_id) for v in views] == [("dr.a", str(w.case_a))]

    # Release gives it back; only the holder may.
    assert dr_a2.post(f"/api/pathology/cases/{w.case_a}/release").status_code == 403
    back = dr_a.post(f"/api/pathology/cases/{w.case_a}/release")
    assert back.status_code == 200 and back.json()["assigned_to"] is None


def test_pyramid_tiles_thumbnail_label_and_first_tile(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    clerk_a = w.client("clerk.a", ["site_user"], ["county-a"])
    base = f"/api/pathology/slides/{w.slide_a}"

    pyr = dr_a.get(f"{base}/pyramid")
    assert pyr.status_code == 200, pyr.text
    p = pyr.json()
    assert (p["width"], p["height"], p["tile_width"], p["tile_height"]) == (1024, 768, 256, 256)
    assert p["mpp"] == 0.25
    # Level 0 is full resolution, as Orthanc's WSI plugin counts them.
    with w.c.orthanc() as o:
        theirs = o.get(f"/wsi/pyramids/{w.orthanc_series[w.slide_a]}").json()
    assert [[lv["width"], lv["height"]] for lv in p["levels"]] == theirs["Sizes"]
    assert [[lv["tiles_x"], lv["tiles_y"]] for lv in p["levels"]] == theirs["TilesCount"]
    assert [lv["downsample"] for lv in p["levels"]] == theirs["Resolutions"]
    assert (p["levels"][0]["level"], p["levels"][0]["tiles_x"], p["levels"][0]["tiles_y"]) \
        == (0, 4, 3)
    last = p["levels"][-1]
    assert len(p["levels"]) >= 2 and (last["tiles_x"], last["tiles_y"]) == (1, 1)
    top = len(p["levels"]) - 1

    # The site_user looking at tiles records nothing; the pathologist's first tile does.
    assert clerk_a.get(f"{base}/tiles/0/0/0").status_code == 200
    assert events(w, w.case_a, "first_tile") == []
    with w.c.orthanc() as o:
        for level, col, row in ((0, 0, 0), (0, 3, 2), (0, 1, 1), (top, 0, 0)):
            r = dr_a.get(f"{base}/tiles/{level}/{col}/{row}")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/jpeg"
            # Patient data on shared workstations: never kept (viewer.headers).
            assert "no-store" in r.headers["cache-control"]
            direct = o.get(f"/wsi/tiles/{w.orthanc_series[w.slide_a]}/{level}/{col}/{row}")
            assert r.content == direct.content  # passed through, never re-encoded
    first = events(w, w.case_a, "first_tile")
    assert len(first) == 1 and first[0].actor == "dr.a"
    assert first[0].detail == {"slide_id": w.slide_a}

    # Outside the pyramid: 404; not a non-negative integer: 422.
    for path, status in ((f"{top + 1}/0/0", 404), ("0/4/0", 404), ("0/0/3", 404),
                         (f"{top}/1/0", 404), (f"{top}/0/1", 404),
                         ("-1/0/0", 422), ("0/x/0", 422), ("0/0/1e3", 422)):
        r = dr_a.get(f"{base}/tiles/{path}")
        assert r.status_code == status, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")

    # A slide whose Orthanc series id was not stored is looked up once.
    r = dr_a.get(f"/api/pathology/slides/{w.slide_a2}/tiles/1/0/0")
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"

    thumb = dr_a.get(f"{base}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.size == (last["width"], last["height"])
    lab = dr_a.get(f"{base}/label")
    assert lab.status_code == 200, lab.text
    with Image.open(io.BytesIO(lab.content)) as im:
        label_ds = pydicom.dcmread(io.BytesIO(w.label_file), stop_before_pixels=True)
        assert "LABEL" in label_ds.ImageType
        assert im.format == "JPEG"
        assert im.size == (label_ds.TotalPixelMatrixColumns, label_ds.TotalPixelMatrixRows)
    none = dr_a.get(f"/api/pathology/slides/{w.slide_a2}/label")
    assert none.status_code == 404 and "no label image" in none.json()["detail"]


def test_overlays(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    qc = dr_a.get(f"/api/pathology/slides/{w.slide_a}/overlays/qc")
    assert qc.status_code == 200, qc.text
    assert qc.json() == {"grade": "fail", "reasons": ["42% of tissue tiles are blurred"],
                         "blur_tiles": [[0, 0, 256, 256]], "pen_boxes": [], "missing": []}
    ai = dr_a.get(f"/api/pathology/slides/{w.slide_a}/overlays/ai")
    assert ai.status_code == 200, ai.text
    assert ai.json() == {"rows": 2, "cols": 3, "cell_px": 341.0, "labels": ["tumour"],
                         "values": [[0.1, 0.9, 0.2], [0.0, 0.3, 0.5]], "model": "tile-demo",
                         "version": "1", "demonstration": True}
    none = dr_a.get(f"/api/pathology/slides/{w.slide_a2}/overlays/ai")
    assert none.status_code == 404 and none.json()["detail"] == "no AI heat map"


def test_frozen_call_consult_and_pages(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    consultant = w.client("dr.b", ["pathologist"], ["county-b"])
    with w.c.db.session() as s:
        from core.models import User
        consultant_id = s.scalar(select(User.id).where(User.username == "dr.b"))
        dr_a_id = s.scalar(select(User.id).where(User.username == "dr.a"))
    assert dr_a.post(f"/api/pathology/cases/{w.case_a}/claim").status_code == 200

    call = dr_a.post(f"/api/pathology/cases/{w.case_a}/call",
                     json={"text": "Margins clear, benign."})
    assert call.status_code == 200, call.text
    assert call.json()["step"] == "call" and call.json()["actor"] == "dr.a"
    assert [e.detail["text"] for e in events(w, w.case_a, "call")] == ["Margins clear, benign."]
    assert dr_a.post(f"/api/pathology/cases/{w.case_a}/call",
                     json={"text": ""}).status_code == 422

    listed = dr_a.get("/api/pathology/consultants").json()["consultants"]
    assert {"id": consultant_id, "display_name": "dr.b", "sites": ["county-b"]} in listed
    assert dr_a_id not in [c["id"] for c in listed]

    # Before the consult the consultant at another site sees nothing of the case.
    assert consultant.get(f"/api/pathology/cases/{w.case_a}").status_code == 404
    assert consultant.get(f"/api/pathology/slides/{w.slide_a}/tiles/0/0/0").status_code == 404
    bad = dr_a.post(f"/api/pathology/cases/{w.case_a}/consults", json={
        "consultant_id": consultant_id, "question": "?", "slide_ids": [w.slide_b]})
    assert bad.status_code == 422 and str(w.slide_b) in bad.json()["detail"]
    r = dr_a.post(f"/api/pathology/cases/{w.case_a}/consults", json={
        "consultant_id": consultant_id, "question": "Atypical ductal hyperplasia or DCIS?",
        "slide_ids": [w.slide_a], "blinded": True, "first_diagnosis": "DCIS"})
    assert r.status_code == 201, r.text
    consult = r.json()
    assert consult["first_diagnosis"] == "DCIS" and consult["state"] == "requested"
    assert consult["consultant_name"] == "dr.b" and consult["requester_name"] == "dr.a"

    # The consultant now reads that case (only), blinded to the first diagnosis.
    opened = consultant.get(f"/api/pathology/cases/{w.case_a}")
    assert opened.status_code == 200, opened.text
    assert [c["first_diagnosis"] for c in opened.json()["consults"]] == [""]
    assert consultant.get(f"/api/pathology/slides/{w.slide_a}/tiles/0/0/0").status_code == 200
    assert consultant.post(f"/api/pathology/cases/{w.case_a}/claim").status_code == 403
    mine = consultant.get("/api/pathology/consults").json()["consults"]
    assert [(c["id"], c["case"]["accession_number"], c["first_diagnosis"]) for c in mine] == \
        [(consult["id"], "PATH-A", "")]
    assert dr_a.post(f"/api/pathology/consults/{consult['id']}/answer",
                     json={"answer": "mine"}).status_code == 403
    ans = consultant.post(f"/api/pathology/consults/{consult['id']}/answer",
                          json={"answer": "DCIS, low grade."})
    assert ans.status_code == 200, ans.text
    assert ans.json()["state"] == "answered"
    assert consultant.post(f"/api/pathology/consults/{consult['id']}/grade",
                           json={"concordance": "concordant"}).status_code == 403
    assert dr_a.post(f"/api/pathology/consults/{consult['id']}/grade",
                     json={"concordance": "sort of"}).status_code == 422
    graded = dr_a.post(f"/api/pathology/consults/{consult['id']}/grade",
                       json={"concordance": "minor"})
    assert graded.status_code == 200 and graded.json()["concordance"] == "minor"

    assert dr_a.get("/api/pathology/pages").json() == {"pages": []}
    dash = dr_a.get("/api/pathology/dashboard")
    assert dash.status_code == 200, dash.text
    assert set(dash.json()) == {"frozen", "concordance"}


def _issue_key(c: Center, reader: str) -> None:
    env = {**c.env, "RDC_KEY_PASSPHRASE": PASSPHRASE}
    r = subprocess.run([sys.executable, "-m", "rdc", "keys", "issue", reader, "--name",
                        reader], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_report_sign_and_amend(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    dr_a2 = w.client("dr.a2", ["pathologist"], ["county-a"])
    clerk_a = w.client("clerk.a", ["site_user"], ["county-a"])
    assert dr_a.post(f"/api/pathology/cases/{w.case_a}/claim").status_code == 200
    assert dr_a2.post(f"/api/pathology/cases/{w.case_a}/report").status_code == 409
    r = dr_a.post(f"/api/pathology/cases/{w.case_a}/report")
    assert r.status_code == 201, r.text
    report_id = r.json()["report_id"]
    again = dr_a.post(f"/api/pathology/cases/{w.case_a}/report")
    assert again.json()["report_id"] == report_id
    report: dict[str, Any] = dr_a.get(f"/api/reports/{report_id}").json()
    assert report["template"].startswith("pathology-synoptic@")
    # The clerk does not see the draft.
    assert clerk_a.get(f"/api/pathology/cases/{w.case_a}").json()["report"] is None
    edit = dr_a.put(f"/api/reports/{report_id}/draft", json={"fields": {
        "procedure": "Wide local excision.", "diagnosis": "Invasive ductal carcinoma.",
        "margins": "Clear (5 mm)."}})
    assert edit.status_code == 200, edit.text
    no_case = dr_a.post(f"/api/pathology/cases/{w.case_a}/amend", json={"fields": {}})
    assert no_case.status_code == 409

    _issue_key(w.c, "dr.a")
    signed = dr_a.post(f"/api/pathology/cases/{w.case_a}/sign", json={"passphrase": PASSPHRASE})
    assert signed.status_code == 200, signed.text
    assert signed.json()["case"]["state"] == "signed"
    assert signed.json()["report"] == {"id": report_id, "state": "final"}
    assert len(events(w, w.case_a, "signed")) == 1
    assert clerk_a.get(f"/api/pathology/cases/{w.case_a}").json()["report"] == \
        {"id": report_id, "state": "final"}
    with w.c.db.session() as s:
        from core.models import Delivery, ReportVersion
        versions = list(s.scalars(select(ReportVersion.id)
                                  .where(ReportVersion.report_id == report_id)))
        assert s.scalars(select(Delivery).where(
            Delivery.report_version_id.in_(versions))).first() is not None
    assert [a.object_id for a in audited(w, "pathology.case_sign")] == [str(w.case_a)]

    amended = dr_a.post(f"/api/pathology/cases/{w.case_a}/amend",
                        json={"fields": {"comments": "ER/PR to follow."}})
    assert amended.status_code == 200, amended.text
    assert amended.json()["case"]["state"] == "amended"
    resigned = dr_a.post(f"/api/pathology/cases/{w.case_a}/sign",
                         json={"passphrase": PASSPHRASE})
    assert resigned.status_code == 200, resigned.text
    assert resigned.json()["report"]["state"] == "amended"
    assert resigned.json()["case"]["state"] == "amended"
