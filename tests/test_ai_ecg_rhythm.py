"""The demonstration ECG rhythm model: shipped manifest and weights (1.1.0, and 1.0.0
kept registered but disabled), ONNX parity, reproducible training, the signal
conditioning it shares with the ECG analysis, and regression tests for the defects of
1.0.0 on held-out strips (a template bank and generators seeded apart from training):
AF called on sinus rhythm with frequent PVCs and on irregular strips with P waves, the
reference ECG turned into AF by 1 mV of baseline wander, and a 50 Hz waveform read when
the ECG readers refuse it."""

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
from sqlalchemy import select

from ai_models import registry
from ai_models.dicom_outputs import build_sr
from ai_models.manifest import load_manifest, verify_weights
from ai_models.pipelines import PIPELINES, get_pipeline
from ai_models.pipelines.base import NotApplicable, Pipeline, Result
from ai_models.pipelines.ecg_rhythm import EcgRhythmPipeline, to_network_input
from ai_models.registry import ensure_shipped, shipped_model_dirs
from ai_models.training import ecg_simulator
from ai_models.training.ecg_network import ecg_cnn
from ai_models.training.export import export_onnx, onnx_session, parity
from conftest import Center
from core import ecg_filters
from core.models import AIModel, AuditRecord

ROOT = Path(__file__).resolve().parents[1]
ECG_DIR = ROOT / "ai_models" / "shipped" / "ecg-rhythm" / "1.1.0"
OLD_DIR = ROOT / "ai_models" / "shipped" / "ecg-rhythm" / "1.0.0"
#: Torch and ONNX Runtime (CPU, float32) on the same input: max |logit difference|.
PARITY_TOLERANCE = 1e-4
#: Held out from training (seed 0) and its held-out set (seed 100000): the test bank's
#: ECGSYN templates, beat shapes and every strip below are drawn from other seeds.
TEST_SEED = 424242
#: Real 12-lead ECGs kept outside the project (PhysioNet PTB record s0010_re).
ECG_DATA = ROOT.parent / "shared" / "data" / "ecg"


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

    def probabilities(self, signals: Sequence[np.ndarray], rate: float
                      ) -> list[dict[str, float]]:
        """Each (12, n) mV signal written as a DICOM ECG at ``rate`` and read by the
        pipeline: the probability per label."""
        results = self.read([[ecg_simulator.waveform_dataset(s, rate)] for s in signals])
        return [{f.label: f.probability for f in r.findings} for r in results]

    def threshold(self, label: str) -> float:
        return self.manifest.label(label).threshold


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


def _strips(bank: ecg_simulator.TemplateBank, seed: int, rhythm: str,
            rates: Sequence[float], ectopic_every: int | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [ecg_simulator.simulate(rng, bank, rhythm=rhythm, rate=float(r),
                                   ectopic_every=ectopic_every).signal for r in rates]


def _reference() -> tuple[np.ndarray, float]:
    """pydicom's 12-lead ECG (sinus rhythm, 1000 Hz, 10 s) in mV, lead order LEADS."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    return EcgRhythmPipeline(load_manifest(ECG_DIR)).signal_mv(ds)


# --- manifests, weights, registry ----------------------------------------------------

def test_shipped_manifest_and_weights() -> None:
    assert ECG_DIR in shipped_model_dirs()
    m = load_manifest(ECG_DIR)
    assert verify_weights(ECG_DIR, m) == ECG_DIR / "model.onnx"
    assert (m.name, m.version, m.task, m.pipeline, m.outputs) == (
        "ecg-rhythm", "1.1.0", "classification", "ecg_rhythm", ["sr"])
    assert m.pipeline in PIPELINES and get_pipeline(m).manifest is m
    assert m.applies_to.modalities == ["ECG"]
    assert set(m.applies_to.sop_classes) == {"1.2.840.10008.5.1.4.1.1.9.1.1",
                                             "1.2.840.10008.5.1.4.1.1.9.1.2"}
    assert m.input.size == [2500] and m.input.channels == 12 and m.input.sampling_rate == 250
    assert [lab.name for lab in m.labels] == ["sinus_rhythm", "atrial_fibrillation",
                                              "bradycardia", "tachycardia"]
    assert not any(lab.critical for lab in m.labels)
    assert m.demonstration and "NOT FOR CLINICAL USE" in m.intended_use
    assert "DEMONSTRATION WEIGHTS" in m.intended_use
    assert "high-pass" in m.description and "never instead of them" in m.description
    assert m.training is not None and m.training.script == "ai_models/training/train.py"
    assert m.training.seed == 0 and "PVC" in m.training.data and "f-waves" in m.training.data
    assert (ECG_DIR / "model.onnx").stat().st_size < 2_000_000


def test_version_1_0_0_still_ships_and_verifies() -> None:
    """Installs that registered 1.0.0 where it lies keep weights that verify."""
    assert OLD_DIR in shipped_model_dirs()
    m = load_manifest(OLD_DIR)
    assert m.version == "1.0.0" and m.demonstration
    verify_weights(OLD_DIR, m)


def _ecg_rows(c: Center) -> dict[str, bool]:
    with c.db.session() as s:
        return {r.version: r.enabled for r in s.scalars(
            select(AIModel).where(AIModel.name == "ecg-rhythm"))}


def test_a_new_install_enables_1_1_0_in_place_of_1_0_0(tmp_path: Path) -> None:
    c = Center(home=tmp_path / "home", db_url="", broker_url="")
    with c.db.session() as s:
        ensure_shipped(s, c.settings)
    assert _ecg_rows(c) == {"1.0.0": False, "1.1.0": True}
    # Production (only the environment; its database and broker checks are not the
    # point here): every version registered disabled, for an operator to decide.
    prod = Center(home=tmp_path / "prod", db_url="", broker_url="")
    settings = prod.settings.model_copy(update={"environment": "production"})
    with prod.db.session() as s:
        ensure_shipped(s, settings)
    assert _ecg_rows(prod) == {"1.0.0": False, "1.1.0": False}


def test_an_install_running_1_0_0_moves_to_1_1_0(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    c = Center(home=tmp_path / "home", db_url="", broker_url="")
    everything = shipped_model_dirs()
    before = [d for d in everything if d != ECG_DIR]  # the package as it was
    monkeypatch.setattr(registry, "shipped_model_dirs", lambda: before)
    with c.db.session() as s:
        ensure_shipped(s, c.settings)
    assert _ecg_rows(c) == {"1.0.0": True}
    monkeypatch.setattr(registry, "shipped_model_dirs", lambda: everything)
    with c.db.session() as s:
        ensure_shipped(s, c.settings)
    assert _ecg_rows(c) == {"1.0.0": False, "1.1.0": True}
    with c.db.session() as s:
        audits = [(a.action, a.detail) for a in s.scalars(select(AuditRecord).where(
            AuditRecord.object_id == "ecg-rhythm@1.0.0").order_by(AuditRecord.seq))]
    assert audits[-1][0] == "model.disable" and audits[-1][1]["superseded_by"] == "1.1.0"


# --- network, export, training --------------------------------------------------------

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
        done = subprocess.run([sys.executable, "-m", "ai_models.training.train", "ecg-rhythm",
                               "--quick", "--seed", "5", "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "epoch 1/1 loss" in done.stdout
        m = load_manifest(out)
        verify_weights(out, m)
        assert m.training is not None and m.training.seed == 5 and m.demonstration
        assert m.version == "1.1.0"
        digests.append((hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
                        (out / "model.yaml").read_text()))
    assert digests[0] == digests[1]


# --- the conditioning shared with the ECG analysis -----------------------------------

def test_the_shared_conditioning_removes_wander_and_mains_and_keeps_the_qrs_band() -> None:
    fs = 500.0
    t = np.arange(int(10 * fs)) / fs

    def kept(freq: float, at: float = fs) -> float:
        """Amplitude left of a 1 mV sine at ``freq`` after prepare (middle 6 s)."""
        out = ecg_filters.prepare(np.sin(2 * np.pi * freq * t)[None, :], at)
        return float(np.abs(out[0, 500:2000]).max())

    assert kept(0.1) < 0.01 and kept(0.25) < 0.05  # respiration wander
    assert kept(50.0) < 0.05 and kept(60.0) < 0.05  # mains
    assert 0.9 < kept(5.0) < 1.1 and 0.9 < kept(15.0) < 1.1  # P, T, QRS
    assert ecg_filters.prepare(np.zeros((12, 5000)), fs).shape == (12, 2500)
    assert ecg_filters.prepare(np.zeros((12, 3600)), 360.0).shape == (12, 2500)


def test_the_pipeline_input_is_the_shared_conditioning() -> None:
    signal, fs = _reference()
    x = to_network_input(signal, fs, target_rate=250.0, samples=2500, window=(-5.0, 5.0))
    clean = ecg_filters.prepare(signal, fs, 250.0)[:, :2500]
    clean = clean - np.median(clean, axis=1, keepdims=True)
    np.testing.assert_allclose(x, np.clip((clean + 5.0) / 10.0, 0, 1), atol=1e-6)


def test_the_minimum_rate_is_the_ecg_readers_minimum() -> None:
    from ecg import signal as ecg_signal  # the test may look at both packages

    assert ecg_filters.MIN_SAMPLING_RATE_HZ == ecg_signal.MIN_SAMPLING_RATE_HZ
    with pytest.raises(ecg_filters.SamplingRateTooLow, match="50 Hz is below the 100 Hz"):
        ecg_filters.prepare(np.zeros((12, 500)), 50.0)


# --- findings ---------------------------------------------------------------------------

def test_pydicom_sinus_ecg_is_sinus_rhythm_and_not_af(ecg: Model) -> None:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    [result] = ecg.read([[ds]])
    found = {f.label: f for f in result.findings}
    assert found["sinus_rhythm"].positive, result
    assert not found["atrial_fibrillation"].positive, result
    assert not found["tachycardia"].positive, result
    assert not any(f.critical for f in result.findings)


@pytest.mark.parametrize("wander_hz", [0.1, 0.25, 0.5])
def test_the_reference_ecg_with_1_mv_of_wander_is_still_not_af(ecg: Model,
                                                              wander_hz: float) -> None:
    """1.0.0 read the reference ECG with 1 mV of baseline wander as AF."""
    signal, fs = _reference()
    t = np.arange(signal.shape[1]) / fs
    # 1 mV peak in the leads that move most, less and of either sign in the others.
    gains = np.linspace(1.0, 0.4, 12)[:, None] * np.where(np.arange(12) % 3 == 1, -1, 1)[:, None]
    wander = gains * np.sin(2 * np.pi * wander_hz * t + 0.7)[None, :]
    drift = np.linspace(-0.5, 0.5, len(t))[None, :] * gains  # and a slow drift
    [plain, wandering, drifting] = ecg.probabilities(
        [signal, signal + wander, signal + 0.5 * wander + drift], fs)
    af, sinus = ecg.threshold("atrial_fibrillation"), ecg.threshold("sinus_rhythm")
    for p in (wandering, drifting):
        assert p["atrial_fibrillation"] < af and p["sinus_rhythm"] >= sinus, (plain, p)


def test_sinus_rhythm_with_frequent_pvcs_is_not_af(ecg: Model,
                                                   bank: ecg_simulator.TemplateBank) -> None:
    """1.0.0 called AF on sinus rhythm with frequent PVCs: every 3rd beat (trigeminy),
    and every 2nd (bigeminy), at 50-120/min."""
    trigeminy = _strips(bank, TEST_SEED + 1, "sinus_pvc", np.linspace(50, 120, 12),
                        ectopic_every=3)
    bigeminy = _strips(bank, TEST_SEED + 2, "sinus_pvc", np.linspace(50, 110, 6),
                       ectopic_every=2)
    probs = ecg.probabilities(trigeminy + bigeminy, ecg_simulator.SAMPLING_RATE)
    af = [p["atrial_fibrillation"] for p in probs]
    assert max(af) < ecg.threshold("atrial_fibrillation"), np.round(af, 3)
    sinus = np.mean([p["sinus_rhythm"] >= ecg.threshold("sinus_rhythm") for p in probs])
    assert sinus >= 0.9, [round(p["sinus_rhythm"], 3) for p in probs]


def test_irregular_strips_with_p_waves_are_not_af(ecg: Model,
                                                  bank: ecg_simulator.TemplateBank) -> None:
    """1.0.0 called AF on irregular rhythms that have a P wave before every QRS: marked
    sinus arrhythmia, frequent premature atrial beats (bigeminy and at random), and a
    wandering atrial pacemaker (multifocal P waves)."""
    strips = (_strips(bank, TEST_SEED + 3, "sinus_arrhythmia", np.linspace(50, 100, 6))
              + _strips(bank, TEST_SEED + 4, "sinus_pac", np.linspace(55, 110, 4),
                        ectopic_every=2)
              + _strips(bank, TEST_SEED + 5, "sinus_pac", np.linspace(55, 110, 4))
              + _strips(bank, TEST_SEED + 6, "multifocal_atrial", np.linspace(55, 100, 8)))
    probs = ecg.probabilities(strips, ecg_simulator.SAMPLING_RATE)
    af = [p["atrial_fibrillation"] for p in probs]
    assert max(af) < ecg.threshold("atrial_fibrillation"), np.round(af, 3)


def test_af_sensitivity_and_ppv_on_40_held_out_strips(ecg: Model,
                                                     bank: ecg_simulator.TemplateBank
                                                     ) -> None:
    """20 AF strips (f-waves 0-0.1 mV, 55-160/min, some with 1 mV of wander) against
    20 hard non-AF strips (PVCs, PACs, sinus arrhythmia, multifocal P, plain sinus)."""
    rng = np.random.default_rng(TEST_SEED + 7)
    af_strips = [ecg_simulator.simulate(rng, bank, rhythm="af", rate=float(r),
                                        f_wave_mv=float(f),
                                        wander_mv=1.0 if k % 4 == 0 else None).signal
                 for k, (r, f) in enumerate(zip(np.linspace(55, 160, 20),
                                                np.linspace(0.0, 0.1, 20), strict=True))]
    others = []
    for k, rhythm in enumerate(["sinus_pvc", "sinus_pac", "sinus_arrhythmia",
                                "multifocal_atrial", "sinus"] * 4):
        others.append(ecg_simulator.simulate(
            rng, bank, rhythm=rhythm, rate=float(rng.uniform(55, 115)),
            wander_mv=1.0 if k % 4 == 0 else None).signal)
    probs = ecg.probabilities(af_strips + others, ecg_simulator.SAMPLING_RATE)
    called = np.asarray([p["atrial_fibrillation"] >= ecg.threshold("atrial_fibrillation")
                         for p in probs])
    truth = np.asarray([True] * len(af_strips) + [False] * len(others))
    sensitivity = float(np.sum(called & truth) / truth.sum())
    ppv = float(np.sum(called & truth) / max(called.sum(), 1))
    assert sensitivity >= 0.9 and ppv >= 0.9, (sensitivity, ppv)


def test_a_real_12_lead_ecg_from_ptb_is_not_af(ecg: Model) -> None:
    """PTB s0010_re (1000 Hz, an 81-year-old woman after an inferolateral infarction):
    three 10 s windows, none called AF."""
    import wfdb

    record = wfdb.rdrecord(str(ECG_DATA / "s0010_re"), channels=list(range(12)))
    signal = np.asarray(record.p_signal, dtype=np.float64).T  # mV, I ... V6
    windows = [signal[:, k * 10_000:(k + 1) * 10_000] for k in range(3)]
    probs = ecg.probabilities(windows, float(record.fs))
    assert all(p["atrial_fibrillation"] < ecg.threshold("atrial_fibrillation")
               for p in probs), probs


@pytest.mark.parametrize(("rhythm", "rate", "want", "absent"), [
    ("af", 85.0, {"atrial_fibrillation"}, {"sinus_rhythm", "bradycardia", "tachycardia"}),
    ("af", 140.0, {"atrial_fibrillation", "tachycardia"}, {"sinus_rhythm"}),
    ("sinus", 135.0, {"sinus_rhythm", "tachycardia"}, {"atrial_fibrillation", "bradycardia"}),
    ("sinus", 45.0, {"sinus_rhythm", "bradycardia"}, {"atrial_fibrillation", "tachycardia"}),
    ("sinus", 75.0, {"sinus_rhythm"}, {"atrial_fibrillation", "bradycardia", "tachycardia"}),
    ("sinus_pvc", 75.0, {"sinus_rhythm"}, {"atrial_fibrillation"}),
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
    assert accuracy["sinus_rhythm"] >= 0.93 and accuracy["atrial_fibrillation"] >= 0.95, \
        accuracy
    assert accuracy["bradycardia"] >= 0.93 and accuracy["tachycardia"] >= 0.93, accuracy


# --- what is not read -----------------------------------------------------------------

def test_a_50_hz_waveform_is_refused_with_the_reason(ecg: Model) -> None:
    """The ECG readers refuse < 100 Hz; 1.0.0 resampled a 50 Hz strip up and read it.
    Now the job is skipped (NotApplicable) with the reason."""
    signal, fs = _reference()
    slow = ecg_filters.resample(signal, fs, 50.0)
    ds = ecg_simulator.waveform_dataset(slow, 50.0)
    with pytest.raises(NotApplicable, match=r"sampled at 50 Hz, below the 100 Hz a "
                                            r"diagnostic ECG needs"):
        ecg.pipeline.check([ds])
    with pytest.raises(NotApplicable, match="sampled at 99 Hz"):
        ecg.pipeline.check([ecg_simulator.waveform_dataset(np.zeros((12, 1000)), 99.0)])
    ecg.pipeline.check([ecg_simulator.waveform_dataset(np.zeros((12, 1000)), 100.0)])


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
