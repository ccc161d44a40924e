"""Signal quality and lead checks, run before any measurement.

The point is that a bad lead is reported and down-weights the analysis rather than
silently feeding a wrong axis, a false ST elevation or an "irregular rhythm" made of
artefact. Four groups of checks:

* **Whole lead** (flat, disconnected, saturated, noisy, baseline wander). Noise is judged
  on the signal the measurements use (:func:`ecg.measure.clean_leads`: 0.5 Hz high-pass
  and powerline filter), so mains hum that the cleaning removes costs nothing.
* **Per segment** (1 s per lead): rails (clipping), constant flat lines (dropouts),
  spikes and steps, noise bursts. Their share, :attr:`Quality.artefact_fraction`, tells
  the rhythm rules whether the RR intervals can be trusted.
* **Einthoven consistency** of the limb leads (I + III = II, aVR + aVL + aVF = 0): a lead
  that breaks it was corrupted or recorded apart from the others.
* **Limb-lead reversal** from P and QRS polarity. A reversal keeps the leads
  Einthoven-consistent (the cart derives them from the swapped electrodes), so only the
  morphology can show it.

All checks are vectorised over the 12 leads; quality costs a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy import signal as sps

from ecg.measure import clean_leads
from ecg.signal import LEAD_INDEX, LEADS, Ecg12

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# --- Whole-lead checks ------------------------------------------------------------------
#: Peak-to-peak below this (mV, on the cleaned lead) is a flat lead; the smallest
#: physiological QRS in a limb lead is ~0.2 mV, an unplugged electrode ~0.01 mV.
FLAT_PTP_MV = 0.05
#: Share of samples pinned at the lead's extreme value that means ADC saturation/clipping.
SATURATION_FRACTION = 0.01
#: A lead clipped in at least this share of its segments is saturated as a whole (clipped
#: at every beat, unusable); less is intermittent artefact, counted per segment.
SATURATED_SEGMENT_FRACTION = 0.5
#: Noise is the RMS above NOISE_BAND_HZ of the *cleaned* lead, in NOISE_WINDOW_S windows;
#: the NOISE_PERCENTILE-th window ignores those that hold a QRS (up to ~170 bpm). Clean
#: records (PTB, MIT-BIH, the pydicom sample) measure <= 0.0012 mV; white noise of
#: 0.1 mV RMS over the full band measures ~0.007 mV, 0.5 mV RMS ~0.03 mV.
NOISE_BAND_HZ = 20.0
NOISE_WINDOW_S = 0.1
NOISE_PERCENTILE = 20.0
NOISE_RMS_MV = 0.005
NOISE_SEVERE_RMS_MV = 0.02
#: Baseline wander: peak-to-peak of the lead below WANDER_CUTOFF_HZ (4th-order Butterworth
#: run forwards and backwards, so 0.5 Hz keeps ~94 % of its size and 0.3 Hz ~100 %).
#: Clean records measure <= 0.35 mV (a 45 bpm rhythm's fundamental leaks in a little).
WANDER_CUTOFF_HZ = 0.7
WANDER_PTP_MV = 1.0

# --- Per-segment checks -----------------------------------------------------------------
SEGMENT_S = 1.0
#: Samples that differ by no more than this are "the same value" (below any ECG ADC's
#: least significant bit, 0.5-5 uV).
CONSTANT_TOL_MV = 5e-5
#: The lead's maximum or minimum held this long, away from its median, is a rail (a
#: clipped amplifier): a physiological peak does not keep one exact value for 10 ms.
RAIL_MIN_S = 0.01
#: A value held this long anywhere is a dropout (flat line). Longer than any diastole in
#: a synthetic ECG down to 30 bpm; a real pause still carries noise and is never constant.
DROPOUT_MIN_S = 1.5
#: A segment whose steepest sample-to-sample slope is this many times the lead's typical
#: (median over segments) steepest slope, and above SPIKE_MIN_MV_PER_S, holds a spike or a
#: step. QRS slopes of real and simulated ECGs stay below ~2x the median.
SPIKE_SLOPE_RATIO = 4.0
SPIKE_MIN_MV_PER_S = 150.0
#: A step: the level after the steepest jump differs from the level before by this much.
STEP_MV = 1.0
#: Share of (time) segments with artefact in any usable lead above which the rhythm (RR
#: intervals) cannot be trusted and the ECG is at best "poor"; at UNUSABLE it is unusable.
ARTEFACT_ACCEPTABLE_FRACTION = 0.1
ARTEFACT_POOR_FRACTION = 0.2
ARTEFACT_UNUSABLE_FRACTION = 0.5
#: A lead bad in this share of its segments is excluded from the combined signals.
LEAD_ARTEFACT_UNUSABLE_FRACTION = 0.5

# --- Einthoven consistency ----------------------------------------------------------------
#: RMS of I + III - II (or of aVR + aVL + aVF) above this share of the limb leads' RMS, and
#: above EINTHOVEN_MIN_MV, means the limb leads are not one consistent set.
EINTHOVEN_RELATIVE = 0.1
EINTHOVEN_MIN_MV = 0.02
#: The limb lead blamed must deviate this many times more than the next one.
EINTHOVEN_BLAME_RATIO = 2.0

# --- Limb-lead reversal --------------------------------------------------------------------
#: QRS polarity index (max + min) / (max - min) beyond which a lead is taken as inverted
#: or upright.
REVERSAL_POLARITY = 0.2
#: LA/LL: P in I at least this many times P in II, and P in III negative by at least this
#: share of P in I (a true P axis this far left, below ~15 degrees, is rare).
LALL_P_RATIO = 1.25
LALL_P_III_FRACTION = 0.25
#: A limb lead whose QRS spans less than this share of the largest limb-lead QRS is taken
#: as isoelectric (polarity 0).
ISOELECTRIC_FRACTION = 0.2
#: RMS P amplitude over the limb leads below which P polarity is not used.
P_MIN_MV = 0.04

#: Confidence lost per finding; the grade is also capped by the worst finding (see
#: :func:`assess`), so a confidence and its grade always agree.
PENALTY = {"flat": 0.08, "disconnected": 0.08, "saturated": 0.06, "noisy": 0.04,
           "very_noisy": 0.08, "wander": 0.02, "intermittent": 0.06, "inconsistent": 0.1,
           "reversal": 0.3, "artefact": 0.3}
MAX_INTERMITTENT_PENALTY = 0.2
GRADES = ("good", "acceptable", "poor", "unusable")
#: Highest confidence each grade may carry.
GRADE_CEILING = {"good": 1.0, "acceptable": 0.89, "poor": 0.69, "unusable": 0.0}


@dataclass(frozen=True)
class LeadQuality:
    lead: str
    flat: bool
    saturated: bool
    noise_rms_mv: float
    wander_ptp_mv: float
    noisy: bool
    wander: bool
    disconnected: bool = False
    #: Share of this lead's segments with artefact (rail, dropout, spike/step, noise burst).
    artefact_fraction: float = 0.0
    #: The lead breaks the Einthoven/Goldberger identities that the other limb leads keep.
    inconsistent: bool = False
    #: One plain sentence per problem, for the ECG page.
    messages: tuple[str, ...] = ()

    @property
    def very_noisy(self) -> bool:
        return self.noise_rms_mv > NOISE_SEVERE_RMS_MV and not (self.flat or self.disconnected)

    @property
    def usable(self) -> bool:
        """A lead measurements may use: connected, not clipped, not unreadably noisy,
        not mostly artefact and consistent with the other limb leads."""
        return not (self.flat or self.disconnected or self.saturated or self.very_noisy
                    or self.inconsistent
                    or self.artefact_fraction >= LEAD_ARTEFACT_UNUSABLE_FRACTION)

    def to_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable, "flat": self.flat, "disconnected": self.disconnected,
            "saturated": self.saturated, "noisy": self.noisy, "very_noisy": self.very_noisy,
            "noise_rms_mv": round(self.noise_rms_mv, 4), "wander": self.wander,
            "wander_ptp_mv": round(self.wander_ptp_mv, 3),
            "artefact_fraction": round(self.artefact_fraction, 3),
            "inconsistent": self.inconsistent, "problems": list(self.messages),
        }


@dataclass(frozen=True)
class Quality:
    leads: tuple[LeadQuality, ...]
    limb_reversal_suspected: bool
    reversal_evidence: dict[str, float]
    grade: str  # good | acceptable | poor | unusable
    confidence: float
    problems: tuple[str, ...] = field(default_factory=tuple)
    #: Share of the record's 1-s segments in which a usable lead holds artefact.
    artefact_fraction: float = 0.0
    #: (12, n_segments) mask, True where that lead's segment holds artefact.
    bad_segments: BoolArray = field(
        default_factory=lambda: np.zeros((len(LEADS), 0), dtype=bool), repr=False,
        compare=False)
    #: (start, end) of each segment in seconds (the last one takes up a short remainder).
    segments_s: tuple[tuple[float, float], ...] = ()
    #: Which reversal: "LA/RA" or "LA/LL" (None when none is suspected).
    reversal: str | None = None
    einthoven: dict[str, float] = field(default_factory=dict)

    @property
    def usable_mask(self) -> BoolArray:
        return np.array([q.usable for q in self.leads], dtype=bool)

    @property
    def rhythm_reliable(self) -> bool:
        """False when so much of the record is artefact that RR intervals (rhythm,
        regularity, rate) would describe the artefact rather than the heart."""
        return self.grade != "unusable" and self.artefact_fraction < ARTEFACT_POOR_FRACTION

    def artefact_intervals_s(self) -> list[tuple[float, float]]:
        """Merged (start, end) times in seconds of segments with artefact in a usable lead."""
        usable = self.usable_mask
        if self.bad_segments.size == 0 or not usable.any():
            return []
        bad = self.bad_segments[usable].any(axis=0)
        out: list[tuple[float, float]] = []
        for i in np.flatnonzero(bad):
            start, end = self.segments_s[i]
            if out and abs(out[-1][1] - start) < 1e-9:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out

    def artefact_sample_mask(self, n_samples: int, sampling_rate: float) -> BoolArray:
        """Per sample: True inside a segment with artefact in a usable lead (for dropping
        beats there)."""
        mask = np.zeros(n_samples, dtype=bool)
        for start, end in self.artefact_intervals_s():
            mask[int(start * sampling_rate): int(end * sampling_rate)] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "grade": self.grade,
            "confidence": round(self.confidence, 3),
            "problems": list(self.problems),
            "limb_reversal_suspected": self.limb_reversal_suspected,
            "reversal": self.reversal,
            "reversal_evidence": {k: round(v, 3) for k, v in self.reversal_evidence.items()},
            "einthoven": {k: round(v, 4) for k, v in self.einthoven.items()},
            "artefact_fraction": round(self.artefact_fraction, 3),
            "artefact_intervals_s": [[round(a, 2), round(b, 2)]
                                     for a, b in self.artefact_intervals_s()],
            "rhythm_reliable": self.rhythm_reliable,
            "leads": {q.lead: q.to_dict() for q in self.leads},
        }


# --- Helpers --------------------------------------------------------------------------------

def _segment_bounds(n: int, fs: float) -> npt.NDArray[np.int64]:
    """Start indices of SEGMENT_S segments; a last piece under half a segment joins the one
    before it."""
    seg = max(round(SEGMENT_S * fs), 1)
    starts = np.arange(0, n, seg, dtype=np.int64)
    if starts.size > 1 and n - starts[-1] < seg / 2:
        starts = starts[:-1]
    return starts


def _per_segment_sum(x: npt.NDArray[Any], starts: npt.NDArray[np.int64]) -> FloatArray:
    result: FloatArray = np.add.reduceat(x.astype(np.float64), starts, axis=1)
    return result


def _per_segment_max(x: FloatArray, starts: npt.NDArray[np.int64]) -> FloatArray:
    result: FloatArray = np.maximum.reduceat(x, starts, axis=1)
    return result


def _pinned(raw: FloatArray, fs: float) -> BoolArray:
    """Samples pinned at the lead's max or min (a clipped ADC) for RAIL_MIN_S or longer.

    An extreme that is also the lead's typical level (a noise-free baseline that happens
    to be the minimum) is not clipping: the rail must lie away from the median. A single
    sample at the extreme per cycle (the crest of mains hum) is not clipping either: a
    clipped amplifier holds its rail for at least a few samples.
    """
    hi = raw.max(axis=1, keepdims=True)
    lo = raw.min(axis=1, keepdims=True)
    mid = np.median(raw, axis=1, keepdims=True)
    span = np.maximum(hi - lo, 1e-9)
    far_hi = (hi - mid) > 0.2 * span
    far_lo = (mid - lo) > 0.2 * span
    at_rail = (((np.abs(raw - hi) <= CONSTANT_TOL_MV) & far_hi)
               | ((np.abs(raw - lo) <= CONSTANT_TOL_MV) & far_lo))
    run = max(3, round(RAIL_MIN_S * fs))
    result: BoolArray = ndimage.binary_opening(at_rail, structure=np.ones((1, run), dtype=bool))
    return result


def _dropouts(raw: FloatArray, fs: float) -> BoolArray:
    """Samples inside a run of one constant value lasting DROPOUT_MIN_S or more."""
    out = np.zeros(raw.shape, dtype=bool)
    same = np.abs(np.diff(raw, axis=1)) <= CONSTANT_TOL_MV
    min_len = round(DROPOUT_MIN_S * fs)
    for i in range(raw.shape[0]):
        edges = np.diff(np.concatenate(([0], same[i].astype(np.int8), [0])))
        run_starts = np.flatnonzero(edges == 1)
        run_ends = np.flatnonzero(edges == -1) + 1  # exclusive, in samples
        for s, e in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            if e - s >= min_len:
                out[i, s:e] = True
    return out


def _dilate(mask: BoolArray) -> BoolArray:
    """A segment mask grown by one segment on each side."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    return out


def _window_rms(x: FloatArray, fs: float, window_s: float) -> FloatArray:
    """RMS over consecutive windows: shape (leads, windows)."""
    w = max(int(window_s * fs), 1)
    n = x.shape[1] // w
    blocks = x[:, : n * w].reshape(x.shape[0], n, w)
    result: FloatArray = np.sqrt((blocks**2).mean(axis=2))
    return result


def _dominant_polarity(x: FloatArray) -> FloatArray:
    """Positive when the lead's largest deflections point up (robust percentiles)."""
    hi = np.percentile(x, 99.5, axis=1)
    lo = np.percentile(x, 0.5, axis=1)
    result: FloatArray = (hi + lo) / np.maximum(hi - lo, 1e-6)
    return result


#: Limb leads in the (I, II) basis: lead = a * I + b * II (Einthoven and Goldberger).
_LIMB_BASIS: dict[str, tuple[float, float]] = {
    "I": (1.0, 0.0), "II": (0.0, 1.0), "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0),
}


def _einthoven(raw: FloatArray, fs: float, usable: BoolArray, good_time: BoolArray
               ) -> tuple[dict[str, float], str | None, bool]:
    """Consistency of the six limb leads: (evidence, blamed lead, inconsistent).

    Only checked when all six limb leads are usable and none is noisy (independent noise
    alone breaks the identities). Judged in the band 1-35 Hz with mains notched, where
    the ECG is and where neither wander nor hum counts. The lead blamed is the one that
    the other five, fitted as one frontal vector, predict worst, when it stands out.
    """
    names = list(_LIMB_BASIS)
    rows = [LEAD_INDEX[n] for n in names]
    if not all(usable[r] for r in rows) or good_time.sum() < 3 * fs:
        return {}, None, False
    x = raw[rows]
    for mains in (50.0, 60.0):
        if mains < 0.45 * fs:
            b, a = sps.iirnotch(mains, 30.0, fs=fs)
            x = sps.filtfilt(b, a, x, axis=1)
    sos = sps.butter(2, [1.0, min(35.0, 0.4 * fs)], btype="bandpass", fs=fs, output="sos")
    limb = sps.sosfiltfilt(sos, x, axis=1)[:, good_time]
    ref = float(np.sqrt((limb[:3] ** 2).mean()))
    i, ii, iii, avr, avl, avf = limb
    res1 = float(np.sqrt(((i + iii - ii) ** 2).mean()))
    res2 = float(np.sqrt(((avr + avl + avf) ** 2).mean()))
    evidence = {"i_plus_iii_minus_ii_rms_mv": res1, "avr_avl_avf_sum_rms_mv": res2,
                "limb_rms_mv": ref}
    limit = max(EINTHOVEN_RELATIVE * ref, EINTHOVEN_MIN_MV)
    if res1 <= limit and res2 <= limit:
        return evidence, None, False
    basis = np.array([_LIMB_BASIS[n] for n in names])
    leave_one_out = []
    for k in range(len(names)):
        others = [j for j in range(len(names)) if j != k]
        coef, *_ = np.linalg.lstsq(basis[others], limb[others], rcond=None)
        predicted = basis[k] @ coef
        leave_one_out.append(float(np.sqrt(((limb[k] - predicted) ** 2).mean())))
    order = np.argsort(leave_one_out)[::-1]
    worst, second = leave_one_out[order[0]], leave_one_out[order[1]]
    blamed = names[order[0]] if worst > EINTHOVEN_BLAME_RATIO * max(second, 1e-9) else None
    for name, value in zip(names, leave_one_out, strict=True):
        evidence[f"{name}_deviation_rms_mv"] = value
    return evidence, blamed, True


def _p_and_qrs(clean: FloatArray, usable: BoolArray, good_time: BoolArray, fs: float
               ) -> dict[str, tuple[float, float]]:
    """Signed P amplitude (mV) and QRS polarity index of each limb lead from a quick median
    beat; empty when fewer than 3 clean beats are found."""
    rows = [LEAD_INDEX[n] for n in _LIMB_BASIS if usable[LEAD_INDEX[n]]]
    if len(rows) < 3:
        return {}
    # QRS complexes are where the leads are steepest (T waves are slow): detect on the
    # smoothed spatial slope, then place R at the largest RMS deflection nearby.
    env = np.sqrt((clean[usable] ** 2).mean(axis=0))
    steep = np.sqrt((np.diff(clean[usable], axis=1, append=clean[usable][:, -1:]) ** 2)
                    .mean(axis=0))
    width = max(int(0.04 * fs), 1)
    steep = np.where(good_time, np.convolve(steep, np.ones(width) / width, mode="same"), 0.0)
    top = float(np.percentile(steep[good_time], 99)) if good_time.any() else 0.0
    if top <= 0:
        return {}
    found, _ = sps.find_peaks(steep, height=0.3 * top, distance=max(int(0.27 * fs), 1))
    near = int(0.06 * fs)
    peaks = np.array([max(p - near, 0) + int(np.argmax(env[max(p - near, 0): p + near + 1]))
                      for p in found], dtype=np.int64)
    if peaks.size < 4:
        return {}
    rr = float(np.median(np.diff(peaks)))
    pre = int(min(0.32 * fs, 0.55 * rr))
    post = int(0.1 * fs)
    ok = peaks[(peaks - pre >= 0) & (peaks + post < clean.shape[1])]
    ok = ok[[bool(good_time[p - pre: p + post].all()) for p in ok]]
    if ok.size < 3:
        return {}
    index = ok[:, None] + np.arange(-pre, post)[None, :]
    med = np.median(clean[rows][:, index], axis=1)  # (limb rows, samples), R at `pre`
    p_end = pre - int(0.07 * fs)
    edge = max(int(0.01 * fs), 1)
    if p_end - edge <= edge:
        return {}
    window = med[:, :p_end]
    start = window[:, :edge].mean(axis=1, keepdims=True)
    stop = window[:, -edge:].mean(axis=1, keepdims=True)
    ramp = np.linspace(0.0, 1.0, window.shape[1])[None, :]
    p_wave = window - (start + (stop - start) * ramp)
    t_star = int(np.argmax(np.sqrt((p_wave**2).mean(axis=0))))
    qrs = med[:, pre - int(0.06 * fs): pre + int(0.08 * fs)] - stop
    hi, lo = np.maximum(qrs.max(axis=1), 0.0), np.minimum(qrs.min(axis=1), 0.0)
    polarity = (hi + lo) / np.maximum(hi - lo, 1e-6)
    # A lead perpendicular to the QRS vector is isoelectric: its sign is noise.
    polarity[(hi - lo) < ISOELECTRIC_FRACTION * (hi - lo).max()] = 0.0
    names = [n for n in _LIMB_BASIS if usable[LEAD_INDEX[n]]]
    return {n: (float(p_wave[k, t_star]), float(polarity[k])) for k, n in enumerate(names)}


# --- The assessment -------------------------------------------------------------------------

def assess(ecg: Ecg12) -> Quality:
    """Score each lead and the whole ECG; never raises for a bad signal, it reports it.

    ``confidence`` in [0, 1] multiplies into the analysis confidence. ``grade`` is the
    worse of the confidence band and the worst finding: any lead problem other than
    wander or mild noise caps it at "acceptable"; a suspected reversal, limb leads that do
    not fit together, or artefact in >= 20 % of the record cap it at "poor"; fewer than 6
    usable leads or >= 50 % artefact make it "unusable".
    """
    fs = ecg.sampling_rate
    raw = ecg.leads.astype(np.float64)
    n = raw.shape[1]
    clean = clean_leads(ecg)
    edge = int(fs) if n > 3 * int(fs) else 0  # filter transients at the ends
    core = clean[:, edge: n - edge]

    # Whole-lead levels.
    ptp = core.max(axis=1) - core.min(axis=1)
    nyq = fs / 2
    if nyq > NOISE_BAND_HZ * 1.5:
        sos_noise = sps.butter(4, NOISE_BAND_HZ / nyq, btype="highpass", output="sos")
        band = sps.sosfiltfilt(sos_noise, clean, axis=1)
    else:
        band = np.zeros_like(clean)
    noise_windows = _window_rms(band[:, edge: n - edge], fs, NOISE_WINDOW_S)
    noise = np.percentile(noise_windows, NOISE_PERCENTILE, axis=1)
    sos_lp = sps.butter(4, WANDER_CUTOFF_HZ / nyq, btype="lowpass", output="sos")
    low = sps.sosfiltfilt(sos_lp, raw, axis=1)[:, edge: n - edge]
    wander_ptp = low.max(axis=1) - low.min(axis=1)

    # Per-segment artefact.
    starts = _segment_bounds(n, fs)
    lengths = np.diff(np.append(starts, n))
    pinned = _pinned(raw, fs)
    dropout = _dropouts(raw, fs)
    rail_seg = _per_segment_sum(pinned, starts) > 0
    dropout_seg = _per_segment_sum(dropout, starts) >= 0.1 * lengths[None, :]
    slope = np.abs(np.diff(raw, axis=1, prepend=raw[:, :1])) * fs
    seg_slope = _per_segment_max(slope, starts)
    typical_slope = np.median(seg_slope, axis=1, keepdims=True)
    spike_seg = (seg_slope > SPIKE_SLOPE_RATIO * typical_slope) & (seg_slope > SPIKE_MIN_MV_PER_S)
    w = max(int(NOISE_WINDOW_S * fs), 1)
    win_starts = np.arange(0, (n // w) * w, w)
    burst_seg = np.zeros_like(spike_seg)
    if win_starts.size:
        owner = np.searchsorted(starts, win_starts, side="right") - 1
        all_windows = _window_rms(band, fs, NOISE_WINDOW_S)
        for s in range(starts.size):
            cols = np.flatnonzero(owner == s)
            if cols.size:
                burst_seg[:, s] = (np.percentile(all_windows[:, cols], NOISE_PERCENTILE, axis=1)
                                   > NOISE_SEVERE_RMS_MV)
    bad = rail_seg | dropout_seg | spike_seg | burst_seg
    step_seg = np.zeros_like(spike_seg)
    half = max(int(0.1 * fs), 1)
    for i, s in zip(*np.nonzero(spike_seg), strict=True):
        lo_i, hi_i = starts[s], starts[s] + lengths[s]
        j = lo_i + int(np.argmax(slope[i, lo_i:hi_i]))
        before = raw[i, max(j - half, 0): j]
        after = raw[i, j: j + half]
        if after.size and abs(float(np.median(after) - np.median(before))) > STEP_MV:
            step_seg[i, s] = True

    flat = ptp < FLAT_PTP_MV
    disconnected = dropout.mean(axis=1) >= 0.9
    dead = flat | disconnected
    saturated = ((pinned.mean(axis=1) > SATURATION_FRACTION)
                 & (rail_seg.mean(axis=1) >= SATURATED_SEGMENT_FRACTION) & ~dead)
    # A lead bad as a whole is reported as such, not as intermittent artefact too.
    lead_fraction = np.where(dead | saturated | (noise > NOISE_SEVERE_RMS_MV), 0.0,
                             bad.mean(axis=1))

    def seconds(mask: BoolArray) -> str:
        idx = np.flatnonzero(mask)
        shown = ", ".join(f"{starts[k] / fs:.0f}-{(starts[k] + lengths[k]) / fs:.0f} s"
                          for k in idx[:4])
        return shown + (f" and {idx.size - 4} more" if idx.size > 4 else "")

    # Einthoven consistency (on the usable leads' clean time) and per-lead results.
    pre_usable = ~(dead | saturated | (noise > NOISE_SEVERE_RMS_MV)
                   | (lead_fraction >= LEAD_ARTEFACT_UNUSABLE_FRACTION))
    # Filters spread an artefact's energy into the neighbouring segments: leave them out.
    near_bad = _dilate(bad[pre_usable].any(axis=0) if pre_usable.any()
                       else np.zeros(starts.size, dtype=bool))
    good_time = ~np.repeat(near_bad, lengths)
    good_time[:edge] = False
    good_time[n - edge:] = False
    einthoven, blamed, inconsistent = _einthoven(
        raw, fs, pre_usable & (noise <= NOISE_RMS_MV), good_time)

    leads: list[LeadQuality] = []
    for i, name in enumerate(LEADS):
        msgs: list[str] = []
        if disconnected[i]:
            held = float(raw[i][dropout[i]][0])
            msgs.append(f"disconnected: the signal holds one constant value "
                        f"({held:.2f} mV) for {dropout[i].mean():.0%} of the record")
        elif flat[i]:
            msgs.append(f"flat: {ptp[i]:.3f} mV peak-to-peak (< {FLAT_PTP_MV} mV); "
                        "electrode off or lead not recorded")
        if saturated[i]:
            msgs.append(f"saturated: clipped at the amplifier's limit in "
                        f"{rail_seg[i].mean():.0%} of the record")
        lead_noise = float(noise[i])
        noisy = bool(lead_noise > NOISE_RMS_MV and not dead[i])
        if noisy:
            level = "very noisy" if lead_noise > NOISE_SEVERE_RMS_MV else "noisy"
            msgs.append(f"{level}: {lead_noise * 1000:.0f} uV RMS above {NOISE_BAND_HZ:.0f} Hz "
                        f"after filtering (limit {NOISE_RMS_MV * 1000:.0f} uV)")
        lead_wander = bool(wander_ptp[i] > WANDER_PTP_MV and not dead[i])
        if lead_wander:
            msgs.append(f"baseline wander: {wander_ptp[i]:.1f} mV peak-to-peak below "
                        f"{WANDER_CUTOFF_HZ} Hz")
        if lead_fraction[i] > 0:
            kinds = [label for label, m in (
                ("clipping", rail_seg[i]), ("flat-line dropout", dropout_seg[i]),
                ("steps", step_seg[i]), ("spikes", spike_seg[i] & ~step_seg[i]),
                ("noise bursts", burst_seg[i])) if m.any()]
            msgs.append(f"intermittent artefact ({', '.join(kinds)}) in "
                        f"{lead_fraction[i]:.0%} of the record: {seconds(bad[i])}")
        if blamed == name:
            msgs.append("inconsistent with the other limb leads (Einthoven/Goldberger "
                        "identities fail): corrupted or recorded separately")
        leads.append(LeadQuality(
            lead=name, flat=bool(flat[i]), saturated=bool(saturated[i]),
            noise_rms_mv=lead_noise, wander_ptp_mv=float(wander_ptp[i]), noisy=noisy,
            wander=lead_wander, disconnected=bool(disconnected[i]),
            artefact_fraction=float(lead_fraction[i]), inconsistent=blamed == name,
            messages=tuple(msgs),
        ))
    usable = np.array([q.usable for q in leads], dtype=bool)
    # Added energy (clipping, spikes, noise) in any one lead can pass for a beat in the
    # combined signal; a dropout only matters when it silences most of the leads.
    if usable.any():
        adds = (rail_seg | spike_seg | burst_seg)[usable].any(axis=0)
        silent = dropout_seg[usable].mean(axis=0) >= 0.5
        artefact_time = adds | silent
    else:
        artefact_time = np.zeros(starts.size, dtype=bool)
    artefact_fraction = float((artefact_time * lengths).sum() / n)

    # Limb-lead reversal from morphology, on the clean part of the record: QRS polarity
    # of the median beat (whole-lead percentiles when no median beat could be formed).
    good_time = ~np.repeat(_dilate(artefact_time), lengths)
    morphology = _p_and_qrs(clean, usable, good_time, fs)
    if {"I", "aVR"} <= set(morphology):
        i_pol, avr_pol = morphology["I"][1], morphology["aVR"][1]
    else:
        polarity = _dominant_polarity(np.where(good_time, clean, 0.0)[:, edge: n - edge])
        i_pol, avr_pol = float(polarity[LEAD_INDEX["I"]]), float(polarity[LEAD_INDEX["aVR"]])
    evidence: dict[str, float] = {"lead_I_polarity": i_pol, "aVR_polarity": avr_pol}
    p_wave: dict[str, float] = {}
    if set(_LIMB_BASIS) <= set(morphology):
        p_wave = {k: morphology[k][0] for k in _LIMB_BASIS}
        p_rms = float(np.sqrt(np.mean([v ** 2 for v in p_wave.values()])))
        evidence |= {f"p_{k}_mv": v for k, v in p_wave.items()} | {"p_rms_mv": p_rms}
        if p_rms < P_MIN_MV:
            p_wave = {}
    reversal: str | None = None
    reversal_text = ""
    # LA/RA reversal turns lead I upside down and swaps aVR with aVL. With a P wave: P
    # inverted in I and aVR's P (normally the most negative) above aVL's, with a QRS in I
    # that is not upright (a right axis deviation inverts the QRS in I but keeps its P
    # upright). Without one: QRS inverted in I and upright in aVR. Dextrocardia looks the
    # same.
    if p_wave:
        i_inverted = (p_wave["I"] < -P_MIN_MV / 2 and p_wave["aVR"] > p_wave["aVL"]
                      and i_pol < REVERSAL_POLARITY)
    else:
        i_inverted = i_pol < -REVERSAL_POLARITY and avr_pol > REVERSAL_POLARITY
    if usable[LEAD_INDEX["I"]] and usable[LEAD_INDEX["aVR"]] and i_inverted:
        reversal = "LA/RA"
        reversal_text = ("limb lead reversal suspected (LA/RA: lead I inverted, aVR upright; "
                         "or dextrocardia)")
    # LA/LL reversal swaps I and II and inverts III: P in I taller than in II and an
    # inverted P in III, with aVR still negative.
    elif (p_wave and p_wave["I"] > 0 and avr_pol < 0
          and p_wave["I"] >= LALL_P_RATIO * max(p_wave["II"], 0.0)
          and p_wave["III"] < -LALL_P_III_FRACTION * p_wave["I"]):
        reversal = "LA/LL"
        reversal_text = ("limb lead reversal suspected (LA/LL: P in I taller than in II, "
                         "P in III inverted)")

    # Problems, confidence and grade.
    problems: list[str] = []
    confidence = 1.0
    caps: list[str] = []
    intermittent_penalty = 0.0
    for q in leads:
        if q.flat or q.disconnected:
            problems.append(f"{q.lead}: flat or disconnected")
            confidence -= PENALTY["disconnected" if q.disconnected else "flat"]
            caps.append("acceptable")
        elif q.saturated:
            problems.append(f"{q.lead}: saturated/clipped")
            confidence -= PENALTY["saturated"]
            caps.append("acceptable")
        if q.very_noisy:
            problems.append(f"{q.lead}: very noisy ({q.noise_rms_mv * 1000:.0f} uV RMS "
                            f"> {NOISE_BAND_HZ:.0f} Hz after filtering)")
            confidence -= PENALTY["very_noisy"]
            caps.append("acceptable")
        elif q.noisy:
            problems.append(f"{q.lead}: noisy ({q.noise_rms_mv * 1000:.0f} uV RMS "
                            f"> {NOISE_BAND_HZ:.0f} Hz after filtering)")
            confidence -= PENALTY["noisy"]
        if q.wander:
            problems.append(f"{q.lead}: baseline wander {q.wander_ptp_mv:.1f} mV")
            confidence -= PENALTY["wander"]
        if q.artefact_fraction > 0:
            problems.append(f"{q.lead}: intermittent artefact in "
                            f"{q.artefact_fraction:.0%} of the record")
            intermittent_penalty += PENALTY["intermittent"] * min(q.artefact_fraction * 5, 1.0)
            caps.append("acceptable")
        if q.inconsistent:
            problems.append(f"{q.lead}: inconsistent with the other limb leads")
            confidence -= PENALTY["inconsistent"]
            caps.append("acceptable")
    if inconsistent and blamed is None:
        problems.append("limb leads are not Einthoven-consistent (I + III != II or "
                        "aVR + aVL + aVF != 0): a limb lead is corrupted or recorded separately")
        confidence -= PENALTY["inconsistent"]
        caps.append("poor")
    segments_s = tuple((float(a / fs), float((a + b) / fs))
                       for a, b in zip(starts, lengths, strict=True))
    # Artefact is charged once: per lead (capped) or for the record, whichever is more.
    artefact_penalty = PENALTY["artefact"] * min(artefact_fraction / ARTEFACT_POOR_FRACTION, 1.0)
    confidence -= max(min(intermittent_penalty, MAX_INTERMITTENT_PENALTY), artefact_penalty)
    if artefact_fraction >= ARTEFACT_ACCEPTABLE_FRACTION:
        intervals = ", ".join(f"{segments_s[k][0]:.0f}-{segments_s[k][1]:.0f} s"
                              for k in np.flatnonzero(artefact_time))
        problems.append(f"artefact in {artefact_fraction:.0%} of the record ({intervals})"
                        + ("; rhythm not assessable" if artefact_fraction
                           >= ARTEFACT_POOR_FRACTION else ""))
        caps.append("acceptable" if artefact_fraction < ARTEFACT_POOR_FRACTION else "poor")
    if reversal is not None:
        problems.append(reversal_text)
        confidence -= PENALTY["reversal"]
        caps.append("poor")
    confidence = float(min(max(confidence, 0.0), 1.0))
    if usable.sum() < 6 or artefact_fraction >= ARTEFACT_UNUSABLE_FRACTION:
        caps.append("unusable")
    if confidence >= 0.9:
        grade = "good"
    elif confidence >= 0.7:
        grade = "acceptable"
    else:
        grade = "poor"
    grade = max([grade, *caps], key=GRADES.index)
    confidence = min(confidence, GRADE_CEILING[grade])
    return Quality(
        leads=tuple(leads), limb_reversal_suspected=reversal is not None,
        reversal_evidence=evidence, grade=grade, confidence=confidence,
        problems=tuple(problems), artefact_fraction=artefact_fraction,
        bad_segments=bad, segments_s=segments_s, reversal=reversal, einthoven=einthoven,
    )

