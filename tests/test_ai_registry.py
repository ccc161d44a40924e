"""The model registry, `rdc models`, and execution-provider selection."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from sqlalchemy import select

from ai_models.manifest import WeightsMismatch, load_manifest, sha256_file
from ai_models.registry import shipped_model_dirs
from ai_models.runtime import CPU_PROVIDER, choose_providers, load_session
from conftest import REPO, Center
from core.errors import ConfigurationError
from core.models import AIModel, AuditRecord

CXR = next(d for d in shipped_model_dirs() if d.parent.name == "cxr-triage")


def _center(tmp_path: Path) -> Center:
    return Center(home=tmp_path / "home", db_url="", broker_url="")


def _copy_as(src: Path, dest: Path, version: str) -> Path:
    dest.mkdir(parents=True)
    manifest = yaml.safe_load((src / "model.yaml").read_text())
    manifest["version"] = version
    (dest / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    shutil.copy2(src / manifest["weights"]["file"], dest / manifest["weights"]["file"])
    return dest


def _flip_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_shipped_models_are_listed_as_demonstration_weights(tmp_path: Path) -> None:
    c = _center(tmp_path)
    r = c.rdc("models", "list")
    assert r.returncode == 0, r.stderr
    assert "cxr-triage" in r.stdout and "ct-nodule-seg" in r.stdout
    assert "not for clinical use" in " ".join(r.stdout.split())
    with c.db.session() as s:
        rows = {m.name: m for m in s.scalars(select(AIModel))}
    assert rows["cxr-triage"].enabled and rows["cxr-triage"].demonstration
    assert len(rows["cxr-triage"].sha256) == 64


def test_add_refuses_weights_that_do_not_match_their_sha256(tmp_path: Path) -> None:
    c = _center(tmp_path)
    bad = _copy_as(CXR, tmp_path / "bad", "9.0.0")
    _flip_byte(bad / "model.onnx")
    r = c.rdc("models", "add", str(bad))
    assert r.returncode != 0
    msg = " ".join(r.stderr.split())
    assert "SHA-256" in msg and "refused" in msg, msg
    with c.db.session() as s:
        assert s.scalar(select(AIModel).where(AIModel.version == "9.0.0")) is None


def test_add_enable_disable_verify_are_audited_and_tampering_is_caught(tmp_path: Path) -> None:
    c = _center(tmp_path)
    good = _copy_as(CXR, tmp_path / "good", "1.1.0")
    r = c.rdc("models", "add", str(good))
    assert r.returncode == 0, r.stderr
    assert c.rdc("models", "enable", "cxr-triage", "--version", "1.1.0").returncode == 0
    assert c.rdc("models", "verify", "cxr-triage", "--version", "1.1.0").returncode == 0
    assert c.rdc("models", "disable", "cxr-triage", "--version", "1.1.0").returncode == 0
    with c.db.session() as s:
        row = s.scalar(select(AIModel).where(AIModel.version == "1.1.0"))
        assert row is not None and not row.enabled
        registered = Path(row.path)
        actions = [a.action for a in s.scalars(select(AuditRecord).where(
            AuditRecord.object_id == "cxr-triage@1.1.0").order_by(AuditRecord.seq))]
    assert actions[:1] == ["model.add"] and "model.enable" in actions \
        and "model.disable" in actions and "model.verify" in actions, actions
    assert registered != good and registered.is_relative_to(c.home)  # copied in

    # The registered copy is changed behind the registry's back.
    _flip_byte(registered / "model.onnx")
    r = c.rdc("models", "verify", "cxr-triage", "--version", "1.1.0")
    assert r.returncode == 1 and "SHA-256" in " ".join(r.stderr.split()), r.stderr
    r = c.rdc("models", "enable", "cxr-triage", "--version", "1.1.0")
    assert r.returncode != 0
    with c.db.session() as s:
        row = s.scalar(select(AIModel).where(AIModel.version == "1.1.0"))
        assert row is not None and not row.enabled
    with pytest.raises(WeightsMismatch, match="SHA-256"):
        load_session(registered, load_manifest(registered))

    # The same version with other weights is refused.
    other = _copy_as(CXR, tmp_path / "other", "1.1.0")
    _flip_byte(other / "model.onnx", offset=2000)
    text = yaml.safe_load((other / "model.yaml").read_text())

    text["weights"]["sha256"] = sha256_file(other / "model.onnx")
    (other / "model.yaml").write_text(yaml.safe_dump(text, sort_keys=False))
    r = c.rdc("models", "add", str(other))
    assert r.returncode != 0 and "already registered" in r.stderr, r.stderr


def test_export_torchscript_to_a_registrable_folder(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    script = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(script))
    manifest = yaml.safe_load((CXR / "model.yaml").read_text())
    manifest.update(name="tiny-cxr", version="0.1.0")
    manifest["input"]["size"] = [32, 32]
    del manifest["weights"]["sha256"]
    template = tmp_path / "template.yaml"
    template.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = tmp_path / "exported"
    c = _center(tmp_path)
    r = c.rdc("models", "export", str(script), "--manifest", str(template), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "parity" in r.stdout
    exported = load_manifest(out)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=[CPU_PROVIDER])
    x = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], expected, atol=1e-4)
    assert c.rdc("models", "add", str(out)).returncode == 0
    assert exported.name == "tiny-cxr"


def test_provider_order_prefers_tensorrt_then_cuda_then_cpu() -> None:
    every = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers("auto", every) == ["TensorrtExecutionProvider",
                                               "CUDAExecutionProvider", CPU_PROVIDER]
    assert choose_providers("auto", ["CUDAExecutionProvider", CPU_PROVIDER]) == [
        "CUDAExecutionProvider", CPU_PROVIDER]
    assert choose_providers("cpu", every) == [CPU_PROVIDER]
    assert choose_providers("auto", [CPU_PROVIDER]) == [CPU_PROVIDER]
    with pytest.raises(ConfigurationError, match="no CUDA provider"):
        choose_providers("cuda", [CPU_PROVIDER])


def _gpu_present() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def test_session_runs_on_the_gpu_when_one_is_present() -> None:
    """On a GPU machine the CUDA path is taken and agrees with the CPU; elsewhere
    ``auto`` must land on the CPU and ``cuda`` must refuse rather than fall back."""
    manifest = load_manifest(CXR)
    x = np.random.default_rng(2).random((2, 1, 224, 224), dtype=np.float32)
    cpu = load_session(CXR, manifest, device="cpu")
    expected = cpu.run(x)
    auto = load_session(CXR, manifest, device="auto")
    if _gpu_present():
        assert "CUDAExecutionProvider" in ort.get_available_providers(), (
            "a GPU is present but this ONNX Runtime has no CUDA provider: install "
            "onnxruntime-gpu")
        gpu = load_session(CXR, manifest, device="cuda")
        assert gpu.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        assert auto.provider != CPU_PROVIDER
        np.testing.assert_allclose(gpu.run(x), expected, atol=2e-3)
    else:
        assert auto.provider == CPU_PROVIDER
        np.testing.assert_allclose(auto.run(x), expected, atol=1e-5)
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            with pytest.raises(ConfigurationError):
                load_session(CXR, manifest, device="cuda")


def test_rdc_models_help_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "rdc", "models", "--help"], cwd=REPO,
                       capture_output=True, text=True, check=False)
    for cmd in ("list", "add", "verify", "enable", "disable", "export", "runs"):
        assert cmd in r.stdout, r.stdout
