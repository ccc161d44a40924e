"""The slide quality gate's accuracy, measured on independently built H&E-like images.

The images here are drawn from first principles (pink eosin stroma, purple nuclei of
6-10 µm at 2 µm/px, grey glass, marker strokes), not with the gate's own masks, and
each test tile's truth (tissue or glass, sharp or blurred, ink or not) is known by
construction.  Each detector's sensitivity and positive predictive value are measured
and must stay above a floor; the grade's reasons are checked for the failures the
issue lists (no tissue, blur, pen, missing tiles, missing levels).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from pathology import qc

GLASS = (238, 236, 240)
EOSIN = (232, 160, 200)
HAEMATOXYLIN = (95, 55, 140)
INK = {"blue": (40, 70, 190), "green": (40, 150, 70), "black": (25, 25, 30)}


def _jpeg(a: NDArray[np.uint8], quality: int = 85) -> NDArray[np.uint8]:
    """Through a JPEG round trip, as every tile from a scanner is."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)


def he_tissue(rng: np.random.Generator, h: int, w: int, *, pale: bool = False,
              ) -> NDArray[np.uint8]:
    """An H&E-like field at 1 µm/px (the gate's resolution): eosin stroma with fibre
    texture, and nuclei (haematoxylin ellipses 6-10 µm across) at the density of a
    cellular tissue."""
    img = np.empty((h, w, 3), dtype=np.float64)
    fibres = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), (1.0, 4.0))
    fibres /= fibres.std() + 1e-9
    for c in range(3):
        img[..., c] = EOSIN[c] + 10 * fibres
    yy, xx = np.mgrid[0:h, 0:w]
    n_nuclei = int(h * w / 250)
    cy = rng.uniform(0, h, n_nuclei)
    cx = rng.uniform(0, w, n_nuclei)
    nuc = np.zeros((h, w), dtype=bool)
    for y0, x0 in zip(cy, cx, strict=True):
        ry, rx = rng.uniform(3.0, 5.0, 2)
        y_lo, y_hi = max(0, int(y0 - 6)), min(h, int(y0 + 7))
        x_lo, x_hi = max(0, int(x0 - 6)), min(w, int(x0 + 7))
        sub_y = yy[y_lo:y_hi, x_lo:x_hi]
        sub_x = xx[y_lo:y_hi, x_lo:x_hi]
        nuc[y_lo:y_hi, x_lo:x_hi] |= ((sub_y - y0) / ry) ** 2 + ((sub_x - x0) / rx) ** 2 <= 1
    shade = rng.normal(0, 8, (h, w))
    for c in range(3):
        img[..., c] = np.where(nuc, HAEMATOXYLIN[c] + shade, img[..., c])
    if pale:  # a lightly stained section: everything halfway towards the glass
        img = 0.5 * img + 0.5 * np.array(GLASS)
    return np.clip(img, 0, 255).astype(np.uint8)


def glass(rng: np.random.Generator, h: int, w: int) -> NDArray[np.uint8]:
    img = np.array(GLASS, dtype=np.float64) + rng.normal(0, 2.0, (h, w, 1))
    out: NDArray[np.uint8] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def blurred(a: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    out = ndimage.gaussian_filter(a.astype(np.float64), (sigma, sigma, 0))
    result: NDArray[np.uint8] = np.clip(out, 0, 255).astype(np.uint8)
    return result


def pen_stroke(a: NDArray[np.uint8], rng: np.random.Generator, colour: str,
               ) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """A marker line (6-10 px wide) across the image; returns the image and its mask.
    Marker ink is translucent: the colour mixes a little with what is under it."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    y0, y1 = rng.uniform(0.2 * h, 0.8 * h, 2)
    dist = np.abs((y1 - y0) * xx - w * (yy - y0)) / np.hypot(y1 - y0, w)
    mask = dist <= rng.uniform(3, 5)
    out = a.astype(np.float64)
    out[mask] = 0.85 * np.array(INK[colour]) + 0.15 * out[mask]
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _rates(truth: list[bool], called: list[bool]) -> tuple[float, float]:
    tp = sum(t and c for t, c in zip(truth, called, strict=True))
    fn = sum(t and not c for t, c in zip(truth, called, strict=True))
    fp = sum(c and not t for t, c in zip(truth, called, strict=True))
    return tp / max(tp + fn, 1), tp / max(tp + fp, 1)


T = qc.BLUR_TILE_PX


def test_blur_detector_sensitivity_and_ppv() -> None:
    """Focused tiles (normal and pale staining) against tiles blurred by sigma 1.5-4 px
    (1.5-4 µm at 1 µm/px: a focus error a pathologist notices), all JPEG-compressed."""
    rng = np.random.default_rng(13)
    truth, called = [], []
    for i in range(120):
        is_blurred = i % 2 == 1
        tile = he_tissue(rng, T, T, pale=(i % 6 in (0, 3)))
        if is_blurred:
            tile = blurred(he_tissue(rng, T + 24, T + 24, pale=(i % 6 == 3)),
                           rng.uniform(1.5, 4.0))[12:-12, 12:-12]
        tile = _jpeg(tile)
        tissue, _ = qc.masks(tile)
        sharpness = qc.tile_sharpness(tile, tissue)
        assert sharpness.tissue_share[0, 0] >= qc.TISSUE_TILE_MIN_SHARE  # all tissue tiles
        truth.append(is_blurred)
        called.append(bool(sharpness.blurred()[0, 0]))
    sensitivity, ppv = _rates(truth, called)
    print(f"blur: sensitivity {sensitivity:.3f}, PPV {ppv:.3f}")
    assert sensitivity >= 0.9 and ppv >= 0.9


def test_tissue_detector_sensitivity_and_ppv() -> None:
    """Pixel-level tissue detection on mixed fields: tissue (normal and pale) on glass."""
    rng = np.random.default_rng(7)
    sens, ppvs = [], []
    for i in range(8):
        h, w = 256, 256
        img = glass(rng, h, w)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(80, 176), rng.uniform(80, 176), rng.uniform(50, 90)
        truth = (yy - cy) ** 2 + ((xx - cx) * 0.8) ** 2 <= r * r
        img[truth] = he_tissue(rng, h, w, pale=i % 2 == 1)[truth]
        tissue, pen = qc.masks(_jpeg(img))
        assert not pen.any()
        tp = float((tissue & truth).sum())
        sens.append(tp / truth.sum())
        ppvs.append(tp / max(tissue.sum(), 1))
    print(f"tissue: sensitivity {min(sens):.3f}, PPV {min(ppvs):.3f}")
    assert min(sens) >= 0.9 and min(ppvs) >= 0.9


def test_pen_detector_sensitivity_and_ppv() -> None:
    """Per field: does the gate find the ink (blue, green, black strokes over tissue or
    glass), and does it find none in clean H&E fields (normal, pale, nuclei-dense)?"""
    rng = np.random.default_rng(21)
    truth, called, pixel_sens = [], [], []
    colours = list(INK)
    for i in range(60):
        base = he_tissue(rng, 128, 128, pale=i % 4 == 2) if i % 3 else glass(rng, 128, 128)
        has_pen = i % 2 == 0
        mask = np.zeros(base.shape[:2], dtype=bool)
        if has_pen:
            base, mask = pen_stroke(base, rng, colours[i % 3])
        _, pen = qc.masks(_jpeg(base))
        truth.append(has_pen)
        called.append(bool(pen.sum() >= qc.PEN_MIN_OBJECT_PX))
        if has_pen:
            pixel_sens.append(float((pen & mask).sum() / mask.sum()))
    sensitivity, ppv = _rates(truth, called)
    print(f"pen: sensitivity {sensitivity:.3f}, PPV {ppv:.3f}, "
          f"pixels found {min(pixel_sens):.3f}")
    assert sensitivity >= 0.9 and ppv >= 0.9
    assert min(pixel_sens) >= 0.7


def _slide(rng: np.random.Generator, h: int = 384, w: int = 512) -> NDArray[np.uint8]:
    """A small slide image: glass with a tissue section in the middle."""
    img = glass(rng, h, w)
    img[64:320, 96:416] = he_tissue(rng, 256, 320)
    return _jpeg(img)


def test_a_good_slide_passes_with_its_metrics() -> None:
    result = qc.grade_slide(_slide(np.random.default_rng(1)), downsample=4.0, missing_tiles=0,
                            expected_levels=4, present_levels=4)
    assert result.grade == "pass", result.reasons
    m = result.metrics
    assert m["tissue_fraction"] == pytest.approx(256 * 320 / (384 * 512), abs=0.04)
    assert m["blurred_fraction"] == 0.0 and m["pen_fraction"] == 0.0
    assert m["blur_tiles"] == [] and m["pen_boxes"] == [] and m["missing"] == []
    assert m["levels"] == 4 and m["missing_tiles"] == 0


def test_a_blank_slide_fails_with_no_tissue() -> None:
    rng = np.random.default_rng(2)
    result = qc.grade_slide(_jpeg(glass(rng, 384, 512)), downsample=4.0, missing_tiles=0,
                            expected_levels=4, present_levels=4)
    assert result.grade == "fail"
    assert any(r.startswith("no tissue found") for r in result.reasons), result.reasons
    assert result.metrics["tissue_fraction"] < qc.TISSUE_MIN_FRACTION


def test_a_half_blurred_slide_fails_and_the_boxes_are_where_the_blur_is() -> None:
    rng = np.random.default_rng(3)
    img = _slide(rng).copy()
    img[64:320, 256:416] = _jpeg(blurred(img[64:320, 256:416], 3.0))  # right half blurred
    result = qc.grade_slide(img, downsample=4.0, missing_tiles=0, expected_levels=4,
                            present_levels=4)
    assert result.grade == "fail"
    assert any("of tissue tiles are blurred" in r and "variance of Laplacian" in r
               for r in result.reasons), result.reasons
    assert 0.3 <= result.metrics["blurred_fraction"] <= 0.7
    boxes = result.metrics["blur_tiles"]
    assert boxes
    for x, y, w, h in boxes:  # level-0 pixels: 8x the graded image
        assert x + w / 2 >= 240 * 4 and y >= 64 * 4 - T * 4 and w == h == T * 4


def test_pen_over_tissue_fails_and_is_boxed() -> None:
    rng = np.random.default_rng(4)
    img = _slide(rng).copy()
    stroke, mask = pen_stroke(img[64:320, 96:416], rng, "blue")
    img[64:320, 96:416] = stroke
    result = qc.grade_slide(_jpeg(img), downsample=4.0, missing_tiles=0, expected_levels=4,
                            present_levels=4)
    assert result.grade == "fail"
    assert any(r.startswith("pen marks cover") for r in result.reasons), result.reasons
    assert result.metrics["pen_fraction"] == pytest.approx(mask.sum() / (384 * 512), rel=0.4)
    assert result.metrics["pen_boxes"]


def test_a_small_pen_mark_on_the_glass_away_from_tissue_passes() -> None:
    """A dot the technician made on the glass, far from the tissue, is no reason to rescan."""
    rng = np.random.default_rng(5)
    img = _slide(rng).copy()
    img[10:16, 10:30] = INK["black"]
    result = qc.grade_slide(_jpeg(img), downsample=4.0, missing_tiles=0, expected_levels=4,
                            present_levels=4)
    assert result.grade == "pass", result.reasons
    assert result.metrics["pen_fraction"] > 0 and len(result.metrics["pen_boxes"]) == 1


def test_missing_tiles_and_levels_give_their_reasons() -> None:
    rng = np.random.default_rng(6)
    result = qc.grade_slide(_slide(rng), downsample=4.0, missing_tiles=2, total_tiles=96,
                            expected_levels=5, present_levels=1,
                            missing_boxes=[[512, 512, 256, 256], [768, 512, 256, 256]])
    assert result.grade == "fail"
    assert "2 of 96 tiles are missing at level 0" in result.reasons
    assert "pyramid has 1 of 5 expected levels" in result.reasons
    assert result.metrics["missing"] == [[512, 512, 256, 256], [768, 512, 256, 256]]


def test_expected_levels_of_a_pyramid() -> None:
    # 8192 x 6144 in 256-px tiles: 32 x 24 tiles; 4x steps: 32 -> 8 -> 2 -> 1 (4 levels)
    assert qc.expected_levels(8192, 6144, 256, 256) == 4
    assert qc.missing_levels([1, 2, 4, 8, 16, 32], 8192, 6144, 256, 256) == 0
    assert qc.missing_levels([1, 4, 16, 32], 8192, 6144, 256, 256) == 0
    assert qc.missing_levels([1, 2, 4], 8192, 6144, 256, 256) == 2  # top is 8 x 6 tiles
    assert qc.missing_levels([1, 64], 8192, 6144, 256, 256) == 2  # a 64x jump
    assert qc.missing_levels([1], 8192, 6144, 256, 256) == 3


def test_grade_slide_refuses_what_is_not_an_rgb_image() -> None:
    with pytest.raises(ValueError, match="RGB"):
        qc.grade_slide(np.zeros((10, 10), dtype=np.uint8), downsample=1.0, missing_tiles=0,
                       expected_levels=1, present_levels=1)


def _inside(box: list[int], boxes: tuple[tuple[int, int, int, int], ...], *,
            whole: bool) -> bool:
    x, y, w, h = box
    for bx, by, bw, bh in boxes:
        if whole and bx <= x and x + w <= bx + bw and by <= y and y + h <= by + bh:
            return True
        if not whole and x < bx + bw and bx < x + w and y < by + bh and by < y + h:
            return True
    return False


def test_against_the_synthetic_slides_ground_truth() -> None:
    """devkit.synthetic_slide (written for the demo, with its own tissue, nuclei, focus
    and ink model) renders slides whose truth is known: tissue share, out-of-focus boxes,
    pen strokes.  Graded at the gate's resolution (0.25 µm/px slides at 4x), each tile
    wholly inside an out-of-focus box must be found and each tile called blurred must
    touch one; the tissue share must match; ink is found exactly on the slides with pen."""
    from devkit.synthetic_slide import render_tile, slide_truth

    width, height, ds = 8192, 6144, 4.0
    found = missed = right = wrong = 0
    for seed, pen in ((0, False), (1, True), (2, True), (3, False)):
        image = _jpeg(render_tile(seed, width, height, 0, 0, (2048, 1536), ds,
                                  blur=True, pen=pen))
        truth = slide_truth(seed, width, height, tile=256, blur=True, pen=pen)
        result = qc.grade_slide(image, downsample=ds, missing_tiles=0,
                                expected_levels=4, present_levels=4)
        m = result.metrics
        assert m["tissue_fraction"] == pytest.approx(truth.tissue_fraction, abs=0.02)
        assert (m["pen_fraction"] > 0) == pen, m["pen_fraction"]
        if pen:
            assert all(_inside(b, truth.pen_boxes, whole=False) for b in m["pen_boxes"])
        flagged = m["blur_tiles"]
        right += sum(_inside(b, truth.blur_boxes, whole=False) for b in flagged)
        wrong += sum(not _inside(b, truth.blur_boxes, whole=False) for b in flagged)
        sharp = qc.tile_sharpness(image, qc.masks(image)[0])
        t = qc.BLUR_TILE_PX
        for ty, tx in zip(*np.nonzero(sharp.tissue_share >= qc.TISSUE_TILE_MIN_SHARE),
                          strict=True):
            box = [int(tx) * t * 4, int(ty) * t * 4, t * 4, t * 4]
            if _inside(box, truth.blur_boxes, whole=True):
                found += int(sharp.blurred()[ty, tx])
                missed += int(not sharp.blurred()[ty, tx])
    sensitivity, ppv = found / max(found + missed, 1), right / max(right + wrong, 1)
    print(f"synthetic slides: blur sensitivity {sensitivity:.3f} ({found + missed} tiles), "
          f"PPV {ppv:.3f} ({right + wrong} tiles)")
    assert found + missed >= 10 and sensitivity >= 0.9 and ppv >= 0.9


def test_missing_tiles_count_only_where_the_tissue_is() -> None:
    """A sparse scan that leaves out bare glass is complete; a hole in the tissue is not
    (the hole reads as glass in the graded image, inside the tissue's outline)."""
    rng = np.random.default_rng(8)
    image = _slide(rng).copy()
    # A tile of glass in the top-left corner, far from the tissue, left out.
    glass_box = [0, 0, 32 * 4, 32 * 4]
    ok = qc.grade_slide(image, downsample=4.0, missing_tiles=1, total_tiles=96,
                        missing_boxes=[glass_box], expected_levels=4, present_levels=4)
    assert ok.grade == "pass", ok.reasons
    assert ok.metrics["missing_tiles"] == 0 and ok.metrics["missing_glass_tiles"] == 1
    assert ok.metrics["missing"] == [glass_box]  # still drawn on the overlay
    # A tile in the middle of the tissue, left out: it reads as a hole of glass.
    image[160:192, 224:256] = GLASS
    hole_box = [224 * 4, 160 * 4, 32 * 4, 32 * 4]
    bad = qc.grade_slide(image, downsample=4.0, missing_tiles=2, total_tiles=96,
                         missing_boxes=[glass_box, hole_box], expected_levels=4,
                         present_levels=4)
    assert bad.grade == "fail"
    assert "1 of 96 tiles are missing at level 0" in bad.reasons
    assert bad.metrics["missing_tiles"] == 1 and bad.metrics["missing_glass_tiles"] == 1


def test_blue_and_green_are_ink_on_h_and_e_but_stain_on_a_special_stain() -> None:
    """Masson's trichrome stains collagen green-blue: a trichrome slide is all 'blue and
    green', and none of it is pen.  Black marker is ink on any stain."""
    rng = np.random.default_rng(9)
    image = glass(rng, 384, 512)
    field = he_tissue(rng, 256, 320).astype(np.float64)
    pink = np.all(np.abs(field - np.array(EOSIN)) < 40, axis=-1)
    field[pink] = np.array((60, 120, 150)) + rng.normal(0, 6, (int(pink.sum()), 3))
    image[64:320, 96:416] = np.clip(field, 0, 255).astype(np.uint8)
    image = _jpeg(image)
    as_he = qc.grade_slide(image, downsample=4.0, missing_tiles=0, expected_levels=4,
                           present_levels=4, stain="H&E")
    assert as_he.grade == "fail" and as_he.metrics["pen_fraction"] > 0.1
    trichrome = qc.grade_slide(image, downsample=4.0, missing_tiles=0, expected_levels=4,
                               present_levels=4, stain="Masson trichrome")
    assert trichrome.grade == "pass", trichrome.reasons
    assert trichrome.metrics["pen_fraction"] == 0.0 and not trichrome.metrics["pen_hues_checked"]
    assert trichrome.metrics["tissue_fraction"] == pytest.approx(256 * 320 / (384 * 512),
                                                                 abs=0.05)
    marked = image.copy()
    marked[100:108, 150:350] = INK["black"]
    inked = qc.grade_slide(_jpeg(marked), downsample=4.0, missing_tiles=0, expected_levels=4,
                           present_levels=4, stain="Masson trichrome")
    assert inked.grade == "fail" and inked.metrics["pen_boxes"]
