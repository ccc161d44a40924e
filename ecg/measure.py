"""Global ECG measurements from the rhythm and the 12-lead median beat.

How it works, and why:

1. **R peaks** come from the spatial velocity of the band-passed (6-30 Hz) usable leads,
   smoothed over 60 ms (:func:`detect_r_peaks`). The band and the slope keep the QRS and
   suppress T waves (slow) and P waves (small); a candidate within 360 ms of a beat with
   under half its size, or with under half its 10-30 Hz content, is a T wave
   (Pan-Tompkins' rule, and a tall T wave has no sharp deflection); the threshold is relative to
   the typical QRS within +-5 s, so a long record with changing amplitude works too.
   Validated against the cardiologists' annotations of MIT-BIH record 100
   (``benchmarks/ecg_validation.py``).
2. **Beats are classified** by QRS morphology (correlation over all usable leads): the
   dominant shape is the normal beat; a different shape is a ventricular ectopic (``V``);
   a dominant-shape beat more than 20 % early is a premature supraventricular beat
   (``S``). Rhythm regularity is computed on the intervals between non-ventricular beats,
   and pauses (>= 2 s) are listed rather than averaged into the rate.
3. **The median beat** of the normal beats spans from up to 0.5 s (0.7 RR) before the R
   peak to the next R peak (any RR up to 2 s), so a QT up to 700 ms is inside it at any
   rate from 30 to 220 bpm and the P wave is inside it at fast rates.
4. **Delineation** on the RMS of the baseline-corrected median beats: QRS onset/offset
   from the spatial velocity (earliest onset / latest offset over leads), P onset and T
   end by the tangent method (steepest slope of the wave's outer limb meets the local
   baseline), which equals ECGSYN's centre +- 2 sigma exactly and is how QT is measured
   by hand. The T end is searched up to the next QRS onset, never beyond.
5. **P waves** are judged by their *consistency across beats*: the correlation of each
   beat's pre-QRS segment with the mean of the others. Sinus P waves repeat (0.7-1.0);
   fibrillatory waves and noise do not (~0). Amplitude alone cannot tell them apart,
   because fibrillatory waves do not average out of a median of 10-20 beats.

Anything that cannot be measured is None *with a reason* in ``not_measurable``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal as sps
from scipy.ndimage import uniform_filter1d

from ecg.errors import NoBeats
from ecg.signal import LEAD_INDEX, LEADS, Ecg12

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# --- R-peak detection ---------------------------------------------------------------------
#: Pass band of the QRS detector: QRS energy is 8-20 Hz (a wide ventricular beat's lower);
#: T waves are mostly below 6 Hz.
QRS_BAND_HZ = (6.0, 30.0)
#: A candidate close behind a QRS (T_WAVE_WINDOW_S) must also have this share of that
#: QRS's envelope in the 10-30 Hz band: a tall T wave can reach the QRS in the 6-30 Hz
#: band, but it has no sharp deflection.
SHARP_BAND_HZ = (10.0, 30.0)
SHARP_FRACTION = 0.5
#: Smoothing of the squared spatial velocity (moving window integration).
QRS_ENERGY_WINDOW_S = 0.06
#: No two QRS complexes closer than this (300 bpm).
REFRACTORY_S = 0.2
#: A candidate is a QRS when its envelope reaches this share of the typical QRS nearby.
QRS_THRESHOLD_FRACTION = 0.3
#: "Nearby" for that typical QRS: +- this many seconds.
QRS_REFERENCE_HALF_WINDOW_S = 5.0
#: Pan-Tompkins' T-wave rule: within this time of a QRS, a candidate under
#: T_WAVE_HEIGHT_FRACTION of that QRS's envelope is its T wave.
T_WAVE_WINDOW_S = 0.36
T_WAVE_HEIGHT_FRACTION = 0.5

# --- Beat classification --------------------------------------------------------------------
#: QRS window compared between beats (s, relative to the detected peak).
MORPH_WINDOW_S = (-0.07, 0.11)
#: Two beats have the same shape at this correlation and an energy ratio within 1/1.6-1.6.
SAME_SHAPE_CORR = 0.85
SAME_SHAPE_ENERGY_RATIO = 1.6
#: A beat is ventricular (ectopic shape) below this correlation with the dominant
#: template, or with an energy ratio outside 1/2-2.
ECTOPIC_CORR = 0.75
ECTOPIC_ENERGY_RATIO = 2.0
#: A dominant-shape beat whose RR is below this share of the local typical RR is
#: premature (a premature supraventricular / atrial beat).
PREMATURE_FRACTION = 0.8
#: An RR interval this long is a pause; it is also a pause from PAUSE_RATIO x the median
#: RR (so a slow regular rhythm is not a series of pauses), and always from 3 s.
PAUSE_MS = 2000.0
PAUSE_RATIO = 1.5
ALWAYS_PAUSE_MS = 3000.0

# --- Median beat and delineation -------------------------------------------------------------
#: Spatial-velocity threshold (fraction of the QRS peak above the floor) for QRS onset
#: and offset; tuned on synthetic beats with exactly known boundaries (tests) to +-10 ms.
QRS_VELOCITY_FRACTION = 0.08
#: Smoothing of the spatial velocity so the zero-slope instant at the R peak is not read
#: as the end of the QRS.
VELOCITY_SMOOTH_S = 0.012
#: The median beat starts min(PRE_MAX_S, PRE_RR_FRACTION x RR) before the R peak and
#: ends at the next R peak (at most POST_MAX_S after it).
PRE_MAX_S = 0.5
PRE_RR_FRACTION = 0.7
POST_MAX_S = 2.0
#: Smoothing of the RMS median beat before the tangent method.
WAVE_SMOOTH_S = 0.016
#: The tangent method ends a wave where the tangent at its steepest descent meets the
#: baseline: exactly centre + 2 sigma for a Gaussian wave (ECGSYN's convention), but early
#: for a wave that reaches the baseline slowly (9 % of its width for a raised cosine, the
#: bias that makes tangent QTs shorter than hand-measured ones). The T end is moved this
#: share of the tangent's length (steepest point -> baseline) later: +0.2 sigma on a
#: Gaussian, -6 % of the width on a raised cosine.
T_END_EXTENSION = 0.2
#: The T wave is the first wave after the QRS at least this share of the largest one's
#: height; a later wave of similar size is a U wave (or the next P wave).
T_FIRST_OF = 0.33
#: A T end found closer than this to the next QRS onset is the next P wave's end (T and P
#: fused at a fast rate): QT is then not measurable.
T_END_QRS_GAP_S = 0.06
#: When the RMS T end is hidden, a lead whose T wave is at least CLEAR_T_MIN_MV and whose
#: P wave is under CLEAR_T_P_RATIO of it gives the T end (as QT is measured by hand).
CLEAR_T_MIN_MV = 0.15
CLEAR_T_P_RATIO = 0.25
#: The shortest T peak-to-T end interval (adults: 70-110 ms): with the T end hidden, QT is
#: at least T peak + this (``Measurements.qt_min_ms``).
TPEAK_TEND_MIN_MS = 60.0
#: ... only up to 150 bpm: faster, the T wave and the next P wave cannot be told apart.
QT_MIN_RR_MS = 400.0
#: RMS amplitude (mV) under which a P or T wave is too flat to delineate.
P_MIN_MV = 0.02
T_MIN_MV = 0.03
#: Pre-QRS segment used for the consistency of P waves across beats.
P_WINDOW_MAX_S = 0.25
P_WINDOW_RR_FRACTION = 0.45
#: Share of the pre-QRS signal that repeats from beat to beat above which P waves are
#: consistent (sinus or ectopic atrial rhythm, not fibrillation); see _p_consistency.
P_CONSISTENT_SHARE = 0.4
#: ST is read at J + 60 ms up to 100 bpm and at J + 40 ms above (J + 60 ms falls on the T
#: wave at fast rates), and never later than halfway from J to the T peak.
ST_OFFSET_MS = 60.0
ST_OFFSET_FAST_MS = 40.0
ST_FAST_RR_MS = 600.0
#: Frontal-plane lead angles (hexaxial reference system, degrees).
LIMB_ANGLES = {"I": 0.0, "II": 60.0, "III": 120.0, "aVR": -150.0, "aVL": -30.0, "aVF": 90.0}
#: An initial negative deflection (Q) starts below this (mV); a QRS with no positive wave
#: above QS_R_MAX_MV is a QS complex.
Q_START_MV = 0.02
QS_R_MAX_MV = 0.05
QS_MIN_DEPTH_MV = 0.2


@dataclass(frozen=True)
class Measurements:
    """Global intervals in ms, axes in degrees, amplitudes in mV (None: not measurable,
    with the reason in ``not_measurable``)."""

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
    #: measurement name -> why it is None.
    not_measurable: dict[str, str] = field(default_factory=dict)
    #: ST at the rate-adapted point J + ``st_offset_ms`` (what the ST rules use).
    st_jx_mv: dict[str, float] = field(default_factory=dict)
    st_offset_ms: float = ST_OFFSET_MS
    #: Rhythm: normalised RMSSD, share of successive RR differences above 10 % of the mean
    #: RR, and the P-wave consistency across beats (repeating share, None: too few beats).
    nrmssd: float = 0.0
    rr_irregular_fraction: float = 0.0
    p_consistency: float | None = None
    p_amplitude_mv: float | None = None
    #: One letter per detected beat: N normal, S premature supraventricular, V ventricular.
    beat_labels: str = ""
    r_peaks_ms: tuple[float, ...] = ()
    #: Pauses: (time of the beat that ends it in s, RR in ms).
    pauses: tuple[tuple[float, float], ...] = ()
    longest_rr_ms: float = 0.0
    #: Per lead: initial negative deflection (Q) duration (ms) and depth (mV), QS complex.
    q_duration_ms: dict[str, float] = field(default_factory=dict)
    q_depth_mv: dict[str, float] = field(default_factory=dict)
    qs_complex: dict[str, bool] = field(default_factory=dict)
    #: Per lead: T amplitude (mV, signed) at the T peak.
    t_amplitude_mv: dict[str, float] = field(default_factory=dict)
    #: When QT is not measurable but the T peak is: a lower bound for QT (T peak + the
    #: shortest T peak-to-end interval).
    qt_min_ms: float | None = None
    #: The lead the T end was taken from when the RMS of all leads hid it (else None).
    t_end_lead: str | None = None

    @property
    def n_pvc(self) -> int:
        return self.beat_labels.count("V")

    @property
    def n_pac(self) -> int:
        return self.beat_labels.count("S")

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
            "qrs_ms": r(self.qrs_ms), "qt_ms": r(self.qt_ms), "qt_min_ms": r(self.qt_min_ms),
            "t_end_lead": self.t_end_lead,
            "qtc_bazett_ms": r(self.qtc_bazett_ms), "qtc_fridericia_ms": r(self.qtc_fridericia_ms),
            "p_axis_deg": r(self.p_axis_deg, 0), "qrs_axis_deg": r(self.qrs_axis_deg, 0),
            "t_axis_deg": r(self.t_axis_deg, 0),
            "st_j_mv": per_lead(self.st_j_mv), "st_j60_mv": per_lead(self.st_j60_mv),
            "st_jx_mv": per_lead(self.st_jx_mv), "st_offset_ms": r(self.st_offset_ms, 0),
            "r_amplitude_mv": per_lead(self.r_amplitude_mv),
            "s_amplitude_mv": per_lead(self.s_amplitude_mv),
            "qrs_net_mv": per_lead(self.qrs_net_mv),
            "q_duration_ms": {k: round(float(v), 1) for k, v in self.q_duration_ms.items()},
            "q_depth_mv": per_lead(self.q_depth_mv),
            "t_amplitude_mv": per_lead(self.t_amplitude_mv),
            "fiducials_ms": {k: r(v) for k, v in self.fiducials_ms.items()},
            "leads_used": list(self.leads_used),
            "not_measurable": dict(self.not_measurable),
            "rhythm": {
                "nrmssd": r(self.nrmssd, 3),
                "rr_irregular_fraction": r(self.rr_irregular_fraction, 3),
                "p_consistency": r(self.p_consistency, 3),
                "p_amplitude_mv": r(self.p_amplitude_mv, 3),
                "beat_labels": self.beat_labels,
                "n_pvc": self.n_pvc, "n_pac": self.n_pac,
                "longest_rr_ms": r(self.longest_rr_ms, 0),
                "pauses": [{"at_s": round(t, 2), "rr_ms": round(rr)} for t, rr in self.pauses],
            },
        }


@lru_cache(maxsize=16)
def _clean_filters(fs: float) -> tuple[FloatArray, FloatArray, list[float]]:
    sos: FloatArray = sps.butter(5, 0.5, btype="highpass", output="sos", fs=fs)
    b = np.ones(int(fs / 50.0)) if fs >= 100 else np.ones(2)
    return sos, b, [float(b.size)]


#: The last cleaning, kept for the same ECG object (quality and measurement both clean).
_last_clean: tuple[weakref.ref[Ecg12], FloatArray] | None = None


def clean_leads(ecg: Ecg12) -> FloatArray:
    """neurokit2's default ECG cleaning (``nk.ecg_clean``, method "neurokit": 5th-order
    Butterworth high-pass at 0.5 Hz, then its 50 Hz powerline moving average, both run
    forwards and backwards), on all 12 leads at once. Treat the result as read-only: the
    last one is reused for the same ECG."""
    global _last_clean
    last = _last_clean
    if last is not None and last[0]() is ecg:
        return last[1]
    sos, b, a = _clean_filters(ecg.sampling_rate)
    high = sps.sosfiltfilt(sos, ecg.leads.astype(np.float64), axis=1)
    clean: FloatArray = sps.filtfilt(b, a, high, axis=1, method="pad")
    clean.setflags(write=False)
    _last_clean = (weakref.ref(ecg), clean)
    return clean


# --- R peaks ---------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _band(fs: float, band: tuple[float, float]) -> FloatArray:
    nyq = fs / 2
    hi = min(band[1], 0.45 * fs)
    sos: FloatArray = sps.butter(2, [band[0] / nyq, hi / nyq], btype="bandpass",
                                 output="sos")
    return sos


def qrs_envelope(leads: FloatArray, fs: float,
                 band: tuple[float, float] = QRS_BAND_HZ) -> FloatArray:
    """Smoothed spatial velocity (mV/s) of the band-passed leads, shape (n,)."""
    x = np.atleast_2d(np.asarray(leads, dtype=np.float64))
    bp = sps.sosfiltfilt(_band(fs, band), x, axis=1)
    velocity = np.diff(bp, axis=1, prepend=bp[:, :1]) * fs
    energy = (velocity**2).sum(axis=0)
    w = max(round(QRS_ENERGY_WINDOW_S * fs), 1)
    smooth = np.convolve(energy, np.ones(w) / w, mode="same")
    env: FloatArray = np.sqrt(np.maximum(smooth, 0.0))
    return env


def detect_r_peaks(leads: FloatArray, fs: float) -> IntArray:
    """QRS complexes (sample index of the envelope peak) in ``leads`` (k, n), any length.

    Works on one lead or many; the leads should already be cleaned (0.5 Hz high-pass).
    """
    env = qrs_envelope(leads, fs)
    cand, _ = sps.find_peaks(env, distance=max(round(REFRACTORY_S * fs), 1))
    cand = np.asarray(cand, dtype=np.int64)
    # The band-pass filter's edge transients make the first and last 60 ms unreliable.
    edge = round(0.06 * fs)
    cand = cand[(cand >= edge) & (cand < env.size - edge)]
    if cand.size == 0:
        return np.zeros(0, dtype=np.int64)
    heights = env[cand]
    half = QRS_REFERENCE_HALF_WINDOW_S * fs
    k = max(3, round(QRS_REFERENCE_HALF_WINDOW_S))
    lo = np.searchsorted(cand, cand - half)
    hi = np.searchsorted(cand, cand + half, side="right")
    ref = np.empty(cand.size)
    for i in range(cand.size):
        local = np.sort(heights[lo[i]: hi[i]])[-k:]
        ref[i] = float(np.median(local))
    keep = heights >= QRS_THRESHOLD_FRACTION * ref
    peaks, peak_h = cand[keep], heights[keep]
    sharp = qrs_envelope(leads, fs, SHARP_BAND_HZ)
    half = round(0.03 * fs)
    sharp_h = np.array([sharp[max(p - half, 0): p + half + 1].max() for p in peaks.tolist()])
    out: list[int] = []
    out_h: list[float] = []
    out_sharp: list[float] = []
    t_window = T_WAVE_WINDOW_S * fs
    for p, h, sh in zip(peaks.tolist(), peak_h.tolist(), sharp_h.tolist(), strict=True):
        if out and p - out[-1] < t_window and (
                h < T_WAVE_HEIGHT_FRACTION * out_h[-1] or sh < SHARP_FRACTION * out_sharp[-1]):
            continue  # the previous QRS's T wave
        if out and p - out[-1] < t_window and out_h[-1] < T_WAVE_HEIGHT_FRACTION * h:
            out[-1], out_h[-1], out_sharp[-1] = p, h, sh  # that "QRS" was a P wave/artefact
            continue
        out.append(p)
        out_h.append(h)
        out_sharp.append(sh)
    # The record may start after a QRS and before its T wave: a first "beat" in the first
    # 0.5 s with no sharp deflection is that T wave.
    if len(out) >= 4 and out[0] < 0.5 * fs and out_sharp[0] < SHARP_FRACTION * float(
            np.median(out_sharp)):
        del out[0]
    return np.asarray(out, dtype=np.int64)


# --- Helpers ----------------------------------------------------------------------------------

def _windows(x: FloatArray, centers: IntArray, start: int, stop: int) -> FloatArray:
    """(leads, beats, stop - start) windows around ``centers``; NaN outside the record."""
    pad = max(-start, stop, 0) + 1
    padded = np.pad(x, ((0, 0), (pad, pad)), constant_values=np.nan)
    idx = centers[:, None] + pad + np.arange(start, stop)[None, :]
    out: FloatArray = padded[:, idx]
    return out


def _smooth(x: FloatArray, width: int) -> FloatArray:
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    padded = np.pad(x, (width, width), mode="edge")
    out: FloatArray = np.convolve(padded, kernel, mode="same")[width:-width]
    return out


def _frontal_axis(net: FloatArray, usable: BoolArray) -> float | None:
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


# --- Beats and rhythm ------------------------------------------------------------------------

def _correlations(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Pairwise correlation and norm of the rows of ``x`` (beats, features)."""
    xc = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(xc, axis=1)
    safe = np.where(norms > 1e-9, norms, 1.0)
    corr: FloatArray = (xc @ xc.T) / np.outer(safe, safe)
    return corr, norms


def classify_beats(use: FloatArray, rpeaks: IntArray, fs: float) -> npt.NDArray[np.str_]:
    """'N' (dominant QRS shape) or 'V' (a different shape) per beat.

    Beats cut by the record's ends are compared on the part that is inside it.
    """
    start, stop = (round(s * fs) for s in MORPH_WINDOW_S)
    seg = _windows(use, rpeaks, start, stop)
    complete = np.isfinite(seg).all(axis=(0, 2))
    if complete.sum() < 2:
        complete = np.ones(rpeaks.size, dtype=bool)
    seg = seg - np.nanmean(seg, axis=2, keepdims=True)
    x = seg.transpose(1, 0, 2).reshape(rpeaks.size, -1)
    full = np.nan_to_num(x[complete])
    corr, norms = _correlations(full)
    ratio = norms[:, None] / np.maximum(norms[None, :], 1e-9)
    similar = ((corr >= SAME_SHAPE_CORR) & (ratio < SAME_SHAPE_ENERGY_RATIO)
               & (ratio > 1 / SAME_SHAPE_ENERGY_RATIO))
    counts = similar.sum(axis=1)
    first = similar[int(np.argmax(counts))]
    dominant = first
    rest = ~first
    if rest.sum() >= 2:
        second = similar[int(np.argmax(np.where(rest, counts, -1)))] & rest
        if second.sum() >= 0.6 * first.sum():
            # Bigeminy: as many ectopic as normal beats. Ectopic beats come early.
            rr_before = np.concatenate([[np.nan], np.diff(rpeaks).astype(float)])[complete]

            def typical_rr(group: BoolArray) -> float:
                values = rr_before[group]
                values = values[np.isfinite(values)]
                return float(np.median(values)) if values.size else 0.0

            if typical_rr(second) > typical_rr(first):
                dominant = second
    template = np.median(full[dominant], axis=0)
    # Beats cut by the record's ends: the missing part is taken as the template's.
    x = np.where(np.isnan(x), template[None, :], x)
    corr_t, _ = _correlations(np.vstack([template[None, :], x]))
    norms_all = np.linalg.norm(x - x.mean(axis=1, keepdims=True), axis=1)
    t_norm = float(np.linalg.norm(template - template.mean()))
    beat_ratio = norms_all / max(t_norm, 1e-9)
    in_dominant = np.zeros(rpeaks.size, dtype=bool)
    in_dominant[np.flatnonzero(complete)[dominant]] = True
    # A beat cut by the record's ends (or its filter's edge) is not called ectopic.
    in_dominant |= ~np.isfinite(seg).all(axis=(0, 2))
    ectopic = ~in_dominant & ((corr_t[0, 1:] < ECTOPIC_CORR)
                              | (beat_ratio > ECTOPIC_ENERGY_RATIO)
                              | (beat_ratio < 1 / ECTOPIC_ENERGY_RATIO))
    labels: npt.NDArray[np.str_] = np.where(ectopic, "V", "N")
    return labels


@dataclass(frozen=True)
class _Rhythm:
    rr_ms: FloatArray          # all intervals
    regular_ms: FloatArray     # between non-ventricular beats, no pauses
    pauses: tuple[tuple[float, float], ...]
    labels: npt.NDArray[np.str_]
    heart_rate_bpm: float
    nrmssd: float
    irregular_fraction: float
    rmssd_ms: float


def _rhythm(rpeaks: IntArray, labels: npt.NDArray[np.str_], fs: float) -> _Rhythm:
    rr = np.diff(rpeaks) / fs * 1000.0
    median_rr = float(np.median(rr))
    is_pause = ((rr >= PAUSE_MS) & (rr >= PAUSE_RATIO * median_rr)) | (rr >= ALWAYS_PAUSE_MS)
    pauses = tuple((float(rpeaks[i + 1] / fs), float(rr[i])) for i in np.flatnonzero(is_pause))
    not_v = labels != "V"
    valid = not_v[:-1] & not_v[1:] & ~is_pause
    # Successive differences only between adjacent valid intervals.
    pairs = valid[:-1] & valid[1:]
    diffs = np.diff(rr)[pairs] if rr.size > 1 else np.zeros(0)
    regular = rr[valid]
    base = regular if regular.size else rr[~is_pause] if (~is_pause).any() else rr
    mean_rr = float(base.mean())
    rmssd = float(np.sqrt(np.mean(diffs**2))) if diffs.size else 0.0
    irregular = float(np.mean(np.abs(diffs) > 0.1 * mean_rr)) if diffs.size else 0.0
    # Premature supraventricular beats: dominant shape, RR well below the local typical RR
    # (median of the valid intervals within +-5 beats).
    out = labels.copy()
    for i in range(1, rpeaks.size):
        if labels[i] != "N" or is_pause[i - 1]:
            continue
        lo, hi = max(0, i - 6), min(rr.size, i + 5)
        local = rr[lo:hi][valid[lo:hi]]
        if local.size >= 3 and rr[i - 1] < PREMATURE_FRACTION * float(np.median(local)):
            out[i] = "S"
    rate_rr = rr[~is_pause] if (~is_pause).any() else rr
    return _Rhythm(rr_ms=rr, regular_ms=regular, pauses=pauses, labels=out,
                   heart_rate_bpm=60000.0 / float(rate_rr.mean()),
                   nrmssd=rmssd / mean_rr if mean_rr else 0.0,
                   irregular_fraction=irregular, rmssd_ms=rmssd)


# --- Delineation -------------------------------------------------------------------------------

def _qrs_bounds(med: FloatArray, r_index: int, fs: float, limit: int,
                ) -> tuple[int | None, int | None]:
    """QRS onset and offset (samples) from the spatial velocity of the median beats;
    ``limit`` is the next beat's QRS (nothing at or after it belongs to this QRS)."""
    velocity = np.diff(med, axis=1) * fs
    speed = np.sqrt((velocity**2).sum(axis=0))
    width = max(round(VELOCITY_SMOOTH_S * fs), 1)
    env = np.convolve(speed, np.ones(width) / width, mode="same")
    n = min(env.size, limit)
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


def _tangent_end(seg: FloatArray, peak: int, stop: int, base: float, amp: float,
                 extension: float = 0.0, smooth: int = 1) -> float | None:
    """Where the tangent at the steepest point of the descent after ``peak`` meets
    ``base``, moved ``extension`` x (that point - the steepest point) later. The descent
    ends where the wave first falls to 20 % of its height, or at its first trough below
    60 % (where a following wave, such as the next P wave, begins)."""
    part = seg[peak: stop]
    after = np.flatnonzero(part <= base + 0.2 * amp)
    end = peak + int(after[0]) + 1 if after.size else stop
    d = np.diff(part)
    troughs = np.flatnonzero((d[:-1] < 0) & (d[1:] >= 0)) + 1
    troughs = troughs[part[troughs] <= base + 0.6 * amp]
    if troughs.size:
        end = min(end, peak + int(troughs[0]) + 1)
    slope = np.gradient(seg[peak: end + 1]) if end > peak + 1 else np.zeros(0)
    if slope.size < 2 or float(slope.min()) >= 0:
        return None
    # The wave's own steepest point: the first local steepest point at least half as steep
    # as the steepest of the descent (a P wave on the T wave's tail descends again later).
    steep = float(slope.min())
    sm = _smooth(slope, smooth)  # local extremes of the slope, not of its noise
    local = np.flatnonzero((sm[1:-1] <= sm[:-2]) & (sm[1:-1] <= sm[2:])
                           & (sm[1:-1] <= 0.5 * steep)) + 1
    k = int(local[0]) if local.size else int(np.argmin(slope))
    i = peak + k
    length = (float(seg[i]) - base) / float(-slope[k])
    return float(i + length * (1.0 + extension))


def _tangent_start(seg: FloatArray, start: int, peak: int, base: float, amp: float,
                   smooth: int = 1) -> float | None:
    """Mirror of :func:`_tangent_end` for a wave's onset (ascending limb before ``peak``)."""
    rev = seg[start: peak + 1][::-1]
    end = _tangent_end(rev, 0, rev.size, base, amp, smooth=smooth)
    return None if end is None else peak - end


def _wave_peak(seg: FloatArray, start: int, stop: int, first_of: float = 1.0) -> int | None:
    """Highest local maximum of ``seg`` in [start, stop) (not a slope at the edge), or with
    ``first_of`` < 1 the first one at least that share of the highest's height above the
    lowest point (a T wave before a U wave of similar size)."""
    if stop - start < 3:
        return None
    part = seg[start:stop]
    peaks, _ = sps.find_peaks(part)
    if peaks.size == 0:
        return None
    floor = float(part.min())
    heights = part[peaks] - floor
    big = np.flatnonzero(heights >= first_of * heights.max())
    return start + int(peaks[big[0]])


def _t_wave(mag: FloatArray, off: int, peak_stop: int, end_stop: int, fs: float,
            next_p_on: int | None = None) -> tuple[int | None, float | None, str | None]:
    """T peak and T end (samples) on the RMS median beat, or the reason there is none.

    The T peak is looked for before ``peak_stop`` (the next beat's P wave, when there is
    one), its end before ``end_stop`` (the next QRS). The tangent is taken on the T wave's
    own descending limb, before ``next_p_on`` (the next P wave's onset): a T wave may end
    inside the next P wave, as the tangent of its descending limb shows.
    """
    seg = _smooth(mag, max(round(WAVE_SMOOTH_S * fs), 1))
    start = off + round(0.04 * fs)
    if peak_stop - start < round(0.06 * fs):
        return None, None, "no room for a T wave before the next beat"
    peak = _wave_peak(seg, start, peak_stop, T_FIRST_OF)
    if peak is None:
        return None, None, "no T wave peak between the QRS and the next beat"
    base = float(seg[peak: end_stop].min())
    amp = float(seg[peak]) - base
    if amp < T_MIN_MV:
        return peak, None, f"T wave too flat to find its end ({amp:.3f} mV RMS)"
    descent_stop = end_stop
    if next_p_on is not None and next_p_on > peak + round(0.03 * fs):
        descent_stop = min(end_stop, next_p_on)
    end = _tangent_end(seg, peak, descent_stop, base, amp, T_END_EXTENSION,
                       max(round(0.02 * fs), 1))
    if end is None or end >= end_stop - 1:
        return peak, None, "T end not found before the next QRS (T wave runs into the next beat)"
    return peak, end, None


def _clear_t_lead(med: FloatArray, mask: BoolArray, t_peak: int, on: int, fs: float,
                  ) -> int | None:
    """The usable lead whose T wave (at the RMS T peak) is largest relative to its P wave
    (the 250 ms before the QRS), if the P wave there is under a quarter of the T wave."""
    t_amp = np.abs(med[:, t_peak])
    p_amp = np.abs(med[:, max(on - round(0.25 * fs), 0): max(on - round(0.01 * fs), 1)]).max(
        axis=1)
    ok = mask & (t_amp >= CLEAR_T_MIN_MV) & (p_amp <= CLEAR_T_P_RATIO * t_amp)
    if not ok.any():
        return None
    ratio = np.where(ok, t_amp / np.maximum(p_amp, 1e-3), -1.0)
    return int(np.argmax(ratio))


def _p_wave(mag: FloatArray, lo: int, on: int, fs: float,
            ) -> tuple[float | None, int | None, float | None, float]:
    """P onset, peak, offset (samples) and RMS amplitude on the median beat."""
    seg = _smooth(mag, max(round(WAVE_SMOOTH_S * fs), 1))
    stop = on - round(0.01 * fs)
    peak = _wave_peak(seg, lo, stop)
    if peak is None:
        return None, None, None, 0.0
    base_on = float(seg[lo: peak + 1].min())
    base_off = float(seg[peak: on + 1].min())
    amp = float(seg[peak]) - max(base_on, base_off)
    if amp < P_MIN_MV:
        return None, peak, None, amp
    width = max(round(0.02 * fs), 1)
    p_on = _tangent_start(seg, lo, peak, base_on, float(seg[peak]) - base_on, width)
    p_off = _tangent_end(seg, peak, on + 1, base_off, float(seg[peak]) - base_off,
                         smooth=width)
    if p_on is not None:
        p_on = max(p_on, float(lo))
    if p_off is not None:
        p_off = min(p_off, float(on))
    return p_on, peak, p_off, amp


def _p_consistency(use: FloatArray, centers: IntArray, start: int, stop: int,
                   floor: IntArray, fs: float) -> float | None:
    """Share of the pre-QRS signal that repeats from beat to beat (0: none, 1: all).

    Each beat's segment [center + start, center + stop) is smoothed (30 ms), its part
    before ``floor`` (the end of the previous beat's T wave) is left out, and each
    lead's straight line (baseline wander) removed. With B segments x_b, the repeating
    share is (B |mean x|^2 / mean |x|^2 - 1) / (B - 1): an intraclass correlation that is
    ~0 for waves with no fixed timing to the QRS (fibrillatory waves, noise; its spread
    is ~1/(B - 1)) and ~1 for P waves, whatever their amplitude relative to the noise.
    """
    if centers.size < 3:
        return None
    # One window for all beats, from the typical end of the previous T wave; a beat whose
    # previous beat came earlier loses the part before that beat's T end.
    start = max(start, int(np.median(floor - centers)))
    if stop - start < max(round(0.04 * fs), 3):
        return None
    seg = _windows(use, centers, start, stop)  # (L, B, W)
    idx = centers[:, None] + np.arange(start, stop)[None, :]
    weight = ((idx > floor[:, None]) & np.isfinite(seg).all(axis=0)).astype(np.float64)
    keep = weight.sum(axis=1) >= max(round(0.04 * fs), 3)
    seg, weight = np.nan_to_num(seg[:, keep]), weight[keep]
    b = seg.shape[1]
    if b < 3:
        return None
    seg = uniform_filter1d(seg, max(round(0.03 * fs), 1), axis=2, mode="nearest")
    t = np.linspace(-1.0, 1.0, seg.shape[2])[None, None, :]
    w = weight[None, :, :]
    wsum = w.sum(axis=2, keepdims=True)
    t_mean = (w * t).sum(axis=2, keepdims=True) / wsum
    y_mean = (w * seg).sum(axis=2, keepdims=True) / wsum
    tc = t - t_mean
    slope = (w * tc * (seg - y_mean)).sum(axis=2, keepdims=True) / np.maximum(
        (w * tc**2).sum(axis=2, keepdims=True), 1e-12)
    resid = (seg - y_mean - slope * tc) * w
    x = resid.transpose(1, 0, 2).reshape(b, -1)
    total = float((x**2).sum(axis=1).mean())
    if total < (0.003**2) * float(weight.sum(axis=1).mean()) * seg.shape[0]:
        return 0.0  # under 3 uV RMS: nothing before the QRS at all
    repeating = float((x.mean(axis=0) ** 2).sum())
    return float((b * repeating / total - 1.0) / (b - 1.0))


def _q_waves(med: FloatArray, on: int, off: int, fs: float,
             ) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    """Per lead: duration (ms) and depth (mV) of an initial negative deflection, QS."""
    dur: dict[str, float] = {}
    depth: dict[str, float] = {}
    qs: dict[str, bool] = {}
    for i, name in enumerate(LEADS):
        x = med[i, on: off + 1]
        qs[name] = bool(x.max() < QS_R_MAX_MV and x.min() < -QS_MIN_DEPTH_MV)
        above = np.flatnonzero(np.abs(x) > Q_START_MV)
        if above.size == 0 or x[above[0]] > 0:
            dur[name], depth[name] = 0.0, 0.0
            continue
        back = np.flatnonzero(x[above[0]:] >= 0)
        q_end = above[0] + int(back[0]) if back.size else x.size
        before = np.flatnonzero(x[: above[0]] >= 0)
        q_start = int(before[-1]) if before.size else 0
        dur[name] = (q_end - q_start) / fs * 1000.0
        depth[name] = float(-x[q_start:q_end].min())
    return dur, depth, qs


# --- Measure --------------------------------------------------------------------------------------

def measure(ecg: Ecg12, usable: BoolArray | None = None) -> Measurements:
    """Measure rate, rhythm, beats, intervals, axes, amplitudes and ST levels.

    ``usable`` (from :func:`ecg.quality.assess`) excludes flat, clipped or very noisy
    leads from the combined signals; their per-lead values are still reported. Raises
    :class:`NoBeats` when fewer than 3 QRS complexes are found.
    """
    fs = ecg.sampling_rate
    mask = np.ones(len(LEADS), dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    if not mask.any():
        raise NoBeats("no usable lead: every lead is flat, clipped or unreadably noisy")
    clean = clean_leads(ecg)
    use = clean[mask]
    rpeaks = detect_r_peaks(use, fs)
    if rpeaks.size < 3:
        raise NoBeats(f"{rpeaks.size} QRS complexes found in {ecg.duration_s:.1f} s; need >= 3")
    labels = classify_beats(use, rpeaks, fs)
    rhythm = _rhythm(rpeaks, labels, fs)
    labels = rhythm.labels
    rr = rhythm.rr_ms
    not_measurable: dict[str, str] = {}

    # Beats for the median: normal (not ventricular, not premature).
    rr_before = np.concatenate([[np.nan], rr])
    rr_after = np.concatenate([rr, [np.nan]])
    chosen = labels == "N"
    if chosen.sum() < 2:
        chosen = labels != "V"
    if chosen.sum() < 2:
        chosen = np.ones(rpeaks.size, dtype=bool)
    typical_rr = (float(np.median(rhythm.regular_ms)) if rhythm.regular_ms.size
                  else float(np.median(rr)))
    rr_s = typical_rr / 1000.0
    pre = round(min(PRE_MAX_S, PRE_RR_FRACTION * rr_s) * fs)
    next_rr = rr_after[chosen & ~np.isnan(rr_after)]
    next_rr = next_rr[next_rr < PAUSE_MS] if (next_rr < PAUSE_MS).any() else next_rr
    next_ms = float(np.median(next_rr)) if next_rr.size else typical_rr
    # Nothing of this beat after the earliest typical next beat (25th percentile).
    next_near_ms = float(np.percentile(next_rr, 25)) if next_rr.size else typical_rr
    post = round(min(max(next_ms / 1000.0, 0.3), POST_MAX_S) * fs)
    centers = rpeaks[chosen]
    windows = _windows(clean, centers, -pre, post)
    with np.errstate(all="ignore"):
        med: FloatArray = np.nanmedian(windows, axis=1)
    if not np.isfinite(med).all():
        med = np.nan_to_num(med)
    next_r = pre + round(next_near_ms / 1000.0 * fs)

    on, off = _qrs_bounds(med[mask], pre, fs, min(next_r - round(0.04 * fs), med.shape[1]))
    if on is None or off is None:
        not_measurable["qrs_ms"] = "QRS onset or offset not found on the median beat"
    # Isoelectric reference: the 16 ms before QRS onset (PR segment), as carts do.
    ref = on if on is not None else pre - int(0.06 * fs)
    iso_start = max(ref - int(0.02 * fs), 0)
    iso_stop = max(iso_start + 1, ref - int(0.004 * fs))
    med = med - med[:, iso_start:iso_stop].mean(axis=1, keepdims=True)
    mag = np.sqrt((med[mask] ** 2).mean(axis=0))

    def ms(samples: float | None) -> float | None:
        return None if samples is None else float(samples) / fs * 1000.0

    # T wave: up to the next QRS onset.
    t_peak: int | None = None
    t_off: float | None = None
    t_end_lead: str | None = None
    if on is not None and off is not None:
        next_on = min(next_r - (pre - on), mag.size)
        # The T peak is looked for before the next beat's P wave (the median beat's own P
        # one RR later), so that a flat T is not mistaken for it -- unless that P wave is
        # so early that it sits on the T wave (fast rates).
        peak_stop = next_on
        own_p_on, _, _, _ = _p_wave(
            mag, max(1, on - round(min(0.3, 0.5 * rr_s) * fs)), on, fs)
        next_p_on: int | None = None
        rr_samples = round(next_ms / 1000.0 * fs)
        if own_p_on is not None:
            next_p_on = int(own_p_on) + rr_samples
            if next_p_on - off >= round(0.25 * fs):
                peak_stop = min(peak_stop, next_p_on)
        gap = T_END_QRS_GAP_S * fs
        t_peak, t_off, why = _t_wave(mag, off, peak_stop, next_on, fs, next_p_on)
        if t_off is not None and next_on - t_off < gap:
            # The end of a wave that runs up to the next QRS is the next P wave's end.
            t_off = None
            why = (f"T end within {T_END_QRS_GAP_S * 1000:.0f} ms of the next QRS: not "
                   "separable from the next P wave")
        if t_off is None and t_peak is not None:
            # As by hand: in the lead where the T wave is large and the P wave small.
            lead = _clear_t_lead(med, mask, t_peak, on, fs)
            if lead is not None:
                x = med[lead] * np.sign(med[lead, t_peak])
                _, lead_end, _ = _t_wave(x, off, peak_stop, next_on, fs, next_p_on)
                if lead_end is not None and next_on - lead_end >= gap:
                    t_off, why = lead_end, None
                    t_end_lead = LEADS[lead]
        if why is not None:
            not_measurable["qt_ms"] = why
    else:
        not_measurable["qt_ms"] = "QRS onset/offset not found, so QT has no start"
    qt = ms(t_off - on) if t_off is not None and on is not None else None
    # With the T end hidden (in the next P wave, or by the next beat), QT is still at least
    # the T peak plus the shortest T peak-to-end interval.
    # Not above 150 bpm, where the T wave and the next P wave cannot be told apart.
    qt_min = ((t_peak - on) / fs * 1000.0 + TPEAK_TEND_MIN_MS
              if qt is None and t_peak is not None and on is not None
              and typical_rr >= QT_MIN_RR_MS else None)
    if qt is not None and not 150.0 <= qt <= 750.0:
        not_measurable["qt_ms"] = f"implausible QT ({qt:.0f} ms) from the T end found"
        qt, t_off = None, None
    # QTc against the record's mean RR (pauses left out), the RR reported with it.
    mean_rr_s = 60.0 / rhythm.heart_rate_bpm
    qtc_b = qt / math.sqrt(mean_rr_s) if qt is not None else None
    qtc_f = qt / mean_rr_s ** (1.0 / 3.0) if qt is not None else None

    # P wave: consistency across beats, then delineation on the median beat.
    p_on = p_off = None
    p_amp: float | None = None
    p_consistency: float | None = None
    pr: float | None = None
    p_present = False
    if on is not None:
        prev_rr = rr_before[chosen]
        prev_rr = prev_rr[np.isfinite(prev_rr) & (prev_rr < PAUSE_MS)]
        prev_samples = round((float(np.median(prev_rr)) if prev_rr.size else typical_rr)
                             / 1000.0 * fs)
        p_len = round(min(P_WINDOW_MAX_S, P_WINDOW_RR_FRACTION * rr_s) * fs)
        stop = on - pre - round(0.02 * fs)
        # Each beat's segment starts after the previous beat's T wave (a ventricular
        # beat's T is later).
        after_v = np.concatenate([[False], labels[:-1] == "V"])
        p_beats = np.flatnonzero(labels == "N")  # premature beats have other P waves
        if p_beats.size < 3:
            p_beats = np.flatnonzero(labels != "V")
        t_end_rel = (int(t_off) - pre if t_off is not None
                     else round(0.45 * math.sqrt(rr_s) * fs))  # Bazett's normal QT
        prev = np.concatenate([[-10**9], rpeaks[:-1]])[p_beats]
        floor = prev + t_end_rel + round(0.01 * fs) + after_v[p_beats] * round(0.1 * fs)
        p_consistency = _p_consistency(use, rpeaks[p_beats], max(stop - p_len, -pre), stop,
                                       floor, fs)
        lo = 1
        if t_off is not None:
            lo = max(lo, int(t_off) - prev_samples + round(0.01 * fs))
        elif t_peak is not None:  # at least past the previous T wave's peak
            lo = max(lo, t_peak - prev_samples + round(0.08 * fs))
        lo = max(lo, on - round(0.45 * fs))
        if on - lo > round(0.05 * fs):
            p_on, _, p_off, p_amp = _p_wave(mag, lo, on, fs)
        consistent = p_consistency is not None and p_consistency >= P_CONSISTENT_SHARE
        p_present = consistent and p_on is not None
        if not consistent:
            not_measurable["pr_ms"] = (
                "no consistent P wave before the QRS (P-wave consistency "
                f"{0.0 if p_consistency is None else p_consistency:.2f} < {P_CONSISTENT_SHARE})")
        elif p_on is None:
            not_measurable["pr_ms"] = "P wave onset not found"
        else:
            pr = ms(on - p_on)
            if pr is not None and not 60.0 <= pr <= 500.0:
                not_measurable["pr_ms"] = f"implausible PR ({pr:.0f} ms)"
                pr, p_present = None, False
    else:
        not_measurable["pr_ms"] = "QRS onset not found"
    if not p_present:
        p_on = p_off = None
    qrs = ms(off - on) if on is not None and off is not None else None
    p_amp = None if p_amp is None else float(p_amp)

    empty: dict[str, float] = {}
    r_amp, s_amp, net_qrs, st_j, st_j60, st_jx = empty, empty, empty, empty, empty, empty
    q_dur: dict[str, float] = {}
    q_depth: dict[str, float] = {}
    qs: dict[str, bool] = {}
    t_amp: dict[str, float] = {}
    st_offset = ST_OFFSET_MS if typical_rr >= ST_FAST_RR_MS else ST_OFFSET_FAST_MS
    qrs_axis = p_axis = t_axis = None
    if on is not None and off is not None:
        seg = med[:, on: off + 1]
        hi, lo_ = seg.max(axis=1), seg.min(axis=1)
        net = hi + lo_
        r_amp = dict(zip(LEADS, np.maximum(hi, 0.0).tolist(), strict=True))
        s_amp = dict(zip(LEADS, np.maximum(-lo_, 0.0).tolist(), strict=True))
        net_qrs = dict(zip(LEADS, net.tolist(), strict=True))
        qrs_axis = _frontal_axis(net, mask)
        st_j = dict(zip(LEADS, med[:, off].tolist(), strict=True))
        j60 = off + round(0.06 * fs)
        if j60 < med.shape[1]:
            st_j60 = dict(zip(LEADS, med[:, j60].tolist(), strict=True))
        if t_peak is not None:
            st_offset = min(st_offset, 0.5 * (t_peak - off) / fs * 1000.0)
        jx = off + round(st_offset / 1000.0 * fs)
        if jx < med.shape[1]:
            st_jx = dict(zip(LEADS, med[:, jx].tolist(), strict=True))
        q_dur, q_depth, qs = _q_waves(med, on, off, fs)
        if t_peak is not None:
            t_amp = dict(zip(LEADS, med[:, t_peak].tolist(), strict=True))
        if t_off is not None:
            t_seg = med[:, off: int(t_off) + 1]
            t_axis = _frontal_axis(t_seg.max(axis=1) + t_seg.min(axis=1), mask)
    if p_present and p_on is not None and p_off is not None:
        p_seg = med[:, int(p_on): int(p_off) + 1]
        p_axis = _frontal_axis(p_seg.max(axis=1) + p_seg.min(axis=1), mask)
    for key, value in (("qrs_axis_deg", qrs_axis), ("t_axis_deg", t_axis)):
        if value is None and on is not None:
            not_measurable[key] = "no measurable frontal vector (limb leads too small or flat)"

    fiducials = {
        "p_on": ms(p_on - pre) if p_on is not None else None,
        "p_off": ms(p_off - pre) if p_off is not None else None,
        "qrs_on": ms(on - pre) if on is not None else None,
        "qrs_off": ms(off - pre) if off is not None else None,
        "t_peak": ms(t_peak - pre) if t_peak is not None else None,
        "t_off": ms(t_off - pre) if t_off is not None else None,
    }
    regular = rhythm.regular_ms if rhythm.regular_ms.size > 1 else rr
    rr_mean = float(regular.mean())
    rr_sd = float(regular.std(ddof=1)) if regular.size > 1 else 0.0
    return Measurements(
        heart_rate_bpm=rhythm.heart_rate_bpm, rr_ms=60000.0 / rhythm.heart_rate_bpm,
        rr_sd_ms=rr_sd, rr_cv=rr_sd / rr_mean, rmssd_ms=rhythm.rmssd_ms,
        n_beats=int(rpeaks.size),
        p_wave_present=p_present, pr_ms=pr, qrs_ms=qrs, qt_ms=qt,
        qtc_bazett_ms=qtc_b, qtc_fridericia_ms=qtc_f,
        p_axis_deg=p_axis, qrs_axis_deg=qrs_axis, t_axis_deg=t_axis,
        st_j_mv=st_j, st_j60_mv=st_j60, r_amplitude_mv=r_amp, s_amplitude_mv=s_amp,
        qrs_net_mv=net_qrs, fiducials_ms=fiducials,
        leads_used=tuple(n for n, u in zip(LEADS, mask, strict=True) if u),
        median_beats=med, median_r_index=pre,
        not_measurable=not_measurable, st_jx_mv=st_jx, st_offset_ms=st_offset,
        nrmssd=rhythm.nrmssd, rr_irregular_fraction=rhythm.irregular_fraction,
        p_consistency=p_consistency, p_amplitude_mv=p_amp,
        beat_labels="".join(labels.tolist()),
        r_peaks_ms=tuple(float(p) / fs * 1000.0 for p in rpeaks),
        pauses=rhythm.pauses, longest_rr_ms=float(rr.max()),
        q_duration_ms=q_dur, q_depth_mv=q_depth, qs_complex=qs, t_amplitude_mv=t_amp,
        qt_min_ms=qt_min, t_end_lead=t_end_lead,
    )
