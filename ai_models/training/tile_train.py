"""Train the demonstration tile model (``python -m ai_models.training.train tile``).

A tiny CNN (ai_models.training.tile_network) learns background / tissue / atypical on
64 px tiles of the project's synthetic slides at 2 µm/px (ai_models.training.tile_data),
is exported to ONNX with the parity check every shipped model passes, and is scored on
tiles of *other* synthetic slides (seed + 100000) through ONNX Runtime: per-class
sensitivity and positive predictive value go into the manifest's description.

Reproducible as the other models are: tiles, initial weights, batch order and
augmentation all come from the seed, torch runs deterministic kernels on a fixed
number of threads, so one seed gives one ONNX file, byte for byte.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ai_models.manifest import (
    MANIFEST_NAME,
    AppliesTo,
    Code,
    InputSpec,
    Label,
    Manifest,
    Training,
    Weights,
    sha256_file,
)
from ai_models.pipelines.wsi_tiles import PIPELINE_KEY, softmax
from ai_models.training.export import export_onnx, onnx_session, parity
from ai_models.training.tile_data import (
    BACKGROUND_MAX,
    CLASSES,
    DOWNSAMPLE,
    SLIDE_HEIGHT,
    SLIDE_MPP,
    SLIDE_WIDTH,
    TILE,
    TISSUE_MIN,
    TileSet,
    tile_set,
)
from ai_models.training.tile_network import tile_cnn
from ai_models.training.train import (
    PARITY_TOLERANCE,
    SCRIPT,
    WEIGHTS_FILE,
    Report,
    _configure,
)

NAME = "wsi-tile-demo"
VERSION = "1.0.0"
VL_WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: The network reads 64 px tiles at 2 µm/px (spacing in mm, as the other manifests).
TILE_INPUT = InputSpec(size=[TILE, TILE], channels=3, window=(0.0, 255.0),
                       spacing=[SLIDE_MPP * DOWNSAMPLE / 1000] * 2)
#: One softmax over the three classes.  No label is critical: demonstration weights do
#: not reorder a pathologist's worklist.  The codes are the center's own (99RDC): the
#: classes are properties of synthetic slides, not diagnoses.
TILE_LABELS = [
    Label(name="background", threshold=0.5, critical=False,
          code=Code(value="RDC-WSI-BG", scheme="99RDC", meaning="Slide background (glass)")),
    Label(name="tissue", threshold=0.5, critical=False,
          code=Code(value="RDC-WSI-TISSUE", scheme="99RDC", meaning="Tissue")),
    Label(name="atypical", threshold=0.5, critical=False,
          code=Code(value="RDC-WSI-ATYP", scheme="99RDC",
                    meaning="Atypical nuclei (demonstration class)")),
]
INTENDED_USE = (
    "DEMONSTRATION WEIGHTS trained on synthetic H&E slides (devkit.synthetic_slide) with "
    "drawn clusters of enlarged, hyperchromatic nuclei as the 'atypical' class, NOT FOR "
    "CLINICAL USE. They show the center's tile-model path for whole-slide images "
    "(registry, workers with batching and priority, heat map, UNVERIFIED SR) end to end; "
    "they have never seen a patient slide and say nothing about patients.")


def class_scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-class sensitivity and PPV of the arg-max class (the heat map's call)."""
    called = probs.argmax(axis=1)
    scores = {}
    for k, name in enumerate(CLASSES):
        tp = float(np.sum((called == k) & (truth == k)))
        scores[f"{name}_sensitivity"] = tp / max(float(np.sum(truth == k)), 1.0)
        scores[f"{name}_ppv"] = tp / max(float(np.sum(called == k)), 1.0)
    return scores


def onnx_probabilities(path: Path, tiles: TileSet, batch: int = 128) -> np.ndarray:
    """Class probabilities of ``tiles`` through ONNX Runtime (what the workers run)."""
    session = onnx_session(path)
    return np.concatenate([softmax(session.run(None, {"input": tiles.x[i:i + batch]})[0])
                           for i in range(0, len(tiles.x), batch)])


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and quarter turns: a tile has no up or left."""
    out = x.copy()
    for i in range(len(out)):
        turns = int(rng.integers(4))
        tile = np.rot90(out[i], turns, axes=(1, 2))
        if rng.random() < 0.5:
            tile = tile[:, :, ::-1]
        out[i] = tile
    return np.ascontiguousarray(out)


def train_tile(seed: int, out: Path, *, quick: bool, console: Console) -> Report:
    """The tile CNN on synthetic slide tiles; writes model.onnx and model.yaml in ``out``."""
    started = time.perf_counter()
    _configure(seed)
    per_class, held_per_class, epochs, batch = (24, 12, 1, 16) if quick else (700, 200, 8, 32)
    console.print(f"tile: drawing {3 * per_class} training tiles from 4 synthetic slides "
                  f"and {3 * held_per_class} held-out tiles from 4 others (seed {seed})")
    train = tile_set(seed, per_class)
    held_out = tile_set(seed + 100_000, held_per_class)
    console.print(f"tile: tiles ready ({time.perf_counter() - started:.0f} s)")
    model = tile_cnn(len(CLASSES))
    n = len(train.y)
    steps = epochs * (n // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=order).numpy()
        losses = []
        for i in range(0, n - batch + 1, batch):
            idx = perm[i:i + batch]
            xb = torch.from_numpy(_augment(train.x[idx], rng))
            loss = loss_fn(model(xb), torch.from_numpy(train.y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        console.print(f"tile: epoch {epoch}/{epochs} loss {np.mean(losses):.4f} "
                      f"({time.perf_counter() - started:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, torch.from_numpy(held_out.x[:1]), out / WEIGHTS_FILE)
    diff = parity(model, path, held_out.x[:16])
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"tile: ONNX differs from torch by {diff:.2e} "
                           f"(> {PARITY_TOLERANCE:.0e})")
    metrics = class_scores(onnx_probabilities(path, held_out), held_out.y)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    manifest = Manifest.model_validate({
        "schema": 1, "name": NAME, "version": VERSION, "task": "classification",
        "pipeline": PIPELINE_KEY,
        "description": (
            "Whole-slide tile classifier (tiny CNN, 64 px RGB tiles at 2 µm/px, read from the "
            "slide's pyramid in Orthanc): background, tissue, 'atypical' (a demonstration "
            "class: clusters of enlarged hyperchromatic nuclei drawn on synthetic tissue). "
            "One softmax per tile; writes a heat map (ai_results.heatmap and a DICOM "
            "Parametric Map) and an UNVERIFIED SR. Held-out synthetic tiles "
            f"({3 * held_per_class}, other slides): {shown}."),
        "applies_to": AppliesTo(modalities=["SM"], sop_classes=[VL_WSI_STORAGE],
                                photometric=["RGB", "YBR_FULL_422", "YBR_FULL", "YBR_ICT",
                                             "YBR_RCT"]),
        "input": TILE_INPUT, "labels": TILE_LABELS, "outputs": ["sr", "parametric_map"],
        "batch_size": 4,
        "weights": Weights(file=WEIGHTS_FILE, sha256=sha256_file(path)),
        "intended_use": INTENDED_USE, "demonstration": True,
        "training": Training(script=SCRIPT, seed=seed, data=(
            f"{3 * per_class} 64 px tiles at downsample {DOWNSAMPLE} of 4 synthetic "
            f"{SLIDE_WIDTH}x{SLIDE_HEIGHT} H&E slides (devkit.synthetic_slide.render_tile, "
            "with pen marks and blurred regions; slide seeds seed*1000+k), labelled from the "
            f"generator's tissue mask (background < {BACKGROUND_MAX:.0%} tissue, tissue >= "
            f"{TISSUE_MIN:.0%}), half the tissue tiles given a drawn cluster of atypical "
            "nuclei (ai_models.training.tile_data); stain/brightness jitter, blur and JPEG "
            f"re-compression; {epochs} epochs, batch {batch}, flips and quarter turns, "
            "AdamW with one-cycle LR"))})
    (out / MANIFEST_NAME).write_text(manifest.to_yaml(), encoding="utf-8")
    return Report(NAME, out, time.perf_counter() - started, diff, metrics)
