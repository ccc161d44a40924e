"""ECG signal conditioning shared by the ECG analysis and the ECG rhythm model.

Why it lives in ``core``: the domain packages do not import each other, so the rule-based
analysis (``ecg``) and the rhythm network's pipeline (``ai_models.pipelines.ecg_rhythm``)
cannot share code except through here.  They must share it: a network that is trained
and run on a signal cleaned differently from the one the analysis measures sees
different ECGs (the demonstration model 1.0.0 had no high-pass at all, so 1 mV of
baseline wander turned the reference ECG into "atrial fibrillation"), and a model that
reads a sampling rate the ECG readers refuse reports on a strip nobody can measure.

Everything here is numpy/scipy, zero-phase (forward-backward) and works on one lead
``(n,)`` or many ``(leads, n)`` along the last axis:

- :func:`high_pass`: Butterworth, order 5, 0.5 Hz (what neurokit2's ``ecg_clean``
  applies), which removes respiratory and motion baseline wander (0.05-0.5 Hz) and
  keeps the ST segment's low frequencies better than a steeper cut would;
- :func:`notch_mains`: IIR notches at 50 and 60 Hz (Q 30, about 2 Hz wide), each where
  it lies below 90 % of the Nyquist frequency.  Both are always applied, since a file
  rarely says which mains it was recorded on, and a 2 Hz notch costs an ECG nothing;
  unlike a moving-average comb it does not low-pass the QRS;
- :func:`resample`: polyphase (``scipy.signal.resample_poly``, with its anti-aliasing
  FIR) to a rational approximation of the target rate;
- :func:`clean` = high-pass(notch) at the signal's own rate, and :func:`prepare` =
  resample to :data:`ANALYSIS_RATE_HZ` (250 Hz) then :func:`clean`.

:data:`MIN_SAMPLING_RATE_HZ` is the lowest rate the ECG readers accept
(``ecg.signal.MIN_SAMPLING_RATE_HZ`` has the same value, for the same reason: below it
QRS onset and offset cannot be placed to the +-10 ms the rules need); :func:`check_rate`
refuses anything below it rather than resampling it up.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.signal as sps

FloatArray = npt.NDArray[np.float64]

#: The lowest sampling rate read at all (the ECG readers' minimum).
MIN_SAMPLING_RATE_HZ = 100.0
#: The rate the rhythm model reads (and a good one for measuring a resting ECG).
ANALYSIS_RATE_HZ = 250.0
#: Baseline wander high-pass: cut-off (Hz) and Butterworth order (neurokit2's defaults).
HIGH_PASS_HZ = 0.5
HIGH_PASS_ORDER = 5
#: Mains frequencies notched, and the notches' quality factor (centre / -3 dB width).
MAINS_HZ: tuple[float, ...] = (50.0, 60.0)
NOTCH_Q = 30.0
#: A notch is applied only below this share of the Nyquist frequency.
NOTCH_MAX_NYQUIST_SHARE = 0.9
#: Edge padding (s) of the forward-backward filters.  scipy's default (a few samples,
#: odd) leaves the slow high-pass ringing for seconds after an edge where the signal
#: oscillates: 0.1-0.3 mV in the middle of a 10 s strip with mains hum or 1 mV of
#: wander.  The notches get an even (mirror) extension of 1 s, which continues a hum
#: smoothly; the high-pass an odd one of 3 s, which continues wander and the ST level.
NOTCH_PAD_S = 1.0
HIGH_PASS_PAD_S = 3.0
#: Largest denominator of the rational resampling ratio (1000 Hz -> 250 Hz is 1/4,
#: 360 -> 250 is 25/36, 257 -> 250 is 250/257).
MAX_RATIO_DENOMINATOR = 1000


class SamplingRateTooLow(ValueError):
    """A signal's sampling rate is below :data:`MIN_SAMPLING_RATE_HZ`."""


def check_rate(fs: float) -> float:
    """``fs`` as a float when it is a finite rate of at least MIN_SAMPLING_RATE_HZ;
    :class:`SamplingRateTooLow` (a ValueError) with the reason otherwise."""
    rate = float(fs)
    if not np.isfinite(rate) or rate <= 0:
        raise SamplingRateTooLow(f"sampling rate must be > 0 Hz, got {fs!r}")
    if rate < MIN_SAMPLING_RATE_HZ:
        raise SamplingRateTooLow(f"sampling rate {rate:g} Hz is below the "
                                 f"{MIN_SAMPLING_RATE_HZ:g} Hz a diagnostic ECG needs")
    return rate


@lru_cache(maxsize=32)
def _high_pass_sos(fs: float) -> FloatArray:
    sos: FloatArray = sps.butter(HIGH_PASS_ORDER, HIGH_PASS_HZ, btype="highpass",
                                 output="sos", fs=fs)
    return sos


@lru_cache(maxsize=32)
def _notch_sos(fs: float, mains: tuple[float, ...]) -> FloatArray | None:
    sections = []
    for f0 in mains:
        if f0 < NOTCH_MAX_NYQUIST_SHARE * fs / 2:
            b, a = sps.iirnotch(f0, NOTCH_Q, fs=fs)
            sections.append(sps.tf2sos(b, a))
    return np.vstack(sections) if sections else None


def _as_float(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _padlen(arr: FloatArray, fs: float, seconds: float) -> int:
    return max(0, min(int(arr.shape[-1]) - 1, round(seconds * fs)))


def high_pass(x: npt.ArrayLike, fs: float) -> FloatArray:
    """Zero-phase 0.5 Hz Butterworth high-pass along the last axis."""
    arr = _as_float(x)
    out: FloatArray = sps.sosfiltfilt(_high_pass_sos(float(fs)), arr, axis=-1, padtype="odd",
                                      padlen=_padlen(arr, float(fs), HIGH_PASS_PAD_S))
    return out


def notch_mains(x: npt.ArrayLike, fs: float, mains: tuple[float, ...] = MAINS_HZ
                ) -> FloatArray:
    """Zero-phase notches at the mains frequencies below 90 % of Nyquist."""
    arr = _as_float(x)
    sos = _notch_sos(float(fs), tuple(float(f) for f in mains))
    if sos is None:
        return arr.copy()
    out: FloatArray = sps.sosfiltfilt(sos, arr, axis=-1, padtype="even",
                                      padlen=_padlen(arr, float(fs), NOTCH_PAD_S))
    return out


def clean(x: npt.ArrayLike, fs: float, mains: tuple[float, ...] = MAINS_HZ) -> FloatArray:
    """Mains notches then the high-pass (baseline wander), at the signal's own rate
    (in this order the high-pass never sees the hum, whose edges would make it ring)."""
    return high_pass(notch_mains(x, fs, mains), fs)


def resample(x: npt.ArrayLike, fs_in: float, fs_out: float) -> FloatArray:
    """Polyphase resampling along the last axis, ``fs_in`` -> ``fs_out`` (up to a
    rational approximation with denominator <= MAX_RATIO_DENOMINATOR)."""
    arr = _as_float(x)
    ratio = Fraction(float(fs_out) / float(fs_in)).limit_denominator(MAX_RATIO_DENOMINATOR)
    if ratio == 1:
        return arr.copy()
    out: FloatArray = sps.resample_poly(arr, ratio.numerator, ratio.denominator, axis=-1,
                                        padtype="line")
    return out


def prepare(x: npt.ArrayLike, fs: float, rate: float = ANALYSIS_RATE_HZ) -> FloatArray:
    """The rhythm model's conditioning: refuse a rate below MIN_SAMPLING_RATE_HZ,
    resample to ``rate``, then :func:`clean` at ``rate``."""
    fs = check_rate(fs)
    return clean(resample(x, fs, rate), rate)
