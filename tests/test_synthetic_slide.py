"""The synthetic whole-slide generator: OpenSlide reads what it writes, and the
content sits where its `SlideTruth` says (the QC gate's tests rely on both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from scipy import ndimage

from devkit.synthetic_slide import SlideTruth, render_tile, write_synthetic_slide

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
