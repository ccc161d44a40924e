"""``model.yaml``: what a model is, what it applies to and how to feed it.

The manifest is the contract between the training script that produced the
weights, the pipeline that runs them and the registry that decides whether
they may run at all.  It is versioned (``schema``) so that an old model folder
is read the way it was written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import InvalidInput

MANIFEST_NAME = "model.yaml"
SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept (DICOM SR needs one per finding): value, scheme, meaning."""

    value: str
    scheme: str
    meaning: str


class Label(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    threshold: float = Field(ge=0.0, le=1.0)
    critical: bool = False
    code: Code


class AppliesTo(_Strict):
    """Which series a model may read; anything else is skipped with the reason."""

    modalities: list[str]
    body_parts: list[str] = Field(default_factory=list)  # empty: any
    sop_classes: list[str] = Field(default_factory=list)  # empty: any
    photometric: list[str] = Field(default_factory=lambda: ["MONOCHROME1", "MONOCHROME2"])
    min_slices: int = Field(default=1, ge=1)
    max_slices: int | None = None


class InputSpec(_Strict):
    """How pixels become the network's input.

    ``size`` is the network input (classification: H, W) or the sliding-window
    ROI (segmentation: D, H, W).  ``spacing`` (mm, same axis order) is what the
    volume is resampled to; ``window`` (low, high) in modality units is mapped
    to 0..1 and clipped.

    Waveforms (``pipeline: ecg_rhythm``): ``size`` is [samples], ``channels`` the
    leads, ``sampling_rate`` (Hz) what the signal is resampled to, and ``window``
    in mV (after removing each lead's baseline).
    """

    size: list[int]
    spacing: list[float] | None = None
    channels: int = 1
    window: tuple[float, float]
    sampling_rate: float | None = Field(default=None, gt=0)


class Weights(_Strict):
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["onnx"] = "onnx"


class Training(_Strict):
    script: str
    seed: int
    data: str


class Manifest(_Strict):
    schema_: int = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    task: Literal["classification", "segmentation"]
    pipeline: str  # key in ai_models.pipelines.PIPELINES
    description: str
    applies_to: AppliesTo
    input: InputSpec
    labels: list[Label]
    outputs: list[Literal["sr", "seg", "parametric_map"]]
    batch_size: int = Field(default=8, ge=1, le=256)
    weights: Weights
    intended_use: str
    demonstration: bool = False
    training: Training | None = None

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported model.yaml schema {v} (this center reads "
                             f"{SCHEMA_VERSION})")
        return v

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def label(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise KeyError(name)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return text


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``folder/model.yaml``; errors name the file and the field."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise InvalidInput(f"{folder}: no {MANIFEST_NAME}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InvalidInput(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping at the top level")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors())
        raise InvalidInput(f"{path}: {problems}") from e


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class WeightsMismatch(InvalidInput):
    """The weights file is not the one the manifest names: refused, never run."""


def verify_weights(folder: Path, manifest: Manifest) -> Path:
    """Return the weights path if its SHA-256 matches the manifest, else raise."""
    path = folder / manifest.weights.file
    if not path.is_file():
        raise WeightsMismatch(f"{manifest.ref}: weights file {path} is missing")
    actual = sha256_file(path)
    if actual != manifest.weights.sha256:
        raise WeightsMismatch(
            f"{manifest.ref}: weights {path.name} have SHA-256 {actual}, but model.yaml "
            f"says {manifest.weights.sha256}; the file was changed or replaced, so the "
            "model is refused")
    return path
