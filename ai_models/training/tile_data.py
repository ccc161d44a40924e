"""Training and held-out tiles for the demonstration tile model, from the synthetic slides.

Tiles come from ``devkit.synthetic_slide.render_tile``: the content of any region of
a synthetic H&E slide (seed, width, height), pen marks and out-of-focus regions
included, rendered at the resolution the pipeline reads (``DOWNSAMPLE`` below level 0,
64 px = 128 µm on a 0.25 µm/px slide).  Whether a place is tissue is the generator's
own ground truth (``devkit.synthetic_slide.tissue_mask``, which ignores pen ink), not
the tile's colour, so ink on glass is background.  Each tile gets one of three labels:

* ``background`` — less than ``BACKGROUND_MAX`` of its area is tissue;
* ``tissue`` — at least ``TISSUE_MIN`` of its area is tissue;
* ``atypical`` — a tissue tile on which this module draws a cluster of atypical
  nuclei: enlarged (12-24 µm across, two to four times the synthetic slide's nuclei),
  hyperchromatic (dark blue-violet with coarse chromatin), pleomorphic (varied ellipses)
  and crowded (6-14 nuclei within about 50 µm).  The synthetic slides have no
  "atypical" regions of their own, so the training data adds them, and the ground truth
  is exact by construction.

Tiles between the two tissue fractions (the edge of the tissue) are not used: their
label would be a matter of taste.  The atypical nuclei are drawn only on pixels that
look stained (``tissue_mask``: saturated or dark; glass is bright and grey).

The same rendering is then roughened the way the pipeline's input is: JPEG
re-compression (the pyramid is stored as JPEG), a little blur (the slides have blurred
regions) and a stain/brightness jitter.  Every draw comes from one seed, so the same
seed gives the same tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, ImageFilter

#: Class names, in the order of the network's outputs.
CLASSES = ("background", "tissue", "atypical")
TILE = 64
#: Level-0 pixels per network pixel: 2 µm/px on the synthetic slides' 0.25 µm/px.
DOWNSAMPLE = 8
SLIDE_MPP = 0.25
#: Tile labels by tissue fraction (see the module docstring).
BACKGROUND_MAX = 0.1
TISSUE_MIN = 0.6
#: The synthetic slide size tiles are drawn from (the default of write_synthetic_slide).
SLIDE_WIDTH, SLIDE_HEIGHT = 40960, 30720

#: Level-0 pixels per cell of the ground-truth tissue mask (8 x 8 cells per tile).
TRUTH_CELL = 64

RenderTile = Callable[[int, int, int, int, int, int, int], np.ndarray]
TruthMask = Callable[[int, int, int, float], np.ndarray]


def project_slides() -> tuple[RenderTile, TruthMask]:
    """The project's synthetic slides: ``render_tile`` and the ``tissue_mask`` truth.

    Imported here, not at the top, so that a missing renderer fails with this sentence
    rather than an ImportError in the middle of the training command."""
    try:
        from devkit.synthetic_slide import render_tile, tissue_mask
    except ImportError as e:  # pragma: no cover - the devkit ships with the project
        raise RuntimeError("devkit.synthetic_slide (render_tile, tissue_mask) is needed to "
                           f"draw the tile model's training data: {e}") from e
    return render_tile, tissue_mask


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels that look stained: saturated (max - min channel >= 20) or dark (mean < 200).

    Glass on the synthetic slides (and on real ones) is bright and nearly grey."""
    px = rgb.astype(np.int16)
    saturation = px.max(axis=-1) - px.min(axis=-1)
    mask: np.ndarray = (saturation >= 20) | (px.mean(axis=-1) < 200)
    return mask


def tissue_fraction(rgb: np.ndarray) -> float:
    return float(tissue_mask(rgb).mean())


def draw_atypical(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``rgb`` (H, W, 3 uint8, at 2 µm/px) with a cluster of atypical nuclei
    drawn on its tissue pixels (see the module docstring)."""
    out = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    inside = tissue_mask(rgb)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    for _ in range(int(rng.integers(6, 15))):
        y0 = float(np.clip(cy + rng.normal(0, h / 6), 4, h - 5))
        x0 = float(np.clip(cx + rng.normal(0, w / 6), 4, w - 5))
        a, b = rng.uniform(3.0, 6.0), rng.uniform(2.5, 5.0)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - y0, xx - x0
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
        r = u * u + v * v
        nucleus = (r <= 1.0) & inside
        colour = np.array([rng.uniform(35, 75), rng.uniform(15, 45), rng.uniform(85, 130)],
                          dtype=np.float32)
        chromatin = rng.normal(0, 14, size=(h, w, 1)).astype(np.float32)
        rim = ((r > 0.6) & nucleus)[..., None]
        shade = colour + chromatin - 18.0 * rim
        out = np.where(nucleus[..., None], shade, out)
    result: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return result


def roughen(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain and brightness jitter, sometimes a slight blur, usually a JPEG round trip."""
    gain = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    shift = rng.uniform(-8, 8)
    px = np.clip(rgb.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
    image = Image.fromarray(px)
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.2))))
    if rng.random() < 0.8:
        buf = BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
        image = Image.open(BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def to_network_input(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float32 in 0..1: the pipeline's own conversion."""
    out: np.ndarray = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
    return out


@dataclass
class TileSet:
    x: np.ndarray  # (N, 3, TILE, TILE) float32
    y: np.ndarray  # (N,) int64 class index
    slides: list[int]  # the synthetic slide seeds the tiles came from

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.y == k)) for k, name in enumerate(CLASSES)}


def tile_set(seed: int, per_class: int, *, slides: int = 4) -> TileSet:
    """``per_class`` tiles of each class from ``slides`` synthetic slides.

    The slide seeds are ``seed * 1000 + k``: two sets drawn with different ``seed``
    share no slide, which is what makes a held-out set held out.  Tiles sit on the
    truth mask's grid, anywhere on the slide.
    """
    render, truth_mask = project_slides()
    rng = np.random.default_rng(seed)
    seeds = [seed * 1000 + k for k in range(slides)]
    truth = {s: truth_mask(s, SLIDE_WIDTH, SLIDE_HEIGHT, TRUTH_CELL) for s in seeds}
    span = TILE * DOWNSAMPLE
    cells = span // TRUTH_CELL
    xs: list[np.ndarray] = []
    ys: list[int] = []
    have = [0, 0, 0]
    attempts = 0
    while min(have) < per_class:
        attempts += 1
        if attempts > 200 * per_class:
            raise RuntimeError(f"could not draw {per_class} tiles of each class from slides "
                               f"{seeds} (got {dict(zip(CLASSES, have, strict=True))})")
        slide = seeds[int(rng.integers(len(seeds)))]
        col = int(rng.integers(0, (SLIDE_WIDTH - span) // TRUTH_CELL))
        row = int(rng.integers(0, (SLIDE_HEIGHT - span) // TRUTH_CELL))
        fraction = float(truth[slide][row:row + cells, col:col + cells].mean())
        if BACKGROUND_MAX <= fraction < TISSUE_MIN:
            continue
        x, y = col * TRUTH_CELL, row * TRUTH_CELL
        if fraction < BACKGROUND_MAX:
            label = 0
        else:
            # Half the tissue tiles become atypical until that class is full.
            label = 2 if (have[2] < per_class
                          and (have[1] >= per_class or rng.random() < 0.5)) else 1
        if have[label] >= per_class:
            continue
        tile = np.asarray(render(slide, SLIDE_WIDTH, SLIDE_HEIGHT, x, y, TILE, DOWNSAMPLE),
                          dtype=np.uint8)[:TILE, :TILE, :3]
        if label == 2:
            tile = draw_atypical(tile, rng)
        xs.append(to_network_input(roughen(tile, rng)))
        ys.append(label)
        have[label] += 1
    return TileSet(np.stack(xs), np.asarray(ys, dtype=np.int64), seeds)
