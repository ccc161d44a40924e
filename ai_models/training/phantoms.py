"""Synthetic training data, reproducible from a seed: the demonstration models learn
the same phantoms that `devkit.samples` writes as DICOM, with their geometry,
intensities and noise varied around the values that the DICOM phantoms use.

Nothing here is patient data, and nothing here says anything about patients: a
model trained on it recognises phantoms.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from devkit.samples import ct_phantom_slice, draw_pneumothorax

#: Radiograph sizes drawn for training (square, pixels); the pipeline resizes every
#: one to the network input, so training sees the resize's smoothing of noise too.
CXR_SIZES = (256, 384, 512, 768, 1024)
CXR_SIZE_WEIGHTS = (0.3, 0.25, 0.25, 0.1, 0.1)


@dataclass(frozen=True)
class CxrPhantom:
    image: np.ndarray  # (H, W) stored values, 0..4095, MONOCHROME2
    labels: dict[str, bool]


def chest_radiograph(rng: np.random.Generator, size: int, *, opacity: bool,
                     pneumothorax: bool) -> np.ndarray:
    """A frontal chest phantom like `devkit.samples.write_chest_radiograph`'s, varied.

    Each structure's position, size and level is drawn around the DICOM
    phantom's (which lies inside every range); a lung opacity is a dense blob
    anywhere inside a lung, a pneumothorax the same crescent and pleural line
    as ``write_chest_radiograph(pneumothorax=True)``, on either side.
    """
    u = rng.uniform
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = np.full((size, size), 3000.0 * u(0.9, 1.1))
    img[(xx / u(0.72, 0.88)) ** 2 + (yy / u(0.88, 0.98)) ** 2 <= 1] = 1800 * u(0.9, 1.1)
    lungs = []
    for side in (-1.0, 1.0):
        lung = (side * u(0.3, 0.4), u(-0.1, 0.0), u(0.24, 0.32), u(0.52, 0.66))
        cx, cy, a, b = lung
        img[((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1] = 600 * u(0.85, 1.15)
        lungs.append(lung)
    half = u(0.04, 0.09)
    img[(np.abs(xx) < half) & (np.abs(yy) < u(0.85, 0.95))] = 2600 * u(0.9, 1.1)
    collapse = 1.0
    ptx_side = int(rng.integers(2))
    if pneumothorax:
        cx, cy, a, b = lungs[ptx_side]
        collapse = u(0.6, 0.85)
        draw_pneumothorax(img, xx, yy, cx=cx, cy=cy, a=a, b=b, collapse=collapse,
                          air=u(150, 350), lung=700 * u(0.9, 1.1), pleura=u(1300, 1700),
                          line=u(0.008, 0.016))
    if opacity:
        side = int(rng.integers(2))
        cx, cy, a, b = lungs[side]
        if pneumothorax and side == ptx_side:
            # In the collapsed lung, which has moved medially and down.
            sign = 1.0 if cx >= 0 else -1.0
            cx, cy = cx - sign * a * (1 - collapse), cy + b * (1 - collapse)
            a, b = a * collapse, b * collapse
        r = u(0.06, 0.14)
        angle, rho = u(0, 2 * np.pi), u(0, 0.6)
        ox = cx + rho * max(a - r, 0.0) * np.cos(angle)
        oy = cy + rho * max(b - r, 0.0) * np.sin(angle)
        img[(xx - ox) ** 2 + (yy - oy) ** 2 <= r ** 2] = u(1200, 1800)
    img += rng.normal(0, u(15, 45), size=img.shape)
    out: np.ndarray = np.clip(img, 0, 4095)
    return out


def cxr_phantoms(seed: int, n: int) -> Iterator[CxrPhantom]:
    """``n`` radiograph phantoms with independent 50 % labels, the same for the same seed."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        size = int(rng.choice(CXR_SIZES, p=CXR_SIZE_WEIGHTS))
        labels = {"pneumothorax": bool(rng.random() < 0.5),
                  "lung_opacity": bool(rng.random() < 0.5)}
        image = chest_radiograph(rng, size, opacity=labels["lung_opacity"],
                                 pneumothorax=labels["pneumothorax"])
        yield CxrPhantom(image, labels)


#: Source geometry of a `devkit.samples.write_ct_series` phantom.
CT_FIELD_MM = 350.0
CT_SLICE_MM = 1.25


@dataclass(frozen=True)
class CtPhantom:
    hu: np.ndarray  # (D, H, W) HU, slices head to feet as write_ct_series writes them
    mask: np.ndarray  # (D, H, W) bool, the planted nodule
    spacing: tuple[float, float, float]  # mm: slice, row, column
    lesion: tuple[float, float, float, float] | None


def random_lesion(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A nodule (x, y, z, r) in unit coordinates that lies inside one lung.

    The lungs of `ct_phantom_slice` are ellipses centred at x = ±0.38, y = -0.05,
    of radius 0.3 + 0.1·sin(πz) (1.4 times that in y); the nodule keeps clear of the
    lung's edge at its own level.
    """
    z = float(rng.uniform(0.2, 0.8))
    r = float(rng.uniform(0.03, 0.08))
    lung_r = 0.3 + 0.1 * np.sin(np.pi * z)
    cx = 0.38 if rng.random() < 0.5 else -0.38
    angle, rho = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.8)
    x = cx + rho * (lung_r - r) * np.cos(angle)
    y = -0.05 + rho * (1.4 * lung_r - r) * np.sin(angle)
    return float(x), float(y), z, r


def lesion_mask(lesion: tuple[float, float, float, float], slices: int,
                size: int) -> np.ndarray:
    """The voxels `ct_phantom_slice` paints as the nodule, for a whole series."""
    lx, ly, lz, lr = lesion
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    mask = np.zeros((slices, size, size), dtype=bool)
    for i in range(slices):
        z = i / max(1, slices - 1)
        r2 = lr ** 2 - ((z - lz) * 2) ** 2
        if r2 > 0:
            mask[i] = ((xx - lx) ** 2 + (yy - ly) ** 2) <= r2
    return mask


def ct_phantom(rng: np.random.Generator, slices: int, size: int,
               lesion: tuple[float, float, float, float] | None) -> CtPhantom:
    """A whole series as `devkit.samples.write_ct_series` would write it, in HU."""
    volume = np.stack([ct_phantom_slice(i / max(1, slices - 1), size, rng, lesion)
                       for i in range(slices)]).astype(np.float32) - 1024.0
    mask = (lesion_mask(lesion, slices, size) if lesion is not None
            else np.zeros(volume.shape, dtype=bool))
    spacing = (CT_SLICE_MM, CT_FIELD_MM / size, CT_FIELD_MM / size)
    return CtPhantom(volume, mask, spacing, lesion)


def ct_phantoms(seed: int, n: int, *, sizes: tuple[int, ...] = (192, 256, 384, 512),
                slices: tuple[int, int] = (40, 320),
                nodule_rate: float = 0.75) -> Iterator[CtPhantom]:
    """``n`` CT phantoms: random series length and matrix, most with one nodule.

    The series length matters beyond the field of view: `ct_phantom_slice`
    places anatomy in unit coordinates over the whole series, so a short series
    has a nodule that is thin in z and a long one a nodule that is nearly
    round; training sees both.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n):
        count = int(rng.integers(slices[0], slices[1] + 1))
        size = int(rng.choice(sizes))
        lesion = random_lesion(rng) if rng.random() < nodule_rate else None
        yield ct_phantom(rng, count, size, lesion)
