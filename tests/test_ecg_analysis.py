"""ECG analysis checked against simulated ECGs with known rate, intervals and findings.

Two simulators:

* neurokit2's ``ecg_simulate(method="multileads")`` (ECGSYN, McSharry 2003) at 45/75/130
  bpm: heart rate must be within +-3 bpm. ECGSYN waves are Gaussians whose centres and
  widths are set by angles that scale with the rate, so P onset (P centre - 2 sigma) and
  T end (T centre + 2 sigma) are known analytically; both must be within +-25 ms.
  Its leads are scaled independently, so axes and voltages are not checked on it.
* ``synth`` below: raised-cosine waves with exact onsets/offsets on a frontal dipole
  (Einthoven-consistent limb leads). Tolerances: PR +-20 ms, QRS +-15 ms, QT +-35 ms
  (the T wave's raised-cosine tail is below any fixed threshold for its last ~20 ms),
  axes +-10 degrees, ST +-0.03 mV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path

import neurokit2 as nk
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from ecg.analyze import Analysis, analyze
from ecg.readers import read_ecg
from ecg.signal import LEADS, Ecg12, assemble

LIMB = {"I": 0.0, "II": 60.0, "III": 120.0, "aVR": -150.0, "aVL": -30.0, "aVF": 90.0}
R_W = [0.2, 0.4, 0.7, 1.0, 1.1, 0.9]
S_W = [1.4, 1.6, 0.9, 0.4, 0.2, 0.1]
T_W = [0.1, 0.4, 0.6, 0.6, 0.5, 0.4]


def _hann(t: np.ndarray, start: float, stop: float) -> np.ndarray:
    out = np.zeros_like(t)
    inside = (t >= start) & (t <= stop)
    out[inside] = 0.5 - 0.5 * np.cos(2 * np.pi * (t[inside] - start) / (stop - start))
    return out


#: Frontal direction of the initial (Q) vector of an infarct by wall, and the precordial
#: leads that show it.
INFARCT_Q = {"inferior": (-90.0, ()), "lateral": (180.0, ("V5", "V6")),
             "anterior": (None, ("V1", "V2", "V3", "V4"))}


def synth(hr: float = 75.0, pr: float = 160.0, qrs: float = 90.0, qt: float = 380.0,
          fs: float = 500.0, duration: float = 10.0, axis: float = 60.0, p_wave: bool = True,
          st: dict[str, float] | None = None, rr_jitter: float = 0.0, r_scale: float = 1.0,
          sex: str | None = None, age: float | None = None, seed: int = 0,
          rr_ms: Sequence[float] | None = None, pvc: Collection[int] = (),
          pac: Collection[int] = (), f_waves_mv: float = 0.0, t_amp: float = 0.35,
          q_infarct: str | None = None, t_invert: Collection[str] = (),
          noise_mv: float = 0.0) -> Ecg12:
    """A 12-lead ECG whose P onset, QRS onset/offset and T end are exact (ms).

    ``rr_ms`` gives the beat-to-beat intervals (QRS onset to QRS onset, from 400 ms on)
    instead of ``hr``/``rr_jitter``; beats listed in ``pvc`` are wide ventricular
    complexes (140 ms, no P wave, discordant T), those in ``pac`` have an inverted P wave.
    ``f_waves_mv`` adds fibrillatory waves (4-9 Hz, that peak amplitude in V1),
    ``q_infarct`` a 40-ms pathological Q wave over one wall, ``t_invert`` inverts the T
    wave in those precordial leads.
    """
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng(seed + 1000)
    n = int(duration * fs)
    t = np.arange(n) / fs * 1000.0
    leads = {name: np.zeros(n) for name in LEADS}
    st = st or {}
    onset = 400.0
    beat = 0
    while onset < t[-1] + pr:
        rel = t - onset
        if beat in pvc:
            wide = 140.0
            r = 1.6 * _hann(rel, 0, wide)
            tw = -0.5 * _hann(rel, wide + 60, qt + 40)
            for name, angle in LIMB.items():
                proj = math.cos(math.radians(angle + 60))  # axis -60: a left-ventricular PVC
                leads[name] += proj * (r + tw)
            for i in range(6):
                sign = 1.0 if i < 3 else -1.0  # LBBB-like: up in V1-V3, down in V4-V6
                leads[f"V{i + 1}"] += sign * (r + tw) * (0.5 + 0.2 * i)
        else:
            p_sign = -1.0 if beat in pac else 1.0
            p = p_sign * 0.15 * _hann(rel, -pr, -pr + 100) if p_wave else 0.0 * rel
            q = -0.1 * _hann(rel, 0, 0.25 * qrs)
            r = 1.2 * r_scale * _hann(rel, 0.15 * qrs, 0.75 * qrs)
            s = -0.35 * r_scale * _hann(rel, 0.6 * qrs, qrs)
            tw = t_amp * _hann(rel, qrs + 0.35 * (qt - qrs), qt)
            rise = np.clip((rel - 0.5 * qrs) / (0.5 * qrs), 0, 1)
            fall = np.clip((qt - rel) / (0.5 * (qt - qrs)), 0, 1)
            st_shape = np.where(rel > qrs + 0.5 * (qt - qrs), fall, rise)
            # An infarct's Q: the initial 40 ms point away from the dead wall, and the R
            # there is smaller and later.
            q_inf = -0.5 * _hann(rel, 0, 50) if q_infarct else 0.0 * rel
            q_dir, q_leads = INFARCT_Q.get(q_infarct or "", (None, ()))
            for name, angle in LIMB.items():
                proj = math.cos(math.radians(angle - axis))
                t_proj = math.cos(math.radians(angle - (axis - 10)))
                p_proj = math.cos(math.radians(angle - 55))
                q_proj = 0.0 if q_dir is None else -math.cos(math.radians(angle - q_dir))
                leads[name] += (p_proj * p + proj * (q + r + s) + t_proj * tw
                                + st.get(name, 0.0) * st_shape + q_proj * q_inf)
            for i in range(6):
                name = f"V{i + 1}"
                t_sign = -1.0 if name in t_invert else 1.0
                q_here = q_inf if name in q_leads else 0.0 * rel
                leads[name] += (0.5 * p + R_W[i] * r + S_W[i] * s + t_sign * T_W[i] * tw
                                + st.get(name, 0.0) * st_shape + q_here)
        if rr_ms is not None:
            if beat >= len(rr_ms):
                break
            onset += rr_ms[beat]
        else:
            onset += 60000.0 / hr * (1 + rr_jitter * rng.uniform(-1, 1))
        beat += 1
    if f_waves_mv:
        freq = 6.0 + 1.5 * np.cumsum(extra.normal(0, 0.02, n))  # wandering 4-9 Hz
        freq = np.clip(freq, 4.0, 9.0)
        phase = 2 * np.pi * np.cumsum(freq) / fs
        wave = f_waves_mv * np.sin(phase) * (0.7 + 0.3 * np.sin(2 * np.pi * 0.3 * t / 1000))
        for name, angle in LIMB.items():
            leads[name] += 0.6 * math.cos(math.radians(angle - 80)) * wave
        for i, gain in enumerate((1.0, 0.7, 0.5, 0.35, 0.25, 0.2)):
            leads[f"V{i + 1}"] += gain * wave
    if noise_mv:
        base = extra.normal(0, noise_mv, (3, n))
        for name, angle in LIMB.items():
            a = math.radians(angle)
            leads[name] += math.cos(a) * base[0] + math.sin(a) * base[1]
        for i in range(6):
            leads[f"V{i + 1}"] += extra.normal(0, noise_mv, n)
    return assemble(leads, fs, patient_sex=sex, patient_age_years=age,
                    source_format="synthetic")


def _nk12(hr: float) -> Ecg12:
    df = nk.ecg_simulate(duration=10, sampling_rate=500, heart_rate=hr,
                         method="multileads", random_state=7)
    return assemble({c: df[c].to_numpy() for c in df.columns}, 500.0, source_format="sim")


@pytest.fixture(scope="module", params=[45.0, 75.0, 130.0])
def nk_case(request: pytest.FixtureRequest) -> tuple[float, Analysis]:
    hr = float(request.param)
    return hr, analyze(_nk12(hr))


def test_neurokit_multilead_rate_and_wave_boundaries(nk_case: tuple[float, Analysis]) -> None:
    hr, result = nk_case
    m = result.measurements
    assert m is not None
    assert abs(m.heart_rate_bpm - hr) <= 3.0
    assert m.p_wave_present and m.pr_ms is not None and m.qt_ms is not None
    rr = 60.0 / hr * 1000.0
    f1, f2 = math.sqrt(hr / 60), (hr / 60) ** 0.25  # ECGSYN's rate scaling of angles/widths
    p_on = -(70 * f2 / 360 * rr + 2 * math.degrees(0.25 * f1) / 360 * rr)
    t_end = 100 * f2 / 360 * rr + 2 * math.degrees(0.4 * f1) / 360 * rr
    assert m.fiducials_ms["p_on"] == pytest.approx(p_on, abs=25)
    assert m.fiducials_ms["t_off"] == pytest.approx(t_end, abs=25)
    assert m.qrs_ms is not None and 50 <= m.qrs_ms < 120
    assert m.qtc_bazett_ms == pytest.approx(m.qt_ms / math.sqrt(m.rr_ms / 1000))
    assert m.qtc_fridericia_ms == pytest.approx(m.qt_ms / (m.rr_ms / 1000) ** (1 / 3))
    assert set(m.st_j60_mv) == set(LEADS)


def test_neurokit_multilead_rate_statements(nk_case: tuple[float, Analysis]) -> None:
    hr, result = nk_case
    codes = result.codes
    assert ("bradycardia" in codes) == (hr < 60)
    assert ("tachycardia" in codes) == (hr > 100)
    assert "sinus_rhythm" in codes
    assert not result.critical  # 45 and 130 bpm are abnormal but not critical rates
    assert "stemi" not in codes
    # ECGSYN stretches T with RR: at 45 bpm its QT really is long (T end ~490 ms after R).
    m = result.measurements
    assert m is not None and m.qtc_fridericia_ms is not None
    assert ("long_qt" in codes) == (m.qtc_fridericia_ms >= 460)
    json.dumps(result.to_dict())


def test_pydicom_sample_analyses() -> None:
    path = get_testdata_file("waveform_ecg.dcm")
    assert path is not None
    result = analyze(read_ecg(Path(str(path)).read_bytes()))
    m = result.measurements
    assert m is not None and result.quality.grade == "good"
    assert 55 < m.heart_rate_bpm < 67
    assert m.pr_ms is not None and 120 <= m.pr_ms <= 200
    assert m.qrs_ms is not None and 60 <= m.qrs_ms < 110
    assert m.qt_ms is not None and 320 <= m.qt_ms <= 420
    assert m.qrs_axis_deg is not None and 0 <= m.qrs_axis_deg <= 90
    assert "sinus_rhythm" in result.codes and not result.critical
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["metadata"]["patient_id"] == "642341"
    assert set(doc["timings_ms"]) == {"quality", "measure", "interpret", "total"}


@pytest.mark.parametrize(("hr", "pr", "qrs", "qt", "axis"), [
    (45.0, 180.0, 90.0, 440.0, 60.0),
    (75.0, 160.0, 100.0, 380.0, -45.0),
    (130.0, 140.0, 80.0, 300.0, 100.0),
])
def test_known_intervals_and_axes(hr: float, pr: float, qrs: float, qt: float,
                                  axis: float) -> None:
    m = analyze(synth(hr=hr, pr=pr, qrs=qrs, qt=qt, axis=axis)).measurements
    assert m is not None
    assert m.heart_rate_bpm == pytest.approx(hr, abs=1)
    assert m.pr_ms == pytest.approx(pr, abs=20)
    assert m.qrs_ms == pytest.approx(qrs, abs=15)
    assert m.qt_ms == pytest.approx(qt, abs=35)
    assert m.qrs_axis_deg == pytest.approx(axis, abs=10)
    assert m.p_axis_deg == pytest.approx(55, abs=10)
    assert m.t_axis_deg == pytest.approx(axis - 10, abs=10)


def test_first_degree_av_block() -> None:
    result = analyze(synth(pr=260))
    (stmt,) = [s for s in result.statements if s.code == "first_degree_av_block"]
    assert stmt.evidence["pr_ms"] == pytest.approx(260, abs=20)
    assert "sinus_rhythm" in result.codes


def test_wide_qrs() -> None:
    result = analyze(synth(qrs=150, qt=420))
    assert any(c.startswith("wide_qrs") for c in result.codes)


def test_long_qt_and_critical_long_qt() -> None:
    moderate = analyze(synth(hr=60, qt=480))
    assert "long_qt" in moderate.codes and not moderate.critical
    severe = analyze(synth(hr=60, qt=570))
    assert "long_qt" in severe.codes and severe.critical


def test_critical_rates() -> None:
    slow = analyze(synth(hr=35, qt=440))
    assert "bradycardia" in slow.codes and slow.critical
    fast = analyze(synth(hr=165, pr=120, qrs=80, qt=260))
    assert "tachycardia" in fast.codes and fast.critical


def test_stemi_anterior_is_critical_with_evidence() -> None:
    result = analyze(synth(st={"V2": 0.35, "V3": 0.35, "V4": 0.3}, sex="M", age=60))
    (stmt,) = [s for s in result.statements if s.code == "stemi"]
    assert stmt.critical and result.critical
    assert {"V2", "V3", "V4"} <= set(stmt.evidence["leads"])
    assert stmt.evidence["st_j60_mv"]["V3"] == pytest.approx(0.35, abs=0.03)
    assert stmt.evidence["thresholds_mv"]["V2"] == 0.2


def test_st_elevation_below_threshold_is_not_stemi() -> None:
    result = analyze(synth(st={"V2": 0.12, "V3": 0.12}, sex="M", age=60))
    assert "stemi" not in result.codes and not result.critical


def test_lvh_voltage() -> None:
    result = analyze(synth(r_scale=2.6))
    (stmt,) = [s for s in result.statements if s.code == "lvh_voltage"]
    assert stmt.evidence["sokolow_lyon_mv"] >= 3.5
    assert "lvh_voltage" not in analyze(synth()).codes


def test_irregular_rhythm_without_p_suggests_af() -> None:
    result = analyze(synth(p_wave=False, rr_jitter=0.35, seed=3))
    assert "atrial_fibrillation_suspected" in result.codes
    assert "sinus_rhythm" not in result.codes


def test_flat_lead_is_flagged_and_lowers_confidence() -> None:
    ecg = synth()
    leads = ecg.leads.copy()
    leads[LEADS.index("V3")] = 0.0
    result = analyze(Ecg12(leads=leads, sampling_rate=ecg.sampling_rate))
    v3 = next(q for q in result.quality.leads if q.lead == "V3")
    assert v3.flat and not v3.usable
    assert "V3: flat or disconnected" in result.quality.problems
    assert result.confidence < 1.0
    assert result.measurements is not None and "V3" not in result.measurements.leads_used


def test_noisy_and_saturated_leads_are_flagged() -> None:
    ecg = synth()
    leads = ecg.leads.copy()
    rng = np.random.default_rng(1)
    leads[LEADS.index("V5")] += rng.normal(0, 0.2, leads.shape[1]).astype(np.float32)
    leads[LEADS.index("II")] = np.clip(leads[LEADS.index("II")], -0.2, 0.3)
    result = analyze(Ecg12(leads=leads, sampling_rate=ecg.sampling_rate))
    by_lead = {q.lead: q for q in result.quality.leads}
    assert by_lead["V5"].noisy and by_lead["II"].saturated
    assert result.confidence <= 0.9


def test_limb_lead_reversal_is_suspected() -> None:
    ecg = synth()
    idx = {name: i for i, name in enumerate(LEADS)}
    leads = ecg.leads.copy()
    # RA <-> LA: I inverts, II <-> III, aVR <-> aVL.
    leads[idx["I"]] = -ecg.leads[idx["I"]]
    leads[idx["II"]], leads[idx["III"]] = ecg.leads[idx["III"]], ecg.leads[idx["II"]]
    leads[idx["aVR"]], leads[idx["aVL"]] = ecg.leads[idx["aVL"]], ecg.leads[idx["aVR"]]
    result = analyze(Ecg12(leads=leads, sampling_rate=ecg.sampling_rate))
    assert result.quality.limb_reversal_suspected
    assert "limb_lead_reversal_suspected" in result.codes
    assert result.confidence < 0.8
    assert "limb_lead_reversal_suspected" not in analyze(synth()).codes


def test_all_flat_ecg_is_reported_not_raised() -> None:
    result = analyze(Ecg12(leads=np.zeros((12, 5000), np.float32), sampling_rate=500.0))
    assert result.measurements is None and result.confidence == 0.0
    assert result.quality.grade == "unusable"
    assert result.codes == ["not_analysable"]
    json.dumps(result.to_dict())


# --- Issue 10 ------------------------------------------------------------------------------
# Each test fails on the analysis before issue 10 (ecg-core-1).

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecg"


def _critical(result: Analysis) -> set[str]:
    return {s.code for s in result.statements if s.critical}


# Item 1: a T wave that ends later than 0.6 RR after the R peak.

def test_long_qt_past_sixty_percent_of_rr_is_measured_and_critical() -> None:
    result = analyze(synth(hr=100, qt=450))
    m = result.measurements
    assert m is not None and m.qt_ms is not None
    assert m.qt_ms == pytest.approx(450, abs=30)
    assert m.qtc_fridericia_ms is not None and m.qtc_fridericia_ms > 500  # truly 534
    (stmt,) = [s for s in result.statements if s.code == "long_qt"]
    assert stmt.critical and result.critical


@pytest.mark.parametrize(("hr", "qt"), [(60, 600), (40, 640), (75, 520), (90, 480), (30, 700)])
def test_long_qt_is_not_read_short(hr: float, qt: float) -> None:
    m = analyze(synth(hr=hr, qt=qt)).measurements
    assert m is not None and m.qt_ms is not None
    assert m.qt_ms == pytest.approx(qt, abs=30)


@pytest.mark.parametrize(("hr", "pr", "qt"), [(130, 160, 280), (140, 150, 260), (150, 140, 250)])
def test_pr_at_130_to_150_bpm(hr: float, pr: float, qt: float) -> None:
    m = analyze(synth(hr=hr, pr=pr, qrs=80, qt=qt)).measurements
    assert m is not None and m.pr_ms == pytest.approx(pr, abs=12)


def test_unmeasurable_qt_is_said_and_sent_to_a_human() -> None:
    result = analyze(synth(t_amp=0.0))  # no T wave to end
    m = result.measurements
    assert m is not None and m.qt_ms is None and m.qtc_fridericia_ms is None
    doc = result.to_dict()
    assert "qt_ms" in doc["measurements"]["not_measurable"]
    assert doc["needs_human_measurement"] is True
    assert "qt_ms" in doc["human_measurement_reasons"]
    assert "qt_not_measurable" in result.codes and "long_qt" not in result.codes
    ok = analyze(synth()).to_dict()
    assert ok["needs_human_measurement"] is False and ok["measurements"]["not_measurable"] == {}


# Item 2: AF with fibrillatory waves (a baseline that is not flat before the QRS).

@pytest.mark.parametrize("f_wave", [0.05, 0.1])
@pytest.mark.parametrize("seed", range(4))
def test_af_with_fibrillatory_waves(f_wave: float, seed: int) -> None:
    result = analyze(synth(p_wave=False, rr_jitter=0.35, f_waves_mv=f_wave, seed=seed,
                           noise_mv=0.01))
    m = result.measurements
    assert m is not None
    assert "atrial_fibrillation_suspected" in result.codes
    assert m.pr_ms is None and "pr_ms" in m.not_measurable
    assert "first_degree_av_block" not in result.codes and "sinus_rhythm" not in result.codes


def test_premature_atrial_beats_are_not_af() -> None:
    result = analyze(synth(rr_ms=[800] * 3 + [560, 1000] + [800] * 6, pac=[4], noise_mv=0.01))
    assert "premature_atrial_complexes" in result.codes
    assert "atrial_fibrillation_suspected" not in result.codes
    assert "sinus_rhythm" in result.codes


# Item 3: regular fast rhythms.

@pytest.mark.parametrize("hr", [155, 170, 185, 200, 220])
def test_regular_fast_rhythm_is_not_af_and_has_no_false_stemi(hr: float) -> None:
    qt = round(400 * (60 / hr) ** (1 / 3))  # a normal QTcF of 400 ms
    result = analyze(synth(hr=hr, pr=110, qrs=80, qt=qt, sex="F", age=50))
    m = result.measurements
    assert m is not None and m.heart_rate_bpm == pytest.approx(hr, abs=2)
    assert "atrial_fibrillation_suspected" not in result.codes
    assert "stemi" not in result.codes
    assert _critical(result) <= {"tachycardia"}
    assert m.st_offset_ms <= 40  # ST read at J+40 above 100 bpm, not on the T wave


@pytest.mark.parametrize(("hr", "t_amp", "r_scale", "qrs"), [
    (200, 1.5, 0.5, 70), (180, 2.0, 0.5, 70), (150, 1.2, 0.4, 90), (120, 1.5, 0.4, 80)])
def test_tall_t_waves_are_not_counted_as_beats(hr: float, t_amp: float, r_scale: float,
                                                qrs: float) -> None:
    qt = round(400 * (60 / hr) ** (1 / 3))
    m = analyze(synth(hr=hr, pr=110, qrs=qrs, qt=qt, t_amp=t_amp, r_scale=r_scale)
                ).measurements
    assert m is not None and m.heart_rate_bpm == pytest.approx(hr, abs=2)


# Item 4: pauses, ectopy, Q waves, T inversion, normal ECG, QT with a wide QRS.

def test_pause_of_three_and_a_half_seconds_is_critical() -> None:
    result = analyze(synth(rr_ms=[800] * 4 + [3500] + [800] * 6, noise_mv=0.01))
    (stmt,) = [s for s in result.statements if s.code == "pause"]
    assert stmt.critical and stmt.evidence["longest_rr_ms"] == pytest.approx(3500, abs=10)
    assert "bradycardia" not in result.codes and "irregular_rhythm" not in result.codes
    assert "sinus_rhythm" in result.codes


def test_pause_under_three_seconds_is_reported_not_critical() -> None:
    result = analyze(synth(rr_ms=[800] * 4 + [2300] + [800] * 6, noise_mv=0.01))
    (stmt,) = [s for s in result.statements if s.code == "pause"]
    assert not stmt.critical and not result.critical


def test_a_third_of_beats_pvcs() -> None:
    rr: list[float] = []
    for _ in range(6):
        rr += [800, 480, 1120]
    result = analyze(synth(rr_ms=rr, pvc=range(2, 18, 3), noise_mv=0.01))
    m = result.measurements
    assert m is not None and m.n_pvc == 4
    assert "premature_ventricular_complexes" in result.codes
    assert "ventricular_bigeminy" not in result.codes and "normal_ecg" not in result.codes


def test_ventricular_bigeminy() -> None:
    result = analyze(synth(rr_ms=[480, 1120] * 8, pvc=range(1, 17, 2), noise_mv=0.01))
    assert {"premature_ventricular_complexes", "ventricular_bigeminy"} <= set(result.codes)
    assert "sinus_rhythm" in result.codes  # the normal beats keep their P waves


@pytest.mark.parametrize("wall", ["inferior", "anterior", "lateral"])
def test_pathological_q_waves_by_lead_group(wall: str) -> None:
    result = analyze(synth(q_infarct=wall))
    (stmt,) = [s for s in result.statements if s.code.startswith("q_waves_")]
    assert stmt.code == f"q_waves_{wall}" and len(stmt.evidence["leads"]) >= 2
    assert not any(c.startswith("q_waves_") for c in analyze(synth()).codes)


def test_t_wave_inversion() -> None:
    result = analyze(synth(t_invert=("V3", "V4", "V5")))
    assert any(c.startswith("t_wave_inversion_") for c in result.codes)
    assert "normal_ecg" not in result.codes


def test_normal_ecg_statement() -> None:
    assert "normal_ecg" in analyze(synth()).codes
    assert "normal_ecg" not in analyze(synth(pr=260)).codes
    assert "normal_ecg" not in analyze(synth(hr=45, qt=440)).codes


def test_long_qt_is_adjusted_for_a_wide_qrs() -> None:
    # QT 480 ms with a 150-ms QRS: the repolarisation is normal (QT - 50 = 430 ms).
    assert "long_qt" not in analyze(synth(hr=60, qrs=150, qt=480)).codes
    result = analyze(synth(hr=60, qrs=150, qt=570))
    (stmt,) = [s for s in result.statements if s.code == "long_qt"]
    m = result.measurements
    assert m is not None and m.qt_ms is not None and m.qrs_ms is not None
    assert "QRS-adjusted" in stmt.evidence["qt_method"]
    assert stmt.evidence["qt_adjusted_ms"] == pytest.approx(m.qt_ms - (m.qrs_ms - 100))


# Item 7: PR repeatability on a real, stable sinus rhythm (MIT-BIH record 100).

def test_pr_is_repeatable_on_mitbih_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.ecg_validation import mitbih_ecg12, read_record

    record = read_record("100")
    width = round(10 * record.fs)
    prs, avb = [], 0
    for w in range(0, 180, 3):  # every third 10-s window of the 30 minutes
        result = analyze(mitbih_ecg12(record.signals[:, w * width:(w + 1) * width],
                                      record.fs))
        m = result.measurements
        assert m is not None and m.pr_ms is not None
        prs.append(m.pr_ms)
        avb += "first_degree_av_block" in result.codes
    assert float(np.std(prs, ddof=1)) <= 10.0
    assert max(prs) - min(prs) <= 40.0
    assert avb == 0


# Item 9: the demo names its QTc formula.

def test_demo_names_the_qtc_formula() -> None:
    from rdc.demo import ecg_intervals

    line = ecg_intervals({"heart_rate_bpm": 60.0, "pr_ms": 160.0, "qrs_ms": 90.0,
                          "qtc_bazett_ms": 410.0, "qtc_fridericia_ms": 405.0})
    assert "QTc (Bazett) 410.0 ms" in line and "QTcF 405.0 ms" in line


# The cardiologists' queue puts the ECGs whose QT a human must measure right after the
# critical ones (viewer/ecg_queue.py).

def test_queue_puts_needs_human_measurement_after_critical(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from core.db import get_database
    from core.models import ECGAnalysis, Study
    from core.sites import SiteSpec, add_site
    from viewer.ecg_queue import _summary, needs_human_measurement, queue_order

    db = get_database(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    flat_t = analyze(synth(t_amp=0.0)).to_dict()
    plain = analyze(synth()).to_dict()
    assert flat_t["needs_human_measurement"] and not plain["needs_human_measurement"]
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    kinds = [  # (name, result, critical, quality, edited_by), oldest first
        ("plain", plain, False, "good", None),
        ("poor", plain, False, "poor", None),
        ("measured", flat_t, False, "good", "dr.heart"),
        ("human", flat_t, False, "good", None),
        ("critical", plain, True, "good", None),
    ]
    try:
        with db.session() as s:
            add_site(s, SiteSpec(id="site-q", name="Q hospital", ae_title="SITEQ",
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="test")
            for i, (name, result, critical, quality, edited_by) in enumerate(kinds):
                st = Study(site_id="site-q", study_uid=f"9.9.{i}", patient_id=name,
                           patient_name=name, modalities=["ECG"], state="complete",
                           completed_at=now - timedelta(minutes=60 - i))
                s.add(st)
                s.flush()
                measurements = dict(result["measurements"])
                if edited_by:
                    measurements["qt_ms"] = 400.0  # measured by hand
                s.add(ECGAnalysis(study_id=st.id, sop_instance_uid=f"9.9.{i}.1",
                                  series_uid=f"9.9.{i}", analysis_version="x", result=result,
                                  measurements=measurements,
                                  statements=result["statements"], critical=critical,
                                  quality=quality, confidence=0.9, edited_by=edited_by))
        with db.session() as s:
            rows = s.execute(select(ECGAnalysis, Study).join(Study, Study.id ==
                                                             ECGAnalysis.study_id)
                             .order_by(*queue_order())).all()
            assert [st.patient_id for _, st in rows] == [
                "critical", "human", "poor", "plain", "measured"]
            flags = {st.patient_id: _summary(r, st, "Q", None, now)["needs_human_measurement"]
                     for r, st in rows}
            assert flags == {"critical": False, "human": True, "poor": False, "plain": False,
                             "measured": False}
            assert needs_human_measurement(rows[1][0])
    finally:
        db.dispose()
        get_database.cache_clear()


def test_readme_reports_accuracy_not_completeness() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## ECG center", 1)[1].split("\n## ", 1)[0]
    assert "benchmarks.ecg_validation" in section
    assert "sensitivity" in section and "PPV" in section and "repeatability" in section
    # The old table counted values produced as "100 %": completeness, not accuracy.
    assert "| 100 % | 0 % |" not in section and "| 100 % | 100 % |" not in section
