"""ONNX Runtime sessions: created once per worker process, on the best device.

Execution providers are tried in the order TensorRT → CUDA → CPU among those
this ONNX Runtime build has; ``RDC_AI_DEVICE=cpu`` forces the CPU and
``cuda`` refuses to run without a GPU rather than silently falling back.  The
provider a session really got is logged and recorded with every result, so an
operator can see where each pre-read ran.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ai_models.manifest import Manifest, verify_weights
from core.errors import ConfigurationError

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"


def choose_providers(device: str, available: list[str] | None = None) -> list[str]:
    """The providers to ask for, best first, for ``device`` (auto, cpu, cuda)."""
    have = available if available is not None else ort.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    gpu = [p for p in GPU_PROVIDERS if p in have]
    if device == "cuda" and not gpu:
        raise ConfigurationError(
            "RDC_AI_DEVICE=cuda, but this ONNX Runtime has no CUDA provider (available: "
            f"{', '.join(have)}); install onnxruntime-gpu on a machine with a GPU, or use auto")
    return [*gpu, CPU_PROVIDER]


def cpu_threads(configured: int = 0) -> int:
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class LoadedModel:
    """One model version ready to run in this process."""

    manifest: Manifest
    session: ort.InferenceSession
    provider: str
    input_name: str
    load_ms: float

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The network's first output for a float32 batch."""
        out: list[Any] = self.session.run(None, {self.input_name: batch.astype(np.float32,
                                                                                copy=False)})
        result: np.ndarray = np.asarray(out[0])
        return result


def load_session(folder: Path, manifest: Manifest, device: str = "auto",
                 threads: int = 0) -> LoadedModel:
    """Verify the weights and open an ONNX Runtime session on the best provider."""
    started = time.perf_counter()
    weights = verify_weights(folder, manifest)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = choose_providers(device)
    session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
    got = session.get_providers()[0]
    if device == "cuda" and got not in GPU_PROVIDERS:
        raise ConfigurationError(f"{manifest.ref}: asked for CUDA but the session runs on "
                                 f"{got}; check the CUDA and cuDNN libraries")
    load_ms = (time.perf_counter() - started) * 1000
    log.info("model.loaded ref=%s provider=%s asked=%s threads=%s load_ms=%.0f",
             manifest.ref, got, ",".join(providers), options.intra_op_num_threads, load_ms)
    return LoadedModel(manifest, session, got, session.get_inputs()[0].name, load_ms)


class SessionCache:
    """Sessions of this process, keyed by model version and weights hash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str, str], LoadedModel] = {}

    def get(self, folder: Path, manifest: Manifest, device: str = "auto",
            threads: int = 0) -> LoadedModel:
        key = (manifest.name, manifest.version, manifest.weights.sha256)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = load_session(folder, manifest, device, threads)
                self._models[key] = loaded
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


#: The process-wide cache the inference worker uses.
SESSIONS = SessionCache()
