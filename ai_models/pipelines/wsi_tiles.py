"""Whole-slide tile classification: a slide → a grid of cells → a class per cell → a heat map.

The slide is never downloaded whole: ``prepare_from_orthanc`` (which the inference
worker calls instead of fetching instance files, see ``ai_models.inference``) reads
the headers, the pyramid and the one pyramid level closest to (and not coarser than)
the network's resolution (``input.spacing`` in mm per pixel), shrinks it to exactly
that resolution and cuts it into ``input.size`` cells; the last row and column are
padded with glass.  One cell is ``cell_px`` level-0 pixels square.

All cells of all slides of a batch go through the network in chunks of
``CELL_BATCH``; a softmax over the classes gives each cell its probabilities.  The
heat map JSON (``Result.heatmap``, stored in ``ai_results.heatmap``) shows the finding
of interest, the manifest's *last* label (background, tissue, then atypical): its
``labels`` is that one label and ``values`` one probability per cell (rows x cols),
which is what the viewer's overlay and the report prefill draw and summarise; every
class's probabilities are kept beside it under ``classes`` ({labels, values: rows x
cols x labels}), and all of them go into the DICOM Parametric Map, one frame per
class.  The SR's findings are, per class, the highest cell probability on the slide
("present somewhere on the slide" at or above the label's threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest
from ai_models.pipelines.base import Finding, NotApplicable, Predict, Prepared, Result
from ai_models.pipelines.common import uid_text
from ai_models.pipelines.wsi_reader import (
    GLASS,
    SlideUnreadable,
    read_level,
    read_pyramid,
    series_headers,
)
from core.orthanc_client import OrthancClient

PIPELINE_KEY = "wsi_tiles"
#: Cells per network call: 256 RGB cells of 64 px are 12 MB of float32.
CELL_BATCH = 256
#: Decimals kept in the heat map JSON (a viewer overlay, not a measurement).
DECIMALS = 3


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def is_volume(ds: Dataset) -> bool:
    """A pyramid level (ImageType VOLUME), not the label, overview or thumbnail."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return len(image_type) < 3 or image_type[2] == "VOLUME"


def pixel_spacing_mm(ds: Dataset) -> float | None:
    """Level-0 pixel spacing in mm (column direction), from the shared functional groups
    or, failing that, the imaged volume width over the total pixel matrix."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        value = float(spacing[1])
        if value > 0:
            return value
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        pass
    width = ds.get("ImagedVolumeWidth")
    columns = ds.get("TotalPixelMatrixColumns")
    if width and columns:
        return float(width) / float(columns)
    return None


def level_zero(manifest: Manifest, datasets: Sequence[Dataset]) -> Dataset:
    """The slide's full-resolution image, after refusing what the model does not read."""
    ref, a = manifest.ref, manifest.applies_to
    if not datasets:
        raise NotApplicable("the series has no instances")
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["SM"] or "SM" not in a.modalities:
        raise NotApplicable(f"modality {', '.join(modalities) or '(none)'} is not read by "
                            f"{ref} (it reads {', '.join(a.modalities)})")
    volumes = [ds for ds in datasets
               if str(ds.get("SOPClassUID", "")) in a.sop_classes and is_volume(ds)]
    if not volumes:
        classes = ", ".join(sorted({uid_text(ds.get("SOPClassUID", "")) for ds in datasets}))
        raise NotApplicable(f"the series has no whole-slide pyramid image that {ref} reads "
                            f"(SOP classes: {classes})")
    top = max(volumes, key=lambda ds: int(ds.get("TotalPixelMatrixColumns", 0) or 0))
    photometric = str(top.get("PhotometricInterpretation", ""))
    if photometric not in a.photometric or int(top.get("SamplesPerPixel", 0) or 0) != 3:
        raise NotApplicable(f"the slide's photometric interpretation {photometric or '(none)'}"
                            f" with {top.get('SamplesPerPixel', '?')} samples per pixel is "
                            f"not read by {ref} (it reads colour: {', '.join(a.photometric)})")
    if pixel_spacing_mm(top) is None:
        raise NotApplicable(f"the slide has no pixel spacing (Pixel Measures or Imaged "
                            f"Volume Width); {ref} needs the µm per pixel to pick a level")
    return top


def cut_cells(image: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """(h, w, 3) → (rows * cols, size, size, 3) cells in row-major order, glass-padded."""
    h, w = image.shape[:2]
    rows, cols = math.ceil(h / size), math.ceil(w / size)
    padded = np.empty((rows * size, cols * size, 3), dtype=np.uint8)
    padded[:] = GLASS
    padded[:h, :w] = image
    cells = (padded.reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
             .reshape(rows * cols, size, size, 3))
    return np.ascontiguousarray(cells), rows, cols


def cells_to_input(cells: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) uint8 → (n, 3, h, w) float32 in 0..1 (the training's conversion)."""
    out: np.ndarray = np.ascontiguousarray(cells.transpose(0, 3, 1, 2), dtype=np.float32)
    return out / np.float32(255.0)


class WsiTilePipeline:
    """``pipeline: wsi_tiles`` in model.yaml (task classification, one class per cell)."""

    def __init__(self, manifest: Manifest) -> None:
        spec = manifest.input
        if (manifest.task != "classification" or len(spec.size) != 2
                or spec.size[0] != spec.size[1] or spec.channels != 3 or not spec.spacing):
            raise ValueError(f"{manifest.ref}: wsi_tiles needs a classification model with a "
                             f"square 2-D input, 3 channels and a spacing, not "
                             f"{manifest.task} {spec.size} x {spec.channels} "
                             f"spacing {spec.spacing}")
        self.manifest = manifest
        self.cell = int(spec.size[0])
        self.spacing_mm = float(spec.spacing[0])

    # The worker's file-based path is not used for slides: see prepare_from_orthanc.
    def check(self, datasets: Sequence[Dataset]) -> None:
        level_zero(self.manifest, datasets)

    def preprocess(self, datasets: Sequence[Dataset]) -> Prepared:
        raise NotApplicable(f"{self.manifest.ref} reads slides tile by tile from Orthanc's "
                            "WSI plugin, not from instance files")

    def prepare_from_orthanc(self, client: OrthancClient, series_uid: str) -> Prepared:
        """Headers, checks, the chosen level's cells: everything predict needs."""
        series_id = client.find_series(series_uid)
        if series_id is None:
            raise LookupError(f"series {series_uid} is not in Orthanc")
        datasets = series_headers(client, series_id)
        top = level_zero(self.manifest, datasets)
        mpp_mm = pixel_spacing_mm(top) or 0.0
        try:
            pyramid = read_pyramid(client, series_id)
            target = self.spacing_mm / mpp_mm  # level-0 pixels per network pixel
            cell_px = max(1, round(self.cell * target))
            level = pyramid.level_for(target)
            # The level is never coarser than the network's resolution: shrink only.
            scale = min(1.0, self.cell * pyramid.downsamples[level] / cell_px)
            image = read_level(client, pyramid, level, 1.0 if scale > 0.999 else scale)
        except SlideUnreadable as e:
            raise NotApplicable(str(e)) from e
        cells, rows, cols = cut_cells(image, self.cell)
        meta: dict[str, Any] = {
            "rows": rows, "cols": cols, "cell_px": cell_px, "level": level,
            "level_downsample": pyramid.downsamples[level], "width": pyramid.width,
            "height": pyramid.height, "mpp": round(mpp_mm * 1000, 6),
            "frame_of_reference": str(top.get("FrameOfReferenceUID", ""))}
        return Prepared(array=cells, datasets=[top], meta=meta)

    def predict(self, prepared: Sequence[Prepared], run: Predict) -> list[np.ndarray]:
        """Logits per cell for every slide, all cells of the batch in CELL_BATCH chunks."""
        if not prepared:
            return []
        cells = np.concatenate([p.array for p in prepared])
        logits = [np.asarray(run(cells_to_input(cells[i:i + CELL_BATCH])))
                  for i in range(0, len(cells), CELL_BATCH)]
        out = np.concatenate(logits)
        want = (len(cells), len(self.manifest.labels))
        if out.shape != want:
            raise ValueError(f"{self.manifest.ref}: the network returned shape {out.shape}, "
                             f"expected {want}")
        bounds = np.cumsum([len(p.array) for p in prepared])[:-1]
        return list(np.split(out, bounds))

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> Result:
        m, meta = self.manifest, prepared.meta
        probs = softmax(output).reshape(meta["rows"], meta["cols"], len(m.labels))
        findings = []
        for k, label in enumerate(m.labels):
            p = float(probs[..., k].max())
            positive = p >= label.threshold
            findings.append(Finding(label=label.name, probability=p, positive=positive,
                                    critical=positive and label.critical))
        calls = probs.argmax(axis=-1)
        shown = m.labels[-1].name
        heatmap: dict[str, Any] = {
            "rows": meta["rows"], "cols": meta["cols"], "cell_px": meta["cell_px"],
            "labels": [shown], "values": np.round(probs[..., -1], DECIMALS).tolist(),
            "classes": {"labels": [lab.name for lab in m.labels],
                        "values": np.round(probs, DECIMALS).tolist()},
            "model": m.name, "version": m.version, "demonstration": m.demonstration,
            "unverified": True, "width": meta["width"], "height": meta["height"],
            "mpp": meta["mpp"], "level": meta["level"],
            "cells": {lab.name: int(np.sum(calls == k)) for k, lab in enumerate(m.labels)},
        }
        return Result(findings=findings, heatmap=heatmap)
