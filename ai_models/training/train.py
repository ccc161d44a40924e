"""Train the demonstration models on synthetic phantoms, export ONNX, write model.yaml.

    python -m ai_models.training.train {cxr,ct,ecg-rhythm,tile,all} [--seed N] [--out DIR]
        [--quick]

Everything is drawn from the seed (phantoms, initial weights, batch order), the
CPU thread count is fixed and torch runs its deterministic kernels, so the same
seed on the same machine gives the same ONNX file, byte for byte; the manifest
records the seed and the weights' SHA-256.  ``--quick`` trains for a few
seconds, to show that the script runs, not to produce a useful model.

The weights are DEMONSTRATION WEIGHTS: they have only ever seen phantoms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
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
from ai_models.pipelines.base import Prepared
from ai_models.pipelines.classify import sigmoid
from ai_models.pipelines.ct_nodule_seg import CtNoduleSegPipeline, resample, to_network_input
from ai_models.pipelines.cxr_triage import to_network_input as cxr_input
from ai_models.pipelines.ecg_rhythm import to_network_input as ecg_input
from ai_models.training import ecg_simulator
from ai_models.training.ecg_network import ecg_cnn
from ai_models.training.export import export_onnx, onnx_session, parity
from ai_models.training.networks import ct_unet, cxr_densenet
from ai_models.training.phantoms import ct_phantoms, cxr_phantoms

SHIPPED = Path(__file__).resolve().parent / "shipped"
SCRIPT = "ai_models/training/train.py"
WEIGHTS_FILE = "model.onnx"
#: Largest |torch - ONNX Runtime| accepted on the held-out inputs at export.
PARITY_TOLERANCE = 1e-3
#: Threads for training: fixed, so that a seed means one result on one machine.
TRAIN_THREADS = 2

INTENDED_USE = (
    "DEMONSTRATION WEIGHTS trained on synthetic phantoms, NOT FOR CLINICAL USE. "
    "They show the center's AI pre-read path (registry, batching, SR/SEG outputs, "
    "worklist priority) end to end on the phantoms of devkit.samples; they have never seen a "
    "patient image and say nothing about patients.")

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

CXR_INPUT = InputSpec(size=[224, 224], window=(0.0, 4095.0))
CXR_LABELS = [
    # A pneumothorax is critical: it raises the study on the worklist, so its
    # threshold leans to sensitivity.
    Label(name="pneumothorax", threshold=0.4, critical=True,
          code=Code(value="36118008", scheme="SCT", meaning="Pneumothorax")),
    Label(name="lung_opacity", threshold=0.5, critical=False,
          code=Code(value="263930000", scheme="SCT", meaning="Opacity of lung")),
]
CT_INPUT = InputSpec(size=[64, 64, 64], spacing=[1.5, 1.5, 1.5], window=(-1000.0, 400.0))
#: Share of training ROIs centred on a nodule; the others are centred anywhere in the
#: middle of the field, where the lungs, and the tissue between them that looks most
#: like a nodule where the lungs nearly meet, are.
CT_NODULE_CROPS = 0.6
CT_LABELS = [Label(name="lung_nodule", threshold=0.5, critical=False,
                   code=Code(value="786838002", scheme="SCT", meaning="Pulmonary nodule"))]


@dataclass
class Report:
    """What a training run produced, for the console and the manifest."""

    name: str
    folder: Path
    seconds: float = 0.0
    parity: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


def _configure(seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _manifest(*, name: str, task: str, pipeline: str, description: str,
              applies_to: AppliesTo, spec: InputSpec, labels: list[Label],
              outputs: list[str], batch_size: int, sha256: str, seed: int,
              data: str) -> Manifest:
    return Manifest.model_validate({
        "schema": 1, "name": name, "version": "1.0.0", "task": task, "pipeline": pipeline,
        "description": description, "applies_to": applies_to, "input": spec,
        "labels": labels, "outputs": outputs, "batch_size": batch_size,
        "weights": Weights(file=WEIGHTS_FILE, sha256=sha256), "intended_use": INTENDED_USE,
        "demonstration": True, "training": Training(script=SCRIPT, seed=seed, data=data)})


def _write(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST_NAME).write_text(manifest.to_yaml(), encoding="utf-8")


# --- chest radiograph triage ---------------------------------------------------------

def _export_and_score(tag: str, model: torch.nn.Module, x_val: np.ndarray,
                      y_val: np.ndarray, labels: Sequence[Label], out: Path, *,
                      parity_n: int, batch: int,
                      dynamic_axes: dict[str, dict[int, str]] | None = None,
                      ) -> tuple[Path, float, dict[str, float]]:
    """Export a multi-label classifier to ONNX, refuse it unless ONNX Runtime agrees with
    torch, and score each label on the held-out set through the exported session."""
    out.mkdir(parents=True, exist_ok=True)
    path = export_onnx(model, torch.from_numpy(x_val[:1]), out / WEIGHTS_FILE,
                       dynamic_axes=dynamic_axes)
    diff = parity(model, path, x_val[:parity_n])
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"{tag}: ONNX differs from torch by {diff:.2e} "
                           f"(> {PARITY_TOLERANCE:.0e})")
    session = onnx_session(path)
    probs = np.concatenate([sigmoid(session.run(None, {"input": x_val[i:i + batch]})[0])
                            for i in range(0, len(x_val), batch)])
    metrics = {}
    for k, lab in enumerate(labels):
        metrics[f"{lab.name}_accuracy"] = float(np.mean((probs[:, k] >= lab.threshold)
                                                        == (y_val[:, k] > 0.5)))
    return path, diff, metrics


def _cxr_arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for phantom in cxr_phantoms(seed, n):
        xs.append(cxr_input(phantom.image, CXR_INPUT.window, CXR_INPUT.size))
        ys.append([float(phantom.labels[lab.name]) for lab in CXR_LABELS])
    return np.stack(xs), np.asarray(ys, dtype=np.float32)


def train_cxr(seed: int, out: Path, *, quick: bool, console: Console) -> Report:
    """DenseNet121 on radiograph phantoms: independent pneumothorax and opacity labels."""
    started = time.perf_counter()
    _configure(seed)
    n_train, n_val, epochs, batch = (16, 8, 1, 8) if quick else (480, 200, 3, 8)
    console.print(f"cxr: drawing {n_train} training and {n_val} held-out phantoms "
                  f"(seed {seed})")
    x_train, y_train = _cxr_arrays(seed, n_train)
    x_val, y_val = _cxr_arrays(seed + 100_000, n_val)
    model = cxr_densenet(len(CXR_LABELS))
    steps = epochs * (n_train // batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    order = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n_train, generator=order).numpy()
        losses = []
        for i in range(0, n_train - batch + 1, batch):
            idx = perm[i:i + batch]
            logits = model(torch.from_numpy(x_train[idx]))
            loss = loss_fn(logits, torch.from_numpy(y_train[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        console.print(f"cxr: epoch {epoch}/{epochs} loss {np.mean(losses):.4f} "
                      f"({time.perf_counter() - started:.0f} s)")
    path, diff, metrics = _export_and_score(
        "cxr", model, x_val, y_val, CXR_LABELS, out, parity_n=4, batch=16,
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    held_out = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    manifest = _manifest(
        name="cxr-triage", task="classification", pipeline="cxr_triage",
        description=("Frontal chest radiograph triage (DenseNet121, 1 channel, 224x224): "
                     "pneumothorax (critical) and lung opacity. Held-out phantom accuracy: "
                     f"{held_out} ({n_val} phantoms)."),
        applies_to=AppliesTo(modalities=["CR", "DX"], body_parts=["CHEST"],
                             sop_classes=[CR_STORAGE, DX_PRESENTATION], max_slices=1),
        spec=CXR_INPUT, labels=CXR_LABELS, outputs=["sr"], batch_size=8,
        sha256=sha256_file(path), seed=seed,
        data=(f"{n_train} synthetic chest radiograph phantoms (ai_models.training.phantoms."
              "cxr_phantoms: the devkit.samples DX phantom with varied geometry, levels and "
              "noise, 256-1024 px), each with an independent 50% pneumothorax and 50% lung "
              f"opacity; {epochs} epochs, batch {batch}, Adam with one-cycle LR"))
    _write(out, manifest)
    return Report("cxr-triage", out, time.perf_counter() - started, diff, metrics)


# --- CT nodule segmentation ----------------------------------------------------------

@dataclass
class _Volume:
    image: np.ndarray  # (1, D, H, W) network input
    label: np.ndarray  # (D, H, W) uint8
    source_spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]


def _ct_volumes(seed: int, n: int) -> list[_Volume]:
    target = CT_INPUT.spacing or []
    volumes = []
    for phantom in ct_phantoms(seed, n):
        image = to_network_input(phantom.hu, phantom.spacing, target, CT_INPUT.window)
        label = (resample(phantom.mask.astype(np.float32), phantom.spacing, target)
                 > 0.5).astype(np.uint8)
        volumes.append(_Volume(image, label, phantom.spacing, phantom.hu.shape))
    return volumes


def _crop(vol: _Volume, center: Sequence[int], roi: Sequence[int]
          ) -> tuple[np.ndarray, np.ndarray]:
    """An ROI around ``center``, zero-padded (0 is air after windowing) at the edges."""
    image = np.zeros((1, *roi), dtype=np.float32)
    label = np.zeros(tuple(roi), dtype=np.uint8)
    src, dst = [], []
    for c, r, n in zip(center, roi, vol.label.shape, strict=True):
        start = int(c) - r // 2
        lo, hi = max(start, 0), min(start + r, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    image[(slice(None), *dst)] = vol.image[(slice(None), *src)]
    label[tuple(dst)] = vol.label[tuple(src)]
    return image, label


def _ct_batch(volumes: list[_Volume], rng: np.random.Generator, batch: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ROIs, most of them on a nodule, flipped at random along z and x.

    A nodule may sit anywhere in its ROI, cut by the border too: sliding-window
    inference cuts nodules at window borders, and a network that has only seen
    centred nodules misses the cut halves.
    """
    roi = CT_INPUT.size
    images, labels = [], []
    for _ in range(batch):
        vol = volumes[int(rng.integers(len(volumes)))]
        fg = np.argwhere(vol.label > 0)
        if fg.size and rng.random() < CT_NODULE_CROPS:
            center = fg[int(rng.integers(len(fg)))] + rng.integers(-30, 31, size=3)
        else:
            d, h, w = vol.label.shape
            center = np.asarray([int(rng.integers(d)), int(rng.integers(h // 5, h - h // 5)),
                                 int(rng.integers(w // 5, w - w // 5))])
        image, label = _crop(vol, center, roi)
        for axis in (0, 2):
            if rng.random() < 0.5:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        images.append(np.ascontiguousarray(image))
        labels.append(np.ascontiguousarray(label)[None])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def _evaluate_ct(path: Path, volumes: list[_Volume], manifest: Manifest) -> dict[str, float]:
    """Detection accuracy, Dice and volume error through the pipeline's own predict and
    post-process (sliding windows on ONNX Runtime)."""
    session = onnx_session(path)
    pipeline = CtNoduleSegPipeline(manifest)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"input": x})[0])

    voxel_ml = float(np.prod(CT_INPUT.spacing or [1.0])) / 1000
    correct, dices, errors = 0, [], []
    for vol in volumes:
        prepared = Prepared(array=vol.image, datasets=[],
                            meta={"source_shape": vol.source_shape,
                                  "source_spacing": vol.source_spacing})
        [output] = pipeline.predict([prepared], run)
        finding = pipeline.postprocess(prepared, output).findings[0]
        truth = vol.label > 0
        correct += int(finding.positive == bool(truth.any()))
        if truth.any():
            pred = np.argmax(output, axis=0) > 0
            dices.append(2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum()))
            true_ml = float(truth.sum()) * voxel_ml
            errors.append(abs((finding.volume_ml or 0.0) - true_ml) / true_ml)
    return {"detection_accuracy": correct / len(volumes),
            "mean_dice": float(np.mean(dices)) if dices else float("nan"),
            "mean_volume_error": float(np.mean(errors)) if errors else float("nan")}


def train_ct(seed: int, out: Path, *, quick: bool, console: Console) -> Report:
    """A small 3-D U-Net on CT phantoms, on ROIs at the model's spacing."""
    started = time.perf_counter()
    _configure(seed)
    n_train, n_val, steps, batch = (2, 1, 3, 2) if quick else (16, 8, 800, 4)
    console.print(f"ct: drawing {n_train} training and {n_val} held-out phantom series "
                  f"(seed {seed})")
    volumes = _ct_volumes(seed, n_train)
    held_out = _ct_volumes(seed + 100_000, n_val)
    console.print(f"ct: phantoms ready ({time.perf_counter() - started:.0f} s)")
    model = ct_unet()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    rng = np.random.default_rng(seed)
    report_every = max(1, steps // 10)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        images, labels = _ct_batch(volumes, rng, batch)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % report_every == 0 or step == steps:
            console.print(f"ct: step {step}/{steps} loss {np.mean(losses):.4f} "
                          f"({time.perf_counter() - started:.0f} s)")
            losses = []
    out.mkdir(parents=True, exist_ok=True)
    roi = CT_INPUT.size
    example = torch.zeros((1, 1, *roi))
    path = export_onnx(model, example, out / WEIGHTS_FILE)
    probe = np.stack([_crop(held_out[0], [n // 2 for n in held_out[0].label.shape], roi)[0]])
    diff = parity(model, path, probe)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ct: ONNX differs from torch by {diff:.2e} "
                           f"(> {PARITY_TOLERANCE:.0e})")

    def build(sha: str, metrics: dict[str, float]) -> Manifest:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        return _manifest(
            name="ct-nodule-seg", task="segmentation", pipeline="ct_nodule_seg",
            description=("Lung nodule segmentation on axial chest CT (3-D U-Net, 1.5 mm "
                         "isotropic, 64^3 sliding windows) with the nodule volume. "
                         + (f"Held-out phantom series ({n_val}): {shown}." if shown else "")),
            applies_to=AppliesTo(modalities=["CT"], body_parts=["CHEST", "LUNG"],
                                 sop_classes=[CT_STORAGE], min_slices=16),
            spec=CT_INPUT, labels=CT_LABELS, outputs=["sr", "seg"], batch_size=2,
            sha256=sha, seed=seed,
            data=(f"{n_train} synthetic chest CT phantom series (ai_models.training.phantoms."
                  "ct_phantoms: devkit.samples.ct_phantom_slice stacks of 40-320 slices, "
                  "192-512 px, 75% with one nodule of random position and radius inside a "
                  f"lung) resampled to 1.5 mm; {steps} steps of {batch} 64^3 ROIs (60% on "
                  "a nodule placed anywhere in the ROI, random z/x flips), Dice + "
                  "cross-entropy, Adam with one-cycle LR"))

    sha = sha256_file(path)
    metrics = _evaluate_ct(path, held_out, build(sha, {}))
    _write(out, build(sha, metrics))
    return Report("ct-nodule-seg", out, time.perf_counter() - started, diff, metrics)


# --- ECG rhythm ----------------------------------------------------------------------

ECG_INTENDED_USE = (
    "DEMONSTRATION WEIGHTS trained on simulated ECGs (neurokit2 ECGSYN beats, synthetic "
    "phantoms of rhythms), NOT FOR CLINICAL USE. They show the center's AI pre-read path "
    "for waveforms (registry, workers, SR outputs) end to end; they have never seen a "
    "patient ECG and say nothing about patients.")
ECG_INPUT = InputSpec(size=[2500], channels=12, window=(-5.0, 5.0),
                      sampling_rate=float(ecg_simulator.SAMPLING_RATE))
#: Multi-label sigmoid outputs: rhythm (sinus or AF) and rate (brady < 60, tachy > 100
#: /min).  None is critical: an ECG already gets the ecg_analysis job and a cardiologist's
#: read, and demonstration weights should not reorder a worklist on a rhythm label.
ECG_LABELS = [
    Label(name="sinus_rhythm", threshold=0.5, critical=False,
          code=Code(value="426783006", scheme="SCT", meaning="Sinus rhythm")),
    Label(name="atrial_fibrillation", threshold=0.5, critical=False,
          code=Code(value="49436004", scheme="SCT", meaning="Atrial fibrillation")),
    Label(name="bradycardia", threshold=0.5, critical=False,
          code=Code(value="48867003", scheme="SCT", meaning="Bradycardia")),
    Label(name="tachycardia", threshold=0.5, critical=False,
          code=Code(value="3424008", scheme="SCT", meaning="Tachycardia")),
]
ECG_SOP_CLASSES = [ecg_simulator.TWELVE_LEAD_ECG_STORAGE, ecg_simulator.GENERAL_ECG_STORAGE]
#: The version ``train ecg-rhythm`` writes (1.0.0: no high-pass, no ectopy in training).
ECG_VERSION = "1.1.0"
#: Template bank of a --quick run: rates, shapes, ventricular shapes (the full bank,
#: 6 x 4 + 3 ECGSYN runs, takes ~15 s to simulate).
ECG_QUICK_BANK = ((60, 120), 2, 1)
#: Versions of the models ``train`` writes, for the default folders.
VERSIONS = {"cxr-triage": "1.0.0", "ct-nodule-seg": "1.0.0", "ecg-rhythm": ECG_VERSION,
            "wsi-tile-demo": "1.0.0"}


def ecg_arrays(records: Sequence[ecg_simulator.SimulatedEcg]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs (through the pipeline's own pre-processing, so the same high-pass,
    notches and resampling as the ECG analysis) and label targets."""
    xs = [ecg_input(r.signal, r.sampling_rate, target_rate=ECG_INPUT.sampling_rate or 250.0,
                    samples=ECG_INPUT.size[0], window=ECG_INPUT.window) for r in records]
    ys = [[float(r.labels[lab.name]) for lab in ECG_LABELS] for r in records]
    return np.stack(xs), np.asarray(ys, dtype=np.float32)


def _augment_leads(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the leads of half the records and flip some leads' polarity (about the
    window's mid-point): the simulator's per-lead morphology is nothing like a
    patient's, so the network should learn rhythm, not which lead looks how."""
    out = x.copy()
    for i in range(len(out)):
        if rng.random() < 0.5:
            out[i] = out[i, rng.permutation(out.shape[1])]
        flip = rng.random(out.shape[1]) < 0.2
        out[i, flip] = 1.0 - out[i, flip]
    return out


def af_scores(probs: np.ndarray, truth: np.ndarray, threshold: float
              ) -> dict[str, float]:
    """Sensitivity and positive predictive value of the AF output (column 1)."""
    called, af = probs[:, 1] >= threshold, truth[:, 1] > 0.5
    tp = float(np.sum(called & af))
    return {"af_sensitivity": tp / max(float(af.sum()), 1.0),
            "af_ppv": tp / max(float(called.sum()), 1.0)}


def train_ecg(seed: int, out: Path, *, quick: bool, console: Console) -> Report:
    """A small 1-D CNN on simulated 12-lead ECGs: rhythm and rate labels."""
    started = time.perf_counter()
    _configure(seed)
    n_train, n_val, epochs, batch = (64, 32, 1, 16) if quick else (5000, 400, 8, 32)
    rates, shapes, pvc_shapes = ECG_QUICK_BANK if quick else (
        ecg_simulator.TEMPLATE_RATES, ecg_simulator.TEMPLATE_SHAPES, ecg_simulator.PVC_SHAPES)
    console.print(f"ecg: simulating {n_train} training and {n_val} held-out 12-lead ECGs "
                  f"(seed {seed})")
    x_train, y_train = ecg_arrays(ecg_simulator.dataset(
        seed, n_train, ecg_simulator.TemplateBank(seed, rates, shapes, pvc_shapes)))
    x_val, y_val = ecg_arrays(ecg_simulator.dataset(
        seed + 100_000, n_val,
        ecg_simulator.TemplateBank(seed + 100_000, rates, shapes, pvc_shapes)))
    console.print(f"ecg: records ready ({time.perf_counter() - started:.0f} s)")
    model = ecg_cnn(len(ECG_LABELS))
    steps = epochs * (n_train // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    order = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n_train, generator=order).numpy()
        losses = []
        for i in range(0, n_train - batch + 1, batch):
            idx = perm[i:i + batch]
            xb = torch.from_numpy(_augment_leads(x_train[idx], rng))
            loss = loss_fn(model(xb), torch.from_numpy(y_train[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        console.print(f"ecg: epoch {epoch}/{epochs} loss {np.mean(losses):.4f} "
                      f"({time.perf_counter() - started:.0f} s)")
    path, diff, metrics = _export_and_score("ecg", model, x_val, y_val, ECG_LABELS, out,
                                            parity_n=8, batch=32)
    session = onnx_session(path)
    probs = np.concatenate([sigmoid(session.run(None, {"input": x_val[i:i + 32]})[0])
                            for i in range(0, len(x_val), 32)])
    metrics.update(af_scores(probs, y_val, ECG_LABELS[1].threshold))
    held_out = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    mix = "; ".join(f"{share:.0%} {name} at {low:.0f}-{high:.0f}/min"
                    for name, (share, low, high) in ecg_simulator.MIX.items())
    manifest = Manifest.model_validate({
        "schema": 1, "name": "ecg-rhythm", "version": ECG_VERSION, "task": "classification",
        "pipeline": "ecg_rhythm",
        "description": (
            "12-lead ECG rhythm (1-D CNN, 12 leads x 10 s at 250 Hz after the ECG "
            "analysis' conditioning: 0.5 Hz high-pass, 50/60 Hz notches; waveforms "
            "sampled below 100 Hz are not read): sinus rhythm, atrial fibrillation, "
            "bradycardia (< 60/min), tachycardia (> 100/min); independent sigmoid "
            "outputs, shown beside the rule-based statements, never instead of them. "
            f"Held-out simulated ECGs ({n_val} records): {held_out}."),
        "applies_to": AppliesTo(modalities=["ECG"], sop_classes=ECG_SOP_CLASSES,
                                photometric=[], max_slices=1),
        "input": ECG_INPUT, "labels": ECG_LABELS, "outputs": ["sr"], "batch_size": 16,
        "weights": Weights(file=WEIGHTS_FILE, sha256=sha256_file(path)),
        "intended_use": ECG_INTENDED_USE, "demonstration": True,
        "training": Training(script=SCRIPT, seed=seed, data=(
            f"{n_train} simulated 10 s 12-lead ECGs (ai_models.training.ecg_simulator: QRS-T from "
            f"neurokit2 ECGSYN beats at {len(rates)} template rates x {shapes} shapes "
            f"(QRS width, Q/S depth, T amplitude and polarity varied) or from Gaussian "
            "heart dipoles projected on the leads, with drawn P waves; " + mix + "; "
            "sinus with PVCs or PACs every 2nd-4th beat or at random, multifocal atrial "
            "rhythm with P waves (neither sinus nor AF), AF without P waves, with 0-0.1 mV "
            "f-waves and sometimes PVCs; gain, baseline wander up to 1.5 mV at "
            "0.05-0.7 Hz, 50/60 Hz hum, EMG and white noise); pre-processed as the "
            f"pipeline does; {epochs} epochs, batch {batch}, lead shuffles and polarity "
            "flips, AdamW with one-cycle LR"))})
    _write(out, manifest)
    return Report("ecg-rhythm", out, time.perf_counter() - started, diff, metrics)


def train_tile(seed: int, out: Path, *, quick: bool, console: Console) -> Report:
    """The whole-slide tile model (ai_models.training.tile_train, which builds on this
    module's Report and settings, hence imported here and not at the top)."""
    from ai_models.training.tile_train import train_tile as train

    return train(seed, out, quick=quick, console=console)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ai_models.training.train",
        description="Train the demonstration models on synthetic phantoms (NOT FOR CLINICAL "
                    "USE), export ONNX and write model.yaml.")
    parser.add_argument("model", choices=["cxr", "ct", "ecg-rhythm", "tile", "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="model folder for one model (default ai_models/shipped/<name>/"
                             "<version>: cxr-triage, ct-nodule-seg and wsi-tile-demo "
                             f"1.0.0, ecg-rhythm {ECG_VERSION}); for all, the folder that gets "
                             "<name>/<version>/")
    parser.add_argument("--quick", action="store_true",
                        help="train for seconds: proves the script runs, not a usable model")
    args = parser.parse_args(argv)
    console = Console()
    jobs = [("cxr", "cxr-triage", train_cxr), ("ct", "ct-nodule-seg", train_ct),
            ("ecg-rhythm", "ecg-rhythm", train_ecg), ("tile", "wsi-tile-demo", train_tile)]
    reports = []
    for key, name, train in jobs:
        if args.model not in (key, "all"):
            continue
        if args.out is None:
            folder = SHIPPED / name / VERSIONS[name]
        elif args.model == "all":
            folder = args.out / name / VERSIONS[name]
        else:
            folder = args.out
        reports.append(train(args.seed, folder, quick=args.quick, console=console))
    for r in reports:
        size_mb = (r.folder / WEIGHTS_FILE).stat().st_size / 1e6
        shown = ", ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        console.print(f"{r.name}: {r.seconds:.0f} s, {size_mb:.1f} MB ONNX, parity "
                      f"{r.parity:.1e}, held-out {shown} → {r.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
