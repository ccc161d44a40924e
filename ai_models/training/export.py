"""Torch → ONNX, and the check that the exported graph computes what the module did.

The TorchScript-based exporter (``dynamo=False``) is used: the dynamo exporter
needs ``onnxscript``, which this project does not install, and the legacy one
handles MONAI's DenseNet121 and U-Net at opset 17 with dynamic axes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: Path, *,
                dynamic_axes: dict[str, dict[int, str]] | None = None,
                opset: int = OPSET) -> Path:
    """Write ``module`` (in eval mode) to ``path`` as ONNX with one input and one output.

    ``dynamic_axes`` names the axes that may vary, e.g. ``{"input": {0: "batch"},
    "logits": {0: "batch"}}``; by default only the batch axis of both is dynamic.
    The same module and weights give a byte-identical file, so a weights hash
    is reproducible from the training seed.
    """
    axes = dynamic_axes if dynamic_axes is not None else {
        INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    was_training = module.training
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter announces its own deprecation on every call.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            torch.onnx.export(module, (example_input,), str(path), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True, export_params=True)
    finally:
        module.train(was_training)
    return path


def onnx_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session on ``path`` (``threads`` 0: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def parity(module: nn.Module, onnx_path: Path, inputs: np.ndarray) -> float:
    """Max absolute difference between the module (eval mode) and ONNX Runtime (CPU)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            expected = module(torch.from_numpy(inputs.astype(np.float32))).numpy()
    finally:
        module.train(was_training)
    got = onnx_session(onnx_path).run(None, {INPUT_NAME: inputs.astype(np.float32)})[0]
    if got.shape != expected.shape:
        raise ValueError(f"{onnx_path}: ONNX output shape {got.shape} != torch "
                         f"{expected.shape}")
    return float(np.max(np.abs(np.asarray(got) - expected)))
