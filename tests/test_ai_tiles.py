"""The demonstration whole-slide tile model (wsi-tile-demo): shipped manifest and weights,
reproducible training, per-class sensitivity and PPV on held-out synthetic tiles, the
pipeline's heat map on an in-memory slide with drawn atypical cells, and a DICOM WSI
through the center end to end (C-STORE → ai_preread → batched ai_inference on a worker →
ai_results.heatmap, a Parametric Map and an UNVERIFIED SR in Orthanc, all marked as
demonstration weights)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from ai_models.manifest import load_manifest, verify_weights
from ai_models.pipelines import get_pipeline
from ai_models.pipelines.base import Prepared
from ai_models.pipelines.wsi_map import with_frame_of_reference
from ai_models.pipelines.wsi_reader import Pyramid
from ai_models.pipelines.wsi_tiles import CELL_BATCH, WsiTilePipeline, cut_cells
from ai_models.registry import ensure_shipped, shipped_model_dirs
from ai_models.runtime import LoadedModel, load_session
from ai_models.training.tile_data import (
    CLASSES,
    DOWNSAMPLE,
    TILE,
    draw_atypical,
    tile_set,
)
from ai_models.training.tile_train import VL_WSI_STORAGE, class_scores
from conftest import SENDER_AE, Center, wait_until
from core.models import AIFinding, AIModel, AIResult, Job, Study
from devkit.dcmtk import storescu
from devkit.synthetic_slide import render_tile, tissue_mask

ROOT = Path(__file__).resolve().parents[1]
TILE_DIR = ROOT / "ai_models" / "shipped" / "wsi-tile-demo" / "1.0.0"
#: Floors on held-out tiles of slides the model never saw (measured: see the manifest's
#: description; the floors leave room for a retrained model, not for a broken one).
SENSITIVITY_FLOOR = 0.9
PPV_FLOOR = 0.9


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    manifest = load_manifest(TILE_DIR)
    return load_session(TILE_DIR, manifest, "cpu")


# --- shipped model and training -------------------------------------------------------

def test_shipped_manifest_and_weights(tmp_path: Path) -> None:
    assert TILE_DIR in shipped_model_dirs()
    m = load_manifest(TILE_DIR)
    verify_weights(TILE_DIR, m)
    assert (m.name, m.version, m.pipeline) == ("wsi-tile-demo", "1.0.0", "wsi_tiles")
    assert m.demonstration and "DEMONSTRATION WEIGHTS" in m.intended_use
    assert "NOT FOR CLINICAL USE" in m.intended_use
    assert m.applies_to.modalities == ["SM"] and m.applies_to.sop_classes == [VL_WSI_STORAGE]
    assert [lab.name for lab in m.labels] == list(CLASSES)
    assert not any(lab.critical for lab in m.labels)
    assert m.outputs == ["sr", "parametric_map"]
    assert m.training is not None and m.training.script == "ai_models/training/train.py"
    assert (TILE_DIR / "model.onnx").stat().st_size < 500_000
    assert isinstance(get_pipeline(m), WsiTilePipeline)
    # Registered like the others: enabled in development, with its SHA-256.
    c = Center(home=tmp_path / "home", db_url="", broker_url="")
    with c.db.session() as s:
        ensure_shipped(s, c.settings)
        row = s.scalar(select(AIModel).where(AIModel.name == "wsi-tile-demo"))
        assert row is not None and row.enabled and row.demonstration
        assert row.sha256 == m.weights.sha256 == hashlib.sha256(
            (TILE_DIR / "model.onnx").read_bytes()).hexdigest()


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run([sys.executable, "-m", "ai_models.training.train", "tile",
                               "--quick", "--seed", "6", "--out", str(out)], cwd=ROOT,
                              # Only a guard against a hang on a loaded machine.
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "epoch 1/1 loss" in done.stdout
        m = load_manifest(out)
        verify_weights(out, m)
        assert m.training is not None and m.training.seed == 6 and m.demonstration
        assert m.name == "wsi-tile-demo" and "render_tile" in m.training.data
        digests.append((hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
                        (out / "model.yaml").read_text()))
    assert digests[0] == digests[1]


# --- accuracy -------------------------------------------------------------------------

def test_per_class_sensitivity_and_ppv_on_held_out_synthetic_tiles(model: LoadedModel) -> None:
    # Slide seeds 4242000-4242005: neither the training slides (0-3) nor its held-out
    # slides (100000000-100000003).
    held_out = tile_set(4242, 150, slides=6)
    assert held_out.counts() == {name: 150 for name in CLASSES}
    logits = np.concatenate([model.run(held_out.x[i:i + 128])
                             for i in range(0, len(held_out.x), 128)])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = class_scores(exp / exp.sum(axis=1, keepdims=True), held_out.y)
    for name in CLASSES:
        assert scores[f"{name}_sensitivity"] >= SENSITIVITY_FLOOR, scores
        assert scores[f"{name}_ppv"] >= PPV_FLOOR, scores


def _slide_cells(seed: int, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """A whole small synthetic slide at the model's resolution, cut as the pipeline does."""
    image = render_tile(seed, width, height, 0, 0, (width // DOWNSAMPLE,
                                                    height // DOWNSAMPLE), DOWNSAMPLE)
    return cut_cells(image, TILE)


def test_the_heat_map_finds_tissue_and_drawn_atypical_cells(model: LoadedModel) -> None:
    width, height, seed = 8192, 6144, 31
    pipeline = WsiTilePipeline(model.manifest)
    cells, rows, cols = _slide_cells(seed, width, height)
    cell_px = TILE * DOWNSAMPLE
    truth = tissue_mask(seed, width, height, cell_px)  # one sample per cell centre
    assert truth.shape == (rows, cols)
    # Share of each cell that is tissue, from a finer truth mask.
    fine = tissue_mask(seed, width, height, cell_px / 8)[:rows * 8, :cols * 8]
    share = fine.reshape(rows, 8, cols, 8).mean(axis=(1, 3))
    inner = np.argwhere(share >= 0.99)
    assert len(inner) >= 12, "the slide should have a block of whole-tissue cells"
    rng = np.random.default_rng(5)
    drawn = {tuple(int(v) for v in rc) for rc in inner[rng.choice(len(inner), 6, replace=False)]}
    for r, c in drawn:
        cells[r * cols + c] = draw_atypical(cells[r * cols + c], rng)
    prepared = Prepared(array=cells, datasets=[], meta={
        "rows": rows, "cols": cols, "cell_px": cell_px, "level": 0, "width": width,
        "height": height, "mpp": 0.25})
    [output] = pipeline.predict([prepared], model.run)
    result = pipeline.postprocess(prepared, output)
    heatmap = result.heatmap
    assert heatmap is not None
    assert (heatmap["rows"], heatmap["cols"], heatmap["cell_px"]) == (rows, cols, cell_px)
    assert heatmap["demonstration"] is True
    # The overlay: the atypical probability per cell; every class beside it.
    assert heatmap["labels"] == ["atypical"] and heatmap["classes"]["labels"] == list(CLASSES)
    values = np.asarray(heatmap["classes"]["values"])
    assert np.array_equal(np.asarray(heatmap["values"]), values[..., 2])
    assert values.shape == (rows, cols, 3)
    assert np.allclose(values.sum(axis=-1), 1.0, atol=0.01)
    calls = values.argmax(axis=-1)
    assert all(calls[r, c] == 2 for r, c in drawn), [calls[r, c] for r, c in drawn]
    others = np.ones((rows, cols), dtype=bool)
    for r, c in drawn:
        others[r, c] = False
    tissue, glass = (share >= 0.9) & others, share <= 0.05
    assert np.mean(calls[tissue] == 1) >= 0.9, np.bincount(calls[tissue], minlength=3)
    assert np.mean(calls[glass] == 0) >= 0.95, np.bincount(calls[glass], minlength=3)
    assert np.sum(calls[others] == 2) <= 0.02 * others.sum()
    findings = {f.label: f for f in result.findings}
    assert findings["atypical"].positive and findings["tissue"].positive
    assert heatmap["cells"]["atypical"] == int(np.sum(calls == 2))


def test_slides_of_a_batch_share_network_calls_and_get_their_own_cells_back(
        model: LoadedModel) -> None:
    """The worker hands a batch of slides to predict: their cells go through the network
    together, CELL_BATCH at a time, and each slide gets exactly its own logits back."""
    pipeline = WsiTilePipeline(model.manifest)
    slides = []
    for seed, (width, height) in ((41, (8192, 6144)), (42, (6144, 4096)), (43, (4096, 4096))):
        cells, rows, cols = _slide_cells(seed, width, height)
        slides.append(Prepared(array=cells, datasets=[], meta={"rows": rows, "cols": cols}))
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return model.run(batch)

    together = pipeline.predict(slides, run)
    total = sum(len(p.array) for p in slides)
    assert calls == [min(CELL_BATCH, total - i) for i in range(0, total, CELL_BATCH)]
    for prepared, logits in zip(slides, together, strict=True):
        [alone] = pipeline.predict([prepared], model.run)
        assert logits.shape == (len(prepared.array), 3)
        assert np.allclose(logits, alone, atol=1e-4)


def test_the_pyramid_level_is_the_coarsest_not_coarser_than_the_network() -> None:
    pyramid = Pyramid(series_id="x", width=8192, height=6144,
                      tile_sizes=[(256, 256)] * 3, sizes=[(8192, 6144), (2048, 1536), (512, 384)],
                      downsamples=[1.0, 4.0, 16.0], tiles=[(32, 24), (8, 6), (2, 2)])
    assert pyramid.level_for(8.0) == 1
    assert pyramid.level_for(4.0) == 1
    assert pyramid.level_for(3.0) == 0
    assert pyramid.level_for(16.0) == 2
    cells, rows, cols = cut_cells(np.zeros((100, 130, 3), dtype=np.uint8), 64)
    assert (rows, cols) == (2, 3) and cells.shape == (6, 64, 64, 3)
    assert (cells[2][:, 2:] == 243).all() and (cells[2][:, :2] == 0).all()  # glass padding


# --- end to end -----------------------------------------------------------------------

@pytest.fixture
def wsi_center(center: Center) -> Center:
    c = center
    c.extra_env.update({"RDC_JOB_LEASE_S": "20", "RDC_AI_BATCH_WAIT_MS": "300"})
    c.start_orthanc()
    c.add_site()
    c.start_gateway()
    return c


def _dump(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _instance(c: Center, sop_uid: str) -> pydicom.Dataset:
    with c.orthanc() as client:
        orthanc_id = client.find_instance(sop_uid)
        assert orthanc_id is not None, f"{sop_uid} is not in Orthanc"
        return pydicom.dcmread(BytesIO(client.instance_file(orthanc_id)))


def _tile_jobs(c: Center, study_uid: str) -> list[Job] | None:
    with c.db.session() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return None
        jobs = list(s.scalars(select(Job).where(Job.study_id == study.id,
                                                Job.kind == "ai_inference")))
    return jobs if jobs and all(j.state in ("succeeded", "skipped", "failed", "dead")
                                for j in jobs) else None


def test_a_dicom_slide_gets_a_heat_map_a_parametric_map_and_an_unverified_sr(
        wsi_center: Center, tmp_path: Path) -> None:
    from devkit.wsi_samples import synthetic_wsi_dicom

    c = wsi_center
    c.start_worker()
    width, height, seed = 8192, 6144, 12
    paths = synthetic_wsi_dicom(tmp_path / "wsi", width=width, height=height, seed=seed,
                                accession="PATH-AI-1", patient_id="AI-WSI")
    result = storescu(paths, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert len(result.succeeded) == len(paths), result.output[-2000:]
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)

    jobs = wait_until(lambda: _tile_jobs(c, study_uid), 300, "the slide's AI job")
    assert jobs is not None
    by_series = {j.params["series_uid"]: j for j in jobs
                 if j.params.get("model") == "wsi-tile-demo"}
    assert by_series[series_uid].state == "succeeded", [(j.state, j.error) for j in jobs]
    # The slide label image (its own series, ImageType LABEL) is skipped with the reason.
    label_uid = str(pydicom.dcmread(paths[-1], stop_before_pixels=True).SeriesInstanceUID)
    if label_uid != series_uid:
        label_job = by_series[label_uid]
        assert label_job.state == "skipped" and "pyramid" in (label_job.error or ""), \
            label_job.error
    with c.db.session() as s:
        row = s.scalar(select(AIResult).where(AIResult.series_uid == series_uid,
                                              AIResult.model_name == "wsi-tile-demo"))
        assert row is not None
        findings = {f.label: f for f in s.scalars(
            select(AIFinding).where(AIFinding.result_id == row.id))}
        heatmap, sr_uid, map_uid = row.heatmap, row.sr_sop_uid, row.seg_sop_uid
    assert set(findings) == set(CLASSES) and findings["tissue"].positive
    assert not any(f.critical for f in findings.values())

    # The heat map covers the slide and agrees with the slide's own tissue truth.
    assert heatmap is not None and map_uid is not None
    cell_px = heatmap["cell_px"]
    assert cell_px == TILE * DOWNSAMPLE  # 2 µm/px on a 0.25 µm/px slide
    assert heatmap["rows"] == -(-height // cell_px) and heatmap["cols"] == -(-width // cell_px)
    assert heatmap["labels"] == ["atypical"] and heatmap["classes"]["labels"] == list(CLASSES)
    assert np.asarray(heatmap["values"]).shape == (heatmap["rows"], heatmap["cols"])
    assert heatmap["demonstration"] is True and heatmap["unverified"] is True
    assert (heatmap["model"], heatmap["version"]) == ("wsi-tile-demo", "1.0.0")
    calls = np.asarray(heatmap["classes"]["values"]).argmax(axis=-1)
    truth = tissue_mask(seed, width, height, cell_px)
    assert truth.shape == calls.shape
    agree = float(np.mean((calls != 0) == truth))
    assert agree >= 0.9, (agree, calls.tolist(), truth.astype(int).tolist())
    assert np.sum(calls == 2) <= 0.02 * calls.size  # no atypia was drawn on this slide

    # The Parametric Map: in the slide's study and frame of reference, one frame per class,
    # marked as research content from demonstration weights.
    pm_ds = _instance(c, map_uid)
    assert pm_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert pm_ds.StudyInstanceUID == study_uid
    # Placed on the slide: its frame of reference (or, for a slide without one, a frame
    # derived from it), origin and orientation.
    assert pm_ds.FrameOfReferenceUID == (first.get("FrameOfReferenceUID")
                                         or with_frame_of_reference(first).FrameOfReferenceUID)
    origin, slide_origin = (ds.TotalPixelMatrixOriginSequence[0] for ds in (pm_ds, first))
    assert float(origin.XOffsetInSlideCoordinateSystem) == \
        float(slide_origin.XOffsetInSlideCoordinateSystem)
    assert float(origin.YOffsetInSlideCoordinateSystem) == \
        float(slide_origin.YOffsetInSlideCoordinateSystem)
    assert [float(v) for v in pm_ds.ImageOrientationSlide] == \
        [float(v) for v in first.ImageOrientationSlide]
    assert "DEMONSTRATION WEIGHTS" in pm_ds.ContentDescription
    assert pm_ds.ContentQualification == "RESEARCH"
    pm = hd.pm.ParametricMap.from_dataset(pm_ds)
    assert (pm.Rows, pm.Columns, pm.NumberOfFrames) == (heatmap["rows"], heatmap["cols"], 3)
    spacing = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    slide_spacing = first.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(spacing[0]) == pytest.approx(cell_px * float(slide_spacing.PixelSpacing[0]),
                                              rel=1e-6)

    # The SR: unverified, naming the model, version and the demonstration weights.
    sr = _instance(c, sr_uid)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == study_uid
    text = " ".join(str(el.value) for el in sr.iterall()
                    if el.VR in ("LO", "LT", "ST", "UT", "SH", "UC", "PN"))
    assert "wsi-tile-demo" in text and "1.0.0" in text
    assert "DEMONSTRATION WEIGHTS" in text
    hd.sr.srread(BytesIO(_dump(sr)))


def test_a_slide_with_only_level_0_and_missing_tiles_is_read_from_level_0(
        wsi_center: Center, tmp_path: Path) -> None:
    """A scanner that wrote level 0 only (TILED_SPARSE, two tissue tiles dropped): the
    pipeline reads level 0 shrinking tile by tile, and a missing tile reads as glass."""
    from devkit.wsi_samples import synthetic_wsi_dicom

    c = wsi_center
    c.start_worker()
    width, height, seed = 8192, 6144, 14
    paths = synthetic_wsi_dicom(tmp_path / "wsi", width=width, height=height, seed=seed,
                                accession="PATH-AI-2", patient_id="AI-WSI-2", drop_levels=2,
                                missing_tiles=2, label=False)
    assert len(paths) == 1
    result = storescu(paths, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert len(result.succeeded) == 1, result.output[-2000:]
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert first.DimensionOrganizationType == "TILED_SPARSE"
    jobs = wait_until(lambda: _tile_jobs(c, str(first.StudyInstanceUID)), 300,
                      "the slide's AI job")
    assert jobs is not None
    assert [j.state for j in jobs] == ["succeeded"], [(j.state, j.error) for j in jobs]
    with c.db.session() as s:
        row = s.scalar(select(AIResult).where(
            AIResult.series_uid == str(first.SeriesInstanceUID)))
        assert row is not None and row.heatmap is not None
        heatmap = row.heatmap
    assert heatmap["level"] == 0 and heatmap["cell_px"] == TILE * DOWNSAMPLE
    calls = np.asarray(heatmap["classes"]["values"]).argmax(axis=-1)
    truth = tissue_mask(seed, width, height, heatmap["cell_px"])
    assert calls.shape == truth.shape
    assert float(np.mean((calls != 0) == truth)) >= 0.9
