"""Inference throughput of the AI pre-read path: torch eager, ONNX Runtime and the queue.

Measured in one run, on one machine:

(a) torch eager, as a MONAI user would run it: the network from
    ``ai_models.training.networks`` in ``eval()`` mode under ``torch.inference_mode()``,
    with torch's default threads.  The weights are random (timing only: the
    arithmetic is the same as with trained weights);
(b) the raw ONNX Runtime session of the shipped model, opened the way the
    workers open it (``ai_models.runtime.load_session``, same device choice);
(c) the whole pipeline through the queue, for the chest radiograph model: a
    throw-away center (its own home, ports, Orthanc, SQLite database and
    broker) with one ``rdc worker --queues inference --concurrency 1``;
    chest radiographs already in Orthanc, one ``ai_inference`` job per series.
    The worker batches the jobs, fetches each series from Orthanc,
    pre-processes it, runs the batch, stores a DICOM SR in Orthanc and writes
    the ``ai_results`` row.  A warm-up job runs first so that model loading is
    not timed; the clock runs from the creation and enqueueing of the jobs
    until the last of them has succeeded.

For the DenseNet121 (cxr-triage) at 224 and 512 px with batch 1, 8 and 32,
and the 3-D UNet (ct-nodule-seg) on one CT volume of the demo's size after
resampling, window by window with the manifest's ROI: (a) MONAI's
``sliding_window_inference`` around the torch network, (b) the pipeline's own
numpy sliding window (the same windows and Gaussian weights) around the ONNX
Runtime session.  (a) and (b) of each configuration are timed in alternating
rounds, so that both see the same machine.

Targets: (b)/(a) >= 1.5 on CPU for every configuration, and (c)/(b) >= 0.8
for the pipeline against (b) at 224 px, batch 8.  Run from the repository
root::

    .venv/bin/python -m benchmarks.inference [--device auto|cpu|cuda] [--quick]
        [--out DIR] [--skip-pipeline] [--items N] [--broker-url URL] [--keep]

Results go to ``inference.json`` and ``inference.png`` under ``--out``
(``benchmarks/results`` by default).  The targets are printed with PASS/FAIL;
the exit status is 0 either way and non-zero only when something failed.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ai_models.manifest import Manifest, load_manifest
from ai_models.registry import shipped_model_dirs
from ai_models.runtime import GPU_PROVIDERS, LoadedModel, cpu_threads, load_session
from ai_models.training.networks import ct_unet, cxr_densenet
from benchmarks import harness
from benchmarks.harness import (
    BenchError,
    free_port,
    percentile_ms,
    ratio_text,
    tail_text,
    target_text,
    verdict,
    write_json,
)
from core.errors import RDCError
from core.orthanc_client import OrthancError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
LOOPBACK = "127.0.0.1"

TARGET_ORT = 1.5  # (b)/(a), on CPU
TARGET_PIPELINE = 0.8  # (c)/(b) at 224 px, batch 8, and per CT volume
#: Time to a finding (issue 15), for a study alone, on the development VM.
TARGET_FINDING_DX_S = 2.0
TARGET_FINDING_CT_S = 10.0

CXR_MODEL = "cxr-triage"
CT_MODEL = "ct-nodule-seg"
DENSENET = "densenet121"
UNET = "unet3d"

#: The demo's CT (``rdc demo``: ``devkit.samples.write_ct_series`` defaults): 300 slices
#: 1.25 mm apart, 512 x 512 px over a 350 mm field of view.
DEMO_CT_SLICES = 300
DEMO_CT_SLICE_MM = 1.25
DEMO_CT_PIXELS = 512
DEMO_CT_FOV_MM = 350.0
#: --quick: the CT the pipeline part writes (slices, pixels); (b) runs on its resampled
#: shape, so that (c)/(b) compares the same volume.
QUICK_CT_SERIES = (48, 128)
#: CT studies through the pipeline, one at a time (time to a finding per volume).
CT_VOLUMES = 3
#: The demo's chest radiograph (``devkit.samples.write_chest_radiograph`` default).
DEMO_DX_PIXELS = 1024

SECTION = {"a": "(a) torch eager", "b": "(b) ONNX Runtime", "c": "(c) pipeline, queued"}
SITE_ID = "benchmark"
SITE_AE = "RDC_BENCH"
PIPELINE_CONFIG = "224px b8"
#: Studies sent one at a time after the queued run, for the latency of a study alone.
ALONE = 3


# Plan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    ct_shape: tuple[int, int, int]
    #: (slices, pixels) of the CT series sent through the pipeline for the UNet's (c).
    ct_series: tuple[int, int]
    #: Every configuration runs for at least ``min_calls`` calls and ``min_s`` seconds
    #: (after one untimed warm-up call), unless ``min_calls`` calls would take longer
    #: than ``cap_s``: then as many as fit in ``cap_s``, at least one.
    min_calls: int
    min_s: float
    cap_s: float
    max_calls: int
    items: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(sizes=(224,), batches=(1, 8), ct_shape=ct_shape(*QUICK_CT_SERIES),
                    ct_series=QUICK_CT_SERIES, min_calls=3,
                    min_s=1.0, cap_s=5.0, max_calls=50, items=args.items or 8)
    return Plan(sizes=(224, 512), batches=(1, 8, 32), ct_shape=demo_ct_shape(),
                ct_series=(DEMO_CT_SLICES, DEMO_CT_PIXELS), min_calls=3,
                min_s=5.0, cap_s=30.0, max_calls=500, items=args.items or 48)


def ct_shape(slices: int, pixels: int) -> tuple[int, int, int]:
    """The network input's shape for a ``devkit.samples.write_ct_series`` CT of this size:
    (slices, rows, columns) after the pipeline's resampling."""
    from monai.data.utils import compute_shape_offset

    from ai_models.pipelines.ct_nodule_seg import _affine

    spacing = load_manifest(model_folder(CT_MODEL)).input.spacing
    if spacing is None:
        raise BenchError(f"{CT_MODEL}: the manifest has no spacing")
    pixel = DEMO_CT_FOV_MM / pixels
    shape, _ = compute_shape_offset((slices, pixels, pixels),
                                    _affine((DEMO_CT_SLICE_MM, pixel, pixel)),
                                    _affine(spacing))
    d, h, w = (int(v) for v in shape)
    return d, h, w


def demo_ct_shape() -> tuple[int, int, int]:
    """The demo CT's (slices, rows, columns) after the pipeline's resampling to the
    ct-nodule-seg manifest spacing (MONAI ``Spacing``'s own output-shape rule)."""
    return ct_shape(DEMO_CT_SLICES, DEMO_CT_PIXELS)


def model_folder(name: str) -> Path:
    for folder in shipped_model_dirs():
        if folder.parent.name == name:
            return folder
    raise BenchError(f"no shipped model {name!r} under ai_models/shipped (run "
                     "`python -m ai_models.training.train all --seed 0`)")


# Results ----------------------------------------------------------------------------------
@dataclass
class Measurement:
    section: str  # a, b, c
    model: str
    config: str
    device: str
    items_per_call: int
    latencies_s: list[float]
    #: (c): seconds from the first job's creation to the last job's success; (a), (b):
    #: the sum of the timed calls.
    seconds: float = 0.0
    items: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.seconds:
            self.seconds = float(sum(self.latencies_s))
        if not self.items:
            self.items = self.items_per_call * len(self.latencies_s)

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.latencies_s, 50)

    @property
    def p95_ms(self) -> float:
        return percentile_ms(self.latencies_s, 95)

    def as_json(self) -> dict[str, Any]:
        return {"section": self.section, "label": SECTION[self.section], "model": self.model,
                "config": self.config, "device": self.device,
                "items_per_call": self.items_per_call, "calls": len(self.latencies_s),
                "items": self.items, "seconds": round(self.seconds, 4),
                "items_per_s": round(self.items_per_s, 4), "p50_ms": round(self.p50_ms, 2),
                "p95_ms": round(self.p95_ms, 2), **self.extra}


@dataclass(frozen=True)
class Ratio:
    name: str  # "(b)/(a)" or "(c)/(b)"
    model: str
    config: str
    value: float
    target: float
    applies: bool  # (b)/(a): only when both ran on the CPU
    note: str = ""

    @property
    def passed(self) -> bool | None:
        return (self.value >= self.target) if self.applies else None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "config": self.config,
                "value": round(self.value, 4), "target": self.target,
                "applies": self.applies, "pass": self.passed, "note": self.note}


# Timing -----------------------------------------------------------------------------------
def time_calls(fn: Callable[[], object], plan: Plan) -> tuple[list[float], float]:
    """Latencies of the timed calls of ``fn`` (after one warm-up call), and the warm-up's."""
    return harness.time_calls(fn, min_calls=plan.min_calls, max_calls=plan.max_calls,
                              min_s=plan.min_s, cap_s=plan.cap_s)


#: (a) and (b) of one configuration are timed in this many alternating rounds.
ROUNDS = 3


def alternate(fns: dict[str, Callable[[], object]], plan: Plan
              ) -> dict[str, tuple[list[float], float, list[float]]]:
    """(a) and (b) of one configuration in alternating rounds, so that both see the
    same machine: a neighbour's load no longer lands on one of them only (the (b)/(a)
    ratio once swung from 1.90x to 0.51x between two runs that timed them in turn)."""
    return harness.interleaved_calls(fns, rounds=ROUNDS, min_calls=plan.min_calls * ROUNDS,
                                     max_calls=plan.max_calls, min_s=plan.min_s * ROUNDS,
                                     cap_s=plan.cap_s * ROUNDS)


def cpu_ms_per_item(fn: Callable[[], object], batch: int, calls: int = 10) -> float:
    """This process's CPU (every thread, user + system) per item of ``fn``'s batches.

    ONNX Runtime's CPU per item is the pipeline's floor: on a machine whose cores are
    all busy, (c)/(b) can reach at most (b)'s CPU per item over the pipeline's.  The
    process idles first: torch's OpenMP threads spin for a while after (a)'s last
    call, and that CPU is not (b)'s.
    """
    time.sleep(0.5)
    before = time.process_time()
    for _ in range(calls):
        fn()
    return round(1000 * (time.process_time() - before) / (calls * batch), 2)


def _ms(seconds: Sequence[float]) -> list[float]:
    return [round(x * 1000, 1) for x in seconds]


def torch_device_for(device: str, loaded: LoadedModel) -> torch.device:
    """Where (a) runs: the device (b) got, so that the two are compared like for like."""
    on_gpu = loaded.provider in GPU_PROVIDERS
    if device == "cuda" or (device == "auto" and on_gpu):
        if not torch.cuda.is_available():
            if device == "cuda":
                raise BenchError(f"--device cuda, but this torch ({torch.__version__}) has no "
                                 "CUDA device; (a) cannot run on the GPU")
            return torch.device("cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"torch cuda ({torch.cuda.get_device_name(dev)})"
    return f"torch cpu ({torch.get_num_threads()} threads)"


def ort_device(loaded: LoadedModel) -> str:
    opts = loaded.session.get_session_options()
    if loaded.provider in GPU_PROVIDERS:
        return f"ORT {loaded.provider}"
    return f"ORT {loaded.provider} ({opts.intra_op_num_threads} threads)"


def _on_cpu(m: Measurement) -> bool:
    return "cpu" in m.device.lower() and "cuda" not in m.device.lower() \
        and "tensorrt" not in m.device.lower()


@contextmanager
def step(progress: Progress, task: TaskID, description: str) -> Iterator[None]:
    progress.update(task, description=description)
    yield
    progress.advance(task)


# (a) and (b): DenseNet121 ---------------------------------------------------------------------
def bench_densenet(plan: Plan, device: str, progress: Progress,
                   console: Console) -> tuple[list[Measurement], dict[str, Any]]:
    folder = model_folder(CXR_MODEL)
    manifest = load_manifest(folder)
    loaded = load_session(folder, manifest, device=device)
    tdev = torch_device_for(device, loaded)
    net = cxr_densenet(len(manifest.labels)).eval().to(tdev)
    info = onnx_input_info(loaded)
    dims = info["shape"]
    rng = np.random.default_rng(0)
    out: list[Measurement] = []
    configs = [(size, batch) for size in plan.sizes for batch in plan.batches]
    task = progress.add_task("DenseNet121", total=2 * len(configs))
    unsupported: list[int] = []
    for size, batch in configs:
        config = f"{size}px b{batch}"
        x = rng.random((batch, 1, size, size), dtype=np.float32)
        want = (batch, len(manifest.labels))

        def eager(x: np.ndarray = x) -> np.ndarray:
            with torch.inference_mode():
                logits: np.ndarray = net(torch.from_numpy(x).to(tdev)).cpu().numpy()
                return logits

        def onnx(x: np.ndarray = x) -> np.ndarray:
            return loaded.run(x)

        with step(progress, task, f"{SECTION['a']} and {SECTION['b']}: DenseNet121 "
                                  f"{config}, alternating"):
            check_shape(eager(), want, f"torch DenseNet121 {config}")
            fixed = [d for d in dims[2:] if isinstance(d, int)]
            runs_onnx = not fixed or fixed == [size, size]
            if runs_onnx:
                try:
                    check_shape(onnx(), want, f"ONNX DenseNet121 {config}")
                except Exception as e:  # ORT refuses the shape at run time
                    runs_onnx = False
                    if size not in unsupported:
                        unsupported.append(size)
                        console.print(f"[yellow]note:[/yellow] the shipped {CXR_MODEL} "
                                      f"export does not run at {size} px: {e}")
            elif size not in unsupported:
                unsupported.append(size)
                console.print(f"[yellow]note:[/yellow] the shipped {CXR_MODEL} export has "
                              f"a fixed input of {dims}: {size} px is not supported by it")
            fns: dict[str, Callable[[], object]] = {"a": eager}
            if runs_onnx:
                fns["b"] = onnx
            timed = alternate(fns, plan)
            lat, warm, rounds = timed["a"]
            out.append(Measurement("a", DENSENET, config, describe_device(tdev), batch, lat,
                                   extra={"warmup_ms": round(warm * 1000, 1), "size": size,
                                          "batch": batch, "round_medians_ms": _ms(rounds)}))
            if runs_onnx:
                lat, warm, rounds = timed["b"]
                out.append(Measurement("b", DENSENET, config, ort_device(loaded), batch, lat,
                                       extra={"warmup_ms": round(warm * 1000, 1),
                                              "size": size, "batch": batch,
                                              "round_medians_ms": _ms(rounds),
                                              "cpu_ms_per_item": cpu_ms_per_item(onnx, batch)}))
            progress.advance(task)
    info.update({"unsupported_sizes": unsupported, "provider": loaded.provider,
                 "load_ms": round(loaded.load_ms, 1), "torch_device": str(tdev),
                 "parameters": sum(p.numel() for p in net.parameters())})
    progress.remove_task(task)
    gc.collect()
    return out, info


def onnx_input_info(loaded: LoadedModel) -> dict[str, Any]:
    first = loaded.session.get_inputs()[0]
    shape = list(first.shape)
    return {"input": first.name, "shape": shape,
            "dynamic_axes": [i for i, d in enumerate(shape) if not isinstance(d, int)]}


def check_shape(result: np.ndarray, want: tuple[int, ...], what: str) -> None:
    if tuple(result.shape) != want:
        raise BenchError(f"{what}: output shape {tuple(result.shape)}, expected {want}")


# (a) and (b): 3-D UNet by sliding window ---------------------------------------------------------
def windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many ROIs MONAI's sliding window visits (its scan-interval rule)."""
    n = 1
    for size, r in zip(shape, roi, strict=True):
        interval = max(1, int(r * (1 - overlap)))
        n *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return n


def bench_unet(plan: Plan, device: str, progress: Progress
               ) -> tuple[list[Measurement], dict[str, Any]]:
    from monai.inferers import sliding_window_inference

    from ai_models.pipelines.ct_nodule_seg import SW_BATCH, SW_OVERLAP, sliding_window

    folder = model_folder(CT_MODEL)
    manifest = load_manifest(folder)
    loaded = load_session(folder, manifest, device=device)
    tdev = torch_device_for(device, loaded)
    roi = tuple(manifest.input.size)
    info = onnx_input_info(loaded)
    fixed = [d for d in info["shape"][2:] if isinstance(d, int)]
    if fixed and tuple(fixed) != roi:
        raise BenchError(f"{CT_MODEL}: the ONNX input {info['shape']} does not match the "
                         f"manifest ROI {roi}")
    net = ct_unet().eval().to(tdev)
    shape = plan.ct_shape
    volume = torch.from_numpy(np.random.default_rng(1).random((1, 1, *shape),
                                                              dtype=np.float32))
    volume_dev = volume.to(tdev)
    config = "x".join(map(str, shape))

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            logits = sliding_window_inference(volume_dev, roi, SW_BATCH, net,
                                              overlap=SW_OVERLAP, mode="gaussian")
            return torch.as_tensor(logits).cpu()

    volume_np = volume.numpy()[0]

    def onnx() -> torch.Tensor:  # as the ct_nodule_seg pipeline: numpy windows, ORT
        return torch.from_numpy(sliding_window(volume_np, roi, loaded.run))[None]

    n_windows = windows(shape, roi, SW_OVERLAP)
    extra = {"volume": list(shape), "roi": list(roi), "windows": n_windows,
             "sw_batch": SW_BATCH, "overlap": SW_OVERLAP, "mode": "gaussian"}
    task = progress.add_task("UNet", total=2)
    out: list[Measurement] = []
    with step(progress, task, f"{SECTION['a']} and {SECTION['b']}: 3-D UNet {config} "
                              f"({n_windows} windows), alternating"):
        check_shape(eager().numpy(), (1, 2, *shape), "torch UNet")
        check_shape(onnx().numpy(), (1, 2, *shape), "ONNX UNet")
        timed = alternate({"a": eager, "b": onnx}, plan)
        for section, device_name in (("a", describe_device(tdev)), ("b", ort_device(loaded))):
            lat, warm, rounds = timed[section]
            out.append(Measurement(section, UNET, config, device_name, 1, lat,
                                   extra={**extra, "warmup_ms": round(warm * 1000, 1),
                                          "round_medians_ms": _ms(rounds)}))
        progress.advance(task)
    info.update({"provider": loaded.provider, "load_ms": round(loaded.load_ms, 1),
                 "torch_device": str(tdev), **extra,
                 "spacing_mm": manifest.input.spacing,
                 "parameters": sum(p.numel() for p in net.parameters())})
    progress.remove_task(task)
    gc.collect()
    return out, info


# (c): the pipeline through the queue ----------------------------------------------------------


class Service:
    """One ``python -m rdc ...`` process in its own process group, stopped by SIGTERM
    (then SIGKILL of the group: Orthanc, Celery's pool children)."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "rdc", *args], env=env,
                                         cwd=REPO, stdin=subprocess.DEVNULL, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def check(self, extra_log: Path | None = None) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.proc.returncode}"
                             f"{tail_text(self.log, 25)}"
                             f"{tail_text(extra_log, 25) if extra_log else ''}")

    def stop(self, timeout: float = 30.0) -> None:
        pgid = self.proc.pid  # start_new_session: the group is the child's own
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(pgid, signal.SIGKILL)  # anything of ours left in its group
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def center_environment(values: dict[str, str]) -> Iterator[None]:
    """This process's RDC_* environment set to the throw-away center's, then restored.

    ``core.queue`` and ``core.settings.get_settings`` read the environment, so the
    jobs this process enqueues reach the center's broker.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("RDC_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    from core.settings import get_settings

    get_settings.cache_clear()
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("RDC_")]:
            del os.environ[key]
        os.environ.update(saved)
        get_settings.cache_clear()


@dataclass
class Radiograph:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str


def bench_pipeline(plan: Plan, args: argparse.Namespace, root: Path, progress: Progress,
                   console: Console) -> tuple[list[Measurement], dict[str, Any]]:
    from pydicom import dcmread
    from sqlalchemy import select

    from ai_models.preread import INFERENCE_QUEUE, inference_key
    from ai_models.registry import ensure_shipped
    from core.db import get_database
    from core.jobs import NewJob, create_job
    from core.models import AIResult, Instance, Job, Study
    from core.orthanc_client import OrthancClient
    from core.settings import get_settings
    from core.sites import SiteSpec, add_site
    from core.states import InstanceState, JobState, StudyState
    from devkit.center import Center
    from devkit.samples import Patient, write_chest_radiograph, write_ct_series

    home = root / "home"
    config = root / "rdc.toml"
    config.write_text("# the inference benchmark passes every setting explicitly\n")
    ports: set[int] = set()
    center = Center(home=home, db_url=f"sqlite:///{home / 'rdc.sqlite3'}",
                    broker_url=args.broker_url or "",  # empty: the embedded filesystem broker
                    config=config, taken_ports=ports, quick_timers=False,
                    extra_settings={"environment": "development", "ai_device": args.device,
                                    "ai_batch_wait_ms": "50", "ai_register_shipped": "true"})
    env = center.env
    values = {k: v for k, v in env.items() if k.startswith("RDC_")}
    manifest: Manifest = load_manifest(model_folder(CXR_MODEL))
    n = plan.items
    with ExitStack() as stack:
        stack.enter_context(center_environment(values))
        settings = get_settings()
        settings.ensure_dirs()
        task = progress.add_task("(c) starting Orthanc", total=None)
        orthanc = Service("rdc orthanc", ["orthanc"], env, home / "orthanc.out")
        stack.callback(orthanc.stop)

        total = n + 1 + ALONE
        progress.update(task, description=f"(c) writing {total} chest radiographs "
                                          f"({DEMO_DX_PIXELS} px)", total=total)
        images: list[Radiograph] = []
        for i in range(total):
            patient = Patient(id=f"BENCH-{i:04d}", name=f"Bench^Patient{i:04d}")
            g = write_chest_radiograph(root / "dx" / f"{i:04d}", size=DEMO_DX_PIXELS,
                                       seed=1000 + i, patient=patient,
                                       pneumothorax=i % 3 == 0, opacity=i % 2 == 0)
            sop = str(dcmread(g.paths[0], stop_before_pixels=True).SOPInstanceUID)
            images.append(Radiograph(g.paths[0], g.study_uid, g.series_uid, sop, patient.id))
            progress.advance(task)

        progress.update(task, description="(c) waiting for Orthanc", total=None)
        client = stack.enter_context(OrthancClient.from_settings(settings, retries=2))
        deadline = time.monotonic() + 90
        while not client.is_alive():
            orthanc.check(settings.log_dir / "orthanc.log")
            if time.monotonic() > deadline:
                raise BenchError("Orthanc did not answer within 90 s"
                                 f"{tail_text(orthanc.log, 25)}")
            time.sleep(0.2)

        db = get_database(settings.database_url)
        stack.callback(get_database.cache_clear)
        stack.callback(db.dispose)
        with db.session() as s:
            add_site(s, SiteSpec(id=SITE_ID, name="inference benchmark", ae_title=SITE_AE,
                                 host=LOOPBACK, port=free_port(ports),
                                 allowed_addresses=(f"{LOOPBACK}/32",)), actor="benchmark")
            ensure_shipped(s, settings)

        progress.update(task, description="(c) uploading to Orthanc, study rows",
                        total=total, completed=0)
        study_ids: list[int] = []
        for i, img in enumerate(images):
            data = img.path.read_bytes()
            answer = client.upload_instance(data)
            now = datetime.now(UTC)
            with db.session() as s:
                study = Study(site_id=SITE_ID, study_uid=img.study_uid,
                              patient_id=img.patient_id, modalities=["DX"],
                              state=StudyState.COMPLETE, expected_instances=1,
                              received_instances=1, stored_instances=1, completed_at=now,
                              orthanc_id=str(answer.get("ParentStudy") or "") or None)
                s.add(study)
                s.flush()
                s.add(Instance(id=str(uuid.uuid4()), site_id=SITE_ID, study_id=study.id,
                               series_uid=img.series_uid, sop_instance_uid=img.sop_uid,
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                               transfer_syntax="1.2.840.10008.1.2.1", modality="DX",
                               size_bytes=len(data), state=InstanceState.STORED,
                               orthanc_id=str(answer["ID"]), calling_ae=SITE_AE,
                               peer_address=LOOPBACK, stored_at=now))
                study_ids.append(study.id)
            progress.update(task, completed=i + 1)

        from core.queue import enqueue_job

        def new_jobs(indexes: range) -> list[tuple[int, str]]:
            made: list[tuple[int, str]] = []
            with db.session() as s:  # one transaction, as the fan-out creates them
                for i in indexes:
                    job, created = create_job(s, NewJob(
                        key=inference_key(manifest.name, manifest.version,
                                          images[i].series_uid),
                        kind="ai_inference", queue=INFERENCE_QUEUE, study_id=study_ids[i],
                        params={"model": manifest.name, "version": manifest.version,
                                "series_uid": images[i].series_uid}))
                    if not created:
                        raise BenchError(f"job {job.key} already existed")
                    made.append((job.id, job.key))
            for job_id, key in made:
                enqueue_job(job_id, key, INFERENCE_QUEUE)
            return made

        def states(ids: list[int]) -> Counter[str]:
            with db.session() as s:
                return Counter(str(st) for st in s.scalars(
                    select(Job.state).where(Job.id.in_(ids))))

        worker_log = settings.log_dir / "worker.log"
        worker = Service("rdc worker", ["worker", "--queues", INFERENCE_QUEUE,
                                        "--concurrency", "1"], env, home / "worker.out")
        stack.callback(worker.stop)

        def wait_for(ids: list[int], timeout: float, task: TaskID) -> None:
            deadline = time.monotonic() + timeout
            while True:
                worker.check(worker_log)
                orthanc.check(settings.log_dir / "orthanc.log")
                counts = states(ids)
                done = counts.get(JobState.SUCCEEDED, 0)
                progress.update(task, completed=done)
                bad = {k: v for k, v in counts.items()
                       if k in (JobState.FAILED, JobState.DEAD, JobState.SKIPPED)}
                if bad:
                    with db.session() as s:
                        errors = {str(e) for e in s.scalars(
                            select(Job.error).where(Job.id.in_(ids), Job.error.is_not(None)))}
                    raise BenchError(f"jobs ended {dict(bad)}: {sorted(errors)[:3]}"
                                     f"{tail_text(worker_log, 25)}")
                if done == len(ids):
                    return
                if time.monotonic() > deadline:
                    raise BenchError(f"after {timeout:.0f} s, {dict(counts)} of {len(ids)} "
                                     f"jobs{tail_text(worker_log, 25)}")
                time.sleep(0.2)

        progress.update(task, description="(c) warm-up job: worker start and model load",
                        total=1, completed=0)
        warm_started = time.perf_counter()
        warm = new_jobs(range(0, 1))
        wait_for([warm[0][0]], 300, task)
        warm_s = time.perf_counter() - warm_started

        progress.update(task, description=f"{SECTION['c']}: {n} jobs, cxr-triage",
                        total=n, completed=0)
        cpu_before = {"worker": harness.tree_cpu_s(worker.proc.pid),
                      "orthanc": harness.tree_cpu_s(orthanc.proc.pid)}
        t0 = datetime.now(UTC)
        clock = time.perf_counter()
        timed = new_jobs(range(1, n + 1))
        enqueued_s = time.perf_counter() - clock
        wait_for([j for j, _ in timed], 120 + 10 * n, task)
        polled_s = time.perf_counter() - clock
        # CPU of the worker (Celery's pool included) and of Orthanc over the timed
        # batch, from /proc: the pipeline's cost per item, whatever the clock says.
        pipeline_cpu = {who: round(1000 * (harness.tree_cpu_s(pid) - cpu_before[who]) / n, 2)
                        for who, pid in (("worker", worker.proc.pid),
                                         ("orthanc", orthanc.proc.pid))}

        # A study alone, with nothing queued before it: the latency a single urgent
        # radiograph sees (the batch waits RDC_AI_BATCH_WAIT_MS for company).
        progress.update(task, description=f"(c) {ALONE} studies one at a time",
                        total=ALONE, completed=0)
        alone_ms: list[float] = []
        for i in range(n + 1, n + 1 + ALONE):
            (job_id, _), = new_jobs(range(i, i + 1))
            wait_for([job_id], 120, task)
            with db.session() as s:
                job_row = s.get(Job, job_id)
                result_row = s.scalar(select(AIResult).where(AIResult.job_id == job_id))
                assert job_row is not None and result_row is not None
                alone_ms.append((result_row.created_at - job_row.created_at
                                 ).total_seconds() * 1000)

        ids = [j for j, _ in timed]
        with db.session() as s:
            jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
            results = {r.job_id: r for r in s.scalars(
                select(AIResult).where(AIResult.job_id.in_(ids)))}
        if len(results) != n:
            raise BenchError(f"{len(results)} ai_results rows for {n} succeeded jobs")
        missing = [r.sr_sop_uid for r in results.values()
                   if client.find_instance(r.sr_sop_uid) is None]
        if missing:
            raise BenchError(f"{len(missing)} of {n} SRs are not in Orthanc")
        finished = max(j.updated_at for j in jobs.values())
        seconds = (finished - t0).total_seconds()
        latencies = [((results[i].created_at) - (jobs[i].created_at)).total_seconds()
                     for i in ids]
        progress.update(task, description="(c) replaying the handler's steps for the "
                                          "time split", total=None)
        split = replay_split(settings, client, manifest,
                             [images[i].series_uid for i in range(1, min(n, 8) + 1)])

        # The CT UNet through the same worker: one CT study at a time, each from its
        # job's creation to its SEG, SR and result (a finding per volume).
        ct_manifest: Manifest = load_manifest(model_folder(CT_MODEL))
        slices, pixels = plan.ct_series
        progress.update(task, description=f"(c) CT: writing and storing {CT_VOLUMES} "
                                          f"series of {slices} slices", total=CT_VOLUMES,
                        completed=0)
        ct_jobs: list[tuple[int, str, int]] = []  # (study id, series UID, slices)
        for v in range(CT_VOLUMES):
            patient = Patient(id=f"BENCH-CT-{v}", name=f"Bench^Ct{v}")
            g = write_ct_series(root / "ct" / str(v), slices=slices, size=pixels,
                                seed=500 + v, patient=patient)
            now = datetime.now(UTC)
            with db.session() as s:
                study = Study(site_id=SITE_ID, study_uid=g.study_uid, patient_id=patient.id,
                              modalities=["CT"], state=StudyState.COMPLETE,
                              expected_instances=slices, received_instances=slices,
                              stored_instances=slices, completed_at=now)
                s.add(study)
                s.flush()
                for path in g.paths:
                    data = path.read_bytes()
                    answer = client.upload_instance(data)
                    sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                    s.add(Instance(id=str(uuid.uuid4()), site_id=SITE_ID, study_id=study.id,
                                   series_uid=g.series_uid, sop_instance_uid=sop,
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                   transfer_syntax="1.2.840.10008.1.2.1", modality="CT",
                                   size_bytes=len(data), state=InstanceState.STORED,
                                   orthanc_id=str(answer["ID"]), calling_ae=SITE_AE,
                                   peer_address=LOOPBACK, stored_at=now))
                ct_jobs.append((study.id, g.series_uid, slices))
            progress.update(task, completed=v + 1)
        progress.update(task, description=f"(c) CT: {CT_VOLUMES} studies, one at a time",
                        total=CT_VOLUMES, completed=0)
        ct_latency_s: list[float] = []
        ct_positive = 0
        for v, (study_id, series_uid, _) in enumerate(ct_jobs):
            with db.session() as s:
                job, _created = create_job(s, NewJob(
                    key=inference_key(ct_manifest.name, ct_manifest.version, series_uid),
                    kind="ai_inference", queue=INFERENCE_QUEUE, study_id=study_id,
                    params={"model": ct_manifest.name, "version": ct_manifest.version,
                            "series_uid": series_uid}))
                job_id, key = job.id, job.key
            enqueue_job(job_id, key, INFERENCE_QUEUE)
            # The first volume also loads the CT model into the worker: it is timed
            # apart, as the radiographs' warm-up job is.
            wait_for([job_id], 600, task)
            with db.session() as s:
                job_row = s.get(Job, job_id)
                result_row = s.scalar(select(AIResult).where(AIResult.job_id == job_id))
                assert job_row is not None and result_row is not None
                if v:
                    ct_latency_s.append((result_row.created_at - job_row.created_at
                                         ).total_seconds())
                ct_positive += bool(result_row.seg_sop_uid)
                if client.find_instance(result_row.sr_sop_uid) is None:
                    raise BenchError(f"the CT SR {result_row.sr_sop_uid} is not in Orthanc")
            progress.update(task, completed=v + 1)
        progress.remove_task(task)
        batches = Counter(r.batch_size for r in results.values())
        devices = sorted({r.device for r in results.values()})
        mean_ms = float(np.mean([r.duration_ms for r in results.values()]))
    m = Measurement("c", DENSENET, PIPELINE_CONFIG, f"worker, ORT {', '.join(devices)}",
                    manifest.batch_size, latencies, seconds=seconds, items=n,
                    extra={"latency": "per item, job created_at to ai_results.created_at"})
    ct_config = "x".join(map(str, plan.ct_shape))
    ct_row = Measurement("c", UNET, ct_config, f"worker, ORT {', '.join(devices)}", 1,
                         ct_latency_s, seconds=sum(ct_latency_s), items=len(ct_latency_s),
                         extra={"latency": "per CT study alone, job created_at to "
                                           "ai_results.created_at (model load not timed)",
                                "series": f"{plan.ct_series[0]} slices of "
                                          f"{plan.ct_series[1]}^2 px"})
    info = {
        "items": n, "image_pixels": DEMO_DX_PIXELS, "model": manifest.ref,
        "manifest_batch_size": manifest.batch_size, "batch_sizes_seen": dict(sorted(
            batches.items())),
        "batch_wait_ms": 50, "worker": "rdc worker --queues inference --concurrency 1",
        "broker": "embedded filesystem transport" if not args.broker_url else "given URL",
        "database": "SQLite (embedded default)", "devices": devices,
        "warmup_s": round(warm_s, 2), "enqueue_s": round(enqueued_s, 3),
        "seconds_by_db_timestamps": round(seconds, 3),
        "seconds_by_polling": round(polled_s, 3),
        "mean_duration_ms": round(mean_ms, 1),
        "alone_latency_ms": [round(x, 1) for x in alone_ms],
        "ct_series": {"slices": plan.ct_series[0], "pixels": plan.ct_series[1],
                      "network_input": list(plan.ct_shape)},
        "ct_latency_ms": [round(x * 1000, 1) for x in ct_latency_s],
        "ct_latency_median_ms": round(float(np.median(ct_latency_s)) * 1000, 1),
        "ct_with_seg": ct_positive,
        "alone_latency_median_ms": round(float(np.median(alone_ms)), 1),
        "queued_latency_p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 1),
        "mean_wall_ms_per_item": round(1000 * seconds / n, 1),
        "cpu_ms_per_item": pipeline_cpu,
        "srs_in_orthanc": n,
        "split_ms_per_item": split,
        "split_note": "the handler's steps replayed in the benchmark process on up to 8 of "
                      "the items after the timed run (the worker records only their sum)",
    }
    return [m, ct_row], info


def replay_split(settings: Any, client: Any, manifest: Manifest,
                 series_uids: Sequence[str]) -> dict[str, float]:
    """Milliseconds per item of each step of the worker's handler, replayed here on
    ``series_uids`` as one batch (the worker records only their sum, duration_ms).

    The SR is stored under another UID than the worker's, so that it is really
    stored again rather than answered "AlreadyStored".
    """
    from io import BytesIO

    from ai_models.dicom_outputs import build_sr
    from ai_models.inference import fetch_series
    from ai_models.output_uids import deterministic_uid
    from ai_models.pipelines import get_pipeline
    from ai_models.pipelines.base import Prepared
    from ai_models.sr_template import SRTemplates

    loaded = load_session(model_folder(manifest.name), manifest, device=settings.ai_device,
                          threads=settings.ai_threads)
    pipeline = get_pipeline(manifest)
    size = manifest.input.size
    loaded.run(np.zeros((len(series_uids), 1, *size), dtype=np.float32))  # warm-up
    spent: dict[str, float] = {}
    templates = SRTemplates()  # as the worker's: highdicom once, then patched skeletons
    # The worker's warm-up job has built a report before the timed batch: highdicom's
    # first report in a process costs most of a second (its code dictionaries load),
    # which would otherwise be charged to the 8 replayed items.
    warm = fetch_series(client, series_uids[0])
    warm_result = pipeline.postprocess(pipeline.preprocess(warm), np.zeros(
        len(manifest.labels), dtype=np.float32))
    build_sr(warm, manifest, warm_result.findings,
             series_uid=deterministic_uid("warm-up", "sr-series"),
             sop_uid=deterministic_uid("warm-up", "sr"), device=loaded.provider)

    def timed(name: str, started: float) -> None:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    prepared: list[Prepared] = []
    for uid in series_uids:
        t = time.perf_counter()
        datasets = fetch_series(client, uid)
        timed("fetch from Orthanc + parse", t)
        t = time.perf_counter()
        pipeline.check(datasets)
        prepared.append(pipeline.preprocess(datasets))
        timed("check + decode + pre-process", t)
    t = time.perf_counter()
    outputs = pipeline.predict(prepared, loaded.run)
    timed(f"predict (batch of {len(series_uids)}, per item)", t)
    for uid, item, output in zip(series_uids, prepared, outputs, strict=True):
        t = time.perf_counter()
        result = pipeline.postprocess(item, output)
        key = (uid, manifest.name, manifest.version, "benchmark-replay")
        sr = templates.build(item.datasets, manifest, result.findings,
                             series_uid=deterministic_uid(*key, "sr-series"),
                             sop_uid=deterministic_uid(*key, "sr"), device=loaded.provider)
        timed("post-process + build SR (from its skeleton after the first)", t)
        t = time.perf_counter()
        buf = BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        client.upload_instance(buf.getvalue())
        timed("encode + store SR in Orthanc", t)
    return {k: round(v * 1000 / len(series_uids), 1) for k, v in spent.items()}


# Ratios and report -------------------------------------------------------------------------
def find(rows: Sequence[Measurement], section: str, model: str, config: str
         ) -> Measurement | None:
    return next((r for r in rows if (r.section, r.model, r.config) == (section, model, config)),
                None)


def compute_ratios(rows: Sequence[Measurement]) -> list[Ratio]:
    out: list[Ratio] = []
    seen: list[tuple[str, str]] = []
    for r in rows:
        if (r.model, r.config) not in seen and r.section in "ab":
            seen.append((r.model, r.config))
    for model, config in seen:
        a, b = find(rows, "a", model, config), find(rows, "b", model, config)
        if a is None or b is None:
            continue
        cpu = _on_cpu(a) and _on_cpu(b)
        out.append(Ratio("(b)/(a)", model, config, b.items_per_s / a.items_per_s, TARGET_ORT,
                         cpu, "" if cpu else "not on CPU: the target is for the CPU"))
    for c in (r for r in rows if r.section == "c"):
        b = find(rows, "b", c.model, c.config)
        if b is not None and c.items:
            out.append(Ratio("(c)/(b)", c.model, c.config, c.items_per_s / b.items_per_s,
                             TARGET_PIPELINE, True))
    return out


def verdicts(found: Sequence[Ratio]) -> dict[str, dict[str, Any]]:
    ort_r = [r for r in found if r.name == "(b)/(a)"]
    applied = [r for r in ort_r if r.applies]
    pipe = next((r for r in found if r.name == "(c)/(b)" and r.model == DENSENET), None)
    pipe_ct = next((r for r in found if r.name == "(c)/(b)" and r.model == UNET), None)
    worst = min(applied, key=lambda r: r.value) if applied else None
    return {
        "ort_over_torch": {
            "target": TARGET_ORT, "where": "CPU, every configuration",
            "pass": all(r.value >= TARGET_ORT for r in applied) if applied else None,
            "met": sum(r.value >= TARGET_ORT for r in applied), "of": len(applied),
            "min": round(worst.value, 4) if worst else None,
            "min_at": f"{worst.model} {worst.config}" if worst else None},
        "pipeline_over_ort": {
            "target": TARGET_PIPELINE, "where": f"{DENSENET} {PIPELINE_CONFIG}",
            "pass": pipe.passed if pipe else None,
            "value": round(pipe.value, 4) if pipe else None},
        "pipeline_over_ort_ct": {
            "target": TARGET_PIPELINE, "where": f"{UNET} per volume",
            "pass": pipe_ct.passed if pipe_ct else None,
            "value": round(pipe_ct.value, 4) if pipe_ct else None,
            "at": pipe_ct.config if pipe_ct else None},
    }


SHORT = {"a": "(a) torch", "b": "(b) ORT", "c": "(c) queue"}


def print_report(console: Console, rows: Sequence[Measurement], found: Sequence[Ratio],
                 judged: dict[str, dict[str, Any]], pipeline: dict[str, Any] | None,
                 models: dict[str, Any]) -> None:
    table = Table(title="Inference throughput (one run, same machine)")
    for col in ("engine", "model", "config", "calls", "items/s", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col in ("engine", "model", "config")
                         else "right", no_wrap=True)
    for r in rows:
        table.add_row(SHORT[r.section], r.model, r.config,
                      str(len(r.latencies_s)) if r.section != "c" else f"{r.items} items",
                      f"{r.items_per_s:.2f}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}")
    console.print(table)
    devices: dict[str, list[str]] = {}
    for r in rows:
        devices.setdefault(r.section, [])
        if r.device not in devices[r.section]:
            devices[r.section].append(r.device)
    console.print("devices: " + "; ".join(f"{SHORT[s]}: {', '.join(d)}"
                                          for s, d in devices.items()))
    console.print("items: images (DenseNet121, pipeline) or CT volumes (UNet); p50/p95: "
                  "latency per call for (a) and (b), per item from job creation to its "
                  "result for (c); (a) has random weights")
    unet = models.get(CT_MODEL)
    if unet and "volume" in unet:
        console.print(f"unet3d: one volume of {unet['volume']} voxels at "
                      f"{unet['spacing_mm']} mm, sliding window ROI {unet['roi']}, "
                      f"{unet['windows']} windows, sw_batch {unet['sw_batch']}, overlap "
                      f"{unet['overlap']}, gaussian blending")
    rt = Table(title="Ratios (items/s)")
    for col in ("ratio", "model", "config", "value", "target", "verdict"):
        rt.add_column(col, justify="left" if col in ("ratio", "model", "config") else "right",
                      no_wrap=True)
    for q in found:
        rt.add_row(q.name, q.model, q.config, ratio_text(q.value), target_text(q.target),
                   verdict(q.passed, "n/a (GPU)"))
    console.print(rt)
    spread = [(r.section, r.model, r.config, r.extra["round_medians_ms"]) for r in rows
              if "round_medians_ms" in r.extra]
    if spread:
        console.print("(a) and (b) were timed in alternating rounds; median ms per round: " +
                      "; ".join(f"{sec} {cfg} {meds}" for sec, _, cfg, meds in spread))
    if pipeline:
        per_item = pipeline["mean_wall_ms_per_item"]
        inside = pipeline["mean_duration_ms"]
        st = Table(title=f"(c) time per item ({pipeline['items']} items, batches "
                         f"{pipeline['batch_sizes_seen']})")
        st.add_column("where", no_wrap=True)
        st.add_column("ms/item", justify="right")
        st.add_row("wall clock (1 / items/s)", f"{per_item:.0f}")
        # An item's steps overlap with the other items' on the worker's I/O threads,
        # so their sum can exceed the wall clock per item.
        st.add_row("  an item's own steps (mean ai_results.duration_ms)", f"{inside:.0f}")
        if per_item >= inside:
            st.add_row("  outside them (queue, claims, commits, follower messages)",
                       f"{per_item - inside:.0f}")
        st.add_row("[dim]handler steps, replayed in this process:[/dim]", "")
        for name, ms in pipeline["split_ms_per_item"].items():
            st.add_row(f"  {name}", f"{ms:.0f}")
        console.print(st)
        cpu = pipeline.get("cpu_ms_per_item")
        b_row = find(rows, "b", DENSENET, PIPELINE_CONFIG)
        ort_cpu = b_row.extra.get("cpu_ms_per_item") if b_row else None
        if cpu and ort_cpu:
            spent = cpu["worker"] + cpu["orthanc"]
            console.print(f"CPU per item (user + system, from /proc): (b) ONNX Runtime "
                          f"{ort_cpu:.1f} ms; (c) worker {cpu['worker']:.1f} ms + Orthanc "
                          f"{cpu['orthanc']:.1f} ms = {spent:.1f} ms. On a machine whose "
                          f"cores are all busy, (c)/(b) can reach at most "
                          f"{ort_cpu / spent:.2f}x at these costs")
        console.print(f"latency, job created to result stored: p95 "
                      f"{pipeline['queued_latency_p95_ms']:.0f} ms with {pipeline['items']} "
                      f"queued at once; median {pipeline['alone_latency_median_ms']:.0f} ms for "
                      f"a study alone ({len(pipeline['alone_latency_ms'])} studies, one at a "
                      f"time)")
        ct = pipeline["ct_series"]
        console.print(f"CT, {ct['slices']} slices of {ct['pixels']}^2 px: median "
                      f"{pipeline['ct_latency_median_ms'] / 1000:.1f} s per study alone "
                      f"({len(pipeline['ct_latency_ms'])} studies, after one that loads the "
                      f"model)")
        for what, ms, limit in (
                ("radiograph", pipeline["alone_latency_median_ms"], TARGET_FINDING_DX_S),
                ("CT", pipeline["ct_latency_median_ms"], TARGET_FINDING_CT_S)):
            word = verdict(ms / 1000 <= limit)
            console.print(f"target time to a finding, {what} alone <= {limit:.0f} s: {word} "
                          f"({ms / 1000:.1f} s, from the inference job's creation)")
    o, p = judged["ort_over_torch"], judged["pipeline_over_ort"]
    if o["pass"] is None:
        console.print(f"target (b)/(a) >= {TARGET_ORT}x on CPU: n/a (nothing ran on the CPU)")
    else:
        word = verdict(o["pass"])
        console.print(f"target (b)/(a) >= {TARGET_ORT}x on CPU: {word} ({o['met']} of "
                      f"{o['of']} configurations; lowest {o['min']:.2f}x at {o['min_at']})")
    if p["pass"] is None:
        console.print(f"target (c)/(b) >= {TARGET_PIPELINE}x at batch 8: not measured "
                      "(--skip-pipeline)")
    else:
        word = verdict(p["pass"])
        c = find(rows, "c", DENSENET, PIPELINE_CONFIG)
        b = find(rows, "b", DENSENET, PIPELINE_CONFIG)
        detail = f"; {c.items_per_s:.2f} vs {b.items_per_s:.2f} items/s" if c and b else ""
        console.print(f"target (c)/(b) >= {TARGET_PIPELINE}x at batch 8: {word} "
                      f"({p['value']:.2f}x{detail})")
    pc = judged["pipeline_over_ort_ct"]
    if pc["pass"] is not None:
        console.print(f"target (c)/(b) >= {TARGET_PIPELINE}x per CT volume ({pc['at']}): "
                      f"{verdict(pc['pass'])} ({pc['value']:.2f}x)")


# Machine, output ----------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    elif shutil.which("nvidia-smi"):
        try:
            gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            gpu = ""
    import monai

    return {
        "platform": platform.platform(),
        "cpu_model": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpu_threads(),
        "gpu": gpu or "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cuda": torch.cuda.is_available(),
        "monai": str(monai.__version__),
        "onnxruntime": ort.__version__,
        "ort_providers": list(ort.get_available_providers()),
        "numpy": np.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_chart(path: Path, rows: Sequence[Measurement], found: Sequence[Ratio]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(DENSENET, "images / s"), (UNET, "CT volumes / s")]
    widths = [max(1, len({r.config for r in rows if r.model == m})) for m, _ in groups]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8),
                             gridspec_kw={"width_ratios": [w + 1 for w in widths]})
    colours = {"a": "#8c8c8c", "b": "#1f77b4", "c": "#ff7f0e"}
    for ax, (model, unit) in zip(axes, groups, strict=True):
        configs: list[str] = []
        for r in rows:
            if r.model == model and r.config not in configs:
                configs.append(r.config)
        width = 0.27
        for k, section in enumerate("abc"):
            xs, ys = [], []
            for i, cfg in enumerate(configs):
                m = find(rows, section, model, cfg)
                if m is not None:
                    xs.append(i + (k - 1) * width)
                    ys.append(m.items_per_s)
            if xs:
                bars = ax.bar(xs, ys, width, label=SECTION[section], color=colours[section])
                ax.bar_label(bars, fmt="%.2g", fontsize=7)
        for i, cfg in enumerate(configs):
            ratio = next((q for q in found if q.name == "(b)/(a)" and q.model == model
                          and q.config == cfg), None)
            if ratio is not None:
                ax.annotate(f"b/a {ratio.value:.2f}x", (i, 0), xytext=(0, -28),
                            textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(range(len(configs)), configs, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title("DenseNet121 (cxr-triage)" if model == DENSENET
                     else "3-D UNet (ct-nodule-seg), sliding window")
        ax.legend(fontsize=7)
    pipe = next((q for q in found if q.name == "(c)/(b)"), None)
    title = "AI inference throughput, one run on one machine"
    if pipe is not None:
        title += f"  (c)/(b) at {PIPELINE_CONFIG}: {pipe.value:.2f}x"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


# Entry point -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inference",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where (a), (b) and the worker of (c) run (default auto: the GPU "
                        "if ONNX Runtime has one)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: 224 px, batch 1 and 8, a 96^3 CT volume, 8 "
                        "pipeline items, fewer calls")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for inference.json and inference.png (default {DEFAULT_OUT})")
    p.add_argument("--skip-pipeline", action="store_true", help="leave out (c)")
    p.add_argument("--items", type=int, default=None,
                   help="chest radiographs through the pipeline (default 48, quick 8)")
    p.add_argument("--broker-url", default="",
                   help="broker for (c) (default: the embedded filesystem transport)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary center (home, logs, radiographs)")
    args = p.parse_args(argv)
    if args.items is not None and args.items < 1:
        p.error("--items must be at least 1")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, console: Console
        ) -> tuple[dict[str, Any], list[Measurement], list[Ratio]]:
    plan = make_plan(args)
    root = Path(tempfile.mkdtemp(prefix="rdc-bench-inference-"))
    rows: list[Measurement] = []
    try:
        machine = machine_info()
        console.print(f"machine: {machine['cpu_model']}, {machine['cpus_usable']} usable "
                      f"cores, GPU: {machine['gpu']}; torch {machine['torch']} "
                      f"({machine['torch_threads']} threads), onnxruntime "
                      f"{machine['onnxruntime']} (providers: "
                      f"{', '.join(machine['ort_providers'])}), MONAI {machine['monai']}")
        console.print("(a) uses randomly initialised networks: the timing is that of the "
                      "architecture, not of trained weights")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        models: dict[str, Any] = {}
        pipeline: dict[str, Any] | None = None
        with Progress(*columns, console=console) as progress:
            dense, models[CXR_MODEL] = bench_densenet(plan, args.device, progress, console)
            rows += dense
            unet, models[CT_MODEL] = bench_unet(plan, args.device, progress)
            rows += unet
            if not args.skip_pipeline:
                measured, pipeline = bench_pipeline(plan, args, root, progress, console)
                rows += measured
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        found = compute_ratios(rows)
        judged = verdicts(found)
        print_report(console, rows, found, judged, pipeline, models)
        unsupported = models[CXR_MODEL]["unsupported_sizes"]
        data = {
            "benchmark": "inference",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.inference",
                                 *sys.argv[1:]]),
            "quick": bool(args.quick),
            "device": args.device,
            "machine": machine,
            "parameters": {
                "densenet_sizes": list(plan.sizes), "densenet_batches": list(plan.batches),
                "ct_volume": list(plan.ct_shape),
                "ct_volume_from": "a random volume of the demo CT's size after resampling "
                                  f"({DEMO_CT_SLICES} slices x {DEMO_CT_PIXELS}^2 px at "
                                  f"{DEMO_CT_SLICE_MM} x {DEMO_CT_FOV_MM / DEMO_CT_PIXELS:.3f}"
                                  " mm to the manifest spacing)" if not args.quick
                                  else "quick mode: a small volume",
                "timing": {"warmup_calls": 1, "min_calls": plan.min_calls,
                           "min_s": plan.min_s, "cap_s": plan.cap_s,
                           "max_calls": plan.max_calls},
                "pipeline_items": None if args.skip_pipeline else plan.items,
            },
            "models": models,
            "notes": [
                "(a) runs networks from ai_models.training.networks with random weights "
                "(timing only)",
                "(a) includes torch.from_numpy and the copy of the output to the host, (b) "
                "ONNX Runtime's own input and output handling",
                "(c) is timed from the creation of the jobs (one transaction, then one "
                "message each) to the last job's success, by the database's timestamps",
                *([f"the shipped {CXR_MODEL} export does not take {s} px"
                   for s in unsupported]),
            ],
            "rows": [r.as_json() for r in rows],
            "ratios": [r.as_json() for r in found],
            "targets": judged,
            "pipeline": pipeline,
        }
        return data, rows, found
    finally:
        if args.keep:
            console.print(f"kept the temporary folder {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Piped output (a log, the smoke test) gets a width that fits the tables.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        data, rows, found = run(args, console)
        out: Path = args.out
        write_json(out / "inference.json", data)
        write_chart(out / "inference.png", rows, found)
        console.print(f"wrote {out / 'inference.json'} and {out / 'inference.png'}")
        return 0
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]; stopped every process the benchmark started")
        return 130
    except (BenchError, RDCError, OrthancError, OSError, subprocess.SubprocessError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
