"""Signal quality and lead checks, run before any measurement.

The point is that a bad lead is reported and down-weights the analysis rather than
silently feeding a wrong axis or a false ST elevation. All checks are vectorised over
the 12 leads (one filter call each), so quality costs a few milliseconds per ECG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal as sps

from ecg.signal import LEAD_INDEX, LEADS, Ecg12

#: Peak-to-peak below this (mV, after 0.5 Hz high-pass) is a flat / disconnected lead; the
#: smallest physiological QRS in a limb lead is ~0.2 mV, an unplugged electrode ~0.01 mV.
FLAT_PTP_MV = 0.05
#: Share of samples pinned at the lead's extreme value that means ADC saturation/clipping.
SATURATION_FRACTION = 0.01
#: Median 0.2-s RMS above 40 Hz (mV): >0.05 mV is visibly noisy (EMG), >0.15 unreadable.
NOISE_RMS_MV = 0.05
NOISE_SEVERE_RMS_MV = 0.15
#: Peak-to-peak of the < 0.3 Hz component (mV) above which baseline wander is reported.
WANDER_PTP_MV = 1.0

#: Confidence lost per finding; chosen so that one bad precordial lead keeps the ECG
#: "acceptable" while a reversal or several dead leads drop it below 0.7 ("poor").
PENALTY = {"flat": 0.08, "saturated": 0.06, "noisy": 0.04, "very_noisy": 0.08,
           "wander": 0.02, "reversal": 0.3}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LeadQuality:
    lead: str
    flat: bool
    saturated: bool
    noise_rms_mv: float
    wander_ptp_mv: float
    noisy: bool
    wander: bool

    @property
    def usable(self) -> bool:
        """A lead measurements may use: connected, not clipped, not unreadably noisy."""
        return not (self.flat or self.saturated or self.noise_rms_mv > NOISE_SEVERE_RMS_MV)


@dataclass(frozen=True)
class Quality:
    leads: tuple[LeadQuality, ...]
    limb_reversal_suspected: bool
    reversal_evidence: dict[str, float]
    grade: str  # good | acceptable | poor | unusable
    confidence: float
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usable_mask(self) -> npt.NDArray[np.bool_]:
        return np.array([q.usable for q in self.leads], dtype=bool)

    def to_dict(self) -> dict[str, Any]:
        return {
            "grade": self.grade,
            "confidence": round(self.confidence, 3),
            "problems": list(self.problems),
            "limb_reversal_suspected": self.limb_reversal_suspected,
            "reversal_evidence": {k: round(v, 3) for k, v in self.reversal_evidence.items()},
            "leads": {
                q.lead: {
                    "usable": q.usable, "flat": q.flat, "saturated": q.saturated,
                    "noisy": q.noisy, "noise_rms_mv": round(q.noise_rms_mv, 4),
                    "wander": q.wander, "wander_ptp_mv": round(q.wander_ptp_mv, 3),
                }
                for q in self.leads
            },
        }


def _saturated(raw: FloatArray) -> npt.NDArray[np.bool_]:
    """Leads with many samples pinned at their max or min (a clipped ADC).

    An extreme that is also the lead's typical level (a noise-free baseline that happens
    to be the minimum) is not clipping: the rail must lie away from the median.
    """
    hi = raw.max(axis=1, keepdims=True)
    lo = raw.min(axis=1, keepdims=True)
    mid = np.median(raw, axis=1, keepdims=True)
    span = np.maximum(hi - lo, 1e-9)
    tol = 1e-3 * span
    far_hi = (hi - mid) > 0.2 * span
    far_lo = (mid - lo) > 0.2 * span
    pinned = ((np.abs(raw - hi) <= tol) & far_hi) | ((np.abs(raw - lo) <= tol) & far_lo)
    result: npt.NDArray[np.bool_] = pinned.mean(axis=1) > SATURATION_FRACTION
    return result


def _windowed_rms(x: FloatArray, fs: float, window_s: float = 0.2) -> FloatArray:
    w = max(int(window_s * fs), 1)
    n = x.shape[1] // w
    blocks = x[:, : n * w].reshape(x.shape[0], n, w)
    rms = np.sqrt((blocks**2).mean(axis=2))
    # The median ignores the blocks that hold a QRS, whose own energy is above 40 Hz.
    result: FloatArray = np.median(rms, axis=1)
    return result


def _dominant_polarity(x: FloatArray) -> FloatArray:
    """Positive when the lead's largest deflections point up (robust percentiles)."""
    hi = np.percentile(x, 99.5, axis=1)
    lo = np.percentile(x, 0.5, axis=1)
    result: FloatArray = (hi + lo) / np.maximum(hi - lo, 1e-6)
    return result


def assess(ecg: Ecg12) -> Quality:
    """Score each lead and the whole ECG; never raises for a bad signal, it reports it.

    ``confidence`` in [0, 1] multiplies into the analysis confidence; ``grade`` is
    'unusable' when fewer than 6 leads can be measured (no reliable axis or rhythm).
    """
    fs = ecg.sampling_rate
    raw = ecg.leads.astype(np.float64)
    nyq = fs / 2
    sos_hp = sps.butter(2, 0.5 / nyq, btype="highpass", output="sos")
    hp = sps.sosfiltfilt(sos_hp, raw, axis=1)
    # 4th order at 0.3 Hz so that the fundamental of a 40 bpm rhythm (0.67 Hz) is not
    # mistaken for wander.
    sos_lp = sps.butter(4, 0.3 / nyq, btype="lowpass", output="sos")
    low = sps.sosfiltfilt(sos_lp, raw, axis=1)
    if nyq > 45:
        sos_noise = sps.butter(4, 40 / nyq, btype="highpass", output="sos")
        noise = _windowed_rms(sps.sosfiltfilt(sos_noise, raw, axis=1), fs)
    else:
        noise = np.zeros(len(LEADS))
    edge = int(fs)  # filter transients at the ends are not the patient's
    core = hp[:, edge:-edge] if hp.shape[1] > 3 * edge else hp
    ptp = core.max(axis=1) - core.min(axis=1)
    flat = ptp < FLAT_PTP_MV
    saturated = _saturated(raw) & ~flat
    low = low[:, edge:-edge] if low.shape[1] > 3 * edge else low
    wander_ptp = low.max(axis=1) - low.min(axis=1)

    leads = tuple(
        LeadQuality(
            lead=name, flat=bool(flat[i]), saturated=bool(saturated[i]),
            noise_rms_mv=float(noise[i]), wander_ptp_mv=float(wander_ptp[i]),
            noisy=bool(noise[i] > NOISE_RMS_MV and not flat[i]),
            wander=bool(wander_ptp[i] > WANDER_PTP_MV and not flat[i]),
        )
        for i, name in enumerate(LEADS)
    )

    # RA/LA reversal turns lead I upside down and makes aVR (normally the one mostly
    # negative lead) upright; both together are rare otherwise (dextrocardia).
    polarity = _dominant_polarity(core)
    i_pol, avr_pol = float(polarity[LEAD_INDEX["I"]]), float(polarity[LEAD_INDEX["aVR"]])
    reversal = (
        not flat[LEAD_INDEX["I"]] and not flat[LEAD_INDEX["aVR"]]
        and i_pol < -0.2 and avr_pol > 0.2
    )

    problems: list[str] = []
    confidence = 1.0
    for q in leads:
        if q.flat:
            problems.append(f"{q.lead}: flat or disconnected")
            confidence -= PENALTY["flat"]
        elif q.saturated:
            problems.append(f"{q.lead}: saturated/clipped")
            confidence -= PENALTY["saturated"]
        if q.noise_rms_mv > NOISE_SEVERE_RMS_MV:
            problems.append(f"{q.lead}: very noisy ({q.noise_rms_mv:.2f} mV RMS > 40 Hz)")
            confidence -= PENALTY["very_noisy"]
        elif q.noisy:
            problems.append(f"{q.lead}: noisy ({q.noise_rms_mv:.2f} mV RMS > 40 Hz)")
            confidence -= PENALTY["noisy"]
        if q.wander:
            problems.append(f"{q.lead}: baseline wander {q.wander_ptp_mv:.1f} mV")
            confidence -= PENALTY["wander"]
    if reversal:
        problems.append("limb lead reversal suspected (lead I inverted, aVR upright)")
        confidence -= PENALTY["reversal"]
    confidence = float(min(max(confidence, 0.0), 1.0))
    usable = sum(q.usable for q in leads)
    if usable < 6:
        grade, confidence = "unusable", 0.0
    elif confidence >= 0.9:
        grade = "good"
    elif confidence >= 0.7:
        grade = "acceptable"
    else:
        grade = "poor"
    return Quality(
        leads=leads, limb_reversal_suspected=reversal,
        reversal_evidence={"lead_I_polarity": i_pol, "aVR_polarity": avr_pol},
        grade=grade, confidence=confidence, problems=tuple(problems),
    )
