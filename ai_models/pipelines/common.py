"""What both pipelines need: the applies-to checks, pixel decoding, windowing and
connected components.

The checks turn everything a model cannot read into `NotApplicable` with a
sentence a person can act on (which instance, which value, what the model
reads instead), because that sentence is all an operator sees of a skipped job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID

from ai_models.manifest import Manifest
from ai_models.pipelines.base import NotApplicable


def describe(ds: Dataset) -> str:
    """How a message names one instance: its number and SOP Instance UID."""
    number = ds.get("InstanceNumber")
    uid = ds.get("SOPInstanceUID", "?")
    return f"instance {number} ({uid})" if number is not None else f"instance {uid}"


def uid_text(value: object) -> str:
    uid = UID(str(value))
    return f"{uid} ({uid.name})" if uid.name != str(uid) else str(uid)


def check_applies_to(manifest: Manifest, datasets: Sequence[Dataset]) -> None:
    """Refuse a series the manifest's ``applies_to`` excludes.

    A missing or empty BodyPartExamined is accepted: many CR/DX and CT devices
    leave it empty, and the modality, SOP class and geometry checks already
    keep out what the model cannot read.  A body part that is *named* and not
    in the list (a hand, a knee) is refused.
    """
    ref, a = manifest.ref, manifest.applies_to
    if not datasets:
        raise NotApplicable("the series has no instances")
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if len(modalities) > 1:
        raise NotApplicable(f"the series mixes modalities {', '.join(modalities)}")
    if modalities[0] not in a.modalities:
        raise NotApplicable(f"modality {modalities[0] or '(none)'} is not read by {ref} "
                            f"(it reads {', '.join(a.modalities)})")
    for ds in datasets:
        sop_class = str(ds.get("SOPClassUID", ""))
        if a.sop_classes and sop_class not in a.sop_classes:
            reads = ", ".join(uid_text(u) for u in a.sop_classes)
            raise NotApplicable(f"{describe(ds)}: SOP class {uid_text(sop_class)} is not "
                                f"read by {ref} (it reads {reads})")
        if "PixelData" not in ds:
            raise NotApplicable(f"{describe(ds)} has no pixel data")
        photometric = str(ds.get("PhotometricInterpretation", ""))
        if photometric not in a.photometric or int(ds.get("SamplesPerPixel", 1)) != 1:
            raise NotApplicable(
                f"{describe(ds)}: photometric interpretation {photometric or '(none)'} with "
                f"{ds.get('SamplesPerPixel', 1)} sample(s) per pixel is not read by {ref} "
                f"(it reads single-sample {', '.join(a.photometric)})")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames != 1:
            raise NotApplicable(f"{describe(ds)} is a multi-frame image ({frames} frames); "
                                f"{ref} reads single-frame images")
        body_part = str(ds.get("BodyPartExamined", "")).strip().upper()
        if a.body_parts and body_part and body_part not in a.body_parts:
            raise NotApplicable(f"body part {body_part} is not read by {ref} "
                                f"(it reads {', '.join(a.body_parts)})")
    n = len(datasets)
    if n < a.min_slices:
        raise NotApplicable(f"the series has {n} slices; {ref} needs at least "
                            f"{a.min_slices} slices")
    if a.max_slices is not None and n > a.max_slices:
        raise NotApplicable(f"the series has {n} images; {ref} reads at most "
                            f"{a.max_slices} per series")


def undecodable(ds: Dataset, error: Exception) -> NotApplicable:
    """The reason for pixel data that cannot be decoded, naming the transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    detail = str(error).strip().splitlines()
    why = " ".join(line.strip() for line in detail[:3])[:300] or type(error).__name__
    ts = uid_text(syntax) if syntax else "(no transfer syntax in the file meta)"
    return NotApplicable(f"{describe(ds)}: pixel data cannot be decoded (transfer syntax "
                         f"{ts}): {why}")


def stored_pixels(ds: Dataset) -> np.ndarray:
    """``ds.pixel_array``, with any decoder failure as `NotApplicable`.

    pydicom keeps the decoded array on the dataset, so decoding here in
    ``check`` is not repeated in ``preprocess``.
    """
    try:
        pixels: np.ndarray = ds.pixel_array
    except Exception as e:  # pydicom raises RuntimeError, ValueError, NotImplementedError...
        raise undecodable(ds, e) from e
    return pixels


def check_decodable(datasets: Sequence[Dataset]) -> None:
    for ds in datasets:
        stored_pixels(ds)


def modality_pixels(ds: Dataset) -> np.ndarray:
    """Pixels in modality units (CT: HU) as float32, via the Modality LUT."""
    values = apply_modality_lut(stored_pixels(ds), ds)
    return np.asarray(values, dtype=np.float32)


def window(array: np.ndarray, low_high: tuple[float, float]) -> np.ndarray:
    """Map ``low..high`` (modality units) to 0..1, clipped: the manifest's window."""
    low, high = low_high
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    out = scale(torch.as_tensor(array, dtype=torch.float32))
    return np.asarray(out, dtype=np.float32)


#: Half of the 26-neighbourhood: every adjacent pair of voxels is seen once.
_HALF_26 = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if (dz, dy, dx) > (0, 0, 0)]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected components of a 3-D boolean mask: (labels, count).

    Labels are 1..count in order of each component's first voxel (C order);
    the background is 0.  Union-find on the foreground voxels only, vectorised
    with numpy (no SciPy in this environment), so its cost follows the size of
    the foreground, not of the volume.
    """
    if mask.ndim != 3:
        raise ValueError(f"connected_components needs a 3-D mask, got shape {mask.shape}")
    labels = np.zeros(mask.shape, dtype=np.int32)
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return labels, 0
    coords = np.stack(np.unravel_index(flat, mask.shape), axis=1)
    shape = np.asarray(mask.shape)
    src_parts, dst_parts = [], []
    for offset in _HALF_26:
        nb = coords + np.asarray(offset)
        inside = np.all((nb >= 0) & (nb < shape), axis=1)
        nb_flat = np.ravel_multi_index(tuple(nb[inside].T), mask.shape)
        pos = np.searchsorted(flat, nb_flat)
        pos_ok = pos < flat.size
        hit = np.zeros(nb_flat.shape, dtype=bool)
        hit[pos_ok] = flat[pos[pos_ok]] == nb_flat[pos_ok]
        src_parts.append(np.flatnonzero(inside)[hit])
        dst_parts.append(pos[hit])
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    parent = np.arange(flat.size)
    while True:
        # Hook each edge's larger root under its smaller one, then compress paths
        # until every node points at a root; stop when no edge joins two roots.
        lo = np.minimum(parent[src], parent[dst])
        hi = np.maximum(parent[src], parent[dst])
        joining = lo != hi
        if not joining.any():
            break
        np.minimum.at(parent, hi[joining], lo[joining])
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots, compact = np.unique(parent, return_inverse=True)
    labels.flat[flat] = compact.astype(np.int32) + 1
    return labels, int(roots.size)
