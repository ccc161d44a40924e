"""What every multi-label classification pipeline shares after its own pre-processing:
one batched call of the network, and one sigmoid probability per label held against
that label's threshold from the manifest."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ai_models.manifest import Manifest
from ai_models.pipelines.base import Finding, Predict, Prepared, Result


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    return out


def predict_batch(manifest: Manifest, prepared: Sequence[Prepared],
                  run: Predict) -> list[np.ndarray]:
    """Logits per item from one call; a network answering another shape is an error."""
    if not prepared:
        return []
    batch = np.stack([p.array for p in prepared]).astype(np.float32, copy=False)
    logits = np.asarray(run(batch))
    want = (len(prepared), len(manifest.labels))
    if logits.shape != want:
        raise ValueError(f"{manifest.ref}: the network returned shape "
                         f"{logits.shape}, expected {want}")
    return [logits[i] for i in range(len(prepared))]


def multilabel_result(manifest: Manifest, output: np.ndarray) -> Result:
    """A finding per label: positive at or above its threshold, critical only if positive."""
    probabilities = sigmoid(np.asarray(output).reshape(-1))
    findings = []
    for label, p in zip(manifest.labels, probabilities, strict=True):
        positive = bool(p >= label.threshold)
        findings.append(Finding(label=label.name, probability=float(p), positive=positive,
                                critical=positive and label.critical))
    return Result(findings=findings)
