"""The slide quality gate: is this whole-slide image good enough to be read?

A county technician rescans a slide when the center says why: so every number here is a
measurement a person can check on the slide (the viewer draws the boxes), and every
threshold is a named constant with the reason for its value.  Pure numpy/scipy, no I/O:
:mod:`pathology.intake` reads the level from Orthanc and stores the result.

What is measured, on one RGB image of the slide at a known downsample (the intake picks
the *lowest useful level*, see :data:`QC_TARGET_MPP`, 1 µm/px):

- **tissue**: pixels that absorb light (glass is bright and grey) and are not pen ink;
- **blur**: per tissue tile, the variance of the Laplacian of the grey image over the
  tile's tissue, compared with the same after a 1 px smoothing (a focused tile has sharp
  nuclear edges that the smoothing removes; a blurred one has none to lose), so that
  pale and dark staining are judged alike;
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

#: The coarsest resolution (µm per pixel) at which the gate still sees nuclei sharply
#: enough to judge focus: a nucleus is 6-10 µm across, so at 1 µm/px it spans 6-10
#: pixels and a focused nuclear edge is a 1-2 px step, while a focus error of a few µm
#: (what a pathologist notices at 20x) spreads it over 3-4 px, which the Laplacian sees.
#: At 2 µm/px such a blur shrinks to under 2 px and focused and blurred tissue look
#: alike (measured on devkit.synthetic_slide's out-of-focus regions); finer levels
#: cost 4x the pixels for no better answer.  For a slide scanned at 0.25 µm/px this is
#: the 4x-downsampled level, 1/16 of the pixels.
QC_TARGET_MPP = 1.0

#: Side of a blur tile in pixels of the graded image: 64 px at 1 µm/px = 64 µm, a field
#: with dozens of nuclei, so one tile's measure is stable, and small enough that an
#: out-of-focus patch of a fraction of a millimetre covers whole tiles.
BLUR_TILE_PX = 64

#: A tile is a tissue tile when at least this share of it is tissue; tiles at the edge of
#: the tissue would otherwise be judged on a sliver, and the glass/tissue border is a
#: strong edge that says nothing about focus.
TISSUE_TILE_MIN_SHARE = 0.5

#: Smoothing (Gaussian sigma, px) of the reference image the Laplacian is compared with.
BLUR_REFERENCE_SIGMA = 1.0
#: A tissue tile is blurred when the variance of its Laplacian is under this many times
#: the variance of the Laplacian of the same tile smoothed by :data:`BLUR_REFERENCE_SIGMA`.
#: A focused tile has most of its Laplacian energy in 1-2 px edges, which a 1 px
#: smoothing removes (ratio 12-15 on H&E-like tissue at 1 µm/px, pale or dark: the
#: ratio does not depend on the stain's contrast); a tile already blurred by a few µm
#: has little left to remove (ratio 3-4).  7 sits between them;
#: tests/test_pathology_qc.py measures sensitivity and PPV at this threshold.
BLUR_LAPLACIAN_RATIO_MIN = 7.0
#: ... or when the variance of its Laplacian itself is under this (grey levels 0..255):
#: a tile blurred so much that no edge is left, where the ratio only measures the JPEG
#: noise on a flat image.  Focused tissue gives over a thousand.
BLUR_LAPLACIAN_VAR_FLOOR = 20.0

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


#: A missing level-0 tile counts against the slide when at least this share of it lies
#: within the tissue's outline; a tile of bare glass left out is no loss (and scanners
#: writing TILED_SPARSE omit glass on purpose).
MISSING_TILE_TISSUE_MIN_SHARE = 0.05


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
    r = rgb[..., 0].astype(np.float32)
    g = rgb[..., 1].astype(np.float32)
    b = rgb[..., 2].astype(np.float32)
    # Element-wise max/min of three planes: far faster than a reduction over axis -1.
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = delta / np.maximum(mx, 1e-6)
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0,
                   np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(delta > 0, hue, 0.0).astype(np.float32)
    return hue, sat.astype(np.float32), mx


def _drop_small(mask: NDArray[np.bool_], min_px: int) -> NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)


#: Rows of the graded image processed at a time: the colour arithmetic is done in
#: bands so that a large level costs a few bytes per pixel, not a few dozen.
_BAND_ROWS = 1024


def _colour_classes(rgb: NDArray[np.uint8], he: bool = True,
                    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(ink, absorbing) per pixel, before any clean-up, computed band by band."""
    h = rgb.shape[0]
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    absorbing = np.zeros(rgb.shape[:2], dtype=bool)
    for y0 in range(0, h, _BAND_ROWS):
        band = rgb[y0:y0 + _BAND_ROWS]
        hue, sat, val = _hsv(band)
        in_he_arc = (hue >= HE_HUE_LOW_DEG) | (hue <= HE_HUE_HIGH_DEG)
        coloured_ink = (sat >= PEN_SATURATION_MIN) & ~in_he_arc
        black_ink = (val <= PEN_BLACK_MAX) & (sat < PEN_BLACK_SATURATION_MAX)
        ink[y0:y0 + _BAND_ROWS] = (coloured_ink | black_ink) if he else black_ink
        grey = (band[..., 0].astype(np.float32) + band[..., 1] + band[..., 2]) / 3.0
        absorbing[y0:y0 + _BAND_ROWS] = (sat >= TISSUE_SATURATION_MIN) | (grey <= TISSUE_DARK_MAX)
    return ink, absorbing


def masks(rgb: NDArray[np.uint8], *, he: bool = True,
          ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(tissue, pen) masks of an RGB image; pen pixels are never tissue.

    Blue and green ink are told from stain by hue only on H&E (``he``): on a special
    stain (trichrome's green collagen, Alcian blue, an IHC's blue counterstain) those
    hues are the stain, so only black ink counts there."""
    ink, absorbing = _colour_classes(rgb, he)
    # A stroke over tissue mixes with the stain under it; closing bridges those gaps.
    pen = _drop_small(ndimage.binary_closing(ink, iterations=2), PEN_MIN_OBJECT_PX)
    tissue = _drop_small(absorbing & ~pen, TISSUE_MIN_OBJECT_PX)
    return tissue, pen


def _block_sum(a: NDArray[np.floating[Any]], t: int) -> NDArray[np.float64]:
    """Sums over t x t blocks (the image padded with zeros to whole blocks)."""
    h, w = a.shape
    ty, tx = math.ceil(h / t), math.ceil(w / t)
    padded = np.zeros((ty * t, tx * t), dtype=np.float64)
    padded[:h, :w] = a
    out: NDArray[np.float64] = padded.reshape(ty, t, tx, t).sum(axis=(1, 3))
    return out


@dataclass(frozen=True)
class TileSharpness:
    """Per blur tile of the graded image (arrays of tiles_y x tiles_x)."""

    #: Share of the tile that is tissue.
    tissue_share: NDArray[np.float64]
    #: Variance of the Laplacian over the tile's tissue (grey levels 0..255).
    laplacian_var: NDArray[np.float64]
    #: That variance over the variance after a 1 px smoothing (see below).
    ratio: NDArray[np.float64]

    def blurred(self) -> NDArray[np.bool_]:
        """Tissue tiles judged out of focus (see :data:`BLUR_LAPLACIAN_RATIO_MIN`)."""
        tissue = self.tissue_share >= TISSUE_TILE_MIN_SHARE
        out: NDArray[np.bool_] = tissue & ((self.ratio < BLUR_LAPLACIAN_RATIO_MIN)
                                           | (self.laplacian_var < BLUR_LAPLACIAN_VAR_FLOOR))
        return out


def tile_sharpness(rgb: NDArray[np.uint8], tissue: NDArray[np.bool_],
                   tile: int = BLUR_TILE_PX) -> TileSharpness:
    """Per tile: share of tissue, variance of the Laplacian and sharpness ratio.

    The sharpness ratio is the variance of the Laplacian of the grey image divided by
    the variance of the Laplacian of the same image smoothed by
    :data:`BLUR_REFERENCE_SIGMA`: how much fine edge a small smoothing takes away.
    Only tissue pixels away from the tissue's border count (the glass/tissue edge is
    sharp on a blurred slide too).  Computed in bands of whole tiles with a margin, so
    the float images never exceed a band."""
    h, w = rgb.shape[:2]
    ty, tx = math.ceil(h / tile), math.ceil(w / tile)
    ratio = np.zeros((ty, tx), dtype=np.float64)
    lap_var = np.zeros((ty, tx), dtype=np.float64)
    inner = ndimage.binary_erosion(tissue, iterations=2)
    rows = max(1, _BAND_ROWS // tile) * tile
    margin = 8
    for y0 in range(0, h, rows):
        lo, hi = max(0, y0 - margin), min(h, y0 + rows + margin)
        band = rgb[lo:hi]
        grey = (band[..., 0].astype(np.float32) + band[..., 1] + band[..., 2]) / 3.0
        lap = ndimage.laplace(grey)
        lap_ref = ndimage.laplace(ndimage.gaussian_filter(grey, BLUR_REFERENCE_SIGMA))
        cut = slice(y0 - lo, y0 - lo + min(rows, h - y0))
        m = inner[y0:y0 + rows].astype(np.float32)
        n = _block_sum(m, tile)
        v1 = _block_sum(lap[cut] ** 2 * m, tile) - _block_sum(lap[cut] * m, tile) ** 2 / \
            np.maximum(n, 1)
        v2 = _block_sum(lap_ref[cut] ** 2 * m, tile) - \
            _block_sum(lap_ref[cut] * m, tile) ** 2 / np.maximum(n, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where((n > 0) & (v2 > 0), v1 / np.maximum(v2, 1e-9), np.inf)
            lv = np.where(n > 0, v1 / np.maximum(n, 1), 0.0)
        ratio[y0 // tile:y0 // tile + r.shape[0]] = r
        lap_var[y0 // tile:y0 // tile + r.shape[0]] = lv
    share = _block_sum(tissue.astype(np.float32), tile) / float(tile * tile)
    return TileSharpness(tissue_share=share, laplacian_var=lap_var, ratio=ratio)


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


def is_he(stain: str) -> bool:
    """Whether the stain is haematoxylin and eosin (or not said, which is then H&E)."""
    key = stain.strip().lower().replace(" ", "").replace("+", "&")
    return key in ("", "h&e", "he", "hematoxylin&eosin", "haematoxylin&eosin")


def _missing_on_tissue(boxes: list[list[int]], outline: NDArray[np.bool_],
                       downsample: float) -> int:
    """How many missing level-0 tiles lie where the tissue is: a coarser level still
    shows tissue there, or the tissue's outline encloses the hole the tile leaves."""
    h, w = outline.shape
    count = 0
    for x, y, bw, bh in boxes:
        x0, y0 = int(x / downsample), int(y / downsample)
        x1 = min(w, max(x0 + 1, math.ceil((x + bw) / downsample)))
        y1 = min(h, max(y0 + 1, math.ceil((y + bh) / downsample)))
        region = outline[y0:y1, x0:x1]
        if region.size == 0 or region.mean() >= MISSING_TILE_TISSUE_MIN_SHARE:
            count += 1
    return count


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def grade_slide(level_image: NDArray[np.uint8], *, downsample: float, missing_tiles: int,
                expected_levels: int, present_levels: int,
                missing_boxes: list[list[int]] | None = None,
                total_tiles: int = 0, stain: str = "") -> QCResult:
    """Grade one slide from an RGB image of it at ``downsample`` (level-0 px per pixel).

    ``missing_tiles`` and ``missing_boxes`` ([x, y, w, h] level-0 px) come from the
    DICOM headers (TILED_SPARSE frames versus the tiles the matrix needs), as do the
    pyramid's ``present_levels`` and ``expected_levels``; ``total_tiles`` is the
    number of tiles level 0 should have (for the sentence, 0 when unknown).
    ``stain`` as the Specimen module names it ("" = unknown, taken as H&E, the
    stain of nearly every slide): see :func:`masks`.

    A missing tile fails the slide when it is where tissue is (see
    :data:`MISSING_TILE_TISSUE_MIN_SHARE`): scanners that write TILED_SPARSE leave out
    the glass on purpose.  Every missing box is still drawn on the overlay.
    """
    if level_image.ndim != 3 or level_image.shape[2] < 3:
        raise ValueError(f"grade_slide needs an RGB image, got shape {level_image.shape}")
    rgb = np.ascontiguousarray(level_image[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    area = float(h * w)
    he = is_he(stain)
    tissue, pen = masks(rgb, he=he)
    tissue_px = float(tissue.sum())
    pen_px = float(pen.sum())
    tissue_fraction = tissue_px / area if area else 0.0
    pen_fraction = pen_px / area if area else 0.0

    sharpness = tile_sharpness(rgb, tissue)
    tissue_tiles = sharpness.tissue_share >= TISSUE_TILE_MIN_SHARE
    blurred = sharpness.blurred()
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
                       f"(variance of Laplacian < {BLUR_LAPLACIAN_RATIO_MIN:g}x that "
                       f"of the tile smoothed by {BLUR_REFERENCE_SIGMA:g} px; "
                       f"{int(blurred.sum())} of {n_tissue_tiles} tiles)")
    if pen_px and tissue_px and (pen_of_tissue > PEN_MAX_OF_TISSUE
                                 or pen_on_tissue > PEN_ON_TISSUE_MAX):
        where = (f", {_pct(pen_on_tissue)} of the tissue under ink"
                 if pen_on_tissue > PEN_ON_TISSUE_MAX else "")
        reasons.append(f"pen marks cover {_pct(pen_fraction)} of the slide "
                       f"({_pct(pen_of_tissue)} of the tissue area{where})")
    # Without boxes the caller cannot say where: every missing tile counts.
    missing_here = (_missing_on_tissue(missing_boxes, outline, downsample)
                    if missing_boxes else int(missing_tiles))
    if missing_here > 0:
        of = f" of {total_tiles}" if total_tiles else ""
        reasons.append(f"{missing_here}{of} tiles are missing at level 0")
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
        "missing_tiles": int(missing_here),
        "missing_glass_tiles": max(0, int(missing_tiles) - int(missing_here)),
        "levels": int(present_levels),
        "expected_levels": int(expected_levels),
        "qc_downsample": float(downsample),
        "pen_hues_checked": he,
        "blur_threshold": BLUR_LAPLACIAN_RATIO_MIN,
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
