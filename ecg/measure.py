"""Global ECG measurements from the rhythm and the 12-lead median beat.

Why it is shaped this way:

* neurokit2 does the parts it is good at: cleaning (``ecg_clean``), R-peak detection
  (``ecg_peaks``) on the RMS of all usable leads (robust to any one lead being small or
  inverted), and wavelet delineation (``ecg_delineate``, method ``dwt``) of P and T.
* Delineation runs once, on a few tiled copies of the RMS median beat rather than on
  12 long leads: the median beat is already noise-free, so this is both ~20x cheaper and
  steadier than per-lead, per-beat delineation (``ecg_segment`` needs >= 4 s, hence tiling).
* QRS onset/offset come from the spatial velocity of the 12 median beats, the global
  method computerised electrocardiographs use (earliest onset / latest offset over leads);
  the DWT's own QRS boundaries on an RMS signal proved unreliable (tens of ms early).
* Everything per lead (median beats, amplitudes, axes, ST levels) is one numpy operation
  over a (12, beats, samples) array.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import neurokit2 as nk
import numpy as np
import numpy.typing as npt

from ecg.errors import NoBeats
from ecg.signal import LEAD_INDEX, LEADS, Ecg12

FloatArray = npt.NDArray[np.float64]

#: Spatial-velocity threshold (fraction of the QRS peak above the floor) for QRS onset
#: and offset; tuned on synthetic beats with exactly known boundaries (tests) to +-10 ms.
QRS_VELOCITY_FRACTION = 0.08
#: Smoothing of the spatial velocity so the zero-slope instant at the R peak is not read
#: as the end of the QRS.
VELOCITY_SMOOTH_S = 0.012
#: RMS P amplitude (mV) below which the median beat is taken to have no P wave (AF,
#: junctional rhythm): a sinus P gives >= 0.05 mV RMS over 12 leads.
P_PRESENT_MV = 0.03
#: R peaks lower than this fraction of the median R-peak height (RMS) are dropped.
MIN_BEAT_HEIGHT_FRACTION = 0.4
#: Frontal-plane lead angles (hexaxial reference system, degrees).
LIMB_ANGLES = {"I": 0.0, "II": 60.0, "III": 120.0, "aVR": -150.0, "aVL": -30.0, "aVF": 90.0}


@dataclass(frozen=True)
class Measurements:
    """Global intervals in ms, axes in degrees, amplitudes in mV (None: not measurable)."""

    heart_rate_bpm: float
    rr_ms: float
    rr_sd_ms: float
    rr_cv: float
    rmssd_ms: float
    n_beats: int
    p_wave_present: bool
    pr_ms: float | None
    qrs_ms: float | None
    qt_ms: float | None
    qtc_bazett_ms: float | None
    qtc_fridericia_ms: float | None
    p_axis_deg: float | None
    qrs_axis_deg: float | None
    t_axis_deg: float | None
    st_j_mv: dict[str, float]
    st_j60_mv: dict[str, float]
    r_amplitude_mv: dict[str, float]
    s_amplitude_mv: dict[str, float]
    qrs_net_mv: dict[str, float]
    fiducials_ms: dict[str, float | None]
    leads_used: tuple[str, ...]
    median_beats: FloatArray = field(repr=False, compare=False)
    median_r_index: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers, rounded to what the measurement resolves."""
        def r(v: float | None, nd: int = 1) -> float | None:
            return None if v is None else round(float(v), nd)

        def per_lead(d: dict[str, float]) -> dict[str, float]:
            return {k: round(float(v), 3) for k, v in d.items()}

        return {
            "heart_rate_bpm": r(self.heart_rate_bpm), "rr_ms": r(self.rr_ms),
            "rr_sd_ms": r(self.rr_sd_ms), "rr_cv": r(self.rr_cv, 3),
            "rmssd_ms": r(self.rmssd_ms), "n_beats": self.n_beats,
            "p_wave_present": self.p_wave_present, "pr_ms": r(self.pr_ms),
            "qrs_ms": r(self.qrs_ms), "qt_ms": r(self.qt_ms),
            "qtc_bazett_ms": r(self.qtc_bazett_ms), "qtc_fridericia_ms": r(self.qtc_fridericia_ms),
            "p_axis_deg": r(self.p_axis_deg, 0), "qrs_axis_deg": r(self.qrs_axis_deg, 0),
            "t_axis_deg": r(self.t_axis_deg, 0),
            "st_j_mv": per_lead(self.st_j_mv), "st_j60_mv": per_lead(self.st_j60_mv),
            "r_amplitude_mv": per_lead(self.r_amplitude_mv),
            "s_amplitude_mv": per_lead(self.s_amplitude_mv),
            "qrs_net_mv": per_lead(self.qrs_net_mv),
            "fiducials_ms": {k: r(v) for k, v in self.fiducials_ms.items()},
            "leads_used": list(self.leads_used),
        }


def clean_leads(ecg: Ecg12) -> FloatArray:
    """neurokit2's default ECG cleaning (0.5 Hz high-pass, powerline notch) on each lead."""
    fs = ecg.sampling_rate
    rows = [np.asarray(nk.ecg_clean(lead, sampling_rate=fs), dtype=np.float64)
            for lead in ecg.leads.astype(np.float64)]
    return np.vstack(rows)


def _frontal_axis(net: FloatArray, usable: npt.NDArray[np.bool_]) -> float | None:
    """Least-squares frontal vector from the usable limb leads' net amplitudes.

    With consistent limb leads this equals atan2(aVF, I); using all six keeps an axis when
    I or aVF is flat, and averages out noise in the others.
    """
    names = [n for n in LIMB_ANGLES if usable[LEAD_INDEX[n]]]
    if len(names) < 2:
        return None
    angles = np.radians([LIMB_ANGLES[n] for n in names])
    design = np.column_stack([np.cos(angles), np.sin(angles)])
    values = np.array([net[LEAD_INDEX[n]] for n in names])
    (x, y), *_ = np.linalg.lstsq(design, values, rcond=None)
    if math.hypot(x, y) < 0.02:  # < 20 uV: no measurable vector
        return None
    return float(np.degrees(np.arctan2(y, x)))


def _qrs_bounds(
    med: FloatArray, r_index: int, fs: float,
) -> tuple[int | None, int | None]:
    velocity = np.diff(med, axis=1) * fs
    speed = np.sqrt((velocity**2).sum(axis=0))
    width = max(round(VELOCITY_SMOOTH_S * fs), 1)
    env = np.convolve(speed, np.ones(width) / width, mode="same")
    n = env.size
    lo = max(r_index - int(0.15 * fs), 0)
    hi = min(r_index + int(0.2 * fs), n - 1)
    near = int(0.06 * fs)
    pre_peak = max(r_index - near, lo) + int(np.argmax(env[max(r_index - near, lo): r_index + 1]))
    post_start = min(r_index, n - 1)
    post_peak = post_start + int(np.argmax(env[post_start: min(r_index + near, hi) + 1]))
    peak = float(env[max(lo, pre_peak): post_peak + 1].max())
    # Onset: relative to the quiet PR segment. Offset: relative to the typical velocity of
    # the ST-T region, since at fast rates a steep T wave keeps the velocity from ever
    # reaching the PR-segment floor and the QRS would run into the T wave.
    floor_before = float(env[lo: pre_peak + 1].min())
    st_t = env[min(r_index + int(0.1 * fs), n - 1): min(r_index + int(0.25 * fs), n)]
    floor_after = float(np.median(st_t)) if st_t.size else float(env[post_peak: hi + 1].min())
    thr_before = floor_before + QRS_VELOCITY_FRACTION * (peak - floor_before)
    thr_after = floor_after + QRS_VELOCITY_FRACTION * (peak - floor_after)
    below_before = np.flatnonzero(env[lo: pre_peak + 1] < thr_before)
    below_after = np.flatnonzero(env[post_peak: hi + 1] < thr_after)
    onset = lo + int(below_before[-1]) + 1 if below_before.size else None
    offset = post_peak + int(below_after[0]) if below_after.size else None
    return onset, offset


def _delineate_p_t(comb: FloatArray, r_index: int, fs: float) -> dict[str, float]:
    """P onset/peak/offset, T peak/offset (samples in the median beat) via neurokit2 DWT."""
    length = comb.size
    tiles = max(6, math.ceil(4.5 * fs / length) + 2)
    tiled = np.tile(comb, tiles)
    rpeaks = r_index + length * np.arange(tiles)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, waves = nk.ecg_delineate(tiled, rpeaks, sampling_rate=fs, method="dwt")
    except (ValueError, IndexError, KeyError):
        return {}
    out: dict[str, float] = {}
    keys = {"p_on": "ECG_P_Onsets", "p_peak": "ECG_P_Peaks", "p_off": "ECG_P_Offsets",
            "t_peak": "ECG_T_Peaks", "t_off": "ECG_T_Offsets"}
    middle = slice(1, tiles - 1)
    for name, key in keys.items():
        values = np.asarray(waves.get(key, []), dtype=np.float64)
        if values.size != tiles:
            continue
        rel = values[middle] - rpeaks[middle]
        if np.isfinite(rel).any():
            out[name] = float(np.nanmedian(rel)) + r_index
    return out


def measure(ecg: Ecg12, usable: npt.NDArray[np.bool_] | None = None) -> Measurements:
    """Measure rate, rhythm regularity, intervals, axes, amplitudes and ST levels.

    ``usable`` (from :func:`ecg.quality.assess`) excludes flat, clipped or very noisy
    leads from the combined signals; their per-lead values are still reported. Raises
    :class:`NoBeats` when fewer than 3 QRS complexes are found.
    """
    fs = ecg.sampling_rate
    mask = np.ones(len(LEADS), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if not mask.any():
        raise NoBeats("no usable lead: every lead is flat, clipped or unreadably noisy")
    clean = clean_leads(ecg)
    comb_signal = np.sqrt((clean[mask] ** 2).mean(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, info = nk.ecg_peaks(comb_signal, sampling_rate=fs)
    rpeaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    if rpeaks.size:
        # A P or T wave cut by the record's end can pass for a small QRS; real complexes
        # in one record rarely differ in RMS amplitude by more than 2.5x.
        heights = comb_signal[rpeaks]
        rpeaks = rpeaks[heights >= MIN_BEAT_HEIGHT_FRACTION * np.median(heights)]
    if rpeaks.size < 3:
        raise NoBeats(f"{rpeaks.size} QRS complexes found in {ecg.duration_s:.1f} s; need >= 3")
    rr = np.diff(rpeaks) / fs * 1000.0
    rr_mean = float(rr.mean())
    rr_sd = float(rr.std(ddof=1)) if rr.size > 1 else 0.0
    rmssd = float(np.sqrt(np.mean(np.diff(rr) ** 2))) if rr.size > 1 else 0.0

    # Median beat: one RR long, R at 40 %, so tiled copies join like a real rhythm.
    beat_len = round(float(np.median(np.diff(rpeaks))))
    pre = round(0.4 * beat_len)
    inside = rpeaks[(rpeaks - pre >= 0) & (rpeaks - pre + beat_len <= clean.shape[1])]
    if inside.size < 2:
        raise NoBeats("fewer than 2 complete beats for a median beat")
    index = inside[:, None] + np.arange(-pre, beat_len - pre)[None, :]
    med: FloatArray = np.median(clean[:, index], axis=1)

    on, off = _qrs_bounds(med[mask], pre, fs)
    # Isoelectric reference: the 16 ms before QRS onset (PR segment), as carts do.
    ref = on if on is not None else pre - int(0.06 * fs)
    iso_start = max(ref - int(0.02 * fs), 0)
    iso_stop = max(iso_start + 1, ref - int(0.004 * fs))
    med = med - med[:, iso_start:iso_stop].mean(axis=1, keepdims=True)
    comb = np.sqrt((med[mask] ** 2).mean(axis=0))
    waves = _delineate_p_t(comb, pre, fs)

    def ms(samples: float | None) -> float | None:
        return None if samples is None else samples / fs * 1000.0

    p_on, p_off = waves.get("p_on"), waves.get("p_off")
    if p_on is None or p_off is None or on is None or not (0 <= p_on < p_off <= on + 0.01 * fs):
        p_on = p_off = None
    p_present = False
    if p_on is not None and p_off is not None:
        p_present = float(comb[int(p_on): int(p_off) + 1].max()) >= P_PRESENT_MV
    pr = ms(on - p_on) if (p_present and on is not None and p_on is not None) else None
    if pr is not None and not 60.0 <= pr <= 500.0:
        pr = None
    qrs = ms(off - on) if on is not None and off is not None else None
    t_off = waves.get("t_off")
    if t_off is not None and (off is None or not off + 0.08 * fs < t_off < med.shape[1]):
        t_off = None
    qt = ms(t_off - on) if t_off is not None and on is not None else None
    rr_s = rr_mean / 1000.0
    qtc_b = qt / math.sqrt(rr_s) if qt is not None else None
    qtc_f = qt / rr_s ** (1.0 / 3.0) if qt is not None else None

    empty: dict[str, float] = {}
    r_amp, s_amp, net_qrs, st_j, st_j60 = empty, empty, empty, empty, empty
    qrs_axis = p_axis = t_axis = None
    if on is not None and off is not None:
        seg = med[:, on: off + 1]
        hi, lo = seg.max(axis=1), seg.min(axis=1)
        net = hi + lo
        r_amp = dict(zip(LEADS, np.maximum(hi, 0.0).tolist(), strict=True))
        s_amp = dict(zip(LEADS, np.maximum(-lo, 0.0).tolist(), strict=True))
        net_qrs = dict(zip(LEADS, net.tolist(), strict=True))
        qrs_axis = _frontal_axis(net, mask)
        st_j = dict(zip(LEADS, med[:, off].tolist(), strict=True))
        j60 = off + round(0.06 * fs)
        if j60 < med.shape[1]:
            st_j60 = dict(zip(LEADS, med[:, j60].tolist(), strict=True))
        if t_off is not None:
            t_seg = med[:, off: int(t_off) + 1]
            t_axis = _frontal_axis(t_seg.max(axis=1) + t_seg.min(axis=1), mask)
    if p_present and p_on is not None and p_off is not None:
        p_seg = med[:, int(p_on): int(p_off) + 1]
        p_axis = _frontal_axis(p_seg.max(axis=1) + p_seg.min(axis=1), mask)

    fiducials = {
        "p_on": ms(p_on - pre) if p_on is not None else None,
        "p_off": ms(p_off - pre) if p_off is not None else None,
        "qrs_on": ms(on - pre) if on is not None else None,
        "qrs_off": ms(off - pre) if off is not None else None,
        "t_peak": ms(waves["t_peak"] - pre) if "t_peak" in waves else None,
        "t_off": ms(t_off - pre) if t_off is not None else None,
    }
    return Measurements(
        heart_rate_bpm=60000.0 / rr_mean, rr_ms=rr_mean, rr_sd_ms=rr_sd,
        rr_cv=rr_sd / rr_mean, rmssd_ms=rmssd, n_beats=int(rpeaks.size),
        p_wave_present=p_present, pr_ms=pr, qrs_ms=qrs, qt_ms=qt,
        qtc_bazett_ms=qtc_b, qtc_fridericia_ms=qtc_f,
        p_axis_deg=p_axis, qrs_axis_deg=qrs_axis, t_axis_deg=t_axis,
        st_j_mv=st_j, st_j60_mv=st_j60, r_amplitude_mv=r_amp, s_amplitude_mv=s_amp,
        qrs_net_mv=net_qrs, fiducials_ms=fiducials,
        leads_used=tuple(n for n, u in zip(LEADS, mask, strict=True) if u),
        median_beats=med, median_r_index=pre,
    )
