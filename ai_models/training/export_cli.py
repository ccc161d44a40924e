"""``rdc models export``: a TorchScript file or MONAI bundle → a registrable model folder.

The operator brings a manifest (``model.yaml``) that says what the model is;
this writes ``model.onnx`` next to it, fills in the weights' SHA-256 and
checks that ONNX Runtime computes what torch computed, so the registry can
refuse anything that is changed afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ai_models.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file
from ai_models.training.export import INPUT_NAME, OUTPUT_NAME, export_onnx, parity
from core.errors import InvalidInput

#: Largest tolerated |torch - ONNX Runtime| on the example input (float32 logits).
PARITY_TOLERANCE = 1e-3


def _load_bundle(folder: Path) -> nn.Module:
    """A MONAI bundle's network: ``configs/inference.json`` (or .yaml) ``network_def``
    with ``models/model.pt`` weights (a state dict)."""
    from monai.bundle import ConfigParser

    config = next((folder / "configs" / name for name in
                   ("inference.json", "inference.yaml", "inference.yml")
                   if (folder / "configs" / name).is_file()), None)
    weights = folder / "models" / "model.pt"
    if config is None or not weights.is_file():
        raise InvalidInput(f"{folder}: not a MONAI bundle (need configs/inference.json and "
                           "models/model.pt)")
    parser = ConfigParser()
    parser.read_config(str(config))
    if "network_def" not in parser.config:  # type: ignore[operator]
        raise InvalidInput(f"{config}: no network_def")
    net: nn.Module = parser.get_parsed_content("network_def")
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


def load_source(source: Path) -> nn.Module:
    if source.is_dir():
        return _load_bundle(source)
    try:
        module: nn.Module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(source), map_location="cpu")
    except Exception as e:
        raise InvalidInput(f"{source}: not a TorchScript file ({e}); export MONAI bundles "
                           "as a folder") from e
    return module


def _example_shape(manifest: Manifest) -> tuple[int, ...]:
    return (1, manifest.input.channels, *manifest.input.size)


def export_model_folder(source: Path, manifest_path: Path, out: Path) -> str:
    """Export ``source`` to ``out/model.onnx`` with ``out/model.yaml``; returns a report."""
    try:
        data: dict[str, Any] = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InvalidInput(f"{manifest_path}: not valid YAML: {e}") from e
    weights = data.setdefault("weights", {})
    weights.setdefault("file", "model.onnx")
    weights["sha256"] = "0" * 64  # placeholder until the file exists
    try:
        draft = Manifest.model_validate(data)
    except Exception as e:
        raise InvalidInput(f"{manifest_path}: {e}") from e
    module = load_source(source)
    module.eval()
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / draft.weights.file
    example = torch.rand(_example_shape(draft))
    export_onnx(module, example, onnx_path,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    diff = parity(module, onnx_path, np.random.default_rng(0).random(
        (2, *_example_shape(draft)[1:]), dtype=np.float32))
    if not diff <= PARITY_TOLERANCE:
        raise InvalidInput(f"ONNX Runtime and torch disagree by {diff:.2e} (tolerance "
                           f"{PARITY_TOLERANCE:.0e}); the model was not written")
    weights["sha256"] = sha256_file(onnx_path)
    (out / MANIFEST_NAME).write_text(yaml.safe_dump(json.loads(json.dumps(data)),
                                                    sort_keys=False), encoding="utf-8")
    final = load_manifest(out)
    return (f"wrote {onnx_path} (sha256 {final.weights.sha256}); torch/ONNX parity "
            f"{diff:.2e} ≤ {PARITY_TOLERANCE:.0e}; register it with `rdc models add {out}`")
