"""Slide import: real OpenSlide, the real OrthancWSIDicomizer, a real Orthanc with its
WSI plugin.  Good files become a complete SM study with its intake job; a bad file
anywhere in the batch is refused by name and leaves nothing behind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from sqlalchemy import func, select

import pathology.importer as importer
from conftest import Center
from core import jobs
from core.errors import InvalidInput
from core.models import AuditRecord, Job, PathologyCase, PathologySlide, Study
from devkit.synthetic_slide import render_tile, write_synthetic_slide
from pathology.errors import SlideImportError
from pathology.importer import import_slides
from pathology.specimen import SlideIdentity, finalise_instances
from pathology.wsi_convert import convert_slide

W, H = 2048, 1536


@pytest.fixture
def live(env_center: Center) -> Center:
    env_center.start_orthanc()
    env_center.add_site()
    return env_center


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    out = {"pyramid": d / "pyramid.tiff", "flat": d / "flat.tiff"}
    write_synthetic_slide(out["pyramid"], width=W, height=H, seed=5, tile=256, mpp=0.25)
    # a single-level tiled TIFF (some scanners' export): the converter builds the pyramid
    flat = render_tile(6, 1536, 1024, 0, 0, (1536, 1024), 1)
    tifffile.imwrite(out["flat"], flat, tile=(256, 256), photometric="rgb",
                     compression="jpeg", resolution=(40000, 40000),
                     resolutionunit="CENTIMETER", metadata=None)
    full = out["pyramid"].read_bytes()
    out["truncated"] = d / "truncated.tiff"
    out["truncated"].write_bytes(full[: int(len(full) * 0.6)])
    out["png"] = d / "photo.png"
    Image.fromarray(flat[:256, :256]).save(out["png"])
    out["jpeg"] = d / "photo.jpg"
    Image.fromarray(flat[:256, :256]).save(out["jpeg"])
    out["ct"] = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    out["empty"] = d / "empty.svs"
    out["empty"].write_bytes(b"")
    out["folder"] = d / "folder.svs"
    out["folder"].mkdir()
    out["missing"] = d / "missing.svs"
    return out


def _no_work_left(c: Center) -> None:
    work = c.settings.home / "tmp"
    assert not work.exists() or not any(work.iterdir())  # converted files removed


def _nothing_stored(c: Center) -> None:
    _no_work_left(c)
    with c.orthanc() as o:
        assert o.statistics()["CountInstances"] == 0
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 0
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "pathology.import")) == 0


def test_import_stores_slides_study_and_intake_job(live: Center,
                                                   slides: dict[str, Path]) -> None:
    c = live
    progress: list[str] = []
    result = import_slides(c.db, c.settings, [slides["pyramid"], slides["flat"]],
                           site_id="county-a", accession="S26-0042", part="A", block="2",
                           stain="H&E", organ="breast", urgency="frozen",
                           patient_id="PAT-9", patient_name="DOE^JANE",
                           progress=progress.append)
    assert len(result.slides) == 2 and result.priority == 9
    assert any("converting" in p for p in progress) and any("stored" in p for p in progress)
    pyr, flat = result.slides
    assert (pyr.width, pyr.height, pyr.levels) == (W, H, 3)  # downsamples 1, 4, 16
    assert flat.levels >= 2  # the flat file got a pyramid
    assert pyr.mpp == pytest.approx(0.25)
    _no_work_left(c)

    with c.db.session() as s:
        study = s.get(Study, result.study_id)
        assert study is not None
        assert study.state == "complete" and study.completed_at is not None
        assert study.modalities == ["SM"] and study.site_id == "county-a"
        assert study.accession_number == "S26-0042" and study.patient_id == "PAT-9"
        assert study.priority == 9 and "frozen" in study.description.lower()
        assert study.study_uid == result.study_uid and study.orthanc_id
        job = s.get(Job, result.job_id)
        assert job is not None
        assert (job.kind, job.queue, job.study_id, job.priority) == (
            "pathology_intake", "inference", study.id, 9)
        assert job.key == f"pathology_intake:study-{study.id}:gen-1:import"
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "pathology.import"))
        assert rec is not None and rec.object_id == str(study.id)

    with c.orthanc() as o:
        series = o.study_series(str(study.orthanc_id))
        assert len(series) == 2
        by_uid = {str(x["MainDicomTags"]["SeriesInstanceUID"]): x for x in series}
        sid = str(by_uid[pyr.series_uid]["ID"])
        first = o.series_instances(sid)
        datasets = [pydicom.dcmread(io.BytesIO(o.instance_file(i))) for i in first]
        base = max(datasets, key=lambda d: int(d.TotalPixelMatrixColumns))
        # identity and the Specimen module, in Orthanc's copy
        assert base.Modality == "SM" and base.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.6"
        assert base.AccessionNumber == "S26-0042" and base.PatientID == "PAT-9"
        assert "FROZEN SECTION" in base.StudyDescription
        assert base.DimensionOrganizationType == "TILED_FULL"
        assert "PerFrameFunctionalGroupsSequence" not in base
        assert (base.TotalPixelMatrixColumns, base.TotalPixelMatrixRows) == (W, H)
        spacing = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == pytest.approx([0.00025, 0.00025])
        assert base.ContainerIdentifier
        desc = base.SpecimenDescriptionSequence[0]
        assert desc.SpecimenIdentifier == "S26-0042-A2" and desc.SpecimenUID
        meanings = [ci.ConceptCodeSequence[0].CodeMeaning if "ConceptCodeSequence" in ci
                    else str(ci.get("TextValue", ""))
                    for step in desc.SpecimenPreparationSequence
                    for ci in step.SpecimenPreparationStepContentItemSequence]
        assert "hematoxylin stain" in meanings and "water soluble eosin stain" in meanings
        assert "A" in meanings and "2" in meanings  # part and block
        path = base.OpticalPathSequence[0]
        assert path.IlluminationTypeCodeSequence[0].CodeValue == "111744"
        assert "ICCProfile" in path

        # Orthanc's WSI plugin serves the pyramid and tiles that match the source
        pyramid = o.get(f"/wsi/pyramids/{sid}").json()
        assert pyramid["Sizes"][0] == [W, H] and len(pyramid["Sizes"]) == 3
        tile = o.get(f"/wsi/tiles/{sid}/0/1/1")
        assert tile.headers["content-type"] == "image/jpeg"
        got = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGB"), dtype=float)
        tw, th = pyramid["TilesSizes"][0]
        with openslide.OpenSlide(slides["pyramid"]) as src:
            want = np.asarray(src.read_region((tw, th), 0, (tw, th)).convert("RGB"),
                              dtype=float)
        assert np.abs(got - want).mean() < 3  # same JPEG tile, not re-encoded

    # the intake job (pathology/intake.py) reads the slides as it would C-STORE'd ones
    jobs.execute(c.db, result.job_id)
    with c.db.session() as s:
        case = s.scalar(select(PathologyCase).where(PathologyCase.accession_number == "S26-0042"))
        assert case is not None and case.urgency == "frozen" and case.site_id == "county-a"
        got_slides = s.scalars(select(PathologySlide).where(PathologySlide.case_id == case.id)
                               .order_by(PathologySlide.id)).all()
        assert {sl.series_uid for sl in got_slides} == {pyr.series_uid, flat.series_uid}
        assert {(sl.stain, sl.part, sl.block) for sl in got_slides} == {("H&E", "A", "2")}


@pytest.mark.parametrize(("name", "reason"), [
    ("truncated", "truncated"),
    ("png", "not a whole-slide image"),
    ("jpeg", "not a whole-slide image"),
    ("ct", "not a whole-slide image (a DICOM file"),
    ("empty", "the file is empty"),
    ("folder", "not a regular file"),
    ("missing", "no such file"),
])
def test_a_bad_file_refuses_the_whole_batch(live: Center, slides: dict[str, Path], name: str,
                                            reason: str) -> None:
    bad = slides[name]
    with pytest.raises(SlideImportError) as e:
        import_slides(live.db, live.settings, [slides["pyramid"], bad],
                      site_id="county-a", accession="S26-0043")
    assert e.value.file == bad
    assert str(e.value).startswith(f"{bad.name}: ") and reason in str(e.value)
    _nothing_stored(live)


def test_bad_arguments_are_refused(live: Center, slides: dict[str, Path]) -> None:
    good = [slides["pyramid"]]
    for kw, msg in [({"site_id": "nowhere"}, "unknown site 'nowhere'"),
                    ({"urgency": "soon"}, "urgency must be one of"),
                    ({"accession": ""}, "accession number is required"),
                    ({"accession": "X" * 17}, "not a DICOM accession number")]:
        args = {"site_id": "county-a", "accession": "S26-1", **kw}
        with pytest.raises(InvalidInput, match=msg):
            import_slides(live.db, live.settings, good, **args)  # type: ignore[arg-type]
    _nothing_stored(live)


def test_a_failure_after_upload_deletes_what_was_uploaded(
        live: Center, slides: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    uploads: list[str] = []
    real = importer._served_pyramid

    def served(client: object, f: Path, series_id: str) -> dict[str, object]:
        uploads.append(series_id)
        if len(uploads) == 2:  # the second slide: its series is in Orthanc by now
            raise SlideImportError(f, "the archive's slide viewer cannot read it (test)")
        return real(client, f, series_id)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "_served_pyramid", served)
    with pytest.raises(SlideImportError, match=r"flat\.tiff: the archive.s slide viewer"):
        import_slides(live.db, live.settings, [slides["pyramid"], slides["flat"]],
                      site_id="county-a", accession="S26-0044")
    assert len(uploads) == 2
    _nothing_stored(live)


def test_cli_import_and_its_errors(live: Center, slides: dict[str, Path]) -> None:
    c = live
    r = c.rdc("pathology", "import", str(slides["png"]), "--site", "county-a",
              "--accession", "S26-7")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "photo.png: not a whole-slide image" in r.stderr
    r = c.rdc("pathology", "import", str(slides["pyramid"]), "--site", "elsewhere",
              "--accession", "S26-7")
    assert r.returncode == 2 and "unknown site 'elsewhere'" in r.stderr
    _nothing_stored(c)

    r = c.rdc("pathology", "import", str(slides["pyramid"]), "--site", "county-a",
              "--accession", "S26-7", "--stain", "PAS", "--part", "B", "--block", "1",
              "--urgency", "stat")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pyramid.tiff: converting to DICOM WSI" in r.stderr  # progress per file
    assert "stored study" in r.stdout and "priority 9" in r.stdout
    assert "pyramid.tiff: series " in r.stdout and "2048 x 1536 px, 3 levels" in r.stdout
    with c.db.session() as s:
        study = s.scalar(select(Study).where(Study.accession_number == "S26-7"))
        assert study is not None and study.priority == 9
        assert "frozen" not in study.description.lower()


def test_vendor_svs_goes_through_openslide(tmp_path: Path) -> None:
    """An Aperio SVS is decoded by OpenSlide inside the Dicomizer and re-encoded."""
    img = render_tile(4, W, H, 0, 0, (W, H), 1)
    small = render_tile(4, W, H, 0, 0, (W // 4, H // 4), 4)
    svs = tmp_path / "case.svs"
    head = "Aperio Image Library v12.0.15 \r\n"
    with tifffile.TiffWriter(svs) as t:
        t.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                description=f"{head}{W}x{H} [0,0 {W}x{H}] (256x256) JPEG/RGB Q=85|"
                            "AppMag = 40|MPP = 0.5000")
        t.write(small, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None,
                description=f"{head}{W}x{H} -> {W // 4}x{H // 4} - |")
    info = importer.validate_file(svs)
    assert info.vendor == "aperio" and info.mpp_x == pytest.approx(0.5)
    conv = convert_slide(svs, tmp_path / "out", info=info)
    assert not conv.native and len(conv.files) == 2
    ident = SlideIdentity(patient_id="P", patient_name="", accession="S1",
                          study_uid="1.2.3.4", series_uid="1.2.3.4.5", specimen_id="S1-A1",
                          stain="PAS", part="A", block="1")
    files = finalise_instances(conv.files, ident)
    ds = pydicom.dcmread(files[0])
    assert ds.DimensionOrganizationType == "TILED_FULL"
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([0.0005, 0.0005])
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    tw, th = int(ds.Columns), int(ds.Rows)
    # TILED_FULL: frame k is tile (k % across, k // across); check the second row's first
    across = -(-W // tw)
    got = np.asarray(Image.open(io.BytesIO(frames[across])).convert("RGB"), dtype=float)
    assert np.abs(got - img[th:2 * th, :tw].astype(float)).mean() < 6
    substances = [ci.ConceptCodeSequence[0].CodeMeaning if "ConceptCodeSequence" in ci
                  else str(ci.get("TextValue", ""))
                  for step in ds.SpecimenDescriptionSequence[0].SpecimenPreparationSequence
                  for ci in step.SpecimenPreparationStepContentItemSequence]
    assert "PAS" in substances  # a stain with no code is kept as text


def test_more_slides_join_the_accessions_slide_study(live: Center,
                                                     slides: dict[str, Path]) -> None:
    c = live
    first = import_slides(c.db, c.settings, [slides["pyramid"]], site_id="county-a",
                          accession="S26-8", patient_id="PAT-1", part="A", block="1")
    again = import_slides(c.db, c.settings, [slides["flat"]], site_id="county-a",
                          accession="S26-8", part="A", block="2")
    assert again.study_id == first.study_id and again.study_uid == first.study_uid
    with pytest.raises(InvalidInput, match="belongs to patient PAT-1, not PAT-2"):
        import_slides(c.db, c.settings, [slides["flat"]], site_id="county-a",
                      accession="S26-8", patient_id="PAT-2")
    assert again.job_id != first.job_id
    with c.db.session() as s:
        study = s.get(Study, first.study_id)
        assert study is not None and study.generation == 2 and study.state == "complete"
        job = s.get(Job, again.job_id)
        assert job is not None and job.key.endswith(":gen-2:import")
    with c.orthanc() as o:
        series = o.study_series(str(study.orthanc_id))
        numbers = sorted(int(x["MainDicomTags"]["SeriesNumber"]) for x in series)
        assert numbers == [1, 2]
        ds = pydicom.dcmread(io.BytesIO(o.instance_file(o.series_instances(
            next(str(x["ID"]) for x in series
                 if x["MainDicomTags"]["SeriesNumber"] == "2"))[0])), stop_before_pixels=True)
        assert ds.PatientID == "PAT-1"  # the study's patient, kept


def test_a_deflate_tiled_tiff_goes_through_openslide(tmp_path: Path) -> None:
    """Generic TIFFs whose tiles are not JPEG cannot be copied: OpenSlide decodes them."""
    src = tmp_path / "deflate.tiff"
    with tifffile.TiffWriter(src) as t:
        for level, ds in enumerate((1, 4)):
            img = render_tile(1, W, H, 0, 0, (W // ds, H // ds), ds)
            t.write(img, tile=(256, 256), photometric="rgb", compression="zlib",
                    resolution=(40000 / ds, 40000 / ds), resolutionunit="CENTIMETER",
                    subfiletype=0 if level == 0 else 1, metadata=None)
    info = importer.validate_file(src)
    assert info.vendor == "generic-tiff" and info.level_count == 2
    conv = convert_slide(src, tmp_path / "out", info=info)
    assert not conv.native and conv.files
    ds = pydicom.dcmread(conv.files[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (W, H)
