"""What every pipeline is: check → pre-process → predict → post-process.

Pipelines are pure with respect to the center: they get pydicom datasets and
an inference callable, and return findings and an optional mask.  Fetching
from Orthanc, the queue, the database and DICOM outputs live elsewhere, so a
pipeline is tested on files and benchmarked on arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest

#: Runs the network on one input batch (N, C, ...) float32 → first output (N, K, ...).
Predict = Callable[[np.ndarray], np.ndarray]


class NotApplicable(Exception):
    """The series is not something this model reads (wrong modality, too few
    slices, unsupported photometric interpretation, undecodable pixels...).
    The message is shown to people as the reason the job was skipped."""


@dataclass
class Prepared:
    """A pre-processed series: the network input and what post-processing needs."""

    array: np.ndarray  # (C, H, W) or (C, D, H, W), float32
    datasets: Sequence[Dataset]  # source instances, sorted (slices: by position)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    label: str
    probability: float  # 0..1
    positive: bool  # probability >= the label's threshold
    critical: bool  # positive and the label is critical
    volume_ml: float | None = None  # segmentation: volume of the positive region


@dataclass
class Result:
    findings: list[Finding]
    #: Segmentation only: a boolean mask on the *source* geometry, (frames, rows, cols)
    #: in the order of ``Prepared.datasets``.
    mask: np.ndarray | None = None
    #: Whole-slide tile models only: the heat map as JSON ({rows, cols, cell_px, labels,
    #: values: rows x cols, classes, ...}; see wsi_tiles), in ai_results.heatmap and DICOM.
    heatmap: dict[str, Any] | None = None


class Pipeline(Protocol):
    manifest: Manifest

    def check(self, datasets: Sequence[Dataset]) -> None:
        """Raise NotApplicable with a reason a person understands."""

    def preprocess(self, datasets: Sequence[Dataset]) -> Prepared: ...

    def predict(self, prepared: Sequence[Prepared], run: Predict) -> list[np.ndarray]:
        """Network outputs for each prepared item (batched where the task allows)."""

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> Result: ...
