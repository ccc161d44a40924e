"""Chest radiograph triage: one frontal CR/DX image → a probability per label.

Pre-processing is the manifest's window (to 0..1, MONOCHROME1 inverted so
that air is always dark) and an area resize to the network input, the same
function the training script applies to its phantoms.  All prepared images of
a batch go through the network in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Resize
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest
from ai_models.pipelines.base import NotApplicable, Predict, Prepared, Result
from ai_models.pipelines.classify import multilabel_result, predict_batch
from ai_models.pipelines.common import (
    check_applies_to,
    check_decodable,
    describe,
    modality_pixels,
    window,
)


def to_network_input(pixels: np.ndarray, low_high: tuple[float, float],
                     size: Sequence[int], *, invert: bool = False) -> np.ndarray:
    """(H, W) modality values → (1, *size) float32 in 0..1.

    ``area`` interpolation averages when it shrinks, so a 1024 px radiograph
    is not aliased into 224 px (and thin lines survive as fainter lines).
    The aspect ratio is not kept: radiographs are close to square and the
    phantoms are square.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {pixels.shape}")
    unit = window(pixels, low_high)
    if invert:
        unit = 1.0 - unit
    resized = Resize(spatial_size=tuple(size), mode="area")(torch.from_numpy(unit[None]))
    return np.asarray(resized, dtype=np.float32)


class CxrTriagePipeline:
    """``pipeline: cxr_triage`` in model.yaml (task classification)."""

    def __init__(self, manifest: Manifest) -> None:
        if manifest.task != "classification" or len(manifest.input.size) != 2:
            raise ValueError(f"{manifest.ref}: cxr_triage needs a classification model "
                             f"with a 2-D input size, not {manifest.task} "
                             f"{manifest.input.size}")
        self.manifest = manifest

    def check(self, datasets: Sequence[Dataset]) -> None:
        check_applies_to(self.manifest, datasets)
        if len(datasets) != 1:
            raise NotApplicable(f"the series has {len(datasets)} images; "
                                f"{self.manifest.ref} reads one radiograph per series")
        check_decodable(datasets)

    def preprocess(self, datasets: Sequence[Dataset]) -> Prepared:
        if len(datasets) != 1:
            raise NotApplicable(f"the series has {len(datasets)} images; "
                                f"{self.manifest.ref} reads one radiograph per series")
        ds = datasets[0]
        pixels = modality_pixels(ds)
        if pixels.ndim != 2:
            raise NotApplicable(f"{describe(ds)}: expected one grey image, got pixel data "
                                f"of shape {pixels.shape}")
        spec = self.manifest.input
        invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        array = to_network_input(pixels, spec.window, spec.size, invert=invert)
        return Prepared(array=array, datasets=[ds],
                        meta={"source_shape": pixels.shape, "inverted": invert})

    def predict(self, prepared: Sequence[Prepared], run: Predict) -> list[np.ndarray]:
        return predict_batch(self.manifest, prepared, run)

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> Result:
        return multilabel_result(self.manifest, output)
