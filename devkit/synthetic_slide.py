"""Synthetic H&E-like whole-slide images, deterministic by seed.

The pathology tests, benchmark and demo need slides whose content is *known*:
where the tissue is, which regions are out of focus, where a pen crossed the
glass.  Real slides cannot be shipped (patients) nor downloaded (no network),
so the content is a pure function of (seed, slide size, level-0 coordinate):

- tissue: a few blobs perturbed by low-frequency value noise, eosin-pink with
  purple hematoxylin nuclei; everything else is the white glass background;
- nuclei: one candidate per cell of two offset hash grids (no global state,
  so any region renders alone at any downsample, in the same way every time);
- blurred regions: rectangles where nuclei have soft edges and the fine texture
  is gone (what a focus failure does to the variance of the Laplacian);
- pen marks: blue and green ink strokes (polylines) over tissue and glass;
- optional "empty tiles": level-0 tiles inside tissue rendered as glass, a
  scanner's dropped tiles.

`render_tile` is vectorised numpy; `write_synthetic_slide` writes a pyramidal
tiled TIFF with JPEG tiles and a resolution tag (OpenSlide's generic-tiff reader
opens it and reports the MPP).  Tiles that are pure glass are encoded once and
the same bytes are written for every such tile, which is what makes the
40960 x 30720 demo slide quick to write.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

Box = tuple[int, int, int, int]  # x, y, w, h in level-0 pixels

GLASS = np.array([243.0, 243.0, 243.0], dtype=np.float32)
EOSIN = np.array([236.0, 158.0, 192.0], dtype=np.float32)
EOSIN_DARK = np.array([214.0, 118.0, 168.0], dtype=np.float32)
HEMATOXYLIN = np.array([78.0, 48.0, 138.0], dtype=np.float32)
PEN_COLOURS = (np.array([40.0, 70.0, 175.0], dtype=np.float32),
               np.array([30.0, 135.0, 80.0], dtype=np.float32))

CELL = 40  # nucleus grid cell, level-0 pixels
NUCLEUS_R = (7.0, 13.0)  # radius range, level-0 pixels
SHARP_EDGE = 1.0  # edge width of an in-focus nucleus, level-0 pixels
BLUR_EDGE = 14.0  # edge width of an out-of-focus nucleus
TISSUE_LEVEL = 0.5  # the tissue field's threshold
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------- hashing


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit value from any 64-bit input."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return np.asarray(h ^ (h >> np.uint64(31)))


def _hash01(seed: int, salt: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) from integer lattice coordinates; same inputs, same output."""
    with np.errstate(over="ignore"):
        a = np.asarray(ix, dtype=np.int64).astype(np.uint64)
        b = np.asarray(iy, dtype=np.int64).astype(np.uint64)
        h = a * np.uint64(0x9E3779B97F4A7C15)
        h = h ^ _mix(b * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(salt & 0xFFFFFFFF))
        h = h ^ np.uint64((seed * 0x165667B19E3779F9) & 0xFFFFFFFFFFFFFFFF)
        h = _mix(h & _M64)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _grid_hash(seed: int, salt: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """`_hash01` on a separable grid (ix a (1, w) row, iy an (h, 1) column, integer-valued).

    A tile holds few distinct lattice cells, so the hash is computed once per
    cell and gathered: the same values as hashing every pixel, far fewer hashes.
    """
    ix = np.asarray(ix)
    iy = np.asarray(iy)
    x0, y0 = ix.min(), iy.min()
    ux = np.arange(x0, ix.max() + 1)
    uy = np.arange(y0, iy.max() + 1)
    table = _hash01(seed, salt, ux[None, :], uy[:, None])
    gx = (ix - x0).astype(np.intp)
    gy = (iy - y0).astype(np.intp)
    return np.asarray(table[gy, gx])


def _smooth(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], xs: np.ndarray, ys: np.ndarray,
            spacing: float) -> np.ndarray:
    """A low-frequency function sampled on absolute nodes ``spacing`` apart and bilinearly
    interpolated at the separable points (xs row, ys column).

    The nodes do not depend on the region asked for, so tiles still join exactly.
    """
    kx = np.floor(xs / spacing)
    ky = np.floor(ys / spacing)
    x0, y0 = kx.min(), ky.min()
    nodes_x = np.arange(x0, kx.max() + 2) * spacing
    nodes_y = np.arange(y0, ky.max() + 2) * spacing
    grid = fn(nodes_x[None, :], nodes_y[:, None])
    ix = (kx - x0).astype(np.intp).ravel()
    iy = (ky - y0).astype(np.intp).ravel()
    fx = (xs / spacing - kx).ravel()
    fy = (ys / spacing - ky).reshape(-1, 1)
    along_x = grid[:, ix] * (1 - fx) + grid[:, ix + 1] * fx
    return np.asarray(along_x[iy] * (1 - fy) + along_x[iy + 1] * fy)


def _value_noise(seed: int, salt: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth noise in [0, 1): hashed lattice values, smoothstep-interpolated.

    ``u`` is a (1, w) row and ``v`` an (h, 1) column (every caller samples a grid).
    """
    iu = np.floor(u)
    iv = np.floor(v)
    fu = u - iu
    fv = v - iv
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    a = _grid_hash(seed, salt, iu, iv)
    b = _grid_hash(seed, salt, iu + 1, iv)
    c = _grid_hash(seed, salt, iu, iv + 1)
    d = _grid_hash(seed, salt, iu + 1, iv + 1)
    return np.asarray((a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + d * fu) * fv)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    """Where the slide's features are: derived from the seed and size alone."""

    blobs: tuple[tuple[float, float, float, float], ...]  # cx, cy, rx, ry (level-0 px)
    pen: tuple[tuple[tuple[tuple[float, float], ...], float, int], ...]  # points, width, colour
    blur: tuple[Box, ...]


def _layout(seed: int, width: int, height: int, *, blur: bool, pen: bool) -> _Layout:
    rng = np.random.default_rng([seed, 0x51DE])
    n_blobs = int(rng.integers(2, 4))
    blobs = []
    for i in range(n_blobs):
        # blobs spread across the slide's width, away from the edges
        cx = width * (0.2 + 0.6 * (i + rng.uniform(0.2, 0.8)) / n_blobs)
        cy = height * rng.uniform(0.35, 0.65)
        rx = width * rng.uniform(0.10, 0.16)
        ry = height * rng.uniform(0.18, 0.28)
        blobs.append((cx, cy, rx, ry))
    strokes: list[tuple[tuple[tuple[float, float], ...], float, int]] = []
    if pen:
        scale = min(width, height)
        for k in range(2):
            x0 = width * rng.uniform(0.1, 0.3) if k == 0 else width * rng.uniform(0.6, 0.8)
            y0 = height * rng.uniform(0.1, 0.2)
            points = [(x0, y0)]
            angle = rng.uniform(0.3, 1.2)
            for _ in range(5):
                angle += rng.uniform(-0.5, 0.5)
                step = scale * rng.uniform(0.05, 0.09)
                x, y = points[-1]
                points.append((float(np.clip(x + step * math.cos(angle), 0, width - 1)),
                               float(np.clip(y + step * math.sin(angle), 0, height - 1))))
            strokes.append((tuple(points), max(6.0, scale * 0.008), k % 2))
    boxes: list[Box] = []
    if blur:
        # one out-of-focus rectangle inside each of the first two blobs
        for cx, cy, rx, ry in blobs[:2]:
            bw = int(rx * 0.6)
            bh = int(ry * 0.5)
            boxes.append((int(cx - bw / 2), int(cy - bh / 2), bw, bh))
    return _Layout(tuple(blobs), tuple(strokes), tuple(boxes))


def _tissue_field(seed: int, layout: _Layout, width: int, height: int,
                  xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Tissue field at level-0 points; tissue where it exceeds TISSUE_LEVEL."""
    f = np.zeros(np.broadcast_shapes(xs.shape, ys.shape))
    for cx, cy, rx, ry in layout.blobs:
        d2 = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
        f = np.maximum(f, np.exp(-d2 * 0.9))
    scale = max(width, height)
    u = xs * (6.0 / scale)
    v = ys * (6.0 / scale)
    noise = _value_noise(seed, 11, u, v) * 0.65 + _value_noise(seed, 12, u * 2.7, v * 2.7) * 0.35
    return f + (noise - 0.5) * 0.55


def _segment_distance(xs: np.ndarray, ys: np.ndarray,
                      a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    dx = b[0] - ax
    dy = b[1] - ay
    length2 = dx * dx + dy * dy or 1.0
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))


def _stroke_box(points: Sequence[tuple[float, float]], width: float) -> Box:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0 = int(min(xs) - width)
    y0 = int(min(ys) - width)
    return (x0, y0, int(max(xs) + width) - x0 + 1, int(max(ys) + width) - y0 + 1)


def _overlaps(box: Box, x0: float, y0: float, x1: float, y1: float) -> bool:
    bx, by, bw, bh = box
    return bx < x1 and by < y1 and bx + bw > x0 and by + bh > y0


# ---------------------------------------------------------------- rendering


def render_tile(seed: int, width: int, height: int, x: int, y: int, size: int | tuple[int, int],
                downsample: float, *, blur: bool = True, pen: bool = True,
                blank: Sequence[Box] = ()) -> np.ndarray:
    """Render the region whose top-left is level-0 ``(x, y)``, ``size`` output pixels
    (an int for a square, or ``(w, h)``) at ``downsample`` level-0 pixels per output pixel.

    Returns an (h, w, 3) uint8 RGB array.  Pixels outside the slide are glass.
    The same arguments always give the same pixels; neighbouring regions join
    seamlessly, so a slide can be rendered tile by tile, in any order, at any level.
    ``blank`` boxes (level-0) render as glass: dropped scanner tiles.
    """
    w, h = (size, size) if isinstance(size, int) else size
    ds = float(downsample)
    layout = _layout(seed, width, height, blur=blur, pen=pen)
    xs = (x + (np.arange(w, dtype=np.float64) + 0.5) * ds)[None, :]
    ys = (y + (np.arange(h, dtype=np.float64) + 0.5) * ds)[:, None]
    x1 = x + w * ds
    y1 = y + h * ds

    spacing = 16 * ds  # the field and shade vary over hundreds of pixels
    field_ = _smooth(lambda a, b: _tissue_field(seed, layout, width, height, a, b),
                     xs, ys, spacing)
    # a soft tissue edge: the field rises by ~0.02 over a few dozen level-0 px
    alpha = np.clip((field_ - TISSUE_LEVEL) / 0.02 + 0.5, 0.0, 1.0).astype(np.float32)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    alpha = alpha * inside
    for box in blank:
        bx, by, bw, bh = box
        alpha = alpha * ~((xs >= bx) & (xs < bx + bw) & (ys >= by) & (ys < by + bh))

    out = np.empty((h, w, 3), dtype=np.float32)
    out[:] = GLASS
    if alpha.any():
        # eosin with a slow variation in shade
        scale = max(width, height)
        shade = _smooth(lambda a, b: _value_noise(seed, 21, a * (40.0 / scale), b * (40.0 / scale)),
                        xs, ys, spacing).astype(np.float32)
        tissue = EOSIN + (EOSIN_DARK - EOSIN) * shade[..., None]
        blurred = np.zeros((h, w), dtype=bool)
        for bx, by, bw, bh in layout.blur:
            blurred |= (xs >= bx) & (xs < bx + bw) & (ys >= by) & (ys < by + bh)
        nuclei = _nuclei(seed, xs, ys, ds, blurred)
        # fine fibre texture, averaged away at coarse levels and by defocus
        if ds < 8:
            grain = ((_grain(seed, xs, ys) - 0.5) * (36.0 / max(1.0, ds))).astype(np.float32)
            grain = np.where(blurred, 0.0, grain)
            tissue = tissue + grain[..., None]
        tissue = tissue + (HEMATOXYLIN - tissue) * nuclei.astype(np.float32)[..., None]
        out = out + (tissue - out) * alpha[..., None]

    for points, stroke_w, colour in layout.pen:
        if not _overlaps(_stroke_box(points, stroke_w), x, y, x1, y1):
            continue
        dist = np.full((h, w), np.inf)
        for a, b in pairwise(points):
            if _overlaps(_stroke_box((a, b), stroke_w), x, y, x1, y1):
                dist = np.minimum(dist, _segment_distance(xs, ys, a, b))
        ink = (np.clip((stroke_w / 2 - dist) / max(2.0, ds) + 0.5, 0.0, 1.0) * 0.8
               * inside).astype(np.float32)
        # ink is a filter: it darkens what is under it towards its colour
        filtered = out * (PEN_COLOURS[colour] / 255.0)
        out = out + (filtered - out) * ink[..., None]

    return np.ascontiguousarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


@lru_cache(maxsize=8)
def _grain_texture(seed: int) -> np.ndarray:
    # prime-sized so that its repeats do not line up with tiles or nucleus cells
    return np.random.default_rng([seed, 0x6A41]).random((521, 523), dtype=np.float32)


def _grain(seed: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per-level-0-pixel fine texture in [0, 1), a pure function of the pixel."""
    tex = _grain_texture(seed)
    ix = np.floor(xs).astype(np.int64) % tex.shape[1]
    iy = np.floor(ys).astype(np.int64) % tex.shape[0]
    return np.asarray(tex[iy, ix])


def _nuclei(seed: int, xs: np.ndarray, ys: np.ndarray, ds: float,
            blurred: np.ndarray) -> np.ndarray:
    """Hematoxylin coverage in [0, 1] at the pixel centres (xs, ys)."""
    shape = blurred.shape
    if ds >= CELL / 2:
        # a pixel spans several cells: the expected coverage, with a little variation
        mean = 2 * 0.55 * math.pi * (sum(NUCLEUS_R) / 2) ** 2 / CELL**2
        ix = np.floor(xs / CELL).astype(np.int64)
        iy = np.floor(ys / CELL).astype(np.int64)
        return np.broadcast_to(mean * (0.8 + 0.4 * _grid_hash(seed, 41, ix, iy)), shape).copy()
    cover = np.zeros(shape, dtype=np.float32)
    inv_edge = (1.0 / np.maximum(np.where(blurred, BLUR_EDGE, SHARP_EDGE), ds)).astype(np.float32)
    for layer, offset in ((0, 0.0), (1, CELL / 2)):
        gx = xs + offset
        gy = ys + offset
        cx = np.floor(gx / CELL)
        cy = np.floor(gy / CELL)
        # per-cell nucleus (present?, radius, centre), looked up once per pixel
        ux = np.arange(cx.min(), cx.max() + 1)[None, :]
        uy = np.arange(cy.min(), cy.max() + 1)[:, None]
        present = _hash01(seed, 50 + layer, ux, uy) < 0.55
        r = NUCLEUS_R[0] + (NUCLEUS_R[1] - NUCLEUS_R[0]) * _hash01(seed, 60 + layer, ux, uy)
        margin = r + 2
        span = CELL - 2 * margin
        ncx = ux * CELL + margin + span * _hash01(seed, 70 + layer, ux, uy)
        ncy = uy * CELL + margin + span * _hash01(seed, 80 + layer, ux, uy)
        r_eff = np.where(present, r, -1e3).astype(np.float32).ravel()
        idx = ((cy - uy[0, 0]) * ux.shape[1] + (cx - ux[0, 0])).astype(np.intp)
        dx = gx.astype(np.float32) - ncx.astype(np.float32).ravel()[idx]
        dy = (gy.astype(np.float32) - ncy.astype(np.float32).ravel()[idx]) * np.float32(1.25)
        d = np.sqrt(dx * dx + dy * dy)  # slightly elliptical nuclei
        c = np.clip((r_eff[idx] - d) * inv_edge + np.float32(0.5), 0.0, 1.0)
        np.maximum(cover, c * np.float32(0.85), out=cover)
    return cover


# ---------------------------------------------------------------- truth


@dataclass(frozen=True)
class SlideTruth:
    """What a synthetic slide contains, in level-0 pixels.

    Tests compare the QC gate and the viewer's overlays against this.
    ``tissue_fraction`` is measured on a coarse grid of the whole slide.
    """

    seed: int
    width: int
    height: int
    tile: int
    mpp: float
    downsamples: tuple[int, ...]
    blur: bool
    pen: bool
    tissue_fraction: float
    blur_boxes: tuple[Box, ...] = ()
    pen_boxes: tuple[Box, ...] = ()
    empty_boxes: tuple[Box, ...] = ()
    tissue_tiles: int = 0
    glass_tiles: int = 0

    def tissue_mask(self, downsample: float) -> np.ndarray:
        """Boolean (h, w) mask of tissue at ``downsample`` (pen and blank boxes ignored)."""
        return tissue_mask(self.seed, self.width, self.height, downsample)

    def is_tissue(self, x: float, y: float) -> bool:
        """Whether level-0 point (x, y) lies in tissue."""
        layout = _layout(self.seed, self.width, self.height, blur=False, pen=False)
        value = _tissue_field(self.seed, layout, self.width, self.height,
                              np.array([[float(x)]]), np.array([[float(y)]]))
        return bool(value[0, 0] > TISSUE_LEVEL)


def tissue_mask(seed: int, width: int, height: int, downsample: float) -> np.ndarray:
    """Tissue mask sampled at pixel centres of a level with ``downsample``."""
    layout = _layout(seed, width, height, blur=False, pen=False)
    w = math.ceil(width / downsample)
    h = math.ceil(height / downsample)
    xs = ((np.arange(w) + 0.5) * downsample)[None, :]
    ys = ((np.arange(h) + 0.5) * downsample)[:, None]
    return np.asarray(_tissue_field(seed, layout, width, height, xs, ys) > TISSUE_LEVEL)


def slide_truth(seed: int, width: int, height: int, *, tile: int = 512, mpp: float = 0.25,
                blur: bool = True, pen: bool = True, empty_tiles: bool = False) -> SlideTruth:
    """The truth of a slide without writing it (same as `write_synthetic_slide` returns)."""
    layout = _layout(seed, width, height, blur=blur, pen=pen)
    coarse = max(1.0, max(width, height) / 1024)
    mask = tissue_mask(seed, width, height, coarse)
    empty = _empty_boxes(seed, width, height, tile) if empty_tiles else ()
    tiles = _tile_classes(seed, width, height, tile, layout)
    return SlideTruth(
        seed=seed, width=width, height=height, tile=tile, mpp=mpp,
        downsamples=_downsamples(width, height, tile), blur=blur, pen=pen,
        tissue_fraction=float(mask.mean()),
        blur_boxes=layout.blur,
        pen_boxes=tuple(_clip_box(_stroke_box(p, w), width, height) for p, w, _ in layout.pen),
        empty_boxes=empty,
        tissue_tiles=int(tiles.sum()), glass_tiles=int((~tiles).sum()),
    )


def _clip_box(box: Box, width: int, height: int) -> Box:
    x, y, w, h = box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def _empty_boxes(seed: int, width: int, height: int, tile: int) -> tuple[Box, ...]:
    """Three level-0 tiles inside tissue that the 'scanner' dropped."""
    mask = tissue_mask(seed, width, height, tile)
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return ()
    rng = np.random.default_rng([seed, 0xE417])
    picks = rng.choice(len(rows), size=min(3, len(rows)), replace=False)
    return tuple((int(cols[i]) * tile, int(rows[i]) * tile, tile, tile) for i in sorted(picks))


def _downsamples(width: int, height: int, tile: int) -> tuple[int, ...]:
    """Level downsamples 1, 4, 16, ... until the level fits in one tile or so."""
    out = [1]
    while max(width, height) / out[-1] > tile:
        out.append(out[-1] * 4)
    return tuple(out)


def _tile_classes(seed: int, width: int, height: int, tile: int, layout: _Layout,
                  downsample: int = 1) -> np.ndarray:
    """Boolean grid: True for a tile (at this level) that has tissue or ink near it.

    The tissue field is sampled eight times per tile edge, and the threshold is
    lowered a little, so that a tile touched only by the soft tissue edge still
    counts as tissue; everything else is pure glass and renders identically.
    """
    span = tile * downsample
    tx = math.ceil(width / span)
    ty = math.ceil(height / span)
    step = span / 8
    xs = ((np.arange(tx * 8 + 1)) * step)[None, :]
    ys = ((np.arange(ty * 8 + 1)) * step)[:, None]
    f = _tissue_field(seed, layout, width, height, xs, ys) > TISSUE_LEVEL - 0.08
    grid = np.zeros((ty, tx), dtype=bool)
    for j in range(ty):
        for i in range(tx):
            grid[j, i] = f[j * 8:(j + 1) * 8 + 1, i * 8:(i + 1) * 8 + 1].any()
    for points, stroke_w, _ in layout.pen:
        bx, by, bw, bh = _stroke_box(points, stroke_w + 2 * span)
        for j in range(ty):
            for i in range(tx):
                if grid[j, i] or not _overlaps((bx, by, bw, bh), i * span, j * span,
                                               (i + 1) * span, (j + 1) * span):
                    continue
                cx = np.array([[(i + 0.5) * span]])
                cy = np.array([[(j + 0.5) * span]])
                d = min(float(_segment_distance(cx, cy, a, b)[0, 0])
                        for a, b in pairwise(points))
                grid[j, i] = d < stroke_w / 2 + span
    # partial tiles at the right/bottom edge are mostly outside: glass is fine there
    return grid


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Job:
    seed: int
    width: int
    height: int
    tile: int
    downsample: int
    blur: bool
    pen: bool
    quality: int
    blank: tuple[Box, ...]


def _encode(rgb: np.ndarray, quality: int) -> bytes:
    # the encoding tifffile itself uses for compression='jpeg', photometric='rgb'
    return bytes(imagecodecs.jpeg8_encode(rgb, level=quality, colorspace="RGB",
                                          outcolorspace="YCBCR", subsampling=(2, 2)))


def _render_encoded(job: _Job, col: int, row: int) -> bytes:
    span = job.tile * job.downsample
    rgb = render_tile(job.seed, job.width, job.height, col * span, row * span, job.tile,
                      job.downsample, blur=job.blur, pen=job.pen, blank=job.blank)
    return _encode(rgb, job.quality)


def _render_row(args: tuple[_Job, int, list[int]]) -> list[bytes]:
    job, row, cols = args
    return [_render_encoded(job, col, row) for col in cols]


def _level_tiles(job: _Job, pool: ProcessPoolExecutor | None) -> Iterator[bytes]:
    """Encoded tiles of one level in row-major order; glass tiles share one encoding."""
    layout = _layout(job.seed, job.width, job.height, blur=job.blur, pen=job.pen)
    busy = _tile_classes(job.seed, job.width, job.height, job.tile, layout, job.downsample)
    for bx, by, bw, bh in job.blank:  # blanked tiles differ from what the field says
        span = job.tile * job.downsample
        busy[by // span:(by + bh - 1) // span + 1, bx // span:(bx + bw - 1) // span + 1] = True
    glass = _encode(np.broadcast_to(GLASS.astype(np.uint8), (job.tile, job.tile, 3)).copy(),
                    job.quality)
    rows = [(job, r, [int(c) for c in np.nonzero(busy[r])[0]]) for r in range(busy.shape[0])]
    results = pool.map(_render_row, rows, chunksize=1) if pool else map(_render_row, rows)
    for (_, _row, cols), encoded in zip(rows, results, strict=True):
        lookup = dict(zip(cols, encoded, strict=True))
        for c in range(busy.shape[1]):
            yield lookup.get(c, glass)


def write_synthetic_slide(path: Path, *, width: int = 40960, height: int = 30720, seed: int = 0,
                          tile: int = 512, mpp: float = 0.25, blur: bool = True,
                          pen: bool = True, empty_tiles: bool = False, quality: int = 85,
                          workers: int | None = None) -> SlideTruth:
    """Write a pyramidal tiled TIFF (JPEG tiles, one page per level, resolution tags
    in pixels per centimetre) that OpenSlide's generic-tiff reader opens.

    Levels are rendered from the content function directly (downsample 1, 4, 16, ...),
    not by shrinking level 0, so each level is written in one pass.  ``workers``
    processes render tissue tiles (default: the CPU count, 1 for small slides).
    Returns the `SlideTruth` of what was written.
    """
    if tile % 16 or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of 16, not {tile}")
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, not {width} x {height}")
    truth = slide_truth(seed, width, height, tile=tile, mpp=mpp, blur=blur, pen=pen,
                        empty_tiles=empty_tiles)
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if width * height < 16_000_000:
        n_workers = 1
    res = 1e4 / mpp  # pixels per centimetre
    pool = ProcessPoolExecutor(n_workers) if n_workers > 1 else None
    try:
        with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:
            for level, ds in enumerate(truth.downsamples):
                job = _Job(seed, width, height, tile, ds, blur, pen, quality, truth.empty_boxes)
                lw = math.ceil(width / ds)
                lh = math.ceil(height / ds)
                tif.write(
                    _level_tiles(job, pool),
                    shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                    photometric="rgb", compression="jpeg", subsampling=(2, 2),
                    resolution=(res / ds, res / ds), resolutionunit="CENTIMETER",
                    description=(f"Synthetic H&E slide seed={seed} (not a patient)"
                                 if level == 0 else None),
                    metadata=None, software="rdc devkit.synthetic_slide",
                    # OpenSlide takes tiled pages with the reduced-resolution bit as levels
                    subfiletype=0 if level == 0 else 1,
                )
    finally:
        if pool is not None:
            pool.shutdown()
    return truth
