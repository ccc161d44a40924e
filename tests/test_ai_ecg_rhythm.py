"""The demonstration ECG rhythm model: shipped manifest and weights, ONNX parity,
reproducible training, findings on pydicom's ECG and on held-out simulated ECGs
written as DICOM, and the reasons a waveform is not read."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from ai_models import ecg_simulator
from ai_models.dicom_outputs import build_sr
from ai_models.ecg_network import ecg_cnn
from ai_models.export import export_onnx, onnx_session, parity
from ai_models.manifest import load_manifest, verify_weights
from ai_models.pipelines import PIPELINES, get_pipeline
from ai_models.pipelines.base import NotApplicable, Pipeline, Result
from ai_models.registry import shipped_model_dirs

ROOT = Path(__file__).resolve().parents[1]
ECG_DIR = ROOT / "ai_models" / "shipped" / "ecg-rhythm" / "1.0.0"
#: Torch and ONNX Runtime (CPU, float32) on the same input: max |logit difference|.
PARITY_TOLERANCE = 1e-4
#: Held out from training (seed 0) and its held-out set (seed 100000).
TEST_SEED = 424242


class Model:
    def __init__(self, folder: Path) -> None:
        self.manifest = load_manifest(folder)
        self.session = onnx_session(verify_weights(folder, self.manifest))
        self.pipeline: Pipeline = get_pipeline(self.manifest)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"input": batch})[0])

    def read(self, series: Sequence[Sequence[Dataset]]) -> list[Result]:
        prepared = []
        for datasets in series:
            self.pipeline.check(datasets)
            prepared.append(self.pipeline.preprocess(datasets))
        outputs = self.pipeline.predict(prepared, self.run)
        return [self.pipeline.postprocess(p, o) for p, o in zip(prepared, outputs, strict=True)]


@pytest.fixture(scope="module")
def ecg() -> Model:
    return Model(ECG_DIR)


@pytest.fixture(scope="module")
def bank() -> ecg_simulator.TemplateBank:
    return ecg_simulator.TemplateBank(TEST_SEED)


def _positive(result: Result) -> set[str]:
    return {f.label for f in result.findings if f.positive}


def _roundtrip(ds: Dataset, tmp_path: Path, name: str) -> Dataset:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def test_shipped_manifest_and_weights() -> None:
    assert ECG_DIR in shipped_model_dirs()
    m = load_manifest(ECG_DIR)
    assert verify_weights(ECG_DIR, m) == ECG_DIR / "model.onnx"
    assert (m.name, m.version, m.task, m.pipeline, m.outputs) == (
        "ecg-rhythm", "1.0.0", "classification", "ecg_rhythm", ["sr"])
    assert m.pipeline in PIPELINES and get_pipeline(m).manifest is m
    assert m.applies_to.modalities == ["ECG"]
    assert set(m.applies_to.sop_classes) == {"1.2.840.10008.5.1.4.1.1.9.1.1",
                                             "1.2.840.10008.5.1.4.1.1.9.1.2"}
    assert m.input.size == [2500] and m.input.channels == 12 and m.input.sampling_rate == 250
    assert [lab.name for lab in m.labels] == ["sinus_rhythm", "atrial_fibrillation",
                                              "bradycardia", "tachycardia"]
    assert not any(lab.critical for lab in m.labels)
    assert m.demonstration and "NOT FOR CLINICAL USE" in m.intended_use
    assert m.training is not None and m.training.script == "ai_models/train.py"
    assert (ECG_DIR / "model.onnx").stat().st_size < 2_000_000


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ecg_cnn(4).eval()
    path = export_onnx(net, torch.zeros(1, 12, 2500), tmp_path / "ecg.onnx")
    x = np.random.default_rng(0).random((4, 12, 2500), dtype=np.float32)
    assert parity(net, path, x) < PARITY_TOLERANCE
    assert path.stat().st_size < 2_000_000


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run([sys.executable, "-m", "ai_models.train", "ecg-rhythm",
                               "--quick", "--seed", "5", "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "epoch 1/1 loss" in done.stdout
        m = load_manifest(out)
        verify_weights(out, m)
        assert m.training is not None and m.training.seed == 5 and m.demonstration
        digests.append((hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
                        (out / "model.yaml").read_text()))
    assert digests[0] == digests[1]


def test_pydicom_sinus_ecg_is_sinus_rhythm_and_not_af(ecg: Model) -> None:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    [result] = ecg.read([[ds]])
    found = {f.label: f for f in result.findings}
    assert found["sinus_rhythm"].positive, result
    assert not found["atrial_fibrillation"].positive, result
    assert not found["tachycardia"].positive, result
    assert not any(f.critical for f in result.findings)


@pytest.mark.parametrize(("rhythm", "rate", "want", "absent"), [
    ("af", 95.0, {"atrial_fibrillation"}, {"sinus_rhythm", "bradycardia", "tachycardia"}),
    ("af", 140.0, {"atrial_fibrillation", "tachycardia"}, {"sinus_rhythm"}),
    ("sinus", 135.0, {"sinus_rhythm", "tachycardia"}, {"atrial_fibrillation", "bradycardia"}),
    ("sinus", 45.0, {"sinus_rhythm", "bradycardia"}, {"atrial_fibrillation", "tachycardia"}),
    ("sinus", 75.0, {"sinus_rhythm"}, {"atrial_fibrillation", "bradycardia", "tachycardia"}),
])
def test_held_out_simulated_ecgs_as_dicom(ecg: Model, bank: ecg_simulator.TemplateBank,
                                          tmp_path: Path, rhythm: str, rate: float,
                                          want: set[str], absent: set[str]) -> None:
    rng = np.random.default_rng(TEST_SEED + int(rate))
    record = ecg_simulator.simulate(rng, bank, rhythm=rhythm, rate=rate)
    # Stored at 500 Hz, as many carts record: the pipeline resamples to 250 Hz.
    t = np.arange(record.signal.shape[1] * 2) / 500.0
    t_in = np.arange(record.signal.shape[1]) / record.sampling_rate
    signal = np.stack([np.interp(t, t_in, lead) for lead in record.signal])
    ds = _roundtrip(ecg_simulator.waveform_dataset(signal, 500.0), tmp_path, "sim")
    [result] = ecg.read([[ds]])
    positive = _positive(result)
    assert want <= positive and not (absent & positive), (record.heart_rate, result)


def test_held_out_accuracy_on_simulated_ecgs(ecg: Model, bank: ecg_simulator.TemplateBank
                                             ) -> None:
    records = ecg_simulator.dataset(TEST_SEED, 120, bank)
    prepared = [ecg.pipeline.preprocess([ecg_simulator.waveform_dataset(
        r.signal, r.sampling_rate)]) for r in records]
    outputs = ecg.pipeline.predict(prepared, ecg.run)
    correct = {lab.name: 0 for lab in ecg.manifest.labels}
    for record, p, o in zip(records, prepared, outputs, strict=True):
        for f in ecg.pipeline.postprocess(p, o).findings:
            correct[f.label] += int(f.positive == record.labels[f.label])
    accuracy = {k: v / len(records) for k, v in correct.items()}
    assert accuracy["sinus_rhythm"] >= 0.95 and accuracy["atrial_fibrillation"] >= 0.95, \
        accuracy
    assert accuracy["bradycardia"] >= 0.93 and accuracy["tachycardia"] >= 0.93, accuracy


def test_a_non_12_lead_waveform_is_skipped_with_the_reason(ecg: Model) -> None:
    three = ecg_simulator.waveform_dataset(np.zeros((3, 2500)), 250.0, leads=("I", "II", "III"),
                                           sop_class=ecg_simulator.GENERAL_ECG_STORAGE)
    with pytest.raises(NotApplicable, match=r"3 channels .* not a 12-lead ECG.*missing aVR"):
        ecg.pipeline.check([three])


def test_other_waveforms_and_images_are_skipped_with_reasons(ecg: Model) -> None:
    good = ecg_simulator.waveform_dataset(np.zeros((12, 2500)), 250.0)
    zero_rate = ecg_simulator.waveform_dataset(np.zeros((12, 2500)), 250.0)
    zero_rate.WaveformSequence[0].SamplingFrequency = "0"
    with pytest.raises(NotApplicable, match="sampling frequency"):
        ecg.pipeline.check([zero_rate])
    no_wave = ecg_simulator.waveform_dataset(np.zeros((12, 2500)), 250.0)
    del no_wave.WaveformSequence
    with pytest.raises(NotApplicable, match="no waveform"):
        ecg.pipeline.check([no_wave])
    short = ecg_simulator.waveform_dataset(np.zeros((12, 1000)), 250.0)
    with pytest.raises(NotApplicable, match=r"4\.00 s"):
        ecg.pipeline.check([short])
    image = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with pytest.raises(NotApplicable, match="modality CT"):
        ecg.pipeline.check([image])
    with pytest.raises(NotApplicable, match="one ECG waveform per series"):
        ecg.pipeline.check([good, good])
    ecg.pipeline.check([good])


def test_the_sr_references_the_waveform(ecg: Model) -> None:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    [result] = ecg.read([[ds]])
    sr = build_sr([ds], ecg.manifest, result.findings, series_uid="2.25.1", sop_uid="2.25.2",
                  device="CPUExecutionProvider")
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
