"""The synthetic whole-slide generator: OpenSlide reads what it writes, and the
content sits where its `SlideTruth` says (the QC gate's tests rely on both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
from scipy import ndimage

from conftest import Center
from core.orthanc_client import OrthancNotFound
from devkit.synthetic_slide import SlideTruth, render_tile, write_synthetic_slide
from devkit.wsi_samples import synthetic_wsi_dicom

W, H = 4096, 3072


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SlideTruth]:
    path = tmp_path_factory.mktemp("slide") / "synthetic.tiff"
    truth = write_synthetic_slide(path, width=W, height=H, seed=3, tile=256, mpp=0.5,
                                  empty_tiles=True)
    return path, truth


def _rgb(region: object) -> np.ndarray:
    return np.asarray(region.convert("RGB"), dtype=np.float64)  # type: ignore[attr-defined]


def _lap_var(rgb: np.ndarray) -> float:
    return float(ndimage.laplace(rgb.mean(axis=2)).var())


def test_render_is_deterministic_and_seamless() -> None:
    a = render_tile(7, W, H, 1024, 1024, 256, 1)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_tile(7, W, H, 1024, 1024, 256, 1))
    wide = render_tile(7, W, H, 1024, 1024, (512, 256), 1)
    right = render_tile(7, W, H, 1024 + 256, 1024, 256, 1)
    assert np.array_equal(wide[:, :256], a) and np.array_equal(wide[:, 256:], right)
    assert not np.array_equal(a, render_tile(8, W, H, 1024, 1024, 256, 1))
    # outside the slide is glass
    assert (render_tile(7, W, H, W, H, 64, 1) == 243).all()


def test_openslide_reads_pyramid_and_mpp(slide: tuple[Path, SlideTruth]) -> None:
    path, truth = slide
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(path) as s:
        assert s.dimensions == (W, H)
        assert s.level_count == len(truth.downsamples) >= 3
        assert [round(d) for d in s.level_downsamples] == list(truth.downsamples)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        thumb = _rgb(s.read_region((0, 0), s.level_count - 1, s.level_dimensions[-1]))
    # tissue where the truth says, glass elsewhere (JPEG: compare with tolerance)
    mask = truth.tissue_mask(truth.downsamples[-1])
    assert mask.shape == thumb.shape[:2]
    assert 0.05 < truth.tissue_fraction < 0.6
    glass = thumb[~mask]
    tissue = thumb[mask]
    assert np.median(glass, axis=0) == pytest.approx([243, 243, 243], abs=6)
    r, g, b = np.median(tissue, axis=0)
    assert r > g + 30 and b > g  # pink/purple: eosin and hematoxylin


def test_level0_content_matches_render(slide: tuple[Path, SlideTruth]) -> None:
    path, truth = slide
    ys, xs = np.nonzero(truth.tissue_mask(64))
    x, y = int(xs[len(xs) // 2]) * 64, int(ys[len(ys) // 2]) * 64
    assert truth.is_tissue(x + 32, y + 32)
    with openslide.OpenSlide(path) as s:
        got = _rgb(s.read_region((x, y), 0, (128, 128)))
    want = render_tile(3, W, H, x, y, 128, 1, blank=truth.empty_boxes).astype(np.float64)
    assert np.abs(got - want).mean() < 8  # JPEG q85 error only


def test_blur_pen_and_empty_regions(slide: tuple[Path, SlideTruth]) -> None:
    path, truth = slide
    assert truth.blur_boxes and truth.pen_boxes and len(truth.empty_boxes) == 3
    with openslide.OpenSlide(path) as s:
        bx, by, bw, bh = truth.blur_boxes[0]
        blurred = _rgb(s.read_region((bx + bw // 4, by + bh // 4), 0, (bw // 2, bh // 2)))
        # in-focus tissue just beside the blurred box, inside the same blob
        sharp_x = bx + bw + 16
        assert truth.is_tissue(sharp_x + 32, by + bh // 4 + 32)
        sharp = _rgb(s.read_region((sharp_x, by + bh // 4), 0, (64, 64)))
        assert _lap_var(blurred) * 5 < _lap_var(sharp)

        ex, ey, ew, eh = truth.empty_boxes[0]
        empty = _rgb(s.read_region((ex, ey), 0, (ew, eh)))
        assert np.abs(empty - 243).max() < 12

        px, py, pw, ph = truth.pen_boxes[0]
        pen = _rgb(s.read_region((px, py), 0, (pw, ph)))
    # the blue stroke: pixels where blue clearly dominates red and green
    inked = (pen[..., 2] > pen[..., 0] + 40) & (pen[..., 2] > pen[..., 1] + 40)
    assert inked.mean() > 0.02


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        write_synthetic_slide(tmp_path / "x.tiff", width=512, height=512, tile=100)
    with pytest.raises(ValueError, match="positive"):
        write_synthetic_slide(tmp_path / "x.tiff", width=0, height=512)


def test_dicom_samples_are_served_by_orthanc_wsi(center: Center, tmp_path: Path) -> None:
    """synthetic_wsi_dicom: TILED_FULL pyramid + label series; missing tiles make the
    level-0 instance TILED_SPARSE (Orthanc answers 404 for exactly those tiles)."""
    full = synthetic_wsi_dicom(tmp_path / "full", width=2048, height=1536, tile=256, seed=2,
                               accession="PATH-9")
    sparse = synthetic_wsi_dicom(tmp_path / "sparse", width=2048, height=1536, tile=256,
                                 seed=2, accession="PATH-9", slide_number=2, missing_tiles=3,
                                 drop_levels=1, frozen=True, label=False)
    heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in full]
    assert [h.ImageType[2] for h in heads] == ["VOLUME", "VOLUME", "VOLUME", "LABEL"]
    assert {h.SOPClassUID for h in heads} == {"1.2.840.10008.5.1.4.1.1.77.1.6"}
    assert {h.Modality for h in heads} == {"SM"}
    assert heads[0].DimensionOrganizationType == "TILED_FULL"
    assert heads[0].SpecimenDescriptionSequence[0].SpecimenIdentifier == "PATH-9-A1"
    assert heads[0].ImagedVolumeWidth == pytest.approx(1536 * 0.25 / 1000)  # slide X = rows
    assert len({h.SeriesInstanceUID for h in heads}) == 2  # label in a series of its own
    assert len({h.StudyInstanceUID for h in heads}) == 1
    sparse_heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in sparse]
    assert len(sparse_heads) == 2  # 3 levels, the smallest dropped, no label
    assert sparse_heads[0].DimensionOrganizationType == "TILED_SPARSE"
    assert int(sparse_heads[0].NumberOfFrames) == 8 * 6 - 3
    assert "FROZEN SECTION" in sparse_heads[0].StudyDescription
    assert sparse_heads[0].StudyInstanceUID == heads[0].StudyInstanceUID

    # another reader of DICOM WSI agrees: OpenSlide finds the pyramid and its MPP
    with openslide.OpenSlide(full[0]) as dicom_slide:
        assert dicom_slide.level_dimensions == ((2048, 1536), (512, 384), (128, 96))
        assert float(dicom_slide.properties[openslide.PROPERTY_NAME_MPP_X]) == \
            pytest.approx(0.25)

    center.start_orthanc()
    with center.orthanc() as o:
        series = {}
        for p in full + sparse:
            answer = o.upload_instance_file(p)
            series.setdefault(str(answer["ParentSeries"]), []).append(p)
        volume_full = next(k for k, v in series.items() if v[0] == full[0])
        volume_sparse = next(k for k, v in series.items() if v[0] == sparse[0])
        p_full = o.get(f"/wsi/pyramids/{volume_full}").json()
        assert p_full["Sizes"] == [[2048, 1536], [512, 384], [128, 96]]
        p_sparse = o.get(f"/wsi/pyramids/{volume_sparse}").json()
        assert len(p_sparse["Sizes"]) == 2
        missing = []
        for x in range(8):
            for y in range(6):
                try:
                    o.get(f"/wsi/tiles/{volume_sparse}/0/{x}/{y}")
                except OrthancNotFound:
                    missing.append((x, y))
                assert o.get(f"/wsi/tiles/{volume_full}/0/{x}/{y}").content[:2] == b"\xff\xd8"
        assert len(missing) == 3
