"""The ``pathology_intake`` job against a real Orthanc (with its WSI plugin): DICOM
whole-slide images become a case with graded slides, events and urgency; a re-run
writes nothing twice; a second study of the accession joins the case; missing tiles and
levels fail the gate with their reasons; an unreadable slide fails the job with nothing
stored.  And one slide study end to end: C-STORE through the gateway, routing, intake.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from conftest import SENDER_AE, Center, wait_until
from core import jobs
from core.models import (
    AuditRecord,
    Job,
    PathologyCase,
    PathologyEvent,
    PathologySlide,
    Site,
    Study,
)
from core.settings import get_settings
from devkit.dcmtk import storescu
from devkit.wsi_samples import synthetic_wsi_dicom
from pathology import intake
from viewer.accounts import add_user

SITE = "county-a"
PASSWORD = "a long enough password 1"


def _wsi(out_dir: Path, **kw: Any) -> list[Path]:
    """A small slide (4096 x 3072 at 0.25 µm/px, 256-px tiles): each test takes seconds."""
    return synthetic_wsi_dicom(out_dir, width=4096, height=3072, tile=256, **kw)


@pytest.fixture
def live(env_center: Center) -> Iterator[Center]:
    c = env_center
    c.start_orthanc()
    c.add_site(SITE, inactivity_s=1)
    with c.db.session() as s:
        site = s.get(Site, SITE)
        assert site is not None
        site.turnaround_target_min = 120
    yield c


def _upload(c: Center, files: list[Path]) -> str:
    with c.orthanc() as client:
        for f in files:
            client.upload_instance_file(f)
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _study_job(c: Center, study_uid: str, accession: str, *, description: str = "",
               priority: int = 0) -> int:
    """The Study row and the intake job, as the gateway's routing makes them."""
    with c.db.session() as s:
        study = Study(site_id=SITE, study_uid=study_uid, accession_number=accession,
                      patient_id="PAT-PATH-1", patient_name="SYNTHETIC^SLIDE",
                      description=description, modalities=["SM"], state="complete",
                      priority=priority)
        s.add(study)
        s.flush()
        job, _ = jobs.create_job(s, jobs.NewJob(
            key=f"intake:{study.id}", kind=intake.JOB_KIND, queue="inference",
            study_id=study.id))
        return int(job.id)


def _case(c: Center, accession: str) -> PathologyCase:
    with c.db.session() as s:
        case = s.scalar(select(PathologyCase).where(
            PathologyCase.accession_number == accession))
        assert case is not None
        s.expunge(case)
        return case


def _slides(c: Center, case_id: int) -> list[PathologySlide]:
    with c.db.session() as s:
        rows = list(s.scalars(select(PathologySlide).where(PathologySlide.case_id == case_id)
                              .order_by(PathologySlide.id)))
        for r in rows:
            s.expunge(r)
        return rows


def _steps(c: Center, case_id: int) -> list[str]:
    with c.db.session() as s:
        return list(s.scalars(select(PathologyEvent.step).where(
            PathologyEvent.case_id == case_id).order_by(PathologyEvent.id)))


def test_a_slide_study_becomes_a_graded_case_once(live: Center, tmp_path: Path) -> None:
    c = live
    files = _wsi(tmp_path / "a", accession="PATH-1", part="A", block="2",
                                blur=False, pen=False, organ="colon")
    job_id = _study_job(c, _upload(c, files), "PATH-1")
    assert jobs.execute(c.db, job_id) == "succeeded"
    case = _case(c, "PATH-1")
    assert case.site_id == SITE and case.urgency == "routine"
    assert case.state == "qc_passed" and case.organ == "colon"
    assert case.patient_id == "PAT-PATH-1"
    assert case.due_at is not None
    assert (case.due_at - case.received_at).total_seconds() == pytest.approx(120 * 60, abs=2)
    [slide] = _slides(c, case.id)
    assert slide.qc_grade == "pass", slide.qc_reasons
    assert (slide.width, slide.height) == (4096, 3072)
    assert slide.levels >= 3 and slide.mpp == pytest.approx(0.25, abs=1e-3)
    assert (slide.stain, slide.part, slide.block) == ("H&E", "A", "2")
    assert slide.specimen_id == "PATH-1-A2" and slide.source == "cstore"
    m = slide.qc_metrics
    assert 0.05 < m["tissue_fraction"] < 0.6 and m["missing_tiles"] == 0
    assert m["qc_mpp"] == pytest.approx(1.0) and m["blur_tiles"] == [] and m["missing"] == []
    assert _steps(c, case.id) == ["received", "qc"]

    # Again (a redelivered message, or the job re-queued by hand): nothing twice.
    with c.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.state = "queued"
    assert jobs.execute(c.db, job_id) == "succeeded"
    assert len(_slides(c, case.id)) == 1 and _steps(c, case.id) == ["received", "qc"]
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(PathologyCase)) == 1
        audits = list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "pathology.intake")))
        assert len(audits) == 1 and audits[0].object_id == str(case.id)


def test_missing_tiles_and_levels_fail_the_gate_but_the_slide_is_kept(
        live: Center, tmp_path: Path) -> None:
    c = live
    files = _wsi(tmp_path / "a", accession="PATH-2", missing_tiles=3,
                                drop_levels=2, blur=False, pen=False, label=False)
    job_id = _study_job(c, _upload(c, files), "PATH-2")
    assert jobs.execute(c.db, job_id) == "succeeded"
    case = _case(c, "PATH-2")
    assert case.state == "qc_failed"
    [slide] = _slides(c, case.id)
    assert slide.qc_grade == "fail"
    assert any(r.startswith("3 of 192 tiles are missing at level 0") for r in slide.qc_reasons), \
        slide.qc_reasons
    assert any(r.startswith(f"pyramid has {slide.levels} of ") and
               r.endswith(" expected levels") for r in slide.qc_reasons), slide.qc_reasons
    assert len(slide.qc_metrics["missing"]) == 3
    for x, y, w, h in slide.qc_metrics["missing"]:
        assert x % 256 == 0 and y % 256 == 0 and w == h == 256
    with c.db.session() as s:
        qc_event = s.scalar(select(PathologyEvent).where(
            PathologyEvent.case_id == case.id, PathologyEvent.step == "qc"))
        assert qc_event is not None and qc_event.detail["grade"] == "fail"
        assert qc_event.detail["failed"] == [slide.id]


def test_a_frozen_section_is_urgent_and_pages_the_pathologist(live: Center,
                                                              tmp_path: Path) -> None:
    c = live
    with c.db.session() as s:
        add_user(s, get_settings(), username="dr.path", display_name="Dr Path",
                 password=PASSWORD, roles=["pathologist"], all_sites=True, actor="test")
    files = _wsi(tmp_path / "a", accession="PATH-3", frozen=True, label=False)
    job_id = _study_job(c, _upload(c, files), "PATH-3", description="FROZEN SECTION")
    assert jobs.execute(c.db, job_id) == "succeeded"
    case = _case(c, "PATH-3")
    assert case.urgency == "frozen"
    assert case.due_at is not None
    assert (case.due_at - case.received_at).total_seconds() == pytest.approx(20 * 60, abs=2)
    assert case.paged_user_id is not None
    assert _steps(c, case.id)[:2] == ["received", "qc"] and "paged" in _steps(c, case.id)


def test_frozen_is_read_from_the_specimen_and_stat_from_the_priority(
        live: Center, tmp_path: Path) -> None:
    c = live
    frozen = _wsi(tmp_path / "f", accession="PATH-4", frozen=True,
                                 label=False)
    # The study row says nothing; the slide's own Specimen module says frozen section.
    assert jobs.execute(c.db, _study_job(c, _upload(c, frozen), "PATH-4")) == "succeeded"
    assert _case(c, "PATH-4").urgency == "frozen"
    stat = _wsi(tmp_path / "s", accession="PATH-5", label=False)
    assert jobs.execute(c.db, _study_job(c, _upload(c, stat), "PATH-5", priority=9)) == \
        "succeeded"
    assert _case(c, "PATH-5").urgency == "stat"


def test_a_second_study_of_the_accession_joins_the_case(live: Center, tmp_path: Path) -> None:
    c = live
    first = _wsi(tmp_path / "1", accession="PATH-6", block="1", label=False,
                                blur=False, pen=False, study_uid=generate_uid())
    assert jobs.execute(c.db, _study_job(c, _upload(c, first), "PATH-6")) == "succeeded"
    case = _case(c, "PATH-6")
    assert case.state == "qc_passed"
    # A day later the lab sends block 2 as a new study.
    second = _wsi(tmp_path / "2", accession="PATH-6", block="2", seed=5,
                                 label=False, study_uid=generate_uid())
    blank_job = _study_job(c, _upload(c, second), "PATH-6")
    assert jobs.execute(c.db, blank_job) == "succeeded"
    again = _case(c, "PATH-6")
    assert again.id == case.id and again.primary_study_id == case.primary_study_id
    slides = _slides(c, case.id)
    assert [s.block for s in slides] == ["1", "2"]
    assert len({s.study_id for s in slides}) == 2
    assert _steps(c, case.id) == ["received", "qc", "qc"]  # received once: the first slide


def test_a_case_held_by_a_pathologist_keeps_its_state(live: Center, tmp_path: Path) -> None:
    c = live
    first = _wsi(tmp_path / "1", accession="PATH-7", label=False,
                                study_uid=generate_uid())
    assert jobs.execute(c.db, _study_job(c, _upload(c, first), "PATH-7")) == "succeeded"
    with c.db.session() as s:
        case = s.scalar(select(PathologyCase).where(PathologyCase.accession_number == "PATH-7"))
        assert case is not None
        case.state = "in_review"
    second = _wsi(tmp_path / "2", accession="PATH-7", block="2", missing_tiles=2,
                                 label=False, study_uid=generate_uid())
    assert jobs.execute(c.db, _study_job(c, _upload(c, second), "PATH-7")) == "succeeded"
    held = _case(c, "PATH-7")
    assert held.state == "in_review"
    assert [s.qc_grade for s in _slides(c, held.id)][-1] == "fail"


def test_no_accession_gets_a_stable_stand_in(live: Center, tmp_path: Path) -> None:
    c = live
    files = _wsi(tmp_path / "a", accession="", label=False)
    study_uid = _upload(c, files)
    assert jobs.execute(c.db, _study_job(c, study_uid, "")) == "succeeded"
    with c.db.session() as s:
        case = s.scalar(select(PathologyCase))
        assert case is not None
        assert case.accession_number.startswith("NOACC-") and len(case.accession_number) == 14
        study = s.scalar(select(Study))
        assert study is not None
        assert case.accession_number == intake.accession_for(study)


def test_a_study_not_in_orthanc_is_retried_later(live: Center) -> None:
    c = live
    job_id = _study_job(c, generate_uid(), "PATH-8")
    assert jobs.execute(c.db, job_id) == "queued"
    with c.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and "not in Orthanc yet" in (job.error or "")
        assert s.scalar(select(PathologyCase)) is None


def test_an_unreadable_slide_fails_the_job_and_nothing_is_stored(
        live: Center, tmp_path: Path) -> None:
    """A level-0 instance whose frames do not cover its matrix (TILED_FULL with frames
    missing: a truncated transfer or a broken converter) is refused, precisely."""
    c = live
    files = _wsi(tmp_path / "a", accession="PATH-9", label=False)
    ds = dcmread(files[0])
    ds.TotalPixelMatrixColumns = int(ds.TotalPixelMatrixColumns) * 2  # more than it holds
    ds.save_as(files[0], enforce_file_format=True)
    job_id = _study_job(c, _upload(c, files), "PATH-9")
    assert jobs.execute(c.db, job_id) == "failed"
    with c.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert "is unreadable" in (job.error or "") and ds.SeriesInstanceUID in (job.error or "")
        assert s.scalar(select(PathologyCase)) is None
        assert s.scalar(select(PathologySlide)) is None


def test_a_slide_study_through_the_gateway_becomes_a_case(live: Center,
                                                          tmp_path: Path) -> None:
    """C-STORE'd by a county scanner: the gateway stores it, the study completes, the
    routing rule for SM queues pathology_intake, the worker's handler opens the case."""
    c = live
    c.start_gateway()
    files = _wsi(tmp_path / "a", accession="PATH-10", label=True)
    assert storescu(files, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                    called_ae=c.gateway_ae).succeeded

    def routed() -> int | None:
        with c.db.session() as s:
            st = s.scalar(select(Study).where(Study.accession_number == "PATH-10"))
            if st is None or st.state != "complete":
                return None
            route = s.scalar(select(Job).where(Job.study_id == st.id, Job.kind == "route"))
            return route.id if route is not None else None
    route_id = wait_until(routed, 120, "the slide study to complete")
    assert route_id is not None
    assert jobs.execute(c.db, route_id) == "succeeded"
    with c.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == intake.JOB_KIND))
        assert job is not None and job.queue == "inference"
        job_id = int(job.id)
    assert jobs.execute(c.db, job_id) == "succeeded"
    case = _case(c, "PATH-10")
    assert case.site_id == SITE
    [slide] = _slides(c, case.id)
    assert slide.qc_grade in ("pass", "fail") and slide.qc_metrics["tissue_fraction"] > 0.05
    assert slide.source == "cstore"


def _touches(box: list[int], boxes: tuple[tuple[int, int, int, int], ...]) -> bool:
    x, y, w, h = box
    return any(x < bx + bw and bx < x + w and y < by + bh and by < y + h
               for bx, by, bw, bh in boxes)


def test_the_gate_finds_what_the_slide_holds(live: Center, tmp_path: Path) -> None:
    """Through the real path (synthetic TIFF, Dicomizer, Orthanc's WSI plugin re-encoding
    tiles): the boxes the gate reports for blur and ink lie on the slide's known
    out-of-focus regions and pen strokes, and its tissue share matches the truth."""
    from devkit.synthetic_slide import slide_truth

    c = live
    files = _wsi(tmp_path / "a", accession="PATH-11", seed=1, blur=True, pen=True, label=False)
    assert jobs.execute(c.db, _study_job(c, _upload(c, files), "PATH-11")) == "succeeded"
    [slide] = _slides(c, _case(c, "PATH-11").id)
    truth = slide_truth(1, 4096, 3072, tile=256, blur=True, pen=True)
    m = slide.qc_metrics
    assert m["tissue_fraction"] == pytest.approx(truth.tissue_fraction, abs=0.03)
    assert m["blur_tiles"], "the out-of-focus regions were not found"
    assert all(_touches(b, truth.blur_boxes) for b in m["blur_tiles"]), m["blur_tiles"]
    assert m["pen_boxes"] and all(_touches(b, truth.pen_boxes) for b in m["pen_boxes"])
    assert any(r.startswith("pen marks cover") for r in slide.qc_reasons), slide.qc_reasons


def test_an_imported_vendor_slide_becomes_a_case_marked_as_imported(
        live: Center, tmp_path: Path) -> None:
    """rdc pathology import's path: a vendor file converted, stored and registered by
    pathology.importer, whose intake job then opens the case (STAT, as declared)."""
    from devkit.synthetic_slide import write_synthetic_slide
    from pathology.importer import import_slides

    c = live
    tiff = tmp_path / "vendor.tiff"
    write_synthetic_slide(tiff, width=4096, height=3072, tile=256, seed=2, pen=False)
    result = import_slides(c.db, get_settings(), [tiff], site_id=SITE, accession="PATH-12",
                           part="A", block="3", organ="breast", urgency="stat")
    assert jobs.execute(c.db, result.job_id) == "succeeded"
    case = _case(c, "PATH-12")
    assert case.urgency == "stat" and case.organ == "breast"
    [slide] = _slides(c, case.id)
    assert slide.source == "import" and (slide.part, slide.block) == ("A", "3")
    assert (slide.width, slide.height) == (4096, 3072) and slide.stain == "H&E"


def _blank(path: Path) -> None:
    """Every frame of the instance replaced by a tile of bare glass (an empty scan)."""
    ds = dcmread(path)
    buf = io.BytesIO()
    Image.new("RGB", (int(ds.Columns), int(ds.Rows)), (238, 236, 240)).save(
        buf, "JPEG", quality=90)
    ds.PixelData = encapsulate([buf.getvalue()] * int(ds.NumberOfFrames), has_bot=True)
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)


def test_a_blank_slide_fails_with_no_tissue_and_is_still_a_case(live: Center,
                                                                 tmp_path: Path) -> None:
    c = live
    files = _wsi(tmp_path / "a", accession="PATH-13", label=False)
    for f in files:
        _blank(f)
    assert jobs.execute(c.db, _study_job(c, _upload(c, files), "PATH-13")) == "succeeded"
    case = _case(c, "PATH-13")
    assert case.state == "qc_failed"
    [slide] = _slides(c, case.id)
    assert slide.qc_grade == "fail"
    assert any(r.startswith("no tissue found") for r in slide.qc_reasons), slide.qc_reasons
    assert slide.qc_metrics["tissue_fraction"] < 0.01


def test_a_study_without_slides_is_skipped_saying_why(live: Center) -> None:
    from pydicom.data import get_testdata_file

    c = live
    ct = Path(str(get_testdata_file("CT_small.dcm")))
    job_id = _study_job(c, _upload(c, [ct]), "PATH-14")
    assert jobs.execute(c.db, job_id) == "skipped"
    with c.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and "no SM series" in (job.error or "")
        assert s.scalar(select(PathologyCase)) is None
