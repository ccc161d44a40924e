"""ECG analysis validated for accuracy, not completeness.

Four parts, each printed as a table and written to ``benchmarks/results/ecg_validation.json``:

1. **MIT-BIH record 100** (30 min, MLII and V5 at 360 Hz, 2,273 annotated beats): the R-peak
   detector (:func:`ecg.measure.detect_r_peaks`) on both channels against the
   cardiologists' beat annotations (a match within 150 ms): sensitivity and positive
   predictive value. Then the whole analysis on consecutive 10-s windows, each made into a
   12-lead ECG by :func:`mitbih_ecg12`: heart-rate error against the annotations, and the
   repeatability (SD across windows) of PR, QRS and QT in this stable sinus rhythm.
2. **PTB record s0010_re** (12 leads, 1000 Hz; an 81-year-old woman two days after an
   inferolateral infarction): the statements, which should include right bundle branch
   block, an inferior Q-wave (infarct) pattern and a QRS-adjusted QT.
3. **Constructed cases with known truth**, from two generators that are independent of
   the analysis and of ``ai_models/training/ecg_simulator.py``:

   * *real beats*: individual sinus beats of MIT-BIH record 100 (and its premature
     ventricular beat), re-timed to an RR series built here, with the ST-T segment
     stretched or compressed to the wanted QT (the U wave faded out) and the P-QRS
     interval to the wanted PR, P waves removed for AF;
   * *ECGSYN morphology*: the Gaussian P, Q, R, S, T waves of ECGSYN (McSharry 2003) with
     neurokit2's amplitudes per lead, placed at an RR series built here, with the T wave
     placed for the wanted QT and the P wave for the wanted PR.

   Families: long QT at 40-125 bpm (QTcF 480-580 ms) and normal QT at 40-180 bpm; AF with
   fibrillatory waves of 0-0.1 mV; sinus pauses of 2-4 s; ventricular bigeminy; regular
   rhythms at 150-220 bpm (some with tall T waves); sinus rhythm with sinus arrhythmia and
   premature atrial beats. Each case gets white noise and, by turns, mains hum, baseline
   wander, a clipped lead or a 0.5-s dropout of one lead. Scored: sensitivity and PPV per statement,
   critical statements the truth does not justify ("false critical").
4. **Speed**, against the naive per-lead neurokit2 pipeline: reuses ``benchmarks.ecg``.

    .venv/bin/python -m benchmarks.ecg_validation [--quick] [--seed 0]

``--quick`` (for the test suite) uses fewer cases, the first 5 minutes of record 100 and
3 ECGs for the speed comparison. The data files live outside the project
(``../shared/data/ecg``, or ``$RDC_ECG_DATA``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import neurokit2 as nk
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table
from scipy import signal as sps

from benchmarks import ecg as speed_bench
from ecg.analyze import Analysis, analyze
from ecg.measure import detect_r_peaks
from ecg.signal import Ecg12, assemble

FloatArray = npt.NDArray[np.float64]
console = Console()
REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RDC_ECG_DATA", REPO.parent / "shared" / "data" / "ecg"))
FS = 500.0
DURATION_S = 10.0
#: A detected beat matches an annotated one within this distance (s).
MATCH_S = 0.15
#: Beat annotation symbols of the MIT-BIH database (everything else is a rhythm or
#: signal-quality note).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")

TARGETS = {
    "r_peak_sensitivity": 0.995, "r_peak_ppv": 0.995,
    "pr_sd_ms": 10.0, "qrs_sd_ms": 10.0,
    "long_qt_sensitivity": 0.95, "af_sensitivity": 0.90, "af_ppv": 0.90,
    "pause_sensitivity": 1.0, "false_critical": 0, "speed_ratio": 5.0,
}


# --- Reading the records ----------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    signals: FloatArray  # (channels, n) mV
    fs: float
    names: tuple[str, ...]
    ann_samples: npt.NDArray[np.int64]
    ann_symbols: tuple[str, ...]


@lru_cache(maxsize=4)
def read_record(name: str, annotations: bool = True) -> Record:
    import wfdb  # only the benchmark and its test need wfdb

    rec = wfdb.rdrecord(str(DATA / name))
    samples = np.zeros(0, dtype=np.int64)
    symbols: tuple[str, ...] = ()
    if annotations:
        ann = wfdb.rdann(str(DATA / name), "atr")
        samples = np.asarray(ann.sample, dtype=np.int64)
        symbols = tuple(str(s) for s in ann.symbol)
    return Record(np.asarray(rec.p_signal, dtype=np.float64).T, float(rec.fs),
                  tuple(rec.sig_name), samples, symbols)


#: How the 12 leads are made from MIT-BIH's two channels (MLII, V5): II is MLII, V5 is
#: V5, I and the other chest leads are fixed mixtures that resemble their usual
#: morphology (V1 an rS, V3-V6 mostly positive); III, aVR, aVL and aVF follow from I
#: and II. Only the rhythm, the intervals and the wave shapes of the two channels are
#: real, not the axes or the other leads' voltages.
MITBIH_MIX: dict[str, tuple[float, float]] = {
    "I": (0.5, 0.3), "II": (1.0, 0.0),
    "V1": (-0.3, 0.1), "V2": (-0.15, 0.4), "V3": (0.3, 0.5), "V4": (0.5, 0.6),
    "V5": (0.0, 1.0), "V6": (0.2, 0.7),
}


def mitbih_ecg12(two: FloatArray, fs: float, **metadata: Any) -> Ecg12:
    """A 12-lead :class:`Ecg12` from MIT-BIH's (MLII, V5) channels (see MITBIH_MIX)."""
    leads = {name: a * two[0] + b * two[1] for name, (a, b) in MITBIH_MIX.items()}
    return assemble(leads, fs, source_format="mitbih", **metadata)


def match_beats(reference: Sequence[int] | npt.NDArray[np.int64],
                detected: Sequence[int] | npt.NDArray[np.int64], tolerance: int,
                ) -> int:
    """Reference beats with a detected beat within ``tolerance`` samples (each detected
    beat matches at most one reference beat, the nearest first)."""
    ref = np.asarray(reference, dtype=np.int64)
    det = np.asarray(detected, dtype=np.int64)
    used = np.zeros(det.size, dtype=bool)
    pos = np.searchsorted(det, ref)
    hits = 0
    for r, p in zip(ref.tolist(), pos.tolist(), strict=True):
        best = -1
        for j in (p - 1, p, p + 1):
            if 0 <= j < det.size and not used[j] and abs(int(det[j]) - r) <= tolerance and (
                    best < 0 or abs(int(det[j]) - r) < abs(int(det[best]) - r)):
                best = j
        if best >= 0:
            used[best] = True
            hits += 1
    return hits


def mitbih_r_peaks(record: Record) -> dict[str, Any]:
    """The R-peak detector on the whole record against the annotated beats."""
    fs = record.fs
    start = time.perf_counter()
    clean = np.vstack([nk.ecg_clean(x, sampling_rate=fs) for x in record.signals])
    detected = detect_r_peaks(clean, fs)
    elapsed = time.perf_counter() - start
    beats = np.array([s for s, c in zip(record.ann_samples, record.ann_symbols, strict=True)
                      if c in BEAT_SYMBOLS])
    hits = match_beats(beats, detected, round(MATCH_S * fs))
    return {"reference_beats": int(beats.size), "detected": int(detected.size),
            "true_positives": hits, "false_negatives": int(beats.size - hits),
            "false_positives": int(detected.size - hits),
            "sensitivity": hits / beats.size, "ppv": hits / max(detected.size, 1),
            "seconds": round(elapsed, 2)}


def mitbih_windows(record: Record, n_windows: int) -> dict[str, Any]:
    """Consecutive 10-s windows analysed as 12-lead ECGs: HR error and repeatability."""
    fs = record.fs
    width = round(DURATION_S * fs)
    beats = np.array([s for s, c in zip(record.ann_samples, record.ann_symbols, strict=True)
                      if c in BEAT_SYMBOLS])
    rows: list[dict[str, Any]] = []
    for w in range(n_windows):
        a, b = w * width, (w + 1) * width
        if b > record.signals.shape[1]:
            break
        result = analyze(mitbih_ecg12(record.signals[:, a:b], fs))
        inside = beats[(beats >= a) & (beats < b)]
        ref_hr = 60.0 * (inside.size - 1) / ((inside[-1] - inside[0]) / fs)
        m = result.measurements
        rows.append({
            "window": w, "reference_hr_bpm": ref_hr,
            "hr_bpm": m.heart_rate_bpm if m else None,
            "pr_ms": m.pr_ms if m else None, "qrs_ms": m.qrs_ms if m else None,
            "qt_ms": m.qt_ms if m else None, "codes": result.codes,
        })

    def spread(key: str) -> dict[str, Any]:
        values = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
        if values.size < 2:
            return {"n": int(values.size), "sd_ms": None, "min_ms": None, "max_ms": None}
        return {"n": int(values.size), "mean_ms": float(values.mean()),
                "sd_ms": float(values.std(ddof=1)), "min_ms": float(values.min()),
                "max_ms": float(values.max())}

    hr_err = np.array([abs(r["hr_bpm"] - r["reference_hr_bpm"]) for r in rows
                       if r["hr_bpm"] is not None])
    count = {code: sum(code in r["codes"] for r in rows) for code in (
        "sinus_rhythm", "first_degree_av_block", "atrial_fibrillation_suspected",
        "qt_not_measurable")}
    return {"windows": len(rows), "hr_abs_error_bpm_mean": float(hr_err.mean()),
            "hr_abs_error_bpm_max": float(hr_err.max()),
            "pr": spread("pr_ms"), "qrs": spread("qrs_ms"), "qt": spread("qt_ms"),
            "statement_windows": count}


def ptb_statements() -> dict[str, Any]:
    rec = read_record("s0010_re", annotations=False)
    leads = {n: rec.signals[i] for i, n in enumerate(rec.names) if n.lower() not in (
        "vx", "vy", "vz")}
    ecg = assemble(leads, rec.fs, patient_sex="F", patient_age_years=81.0,
                   source_format="wfdb")
    result = analyze(ecg)
    m = result.measurements
    long_qt = next((s for s in result.statements if s.code == "long_qt"), None)
    qt_method = long_qt.evidence.get("qt_method") if long_qt else None
    found = {
        "rbbb": "wide_qrs_rbbb_pattern" in result.codes,
        "inferior_q_waves": "q_waves_inferior" in result.codes,
        "qrs_adjusted_qt": bool(qt_method and "QRS-adjusted" in str(qt_method)),
    }
    return {"codes": result.codes, "texts": [s.text for s in result.statements],
            "qrs_ms": m.qrs_ms if m else None, "qt_ms": m.qt_ms if m else None,
            "qt_method": qt_method, "expected_found": found, "all_found": all(found.values())}


# --- Constructed cases --------------------------------------------------------------------------

@dataclass
class Truth:
    family: str
    generator: str
    rate_bpm: float
    qt_ms: float | None = None
    qtcf_ms: float | None = None
    long_qt: bool = False
    af: bool = False
    pause_ms: float = 0.0
    bigeminy: bool = False
    fast_regular: bool = False
    perturbation: str = "none"

    def allowed_critical(self) -> set[str]:
        """Critical statements this truth justifies (with a margin at each cut-off)."""
        allowed = {"tachycardia"} if self.rate_bpm >= 145 else set()
        if self.rate_bpm <= 42:
            allowed.add("bradycardia")
        if self.qtcf_ms is not None and self.qtcf_ms >= 480:
            allowed.add("long_qt")
        if self.pause_ms >= 2900:
            allowed.add("pause")
        return allowed


@dataclass
class Beat:
    """One beat to place: its R time (ms) and how it is drawn."""

    r_ms: float
    kind: str = "N"  # N, V (ventricular), or A (premature atrial)


@dataclass
class Spec:
    """What a constructed ECG is: beats, intervals, atrial activity."""

    beats: list[Beat]
    qt_ms: float
    pr_ms: float = 160.0
    p_wave: bool = True
    f_wave_mv: float = 0.0
    t_scale: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


def _hann_taper(n: int, edge: int) -> FloatArray:
    w = np.ones(n)
    if edge > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, edge))
        w[:edge] = ramp
        w[-edge:] = ramp[::-1]
    return w


@dataclass(frozen=True)
class BeatBank:
    """Sinus beats, one premature ventricular beat and premature atrial beats of MIT-BIH
    record 100 at FS, (2, n) each with the R peak at ``r_index``; ``qrs_onset``, ``t_end``
    and ``p_onset`` (samples) measured on their mean beat (see :func:`beat_bank`)."""

    normal: tuple[FloatArray, ...]
    ventricular: FloatArray
    atrial: tuple[FloatArray, ...]
    r_index: int
    qrs_onset: int
    t_end: int
    p_onset: int


@lru_cache(maxsize=1)
def beat_bank() -> BeatBank:
    rec = read_record("100")
    fs = rec.fs
    up, down = 25, 18  # 360 Hz -> 500 Hz
    assert abs(fs * up / down - FS) < 1e-6
    pre_s, post_s = 0.30, 0.55
    samples, symbols = rec.ann_samples, rec.ann_symbols
    beat_idx = [i for i, c in enumerate(symbols) if c in BEAT_SYMBOLS]

    def cut(sample: int) -> FloatArray | None:
        a = sample - round((pre_s + 0.05) * fs)
        b = sample + round((post_s + 0.05) * fs)
        if a < 0 or b > rec.signals.shape[1]:
            return None
        raw = rec.signals[:, a:b]
        clean = np.vstack([nk.ecg_clean(x, sampling_rate=fs) for x in raw])
        seg = sps.resample_poly(clean, up, down, axis=1)
        margin = round(0.05 * FS)
        seg = seg[:, margin: margin + round((pre_s + post_s) * FS)]
        # Baseline: the straight line through the first and last 15 ms (TP segments).
        k = round(0.015 * FS)
        first, last = seg[:, :k].mean(axis=1), seg[:, -k:].mean(axis=1)
        line = first[:, None] + (last - first)[:, None] * np.linspace(0, 1, seg.shape[1])
        out: FloatArray = (seg - line) * _hann_taper(seg.shape[1], round(0.03 * FS))
        return out

    normal: list[FloatArray] = []
    atrial: list[FloatArray] = []
    ventricular: FloatArray | None = None
    for n, i in enumerate(beat_idx[1:-1], start=1):
        prev_i, next_i = beat_idx[n - 1], beat_idx[n + 1]
        sym = symbols[i]
        if sym == "N" and len(normal) < 240 and symbols[prev_i] == "N" and (
                symbols[next_i] == "N") and samples[next_i] - samples[i] > 0.7 * fs and (
                samples[i] - samples[prev_i] > 0.7 * fs):
            seg = cut(int(samples[i]))
            if seg is not None:
                normal.append(seg)
        elif sym == "A" and len(atrial) < 20:
            seg = cut(int(samples[i]))
            if seg is not None:
                atrial.append(seg)
        elif sym == "V":
            ventricular = cut(int(samples[i]))
    assert ventricular is not None and normal and atrial
    r_index = round(pre_s * FS)
    mean = np.mean(normal, axis=0)
    # QRS onset: where the spatial velocity of the mean beat falls below 10 % of its peak.
    speed = np.hypot(*np.gradient(mean, axis=1))
    steep = r_index - round(0.06 * FS) + int(np.argmax(speed[r_index - round(0.06 * FS):
                                                             r_index + round(0.06 * FS)]))
    onset = steep
    while onset > 0 and speed[onset] > 0.1 * speed[steep]:
        onset -= 1
    # T end: record 100's clearest T wave is the negative one in V5 (MLII's is flat); its
    # end by the tangent method (the later positive wave in both channels is a U wave).
    v5 = mean[1]
    zone = slice(r_index + round(0.15 * FS), r_index + round(0.32 * FS))
    trough = zone.start + int(np.argmin(v5[zone]))
    back = trough + int(np.argmax(v5[trough:] >= 0))
    rise = np.gradient(v5[trough:back + 1])
    i = trough + int(np.argmax(rise))
    t_end = round(i + (0.0 - v5[i]) / float(rise.max()))
    # P onset: before MLII's P peak, where the wave falls below 10 % of it.
    zone = slice(r_index - round(0.3 * FS), r_index - round(0.1 * FS))
    p_peak = zone.start + int(np.argmax(mean[0][zone]))
    p_on = p_peak
    while p_on > 0 and mean[0][p_on] > 0.1 * mean[0][p_peak]:
        p_on -= 1
    return BeatBank(tuple(normal), ventricular, tuple(atrial), r_index, onset, t_end, p_on)


def _stretch(part: FloatArray, factor: float) -> FloatArray:
    n_new = max(round(part.shape[1] * factor), 2)
    old_t = np.linspace(0.0, 1.0, part.shape[1])
    new_t = np.linspace(0.0, 1.0, n_new)
    return np.vstack([np.interp(new_t, old_t, row) for row in part])


def _stretch_after(seg: FloatArray, split: int, factor: float) -> FloatArray:
    """``seg`` with everything after ``split`` stretched in time by ``factor``."""
    return np.hstack([seg[:, :split], _stretch(seg[:, split:], factor)])


def _stretch_before(seg: FloatArray, split: int, factor: float) -> tuple[FloatArray, int]:
    """``seg`` with everything before ``split`` stretched by ``factor``, and how many
    samples later the rest now starts."""
    head = _stretch(seg[:, :split], factor)
    return np.hstack([head, seg[:, split:]]), head.shape[1] - split


def real_beats_ecg(spec: Spec, rng: np.random.Generator) -> dict[str, FloatArray]:
    """The 8 independent leads of an ECG made of record 100's own beats (see MITBIH_MIX)."""
    bank = beat_bank()
    n = round(DURATION_S * FS)
    two = np.zeros((2, n + 2 * round(FS)))
    offset = round(FS)  # beats may start before the strip
    r, on, t_end = bank.r_index, bank.qrs_onset, bank.t_end
    j = r + round(0.06 * FS)  # stretch from J + a little (the QRS itself keeps its shape)
    qt_orig = (t_end - on) / FS * 1000.0
    qrs_to_j = (j - on) / FS * 1000.0
    factor = (spec.qt_ms - qrs_to_j) / (qt_orig - qrs_to_j)
    # After V5's T wave comes a positive wave in both channels that we take as a U wave
    # (see beat_bank); it is faded out so that the T end, and so the QT, is unambiguous.
    fade = np.clip((t_end + round(0.08 * FS) - np.arange(bank.normal[0].shape[1]))
                   / round(0.06 * FS), 0.0, 1.0)
    # AF: the P wave removed (the signal before the PR segment's end faded to zero).
    no_p = np.clip((np.arange(bank.normal[0].shape[1]) - (r - round(0.075 * FS)))
                   / round(0.02 * FS), 0.0, 1.0)
    # PR: the part before the QRS (P wave, PR segment) stretched to the wanted PR.
    split_pre = on - round(0.01 * FS)
    pr_factor = spec.pr_ms / ((on - bank.p_onset) / FS * 1000.0)
    for beat in spec.beats:
        shift = 0
        if beat.kind == "V":
            seg = bank.ventricular * np.clip(
                (np.arange(bank.ventricular.shape[1]) - (r - round(0.12 * FS)))
                / round(0.03 * FS), 0.0, 1.0)
        else:
            pool = bank.atrial if beat.kind == "A" else bank.normal
            seg = pool[int(rng.integers(len(pool)))] * fade
            if not spec.p_wave:
                seg = seg * no_p
            seg = _stretch_after(seg, j, factor)
            if spec.t_scale != 1.0:
                seg = np.hstack([seg[:, :j], seg[:, j:] * spec.t_scale])
            seg, shift = _stretch_before(seg, split_pre, pr_factor)
        start = offset + round(beat.r_ms / 1000.0 * FS) - r - shift
        a, b = max(start, 0), min(start + seg.shape[1], two.shape[1])
        if b > a:
            two[:, a:b] += seg[:, a - start: b - start]
    two = two[:, offset: offset + n]
    return {name: a * two[0] + b * two[1] for name, (a, b) in MITBIH_MIX.items()}


#: ECGSYN (McSharry et al. 2003; neurokit2's defaults): angles (degrees), amplitudes and
#: widths (radians) of P, Q, R, S, T, and neurokit2's amplitude factors for leads I and
#: V1-V6 (its "multileads" table). Its lead II row (a tiny R under a huge T) would make
#: the derived III and aVF QS complexes, i.e. an inferior infarct; II here has the
#: larger R of a normal frontal axis.
ECGSYN_TI = np.radians([-70.0, -15.0, 0.0, 15.0, 100.0])
ECGSYN_AI = np.array([1.2, -5.0, 30.0, -7.5, 0.75])
ECGSYN_BI = np.array([0.25, 0.1, 0.1, 0.1, 0.4])
ECGSYN_GAMMA = {
    "I": (1, 0.1, 1, 1.2, 1), "II": (1.5, 0.15, 1.5, 0.8, 1.5),
    "V1": (-0.5, 0.05, 0.2, 0.5, 1), "V2": (0.05, 0.05, 1.3, 2.5, 2),
    "V3": (1, 0.05, 1, 2, 1), "V4": (1.2, 0.05, 1, 2, 2),
    "V5": (1.5, 0.1, 0.8, 1, 2), "V6": (1.8, 0.05, 0.5, 0.1, 2),
}
#: A wide ventricular beat for the ECGSYN generator: R and S widths (ms) and gains per lead.
PVC_GAIN = {"I": 1.0, "II": -0.6, "V1": -1.0, "V2": -0.8, "V3": -0.3, "V4": 0.5,
            "V5": 0.9, "V6": 1.0}


def ecgsyn_ecg(spec: Spec, rng: np.random.Generator) -> dict[str, FloatArray]:
    """The 8 independent leads of an ECG of ECGSYN-shaped beats at ``spec.beats``."""
    n = round(DURATION_S * FS)
    t = np.arange(n) / FS * 1000.0
    rr = np.diff([b.r_ms for b in spec.beats])
    rr_mean = float(np.median(rr)) if rr.size else 1000.0
    hrfact = math.sqrt(60000.0 / rr_mean / 60.0)
    hrfact2 = math.sqrt(hrfact)
    ti = ECGSYN_TI * np.array([hrfact2, hrfact, 1, hrfact, hrfact2])
    bi = ECGSYN_BI * hrfact
    centre = ti / (2 * np.pi) * rr_mean
    sigma = bi / (2 * np.pi) * rr_mean
    amp = ECGSYN_AI * bi**2
    q_onset = centre[1] - 2 * sigma[1]
    centre[4] = q_onset + spec.qt_ms - 2 * sigma[4]  # T end = centre + 2 sigma
    centre[0] = q_onset - spec.pr_ms + 2 * sigma[0]  # P onset = centre - 2 sigma
    leads = {name: np.zeros(n) for name in ECGSYN_GAMMA}
    # Per-lead scale as neurokit2 does: the beat spans -0.4..1.2 mV.
    t_beat = np.arange(-600.0, 800.0, 2.0)
    scale = {}
    for name, gamma in ECGSYN_GAMMA.items():
        g = np.array(gamma) * amp
        one = (g[:, None] * np.exp(-(t_beat[None, :] - centre[:, None]) ** 2
                                   / (2 * sigma[:, None] ** 2))).sum(axis=0)
        scale[name] = 1.6 / max(float(one.max() - one.min()), 1e-6)
    waves_on = np.array([spec.p_wave, True, True, True, True], dtype=float)
    t_gain = np.array([1, 1, 1, 1, spec.t_scale])
    for beat in spec.beats:
        rel = t - beat.r_ms
        near = np.abs(rel) < 1500
        if not near.any():
            continue
        if beat.kind == "V":
            qrs = (np.exp(-(rel[near] - 10) ** 2 / (2 * 28.0**2))
                   - 0.5 * np.exp(-(rel[near] - 70) ** 2 / (2 * 25.0**2)))
            tw = -0.35 * np.exp(-(rel[near] - (spec.qt_ms + 40 - 2 * 60)) ** 2
                                / (2 * 60.0**2))
            for name, gain in PVC_GAIN.items():
                leads[name][near] += 1.3 * gain * (qrs + tw)
            continue
        p_sign = -1.0 if beat.kind == "A" else 1.0
        gauss = np.exp(-(rel[near][None, :] - centre[:, None]) ** 2
                       / (2 * sigma[:, None] ** 2))
        for name, gamma in ECGSYN_GAMMA.items():
            g = np.array(gamma) * amp * waves_on * t_gain * scale[name]
            g[0] *= p_sign
            leads[name][near] += (g[:, None] * gauss).sum(axis=0)
    return leads


def f_waves(n: int, amplitude: float, rng: np.random.Generator) -> dict[str, FloatArray]:
    """Fibrillatory waves: a 4-9 Hz oscillation whose rate and size wander, largest in V1
    and the inferior leads (peak ``amplitude`` mV in V1)."""
    if amplitude <= 0:
        return {}
    freq = np.clip(6.0 + np.cumsum(rng.normal(0, 0.03, n)), 4.0, 9.0)
    phase = 2 * np.pi * np.cumsum(freq) / FS
    env = 0.75 + 0.25 * np.sin(2 * np.pi * np.cumsum(rng.uniform(0.1, 0.5, n)) / FS)
    wave = amplitude * env * (np.sin(phase) + 0.3 * np.sin(2.1 * phase + 1.0)) / 1.3
    gains = {"I": 0.2, "II": 0.6, "V1": 1.0, "V2": 0.7, "V3": 0.5, "V4": 0.35, "V5": 0.25,
             "V6": 0.2}
    return {name: g * wave for name, g in gains.items()}


PERTURBATIONS = ("none", "hum", "wander", "saturation", "dropout")


def perturb(leads: dict[str, FloatArray], kind: str, rng: np.random.Generator) -> str:
    """White noise always, plus one artefact ``kind``; returns a description."""
    n = next(iter(leads.values())).size
    t = np.arange(n) / FS
    noise = float(rng.uniform(0.005, 0.02))
    for name in leads:
        leads[name] = leads[name] + rng.normal(0, noise, n)
    what = f"noise {noise * 1000:.0f} uV"
    if kind == "hum":
        amp = float(rng.uniform(0.05, 0.1))
        phase = float(rng.uniform(0, 2 * np.pi))
        for name in leads:
            leads[name] = leads[name] + amp * np.sin(2 * np.pi * 50.0 * t + phase)
        what += f", 50 Hz hum {amp:.2f} mV"
    elif kind == "wander":
        amp, f = float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.15, 0.4))
        for i, name in enumerate(leads):
            leads[name] = leads[name] + amp * np.sin(2 * np.pi * f * t + i)
        what += f", baseline wander {amp:.1f} mV at {f:.2f} Hz"
    elif kind == "saturation":
        name = str(rng.choice(["V2", "V3", "V4"]))
        x = leads[name]
        rail = float(np.percentile(x, 85))
        leads[name] = np.minimum(x, rail)
        what += f", {name} clipped at {rail:.2f} mV"
    elif kind == "dropout":
        name = str(rng.choice(["V1", "V5", "V6"]))
        start = round((int(rng.integers(2, 8)) + 0.25) * FS)
        leads[name] = leads[name].copy()
        leads[name][start: start + round(0.5 * FS)] = 0.0
        what += f", {name} dropped out for 0.5 s"
    return what


@dataclass
class Case:
    name: str
    ecg: Ecg12
    truth: Truth


def _sinus_rr(rng: np.random.Generator, rate: float, duration_ms: float,
              arrhythmia: float = 0.03) -> list[float]:
    """R times of a sinus rhythm with respiratory sinus arrhythmia (+-``arrhythmia``)."""
    rr0 = 60000.0 / rate
    times = [float(rng.uniform(100.0, 0.9 * rr0))]
    phase = float(rng.uniform(0, 2 * np.pi))
    resp = float(rng.uniform(0.2, 0.3)) / 1000.0
    while times[-1] < duration_ms + 1500.0:
        mod = 1 + arrhythmia * math.sin(2 * math.pi * resp * times[-1] + phase)
        times.append(times[-1] + rr0 * mod * (1 + float(rng.normal(0, 0.005))))
    return times


def _beats(times: Sequence[float], kinds: Sequence[str] | None = None) -> list[Beat]:
    return [Beat(t, kinds[i] if kinds else "N") for i, t in enumerate(times)]


def build_cases(n_per_family: int, seed: int) -> list[Case]:
    """The constructed ECGs with their truth (see the module docstring)."""
    rng = np.random.default_rng(seed)
    gens: dict[str, Callable[[Spec, np.random.Generator], dict[str, FloatArray]]] = {
        "real_beats": real_beats_ecg, "ecgsyn": ecgsyn_ecg}
    duration_ms = DURATION_S * 1000.0
    cases: list[Case] = []
    counter = 0

    def add(family: str, spec: Spec, truth_kw: dict[str, Any]) -> None:
        nonlocal counter
        gen_name = ("real_beats", "ecgsyn")[counter % 2]
        kind = PERTURBATIONS[(counter // 2) % len(PERTURBATIONS)]
        counter += 1
        leads = gens[gen_name](spec, rng)
        for name, wave in f_waves(leads["II"].size, spec.f_wave_mv, rng).items():
            leads[name] = leads[name] + wave
        what = perturb(leads, kind, rng)
        ecg = assemble(leads, FS, source_format="constructed")
        truth = Truth(family=family, generator=gen_name, perturbation=what, **truth_kw)
        cases.append(Case(f"{family}-{len(cases)}", ecg, truth))

    def qt_for(qtcf: float, rr_ms: float) -> float:
        return float(qtcf * (rr_ms / 1000.0) ** (1.0 / 3.0))

    for i in range(n_per_family):
        # Long QT, 40-125 bpm: QTcF 490-580 ms, the T wave ending at least 100 ms before
        # the next QRS (above ~125 bpm a QTcF >= 480 ms puts the T end inside the next P
        # wave: see the README). PR shortens with rate.
        rate = float(np.interp(i, [0, max(n_per_family - 1, 1)], [40.0, 125.0]))
        rr = 60000.0 / rate
        qtcf = float(rng.uniform(490.0, 580.0))
        qt = min(qt_for(qtcf, rr), rr - 100.0)
        qtcf = qt / (rr / 1000.0) ** (1.0 / 3.0)
        add("long_qt", Spec(_beats(_sinus_rr(rng, rate, duration_ms)), qt,
                            pr_ms=float(rng.uniform(130, 180) if rate < 100
                                        else rng.uniform(110, 140))),
            {"rate_bpm": rate, "qt_ms": qt, "qtcf_ms": qtcf, "long_qt": True})
        # Normal QT, 40-180 bpm: QTcF 370-430 ms.
        rate = float(np.interp(i, [0, max(n_per_family - 1, 1)], [40.0, 180.0]))
        rr = 60000.0 / rate
        qtcf = float(rng.uniform(370.0, 430.0))
        qt = qt_for(qtcf, rr)
        add("normal_qt", Spec(_beats(_sinus_rr(rng, rate, duration_ms)), qt,
                              pr_ms=float(rng.uniform(130, 180) if rate < 130
                                          else rng.uniform(100, 130))),
            {"rate_bpm": rate, "qt_ms": qt, "qtcf_ms": qtcf})
        # AF: f-waves 0-0.1 mV, mean rate 60-150, every RR drawn independently.
        rate = float(rng.uniform(60.0, 150.0))
        cv = float(rng.uniform(0.15, 0.3))
        mean_rr = 60000.0 / rate
        times = [float(rng.uniform(50.0, 400.0))]
        while times[-1] < duration_ms + 1500.0:
            draw = mean_rr * float(rng.lognormal(-cv**2 / 2, cv))
            times.append(times[-1] + max(draw, 280.0))
        fw = float(np.interp(i, [0, max(n_per_family - 1, 1)], [0.0, 0.1]))
        add("af", Spec(_beats(times), qt_for(400.0, mean_rr), p_wave=False, f_wave_mv=fw),
            {"rate_bpm": 60000.0 / float(np.mean(np.diff(times))),
             "qtcf_ms": 400.0, "af": True})
        # Pause of 2-4 s (sinus arrest) in a 60-90 bpm sinus rhythm; away from 3 s by
        # 0.15 s so that "critical" is unambiguous.
        rate = float(rng.uniform(60.0, 90.0))
        pause = float(rng.choice([rng.uniform(2050.0, 2850.0), rng.uniform(3150.0, 4000.0)]))
        times = _sinus_rr(rng, rate, duration_ms)
        k = int(rng.integers(2, 5))
        shift = pause - (times[k + 1] - times[k])
        times = times[: k + 1] + [t + shift for t in times[k + 1:]]
        add("pause", Spec(_beats(times), qt_for(400.0, 60000.0 / rate)),
            {"rate_bpm": rate, "qtcf_ms": 400.0, "pause_ms": pause})
        # Ventricular bigeminy: sinus 55-95 bpm, every other beat a PVC at 55-70 % of the
        # RR with a full compensatory pause.
        rate = float(rng.uniform(55.0, 95.0))
        rr = 60000.0 / rate
        coupling = float(rng.uniform(0.55, 0.7))
        times, kinds = [float(rng.uniform(100.0, 600.0))], ["N"]
        while times[-1] < duration_ms + 1500.0:
            times.append(times[-1] + coupling * rr)
            kinds.append("V")
            times.append(times[-1] + (2 - coupling) * rr)
            kinds.append("N")
        add("bigeminy", Spec(_beats(times, kinds), qt_for(400.0, rr)),
            {"rate_bpm": rate, "qtcf_ms": 400.0, "bigeminy": True})
        # Regular 150-220 bpm (sinus or ectopic atrial tachycardia), every third with tall
        # T waves; PR shortens with rate.
        rate = float(np.interp(i, [0, max(n_per_family - 1, 1)], [150.0, 220.0]))
        rr = 60000.0 / rate
        times = _sinus_rr(rng, rate, duration_ms, arrhythmia=0.01)
        add("fast_regular", Spec(_beats(times), qt_for(400.0, rr), pr_ms=float(
            rng.uniform(100, 130)), t_scale=2.5 if i % 3 == 0 else 1.0),
            {"rate_bpm": rate, "qtcf_ms": 400.0, "fast_regular": True})
        # Sinus rhythm 50-100 bpm with sinus arrhythmia (5-8 %) and 0-2 premature atrial
        # beats at 65-80 % of the RR.
        rate = float(rng.uniform(50.0, 100.0))
        times = _sinus_rr(rng, rate, duration_ms, arrhythmia=float(rng.uniform(0.05, 0.08)))
        kinds_l = ["N"] * len(times)
        for _ in range(int(rng.integers(0, 3))):
            k = int(rng.integers(2, len(times) - 2))
            if "A" in kinds_l[k - 1: k + 2]:
                continue
            early = (times[k] - times[k - 1]) * (1 - float(rng.uniform(0.65, 0.8)))
            times = times[:k] + [t - early for t in times[k:k + 1]] + times[k + 1:]
            kinds_l[k] = "A"
        add("sinus", Spec(_beats(times, kinds_l), qt_for(400.0, 60000.0 / rate)),
            {"rate_bpm": rate, "qtcf_ms": 400.0})
    return cases


def score_cases(cases: Sequence[Case]) -> dict[str, Any]:
    """Sensitivity/PPV per statement, false critical statements, QT error."""
    results: list[tuple[Case, Analysis]] = [(c, analyze(c.ecg)) for c in cases]

    def stat(code: str, positive: Callable[[Truth], bool],
             negative: Callable[[Truth], bool] | None = None) -> dict[str, Any]:
        """Sensitivity over the positives; PPV over the statements made on positives and
        on ``negative`` cases (by default every case that is not positive)."""
        neg = negative or (lambda t: not positive(t))
        tp = sum(positive(c.truth) and code in a.codes for c, a in results)
        fn = sum(positive(c.truth) and code not in a.codes for c, a in results)
        fp = sum(neg(c.truth) and code in a.codes for c, a in results)
        missed = [c.name for c, a in results if positive(c.truth) and code not in a.codes]
        false = [c.name for c, a in results if neg(c.truth) and code in a.codes]
        return {"positives": tp + fn, "tp": tp, "fn": fn, "fp": fp,
                "sensitivity": tp / (tp + fn) if tp + fn else None,
                "ppv": tp / (tp + fp) if tp + fp else None,
                "missed": missed, "false": false}

    per_statement = {
        "long_qt": stat("long_qt", lambda t: t.long_qt),
        "atrial_fibrillation_suspected": stat("atrial_fibrillation_suspected", lambda t: t.af),
        "pause": stat("pause", lambda t: t.pause_ms >= 2000),
        "ventricular_bigeminy": stat("ventricular_bigeminy", lambda t: t.bigeminy),
        "tachycardia (150-220 bpm)": stat("tachycardia", lambda t: t.fast_regular,
                                          lambda t: t.rate_bpm < 95),
    }
    false_critical = [
        {"case": c.name, "codes": [s.code for s in a.statements
                                   if s.critical and s.code not in c.truth.allowed_critical()]}
        for c, a in results
        if any(s.critical and s.code not in c.truth.allowed_critical() for s in a.statements)
    ]
    qt_err = [a.measurements.qt_ms - c.truth.qt_ms for c, a in results
              if c.truth.qt_ms is not None and a.measurements is not None
              and a.measurements.qt_ms is not None]
    hr_err = [abs(a.measurements.heart_rate_bpm - c.truth.rate_bpm) for c, a in results
              if a.measurements is not None and c.truth.family != "af"]
    fast = [(c, a) for c, a in results if c.truth.fast_regular]
    qt_cases = [(c, a) for c, a in results if c.truth.family in ("long_qt", "normal_qt")]
    return {
        "n_cases": len(results),
        "families": sorted({c.truth.family for c in cases}),
        "per_statement": per_statement,
        "false_critical": false_critical,
        "n_false_critical": len(false_critical),
        "qt_error_ms": {"median": float(np.median(qt_err)) if qt_err else None,
                        "median_abs": float(np.median(np.abs(qt_err))) if qt_err else None,
                        "n": len(qt_err),
                        "not_measured": sum(a.measurements is None or a.measurements.qt_ms
                                            is None for _, a in qt_cases)},
        "hr_abs_error_bpm_median": float(np.median(hr_err)) if hr_err else None,
        "fast_regular_called_af": sum("atrial_fibrillation_suspected" in a.codes
                                      for _, a in fast),
        "cases": [{"name": c.name, "generator": c.truth.generator,
                   "perturbation": c.truth.perturbation, "rate_bpm": round(c.truth.rate_bpm, 1),
                   "codes": a.codes, "critical": a.critical} for c, a in results],
    }


# --- Speed -------------------------------------------------------------------------------------

def speed(n: int, seed: int) -> dict[str, Any]:
    """ECGs/s of ``analyze`` against the naive per-lead neurokit2 pipeline
    (``benchmarks.ecg``'s simulation, baseline and timing)."""
    ecgs = speed_bench.simulate(n, seed)
    base_rate, _ = speed_bench.run(speed_bench.baseline, ecgs)
    ours_rate, _ = speed_bench.run(speed_bench.center, ecgs)
    return {"n_ecgs": n, "baseline_ecgs_per_s": base_rate, "center_ecgs_per_s": ours_rate,
            "ratio": ours_rate / base_rate}


# --- Main ----------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %" if 0.999 < v < 1 else f"{100 * v:.1f} %"


def evaluate(quick: bool, seed: int) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    record = read_record("100")
    t0 = time.perf_counter()
    r_peaks = mitbih_r_peaks(record)
    windows = mitbih_windows(record, 30 if quick else 180)
    ptb = ptb_statements()
    cases = build_cases(6 if quick else 24, seed)
    scored = score_cases(cases)
    spd = speed(3 if quick else 20, seed)
    ps = scored["per_statement"]
    met = {
        "r_peak_sensitivity": r_peaks["sensitivity"] >= TARGETS["r_peak_sensitivity"],
        "r_peak_ppv": r_peaks["ppv"] >= TARGETS["r_peak_ppv"],
        "pr_sd_ms": (windows["pr"]["sd_ms"] or 1e9) <= TARGETS["pr_sd_ms"],
        "qrs_sd_ms": (windows["qrs"]["sd_ms"] or 1e9) <= TARGETS["qrs_sd_ms"],
        "long_qt_sensitivity": (ps["long_qt"]["sensitivity"] or 0) >= TARGETS[
            "long_qt_sensitivity"],
        "af_sensitivity": (ps["atrial_fibrillation_suspected"]["sensitivity"] or 0) >= TARGETS[
            "af_sensitivity"],
        "af_ppv": (ps["atrial_fibrillation_suspected"]["ppv"] or 0) >= TARGETS["af_ppv"],
        "pause_sensitivity": (ps["pause"]["sensitivity"] or 0) >= TARGETS["pause_sensitivity"],
        "false_critical": scored["n_false_critical"] <= TARGETS["false_critical"],
        "speed_ratio": spd["ratio"] >= TARGETS["speed_ratio"],
        "ptb_statements": ptb["all_found"],
    }
    return {"quick": quick, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
            "mitbih_100_r_peaks": r_peaks, "mitbih_100_windows": windows,
            "ptb_s0010_re": ptb, "constructed": scored, "speed": spd,
            "targets": TARGETS, "met": met, "all_met": all(met.values())}


def print_report(out: dict[str, Any]) -> None:
    r, w = out["mitbih_100_r_peaks"], out["mitbih_100_windows"]
    ps = out["constructed"]["per_statement"]
    table = Table(title="ECG validation (accuracy)")
    for col in ("check", "measured", "target", "met"):
        table.add_column(col)
    met = out["met"]

    def row(name: str, value: str, target: str, key: str | None) -> None:
        table.add_row(name, value, target, "" if key is None else ("yes" if met[key] else "NO"))

    row("R peaks, MIT-BIH 100: sensitivity", _pct(r["sensitivity"]), ">= 99.5 %",
        "r_peak_sensitivity")
    row("R peaks, MIT-BIH 100: PPV", _pct(r["ppv"]), ">= 99.5 %", "r_peak_ppv")
    row(f"HR error, {w['windows']} windows of 10 s (mean)",
        f"{w['hr_abs_error_bpm_mean']:.2f} bpm", "", None)
    for key, target in (("pr", "<= 10 ms"), ("qrs", "<= 10 ms"), ("qt", "")):
        s = w[key]
        value = ("-" if s["sd_ms"] is None else
                 f"{s['sd_ms']:.1f} ms ({s['min_ms']:.0f}-{s['max_ms']:.0f}, n={s['n']})")
        row(f"{key.upper()} repeatability (SD)", value, target,
            f"{key}_sd_ms" if target else None)
    row("first-degree AV block / AF windows (rec. 100)",
        f"{w['statement_windows']['first_degree_av_block']} / "
        f"{w['statement_windows']['atrial_fibrillation_suspected']}", "0 / 0", None)
    ptb = out["ptb_s0010_re"]
    row("PTB s0010_re: RBBB, inferior Q waves, QRS-adjusted QT",
        ", ".join(k for k, v in ptb["expected_found"].items() if v) or "none", "all three",
        "ptb_statements")
    for code, label, key_s, key_p in (
            ("long_qt", "long QT (40-125 bpm)", "long_qt_sensitivity", None),
            ("atrial_fibrillation_suspected", "AF (f-waves 0-0.1 mV)", "af_sensitivity",
             "af_ppv"),
            ("pause", "pause 2-4 s", "pause_sensitivity", None),
            ("ventricular_bigeminy", "ventricular bigeminy", None, None),
            ("tachycardia (150-220 bpm)", "regular 150-220 bpm: tachycardia", None, None)):
        s = ps[code]
        targets = {"long_qt_sensitivity": ">= 95 %", "af_sensitivity": ">= 90 %",
                   "pause_sensitivity": "100 %"}
        row(f"{label}: sensitivity (n={s['positives']})", _pct(s["sensitivity"]),
            targets.get(key_s or "", ""), key_s)
        row(f"{label}: PPV", _pct(s["ppv"]), ">= 90 %" if key_p else "", key_p)
    c = out["constructed"]
    row("regular 150-220 bpm called AF", str(c["fast_regular_called_af"]), "0", None)
    row(f"false critical statements ({c['n_cases']} cases)", str(c["n_false_critical"]), "0",
        "false_critical")
    qe = c["qt_error_ms"]
    if qe["median"] is not None:
        row("QT error, constructed (median, median |err|)",
            f"{qe['median']:+.0f} ms, {qe['median_abs']:.0f} ms "
            f"({qe['not_measured']} not measured)", "", None)
    s = out["speed"]
    row(f"speed vs nk.ecg_process x 12 ({s['n_ecgs']} ECGs)",
        f"{s['ratio']:.1f}x ({s['center_ecgs_per_s']:.1f} vs {s['baseline_ecgs_per_s']:.2f}"
        " ECGs/s)", ">= 5x", "speed_ratio")
    console.print(table)
    if out["constructed"]["false_critical"]:
        console.print("false critical:", out["constructed"]["false_critical"])
    for code, s in ps.items():
        if s["missed"] or s["false"]:
            console.print(f"{code}: missed {s['missed']}, false {s['false']}")
    console.print(f"all targets met: {out['all_met']} ({out['seconds']} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases (the test suite's run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    out = evaluate(args.quick, args.seed)
    print_report(out)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ecg_validation.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    console.print(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
