"""Lung nodule segmentation on an axial CT series → a nodule finding with its volume
and a mask on the source slices (for the DICOM SEG).

The slices are ordered along the slice normal and stacked in HU; the volume
is resampled to the manifest's spacing, windowed and segmented window by
window (MONAI's sliding-window inference, each window one ONNX run).  The
foreground is split into connected components, specks below a minimum volume
are dropped, and what is kept is resampled back onto the source grid.

The volume stays in acquisition order (slice, row, column) rather than being
reoriented: only axial series are accepted, the phantoms are trained with
flips along every axis, and the mask can then go back to the source slices
without an orientation round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from math import prod

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, compute_shape_offset, dense_patch_slices
from monai.transforms import Spacing, SpatialResample
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest
from ai_models.pipelines.base import Finding, NotApplicable, Predict, Prepared, Result
from ai_models.pipelines.common import (
    check_applies_to,
    check_decodable,
    connected_components,
    describe,
    modality_pixels,
    window,
)

#: Windows per ONNX run, and how much neighbouring windows overlap.
SW_BATCH = 4
SW_OVERLAP = 0.25
#: Components smaller than this (mL) are noise, not nodules: 30 mm³ is a sphere of
#: about 4 mm diameter, below what the phantom ever plants.
MIN_COMPONENT_ML = 0.03
#: |normal · z| at least this: axial, allowing a few degrees of gantry tilt.
AXIAL_COSINE = 0.99


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise NotApplicable(f"{describe(ds)} has no {keyword}, so the slices cannot be "
                            "put in order and measured")
    try:
        return np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NotApplicable(f"{describe(ds)}: {keyword} {value} is not numeric") from e


def sorted_slices(datasets: Sequence[Dataset]) -> tuple[list[Dataset], tuple[float, ...]]:
    """The slices in order along their normal, and the voxel spacing (slice, row, column).

    Refuses series whose slices differ in size, spacing or orientation, are
    not axial, share a position, or are unevenly spaced (a missing slice would
    otherwise be silently bridged and every volume measured wrong).
    """
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in datasets})
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise NotApplicable(f"the slices differ in size ({shown}); one volume cannot be "
                            "built from them")
    orientation = _floats(datasets[0], "ImageOrientationPatient", 6)
    pixel_spacing = _floats(datasets[0], "PixelSpacing", 2)
    for ds in datasets:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6), orientation, atol=1e-3):
            raise NotApplicable(f"{describe(ds)} is oriented differently from the first "
                                "slice; the series is not one stack of parallel slices")
        if not np.allclose(_floats(ds, "PixelSpacing", 2), pixel_spacing, rtol=1e-3):
            raise NotApplicable(f"{describe(ds)} has pixel spacing "
                                f"{list(ds.PixelSpacing)}, unlike the first slice "
                                f"({list(pixel_spacing)})")
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[2]) < AXIAL_COSINE * float(np.linalg.norm(normal)):
        raise NotApplicable(f"the slices are not axial (ImageOrientationPatient "
                            f"{[round(v, 3) for v in orientation]}); this model reads "
                            "axial CT only")
    positions = [float(_floats(ds, "ImagePositionPatient", 3) @ normal) for ds in datasets]
    order = np.argsort(positions, kind="stable")
    ordered = [datasets[i] for i in order]
    where = np.asarray(positions)[order]
    gaps = np.diff(where)
    if gaps.size and gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise NotApplicable(f"{describe(ordered[i])} and {describe(ordered[i + 1])} are at "
                            f"the same position ({where[i]:.2f} mm along the normal)")
    step = float(np.median(gaps)) if gaps.size else float(
        datasets[0].get("SliceThickness", 1.0) or 1.0)
    if gaps.size and (gaps.max() > 1.5 * step or gaps.min() < 0.5 * step):
        raise NotApplicable(f"the slice spacing is not uniform ({gaps.min():.2f} to "
                            f"{gaps.max():.2f} mm, typically {step:.2f} mm): a slice may be "
                            "missing")
    return ordered, (step, float(pixel_spacing[0]), float(pixel_spacing[1]))


def _affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)
            ) -> torch.Tensor:
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return torch.from_numpy(affine)


def resample(volume: np.ndarray, spacing: Sequence[float], target: Sequence[float],
             mode: str = "bilinear") -> np.ndarray:
    """(D, H, W) on ``spacing`` → the same field of view on ``target`` (mm).

    Linear interpolation is separable, so the bilinear case is three 1-D passes in
    numpy (:func:`_linear_axis`), about ten times faster on a 300-slice CT than MONAI's
    ``Spacing`` (a 3-D grid sample), with the same grid: ``round((n - 1) * s / t + 1)``
    voxels per axis, voxel 0 on voxel 0, and the border value beyond the last voxel.
    ``tests/test_ai_pipelines.py`` holds the two to 1e-5.  Other modes go to MONAI."""
    if mode != "bilinear":
        return resample_monai(volume, spacing, target, mode)
    out = np.ascontiguousarray(volume, dtype=np.float32)
    if out.ndim != 3:
        raise ValueError(f"resample needs a 3-D volume, got shape {out.shape}")
    # The output grid exactly as Spacing computes it (an extent of k + 0.5 voxels rounds
    # the way its floating point does).
    sizes, _ = compute_shape_offset(out.shape, _affine(spacing).numpy(),
                                    _affine(target).numpy())
    # Shrinking axes first keeps the intermediate volumes small.
    axes = sorted(range(3), key=lambda a: float(target[a]) / float(spacing[a]), reverse=True)
    for axis in axes:
        ratio = float(target[axis]) / float(spacing[axis])
        out = _linear_axis(out, axis, int(sizes[axis]), ratio)
    return out


def resample_slices(slices: Sequence[np.ndarray], spacing: Sequence[float],
                    target: Sequence[float]) -> np.ndarray:
    """:func:`resample` of ``np.stack(slices)``, one slice at a time in plane first.

    A 300-slice 512² CT is 315 MB as float32; shrinking each slice before stacking
    never holds it whole, and skips the copy into one array."""
    if not slices:
        raise ValueError("no slices to resample")
    rows, cols = slices[0].shape
    sizes, _ = compute_shape_offset((len(slices), rows, cols), _affine(spacing).numpy(),
                                    _affine(target).numpy())
    ratios = [float(target[a]) / float(spacing[a]) for a in range(3)]
    planes = []
    for image in slices:
        plane = np.ascontiguousarray(image, dtype=np.float32)
        plane = _linear_axis(plane, 0, int(sizes[1]), ratios[1])
        planes.append(_linear_axis(plane, 1, int(sizes[2]), ratios[2]))
    return _linear_axis(np.stack(planes), 0, int(sizes[0]), ratios[0])


def _linear_axis(volume: np.ndarray, axis: int, size: int, ratio: float) -> np.ndarray:
    """``size`` samples along ``axis`` at input positions 0, ratio, 2·ratio…, linearly
    interpolated, clamped to the last voxel."""
    n = volume.shape[axis]
    pos = np.clip(np.arange(size, dtype=np.float64) * ratio, 0.0, n - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * volume.ndim
    shape[axis] = size
    weight = (pos - low).astype(np.float32).reshape(shape)
    a = np.take(volume, low, axis=axis)
    b = np.take(volume, high, axis=axis)
    b -= a
    b *= weight
    a += b
    return a


def resample_monai(volume: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                   mode: str = "bilinear") -> np.ndarray:
    """The same resampling with MONAI's ``Spacing`` (any of its modes)."""
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None],
                       affine=_affine(spacing))
    out = Spacing(pixdim=tuple(target), mode=mode)(image)
    return np.asarray(out.detach().numpy()[0], dtype=np.float32)


def to_network_input(hu: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                     low_high: tuple[float, float]) -> np.ndarray:
    """HU volume → (1, D', H', W') float32 in 0..1 on the model's spacing."""
    return window(resample(hu, spacing, target), low_high)[None]


def sliding_window(volume: np.ndarray, roi: tuple[int, ...], run: Predict, *,
                   batch: int = SW_BATCH, overlap: float = SW_OVERLAP) -> np.ndarray:
    """(C, D, H, W) → (K, D, H, W) logits, window by window, Gaussian-blended: what
    MONAI's ``sliding_window_inference(mode="gaussian")`` computes, in numpy.

    MONAI's loop hands every window batch from torch to the numpy session and back,
    and blends in torch; on a small CPU that costs about as much as the tiny network
    (the benchmark's UNet (b)/(a) was 0.86x).  Here windows are sliced from the numpy
    volume, run, weighted and added in place: the same windows (MONAI's
    ``dense_patch_slices``), the same weights (its ``compute_importance_map``), the
    same zero padding of a volume smaller than the window, held to MONAI's result by
    ``tests/test_ai_pipelines.py``."""
    if volume.ndim != len(roi) + 1:
        raise ValueError(f"expected (C, {len(roi)} spatial dims), got {volume.shape}")
    spatial = volume.shape[1:]
    pads = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2)
            for n, r in zip(spatial, roi, strict=True)]
    padded = np.pad(volume, [(0, 0), *pads]) if any(a or b for a, b in pads) else volume
    size = padded.shape[1:]
    interval = tuple(r if r == n else max(1, int(r * (1 - overlap)))
                     for n, r in zip(size, roi, strict=True))
    windows = dense_patch_slices(size, roi, interval)
    weight = _importance(roi)
    out: np.ndarray | None = None
    count = np.zeros(size, dtype=np.float32)
    for start in range(0, len(windows), batch):
        group = windows[start:start + batch]
        x = np.stack([padded[(slice(None), *w)] for w in group]).astype(np.float32, copy=False)
        y = np.asarray(run(x), dtype=np.float32)
        if out is None:
            out = np.zeros((y.shape[1], *size), dtype=np.float32)
        for w, logits in zip(group, y, strict=True):
            out[(slice(None), *w)] += logits * weight
            count[w] += weight
    assert out is not None
    out /= count
    crop = tuple(slice(a, a + n) for (a, _), n in zip(pads, spatial, strict=True))
    return np.ascontiguousarray(out[(slice(None), *crop)])


@lru_cache(maxsize=8)
def _importance(roi: tuple[int, ...]) -> np.ndarray:
    """MONAI's Gaussian window weights (sigma 0.125 of the window), as numpy."""
    weights = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device="cpu")
    return np.asarray(torch.as_tensor(weights), dtype=np.float32)


def softmax_foreground(logits: np.ndarray) -> np.ndarray:
    """Foreground probability from (2, ...) logits, computed stably."""
    diff = logits[1].astype(np.float64) - logits[0].astype(np.float64)
    out: np.ndarray = (1.0 / (1.0 + np.exp(-diff))).astype(np.float32)
    return out


class CtNoduleSegPipeline:
    """``pipeline: ct_nodule_seg`` in model.yaml (task segmentation, one label)."""

    def __init__(self, manifest: Manifest) -> None:
        spec = manifest.input
        if (manifest.task != "segmentation" or len(spec.size) != 3 or spec.spacing is None
                or len(spec.spacing) != 3 or len(manifest.labels) != 1):
            raise ValueError(f"{manifest.ref}: ct_nodule_seg needs a segmentation model "
                             "with a 3-D ROI size, a 3-D spacing and one label")
        self.manifest = manifest
        self.spacing: tuple[float, ...] = tuple(spec.spacing)

    def check(self, datasets: Sequence[Dataset]) -> None:
        check_applies_to(self.manifest, datasets)
        sorted_slices(datasets)
        check_decodable(datasets)

    def preprocess(self, datasets: Sequence[Dataset]) -> Prepared:
        ordered, spacing = sorted_slices(datasets)
        slices = [modality_pixels(ds) for ds in ordered]
        resampled = resample_slices(slices, spacing, self.spacing)
        array = window(resampled, self.manifest.input.window)[None]
        return Prepared(array=array, datasets=ordered,
                        meta={"source_shape": (len(slices), *slices[0].shape),
                              "source_spacing": spacing})

    def predict(self, prepared: Sequence[Prepared], run: Predict) -> list[np.ndarray]:
        roi = tuple(int(r) for r in self.manifest.input.size)
        return [sliding_window(p.array, roi, run) for p in prepared]

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> Result:
        label = self.manifest.labels[0]
        foreground = softmax_foreground(output)
        components, count = connected_components(foreground > 0.5)
        voxel_ml = prod(self.spacing) / 1000.0
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        keep = [i + 1 for i in range(count) if sizes[i] * voxel_ml >= MIN_COMPONENT_ML]
        shape = tuple(prepared.meta["source_shape"])
        if not keep:
            finding = Finding(label=label.name, probability=0.0, positive=False,
                              critical=False)
            return Result(findings=[finding], mask=np.zeros(shape, dtype=bool))
        largest = max(keep, key=lambda k: int(sizes[k - 1]))
        probability = float(foreground[components == largest].max())
        kept = np.isin(components, keep)
        positive = probability >= label.threshold
        volume = float(sum(int(sizes[k - 1]) for k in keep) * voxel_ml)
        finding = Finding(label=label.name, probability=probability, positive=positive,
                          critical=positive and label.critical,
                          volume_ml=volume if positive else None)
        mask = (self._to_source(np.where(kept, foreground, 0.0), prepared) if positive
                else np.zeros(shape, dtype=bool))
        return Result(findings=[finding], mask=mask)

    def _to_source(self, probability: np.ndarray, prepared: Prepared) -> np.ndarray:
        """Resample the kept probability onto the source slices and threshold it.

        Only the bounding box of what was kept (plus a margin) is resampled, so
        a 300-slice 512² series costs a small crop rather than the whole grid.
        """
        shape = tuple(int(s) for s in prepared.meta["source_shape"])
        source = tuple(float(s) for s in prepared.meta["source_spacing"])
        mask = np.zeros(shape, dtype=bool)
        where = np.nonzero(probability > 0)
        lo = [max(int(w.min()) - 2, 0) for w in where]
        hi = [min(int(w.max()) + 3, n) for w, n in zip(where, probability.shape, strict=True)]
        crop = probability[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        src_lo = [max(int(np.floor(lo[a] * self.spacing[a] / source[a])), 0) for a in range(3)]
        src_hi = [min(int(np.ceil((hi[a] - 1) * self.spacing[a] / source[a])) + 1, shape[a])
                  for a in range(3)]
        size = [h - low for low, h in zip(src_lo, src_hi, strict=True)]
        if min(size) <= 0:
            return mask
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None],
                           affine=_affine(self.spacing, [lo[a] * self.spacing[a]
                                                         for a in range(3)]))
        back = SpatialResample(mode="bilinear", padding_mode="zeros")(
            image, dst_affine=_affine(source, [src_lo[a] * source[a] for a in range(3)]),
            spatial_size=size)
        mask[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]] = \
            np.asarray(torch.as_tensor(back)[0]) > 0.5
        return mask
