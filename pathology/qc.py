"""The slide quality gate: is this whole-slide image good enough to be read?

A county technician rescans a slide when the center says why: so every number here is a
measurement a person can check on the slide (the viewer draws the boxes), and every
threshold is a named constant with the reason for its value.  Pure numpy/scipy, no I/O:
:mod:`pathology.intake` reads the level from Orthanc and stores the result.

What is measured, on one RGB image of the slide at a known downsample (the intake picks
the *lowest useful level*, see :data:`QC_TARGET_MPP`):

- **tissue**: pixels that absorb light (glass is bright and grey) and are not pen ink;
- **blur**: per tissue tile, the variance of the Laplacian of the grey image, restricted to
  the tile's tissue; a focused tile has sharp nuclear edges, a blurred one has none;
- **pen marks**: strongly saturated blue/green ink, or near-black ink, both outside the
  pink-to-purple hues of haematoxylin and eosin;
- **missing tiles and levels**, which the caller counts from the DICOM headers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

#: The coarsest resolution (µm per pixel) at which the gate still sees nuclei: a nucleus
#: is 6-10 µm across, so at 2 µm/px it spans 3-5 pixels and its edge is still a sharp
#: step the Laplacian responds to.  Coarser, a focused and a blurred slide look alike;
#: finer, the level is 4x (or 16x) larger to read for no better answer.  For a slide
#: scanned at 0.25 µm/px this is the 8x-downsampled level, 1/64 of the pixels.
QC_TARGET_MPP = 2.0

#: Side of a blur tile in pixels of the graded image: 64 px at 2 µm/px = 128 µm, a field
#: with dozens of nuclei, so one tile's variance is a stable estimate, and small enough
#: that a blurred stripe (a focus failure along one scan line) covers whole tiles.
BLUR_TILE_PX = 64

#: A tile is a tissue tile when at least this share of it is tissue; tiles at the edge of
#: the tissue would otherwise be judged on a sliver, and the glass/tissue border is a
#: strong edge that says nothing about focus.
TISSUE_TILE_MIN_SHARE = 0.5

#: Grey-level variance of the Laplacian (grey in 0..255) below which a tissue tile is
#: blurred.  Measured on H&E-like tiles at 2 µm/px after JPEG compression: focused
#: tiles give over 1000 (pale staining) to several thousand (nuclei are dark steps of
#: ~100 grey levels over 1-2 px); a Gaussian blur of sigma 1.5 px (3 µm, a focus error
#: a pathologist notices) brings them under 90, sigma 2 under 35.  150 sits an order of
#: magnitude under focused tissue, so faint or sparse tissue is not called blurred;
#: tests/test_pathology_qc.py measures sensitivity and PPV at this threshold.
BLUR_LAPLACIAN_VAR_MIN = 150.0

#: A pixel is tissue when its saturation (max-min)/max exceeds this (glass is grey, with
#: a little colour cast from the scanner's light: below ~0.05) ...
TISSUE_SATURATION_MIN = 0.08
#: ... or when it is darker than this grey level (dense, dark tissue can be greyish).
TISSUE_DARK_MAX = 200.0
#: Tissue specks smaller than this many pixels of the graded image (about 8x8 px,
#: 16x16 µm at 2 µm/px) are dust or debris, not tissue.
TISSUE_MIN_OBJECT_PX = 64

#: Haematoxylin and eosin stain pink through purple: hues from 250° (blue-violet of
#: haematoxylin) round through red to 30° (orange-pink eosin).  Ink outside this arc
#: with strong saturation is a marker pen (blue, green, and the blue-black of markers).
HE_HUE_LOW_DEG = 250.0
HE_HUE_HIGH_DEG = 30.0
#: Saturation above which a non-H&E hue is ink rather than a faint tint (H&E tissue
#: is at most moderately saturated in its own hues; markers are vivid).
PEN_SATURATION_MIN = 0.35
#: Black marker: darker than this maximum channel value and nearly neutral (below
#: :data:`PEN_BLACK_SATURATION_MAX`).  Marker ink is translucent, so black over pink
#: tissue reads 60-80; haematoxylin nuclei are as dark only when deeply saturated purple.
PEN_BLACK_MAX = 90.0
PEN_BLACK_SATURATION_MAX = 0.5
#: Ink blobs smaller than this (px of the graded image) are stain precipitate, not pen.
PEN_MIN_OBJECT_PX = 32

#: Fail when the slide has less tissue than this share: nothing to read (an empty scan,
#: a slide put in upside down, a tissue-finding failure of the scanner).
TISSUE_MIN_FRACTION = 0.01
#: Fail when more than this share of the tissue tiles is blurred: a fifth of the tissue
#: out of focus is where pathologists ask for a rescan rather than read around it.
BLURRED_MAX_FRACTION = 0.20
#: Fail when pen ink amounts to more than this share of the tissue area ...
PEN_MAX_OF_TISSUE = 0.02
#: ... or when ink lies on the tissue (within its outline) over more than this share
#: of it: ink over tissue hides what is under it, even when there is little of it.
PEN_ON_TISSUE_MAX = 0.002


@dataclass(frozen=True)
class QCResult:
    """The gate's grade ("pass"/"fail"), its reasons (sentences for people) and metrics
    (numbers and level-0 boxes for the viewer's QC overlay)."""

    grade: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def _hsv(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.float32], NDArray[np.float32],
                                          NDArray[np.float32]]:
    """Hue (degrees), saturation (0..1), value (0..255) of an RGB image."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    mx = f.max(axis=-1)
    mn = f.min(axis=-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0,
                   np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(delta > 0, hue, 0.0).astype(np.float32)
    return hue, sat, mx.astype(np.float32)


def _drop_small(mask: NDArray[np.bool_], min_px: int) -> NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)


def masks(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(tissue, pen) masks of an RGB image; pen pixels are never tissue."""
    hue, sat, val = _hsv(rgb)
    in_he_arc = (hue >= HE_HUE_LOW_DEG) | (hue <= HE_HUE_HIGH_DEG)
    coloured_ink = (sat >= PEN_SATURATION_MIN) & ~in_he_arc
    black_ink = (val <= PEN_BLACK_MAX) & (sat < PEN_BLACK_SATURATION_MAX)
    # A stroke over tissue mixes with the stain under it; closing bridges those gaps.
    ink = ndimage.binary_closing(coloured_ink | black_ink, iterations=2)
    pen = _drop_small(ink, PEN_MIN_OBJECT_PX)
    grey = rgb.astype(np.float32).mean(axis=-1)
    absorbing = (sat >= TISSUE_SATURATION_MIN) | (grey <= TISSUE_DARK_MAX)
    tissue = _drop_small(absorbing & ~pen, TISSUE_MIN_OBJECT_PX)
    return tissue, pen


def _block_sum(a: NDArray[np.float64], t: int) -> NDArray[np.float64]:
    """Sums over t x t blocks (the image padded with zeros to whole blocks)."""
    h, w = a.shape
    ty, tx = math.ceil(h / t), math.ceil(w / t)
    padded = np.zeros((ty * t, tx * t), dtype=np.float64)
    padded[:h, :w] = a
    out: NDArray[np.float64] = padded.reshape(ty, t, tx, t).sum(axis=(1, 3))
    return out


def tile_sharpness(rgb: NDArray[np.uint8], tissue: NDArray[np.bool_],
                   tile: int = BLUR_TILE_PX) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per tile: (share of tissue, variance of the Laplacian over the tile's tissue).

    The Laplacian is taken on the grey image and only tissue pixels away from the
    tissue's border count (the glass/tissue edge is sharp on a blurred slide too)."""
    grey = rgb.astype(np.float64).mean(axis=-1)
    lap = ndimage.laplace(grey)
    inner = ndimage.binary_erosion(tissue, iterations=2)
    m = inner.astype(np.float64)
    n = _block_sum(m, tile)
    s1 = _block_sum(lap * m, tile)
    s2 = _block_sum(lap * lap * m, tile)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        var = np.where(n > 0, s2 / np.maximum(n, 1) - mean * mean, 0.0)
    share = _block_sum(tissue.astype(np.float64), tile) / float(tile * tile)
    return share, var


def _box(y0: int, x0: int, h: int, w: int, downsample: float) -> list[int]:
    """[x, y, w, h] in level-0 pixels."""
    return [round(x0 * downsample), round(y0 * downsample), round(w * downsample),
            round(h * downsample)]


def _pen_boxes(pen: NDArray[np.bool_], downsample: float) -> list[list[int]]:
    labels, _ = ndimage.label(ndimage.binary_dilation(pen, iterations=3))
    boxes = []
    for sl in ndimage.find_objects(labels)[:200]:  # a scribbled slide: the first 200
        if sl is None:
            continue
        ys, xs = sl
        boxes.append(_box(ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start,
                          downsample))
    return boxes


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def grade_slide(level_image: NDArray[np.uint8], *, downsample: float, missing_tiles: int,
                expected_levels: int, present_levels: int,
                missing_boxes: list[list[int]] | None = None,
                total_tiles: int = 0) -> QCResult:
    """Grade one slide from an RGB image of it at ``downsample`` (level-0 px per pixel).

    ``missing_tiles`` and ``missing_boxes`` ([x, y, w, h] level-0 px) come from the
    DICOM headers (TILED_SPARSE frames versus the tiles the matrix needs), as do the
    pyramid's ``present_levels`` and ``expected_levels``; ``total_tiles`` is the
    number of tiles level 0 should have (for the sentence, 0 when unknown).
    """
    if level_image.ndim != 3 or level_image.shape[2] < 3:
        raise ValueError(f"grade_slide needs an RGB image, got shape {level_image.shape}")
    rgb = np.ascontiguousarray(level_image[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    area = float(h * w)
    tissue, pen = masks(rgb)
    tissue_px = float(tissue.sum())
    pen_px = float(pen.sum())
    tissue_fraction = tissue_px / area if area else 0.0
    pen_fraction = pen_px / area if area else 0.0

    share, var = tile_sharpness(rgb, tissue)
    tissue_tiles = share >= TISSUE_TILE_MIN_SHARE
    blurred = tissue_tiles & (var < BLUR_LAPLACIAN_VAR_MIN)
    n_tissue_tiles = int(tissue_tiles.sum())
    blurred_fraction = float(blurred.sum()) / n_tissue_tiles if n_tissue_tiles else 0.0
    t = BLUR_TILE_PX
    blur_boxes = [_box(int(ty) * t, int(tx) * t, min(t, h - int(ty) * t),
                       min(t, w - int(tx) * t), downsample)
                  for ty, tx in zip(*np.nonzero(blurred), strict=True)]

    # Ink within the tissue's outline (holes filled, gaps closed) lies on the tissue.
    outline = ndimage.binary_fill_holes(ndimage.binary_dilation(tissue, iterations=2))
    pen_on_tissue = float((pen & outline).sum()) / tissue_px if tissue_px else 0.0
    pen_of_tissue = pen_px / tissue_px if tissue_px else 0.0

    reasons: list[str] = []
    if tissue_fraction < TISSUE_MIN_FRACTION:
        reasons.append(f"no tissue found ({_pct(tissue_fraction)} of the slide is tissue, "
                       f"under {_pct(TISSUE_MIN_FRACTION)})")
    elif blurred_fraction > BLURRED_MAX_FRACTION:
        reasons.append(f"{100 * blurred_fraction:.0f}% of tissue tiles are blurred "
                       f"(variance of Laplacian < {BLUR_LAPLACIAN_VAR_MIN:g}; "
                       f"{int(blurred.sum())} of {n_tissue_tiles} tiles)")
    if pen_px and tissue_px and (pen_of_tissue > PEN_MAX_OF_TISSUE
                                 or pen_on_tissue > PEN_ON_TISSUE_MAX):
        where = (f", {_pct(pen_on_tissue)} of the tissue under ink"
                 if pen_on_tissue > PEN_ON_TISSUE_MAX else "")
        reasons.append(f"pen marks cover {_pct(pen_fraction)} of the slide "
                       f"({_pct(pen_of_tissue)} of the tissue area{where})")
    if missing_tiles > 0:
        of = f" of {total_tiles}" if total_tiles else ""
        reasons.append(f"{missing_tiles}{of} tiles are missing at level 0")
    if present_levels < expected_levels:
        reasons.append(f"pyramid has {present_levels} of {expected_levels} expected levels")

    metrics: dict[str, Any] = {
        "tissue_fraction": round(tissue_fraction, 4),
        "blurred_fraction": round(blurred_fraction, 4),
        "pen_fraction": round(pen_fraction, 4),
        "pen_of_tissue": round(pen_of_tissue, 4),
        "pen_on_tissue": round(pen_on_tissue, 4),
        "tissue_tiles": n_tissue_tiles,
        "blurred_tiles": int(blurred.sum()),
        "missing_tiles": int(missing_tiles),
        "levels": int(present_levels),
        "expected_levels": int(expected_levels),
        "qc_downsample": float(downsample),
        "blur_threshold": BLUR_LAPLACIAN_VAR_MIN,
        "blur_tiles": blur_boxes,
        "pen_boxes": _pen_boxes(pen, downsample),
        "missing": [list(map(int, b)) for b in (missing_boxes or [])],
    }
    return QCResult(grade="fail" if reasons else "pass", reasons=reasons, metrics=metrics)


def expected_levels(width: int, height: int, tile_width: int, tile_height: int) -> int:
    """Levels a complete pyramid of this slide has: each at most 4x coarser than the
    one before (a viewer zooms smoothly and never decodes 16 tiles for one), down to
    a level that fits in one tile (the overview the viewer opens with)."""
    tiles = max(width / max(tile_width, 1), height / max(tile_height, 1), 1.0)
    return 1 + math.ceil(math.log(tiles, 4) - 1e-9)


def missing_levels(downsamples: list[float], width: int, height: int, tile_width: int,
                   tile_height: int) -> int:
    """How many levels the pyramid lacks: one per 4x step missing between two present
    levels, and those missing on top before a level fits in one tile."""
    ds = sorted(downsamples) or [1.0]
    missing = 0
    for a, b in itertools.pairwise(ds):
        missing += max(0, math.ceil(math.log(b / a, 4) - 1e-9) - 1)
    top = max(width / ds[-1] / max(tile_width, 1), height / ds[-1] / max(tile_height, 1), 1.0)
    missing += math.ceil(math.log(top, 4) - 1e-9)
    return missing
