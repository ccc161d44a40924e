"""Simulated 12-lead ECGs for the demonstration rhythm model, reproducible from a seed.

A record is assembled beat by beat, since the ECGSYN model (McSharry et al. 2003) that
neurokit2 simulates drives its beats from a smooth heart-rate process, which cannot give
the irregular RR intervals of atrial fibrillation or ectopy:

1. QRS-T complexes, half the records from each of two sources:

   - a *template bank* of neurokit2's ECGSYN (``nk.ecg_simulate(method="multileads")``,
     with neurokit2's per-lead amplitude factors): for a few heart rates and a few beat
     *shapes* (ECGSYN's own, and shapes drawn from the seed: QRS 0.8-1.5x as wide, Q and
     S waves 0.3-2x as deep, T waves from inverted to 1.6x as tall, earlier or later),
     one run without P waves, cut at the R peaks into one median beat per lead; and a
     few *ventricular* shapes (QRS 2.2-3x as wide, T opposite to it).  A run in which
     too few R peaks are found is cut again against its typical beat, then replaced by
     runs from sub-seeds derived from the seed (``_template``), so every template exists
     and the same seed gives the same one;
   - *heart dipoles* (``dipole_beat``): Gaussian Q, R, S and T dipoles with drawn axes,
     widths (QRS 70-120 ms; 140-200 ms for a ventricular beat) and amplitudes,
     projected on the 12 leads (``LEAD_VECTORS``), so the leads relate as a patient's
     do (III = II - I, R-wave progression from V1 to V6);

   one beat per record is fitted to its rate (``fit_beat``: the QRS kept, the ST-T
   stretched with the square root of the RR interval);
2. P waves are drawn here: two Gaussian atrial dipoles (right atrium, then the left
   15-40 ms later) projected on the leads, which also gives the biphasic P of V1.  A
   sinus P points down and left (axis 30-80 deg), an ectopic atrial focus anywhere;
3. the rhythm places R waves and P waves (``RHYTHMS``):

   - ``sinus``: regular, with respiratory sinus arrhythmia up to +-8 %;
   - ``sinus_arrhythmia``: sinus with +-10-25 % respiratory modulation;
   - ``sinus_pvc``: sinus with premature ventricular complexes (wide, no P, T opposite
     to the QRS, fixed coupling, a full compensatory pause or interpolated), every 2nd,
     3rd or 4th beat or at random (5-40 %), one or two foci;
   - ``sinus_pac``: sinus with premature atrial complexes (an ectopic P, a normal QRS,
     the sinus node reset), every 2nd-4th beat or at random (5-40 %);
   - ``multifocal_atrial``: a wandering atrial pacemaker / multifocal atrial rhythm, each
     beat from one of 3-4 foci with its own P wave and PR interval, RR intervals varying
     with the focus (irregular, with P waves);
   - ``af``: atrial fibrillation: every RR interval drawn independently (log-normal,
     coefficient of variation 12-35 %), no P waves, f-waves (4-9 Hz filtered
     sinusoids, 0-0.1 mV), sometimes PVCs;

4. beats and P waves are overlap-added, then per-lead gain, baseline wander (up to
   1.5 mV at 0.05-0.7 Hz, and slow drift), 50/60 Hz mains hum (up to 0.3 mV), EMG
   (20-100 Hz noise in bursts, up to 0.06 mV RMS) and white noise.

This is an approximation for a demonstration, not an electrophysiological model: the
f-waves are filtered sinusoids, the AV node is not modelled, and there are no flutter,
blocks, paced or bundle branch rhythms.  Labels follow from how a record was drawn:
``sinus_rhythm`` for the sinus rhythms (with or without ectopy), ``atrial_fibrillation``
for ``af`` (a multifocal atrial rhythm is neither), and ``bradycardia`` (< 60 /min) or
``tachycardia`` (> 100 /min) from the mean RR interval of the beats in the strip.
Nothing here is patient data, and a model trained on it recognises simulations.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

#: Standard lead order of every array here (and of neurokit2's multileads output).
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: SCP-ECG codes of the leads, as DICOM 12-lead ECG objects carry them (PS3.16 CID 3001).
SCPECG_CODES = {"I": "5.6.3-9-1", "II": "5.6.3-9-2", "III": "5.6.3-9-61",
                "aVR": "5.6.3-9-62", "aVL": "5.6.3-9-63", "aVF": "5.6.3-9-64",
                "V1": "5.6.3-9-3", "V2": "5.6.3-9-4", "V3": "5.6.3-9-5",
                "V4": "5.6.3-9-6", "V5": "5.6.3-9-7", "V6": "5.6.3-9-8"}
SCPECG_MEANINGS = {"I": "Lead I (Einthoven)", "II": "Lead II", "III": "Lead III",
                   "aVR": "Lead aVR", "aVL": "Lead aVL", "aVF": "Lead aVF",
                   **{f"V{i}": f"Lead V{i}" for i in range(1, 7)}}
TWELVE_LEAD_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2"

SAMPLING_RATE = 250  # Hz, the rate the records are simulated at
DURATION_S = 10.0
#: What ``simulate`` draws; the first four are sinus rhythm, ``af`` atrial fibrillation.
RHYTHMS = ("sinus", "sinus_arrhythmia", "sinus_pvc", "sinus_pac", "multifocal_atrial", "af")
SINUS_RHYTHMS = frozenset({"sinus", "sinus_arrhythmia", "sinus_pvc", "sinus_pac"})
#: Heart rates of the template bank (/min); a record uses the nearest template, its
#: ST-T fitted to the record's rate.
TEMPLATE_RATES = (40, 60, 85, 115, 150, 185)
#: Beat shapes per bank rate: ECGSYN's own, then shapes drawn from the bank's seed.
TEMPLATE_SHAPES = 4
#: Ventricular (PVC) shapes per bank, each one ECGSYN run at PVC_RATE.
PVC_SHAPES = 3
PVC_RATE = 75.0
#: Share of records whose QRS-T complexes come from heart dipoles (``dipole_beat``)
#: rather than from the ECGSYN bank.
DIPOLE_SHARE = 0.5
#: Rate boundaries of the labels (/min).
BRADYCARDIA_BELOW = 60.0
TACHYCARDIA_ABOVE = 100.0
#: ECGSYN's default extrema of P, Q, R, S, T: angles (deg), amplitudes, widths (rad).
_ECGSYN_TI = (-70.0, -15.0, 0.0, 15.0, 100.0)
_ECGSYN_AI = (1.2, -5.0, 30.0, -7.5, 0.75)
_ECGSYN_BI = (0.25, 0.1, 0.1, 0.1, 0.4)
#: Half-width (s) of the QRS kept unstretched when a beat is fitted to an RR interval.
_QRS_HALF_S = 0.06

#: Lead vectors: lead voltage = vector . heart dipole (x to the left, y down, z to the
#: front).  Limb leads from Einthoven's triangle (I = x, II at 60 deg, aVR, aVL, aVF
#: from I and II); precordial leads in the horizontal plane from V1 (115 deg, right
#: front) to V6 (0 deg, left), with a small downward part, 1.6x as long (the chest
#: electrodes are nearer the heart).
_I = np.array([1.0, 0.0, 0.0])
_II = np.array([0.5, np.sqrt(3) / 2, 0.0])
_PRECORDIAL_DEG = (115.0, 95.0, 75.0, 55.0, 30.0, 0.0)
LEAD_VECTORS = np.vstack([
    _I, _II, _II - _I, -(_I + _II) / 2, _I - _II / 2, _II - _I / 2,
    *[1.6 * np.array([np.cos(np.radians(a)), 0.15, np.sin(np.radians(a))])
      for a in _PRECORDIAL_DEG]])


@dataclass(frozen=True)
class SimulatedEcg:
    signal: np.ndarray  # (12, samples) float32, mV, lead order LEADS
    sampling_rate: float
    rhythm: str  # one of RHYTHMS
    heart_rate: float  # mean ventricular rate of the strip, /min
    labels: dict[str, bool]
    #: What was drawn besides the rhythm (ectopic beats, f-wave and wander amplitudes).
    details: dict[str, float] = field(default_factory=dict)


def rate_labels(rhythm: str, heart_rate: float) -> dict[str, bool]:
    return {"sinus_rhythm": rhythm in SINUS_RHYTHMS, "atrial_fibrillation": rhythm == "af",
            "bradycardia": heart_rate < BRADYCARDIA_BELOW,
            "tachycardia": heart_rate > TACHYCARDIA_ABOVE}


@dataclass(frozen=True)
class BeatShape:
    """ECGSYN's extrema of P, Q, R, S, T: angles ``ti`` (deg), amplitudes ``ai``,
    Gaussian widths ``bi`` (rad)."""

    ti: tuple[float, ...] = _ECGSYN_TI
    ai: tuple[float, ...] = _ECGSYN_AI
    bi: tuple[float, ...] = _ECGSYN_BI


ECGSYN_SHAPE = BeatShape()


def draw_shape(rng: np.random.Generator) -> BeatShape:
    """A supraventricular beat shape: QRS 0.8-1.5x as wide (its waves as tall, so their
    amplitudes are divided by the width squared), Q and S 0.3-2x as deep, R 0.8-1.2x,
    T from inverted (-0.6x) to 1.6x, 0.85-1.2x as wide, up to 15 deg earlier or 20 later."""
    ti, ai, bi = list(_ECGSYN_TI), list(_ECGSYN_AI), list(_ECGSYN_BI)
    w = rng.uniform(0.8, 1.5)
    for k in (1, 2, 3):
        bi[k] *= w
        ai[k] /= w * w
        if k != 2:
            ti[k] *= np.sqrt(w)
    ai[1] *= rng.uniform(0.3, 2.0)
    ai[2] *= rng.uniform(0.8, 1.2)
    ai[3] *= rng.uniform(0.3, 2.0)
    t_gain = rng.uniform(-0.6, 1.6)
    ai[4] *= t_gain if abs(t_gain) > 0.15 else 0.15
    bi[4] *= rng.uniform(0.85, 1.2)
    ti[4] += rng.uniform(-15.0, 20.0)
    return BeatShape(tuple(ti), tuple(ai), tuple(bi))


def draw_pvc_shape(rng: np.random.Generator) -> BeatShape:
    """A ventricular beat: no P, QRS 2.2-3x as wide and 1-1.4x as tall, T opposite to
    it (0.6-1.5x ECGSYN's T, inverted) and later."""
    ti, ai, bi = list(_ECGSYN_TI), list(_ECGSYN_AI), list(_ECGSYN_BI)
    w = rng.uniform(2.2, 3.0)
    for k in (1, 2, 3):
        bi[k] *= w
        ai[k] *= rng.uniform(1.0, 1.4) / (w * w)
        if k != 2:
            ti[k] *= w
    ai[0] = 0.0
    ai[4] *= -rng.uniform(0.6, 1.5)
    ti[4] += rng.uniform(10.0, 30.0)
    return BeatShape(tuple(ti), tuple(ai), tuple(bi))


def _ecgsyn(rate: float, with_p: bool, seed: int, duration: float | None = None,
            shape: BeatShape | None = None) -> np.ndarray:
    """One neurokit2 multileads run, (12, samples) at SAMPLING_RATE: by default long
    enough for about nine beats (at least 6 s)."""
    import neurokit2 as nk  # heavy import; only the simulator needs it

    if duration is None:
        duration = max(6.0, 9 * 60.0 / rate)
    shape = shape or ECGSYN_SHAPE
    ai = shape.ai if with_p else (0.0, *shape.ai[1:])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        frame = nk.ecg_simulate(duration=duration, sampling_rate=SAMPLING_RATE,
                                heart_rate=rate, heart_rate_std=0.5, method="multileads",
                                noise=0.0, random_state=seed, ti=shape.ti, ai=ai,
                                bi=shape.bi)
    return np.asarray(frame[list(LEADS)].to_numpy().T, dtype=np.float64)


def _r_peaks(lead: np.ndarray, rr: float) -> np.ndarray:
    """R peaks of lead I (its R wave is its largest deflection in ECGSYN)."""
    x = lead - np.median(lead)
    gap = int(0.6 * rr * SAMPLING_RATE)
    level = 0.6 * x.max()
    peaks: list[int] = []
    for i in np.flatnonzero(x > level):
        lo, hi = max(0, i - gap // 2), min(len(x), i + gap // 2 + 1)
        if x[i] == x[lo:hi].max() and (not peaks or i - peaks[-1] >= gap):
            peaks.append(int(i))
    return np.asarray(peaks, dtype=np.int64)


def _r_peaks_typical(lead: np.ndarray, rr: float) -> np.ndarray:
    """R peaks of lead I against the *typical* beat rather than the tallest one.

    neurokit2 integrates ECGSYN with an adaptive step that nothing bounds, and at low
    rates, where the R wave is a narrow spike on a long cycle, a step can cut one R
    wave short and catch another near its top: the R waves of one strip then differ
    up to threefold, and a level relative to the tallest one hides the others.  The
    step sizes depend on floating-point detail, so which seeds are hit may differ
    between machines.  Here the level is half the median height of the strip's
    expected number of tallest local maxima (one per RR interval), which one or two
    outliers cannot move much."""
    x = lead - np.median(lead)
    gap = int(0.6 * rr * SAMPLING_RATE)
    half = gap // 2
    window = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, half, constant_values=-np.inf), 2 * half + 1)
    candidates = np.flatnonzero((x == window.max(axis=1)) & (x > 0))
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    expected = max(1, int(len(x) / (rr * SAMPLING_RATE)))
    tallest = np.sort(x[candidates])[::-1][:expected]
    level = 0.5 * float(np.median(tallest))
    peaks: list[int] = []
    for i in candidates[x[candidates] > level]:
        if not peaks or i - peaks[-1] >= gap:
            peaks.append(int(i))
    return np.asarray(peaks, dtype=np.int64)


@dataclass(frozen=True)
class Template:
    beat: np.ndarray  # (12, samples) one cycle, ends at 0
    r_index: int  # sample of the R peak inside ``beat``


#: ECGSYN runs tried for one template (the seed's own, then derived sub-seeds).
TEMPLATE_TRIES = 6


def _cut(sig: np.ndarray, peaks: np.ndarray, rate: float) -> Template | None:
    """The median beat of the complete cycles around ``peaks`` (never the first or
    last peak), or None when fewer than two such cycles are in ``sig``."""
    rr = 60.0 / rate
    pre, length = round(0.45 * rr * SAMPLING_RATE), round(rr * SAMPLING_RATE)
    usable = [p for p in peaks[1:-1] if p - pre >= 0 and p - pre + length <= sig.shape[1]]
    if len(usable) < 2:
        return None
    beats = np.stack([sig[:, p - pre:p - pre + length] for p in usable])
    beat = np.median(beats, axis=0)
    # Pull both ends to 0 (a linear ramp), so overlap-added beats join on the baseline.
    k = min(3, length // 4)
    start, end = beat[:, :k].mean(axis=1), beat[:, -k:].mean(axis=1)
    ramp = np.linspace(0.0, 1.0, length)
    beat = beat - (start[:, None] + (end - start)[:, None] * ramp[None, :])
    return Template(beat=beat, r_index=pre)


def _sub_seed(seed: int, attempt: int) -> int:
    """The ECGSYN seed of a template's ``attempt``-th retry, derived from its seed
    alone (the same on every machine and in every process)."""
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _template(rate: float, with_p: bool, seed: int, shape: BeatShape | None = None
              ) -> Template:
    """One template, reproducible from ``seed`` (and ``shape``, ECGSYN's own if None).

    The first ECGSYN run (``seed`` itself) is cut at the R peaks above 60 % of the
    tallest one.  When that gives fewer than two complete cycles, the same run is cut
    at the peaks found against the typical beat (see ``_r_peaks_typical``); if that
    fails too, runs with sub-seeds derived from ``seed`` (``_sub_seed``), each a few
    beats longer, are cut the same way.  Only when all TEMPLATE_TRIES runs fail is
    there an error."""
    rr = 60.0 / rate

    def run(seed: int, duration: float | None = None) -> np.ndarray:
        if shape is None:  # as before shapes were drawn (and as tests replace _ecgsyn)
            return _ecgsyn(rate, with_p, seed, duration)
        return _ecgsyn(rate, with_p, seed, duration, shape=shape)

    sig = run(seed)
    template = _cut(sig, _r_peaks(sig[0], rr), rate)
    if template is None:
        template = _cut(sig, _r_peaks_typical(sig[0], rr), rate)
    attempt = 1
    while template is None and attempt < TEMPLATE_TRIES:
        sig = run(_sub_seed(seed, attempt), duration=max(6.0, (9 + 3 * attempt) * rr))
        template = _cut(sig, _r_peaks_typical(sig[0], rr), rate)
        attempt += 1
    if template is None:
        raise RuntimeError(f"ECGSYN at {rate}/min gave too few beats to cut a template in "
                           f"{TEMPLATE_TRIES} runs (seed {seed})")
    return template


class TemplateBank:
    """ECGSYN QRS-T beats without P waves, drawn once per seed: ``templates[(i, k)]``
    is shape ``k`` (0: ECGSYN's own) at ``rates[i]``, ``pvcs[j]`` a ventricular beat."""

    def __init__(self, seed: int, rates: Sequence[int] = TEMPLATE_RATES,
                 shapes: int = TEMPLATE_SHAPES, pvc_shapes: int = PVC_SHAPES) -> None:
        self.rates = np.asarray(rates, dtype=np.float64)
        rng = np.random.default_rng([seed, 17])
        self.shapes = [ECGSYN_SHAPE] + [draw_shape(rng) for _ in range(shapes - 1)]
        self.pvc_shapes = [draw_pvc_shape(rng) for _ in range(pvc_shapes)]
        self.templates: dict[tuple[int, int], Template] = {}
        for i, rate in enumerate(rates):
            for k, shape in enumerate(self.shapes):
                self.templates[(i, k)] = _template(float(rate), False,
                                                   seed * 1000 + 20 * i + k, shape)
        self.pvcs = [_template(PVC_RATE, False, seed * 1000 + 900 + j, shape)
                     for j, shape in enumerate(self.pvc_shapes)]

    def nearest(self, rate: float, shape: int = 0) -> Template:
        i = int(np.argmin(np.abs(self.rates - rate)))
        return self.templates[(i, shape)]


# --- beats, P waves and rhythms ----------------------------------------------------------

def fit_beat(template: Template, rr: float, *, template_rr: float | None = None,
             stretch: float = 1.0, qrs_half_s: float = _QRS_HALF_S) -> Template:
    """``template`` fitted to the RR interval ``rr`` (s): the QRS (``qrs_half_s``
    around R) kept, the ST-T stretched by ``stretch`` x sqrt(rr / template_rr) (QT follows the
    square root of RR, as Bazett has it), the baseline before the QRS to 45 % of rr."""
    fs = SAMPLING_RATE
    beat, r = template.beat, template.r_index
    t_rr = template_rr if template_rr is not None else beat.shape[1] / fs
    half = min(round(qrs_half_s * fs), r, beat.shape[1] - r - 1)
    pre, core, post = beat[:, :r - half], beat[:, r - half:r + half], beat[:, r + half:]

    def scale(part: np.ndarray, length: int) -> np.ndarray:
        if part.shape[1] < 2 or length < 2:
            return np.zeros((12, max(length, 0)))
        src = np.linspace(0.0, 1.0, part.shape[1])
        dst = np.linspace(0.0, 1.0, length)
        return np.stack([np.interp(dst, src, lead) for lead in part])

    pre_len = max(2, round(0.45 * rr * fs) - half)
    post_len = max(2, round(post.shape[1] * stretch * np.sqrt(rr / t_rr)))
    out = np.concatenate([scale(pre, pre_len), core, scale(post, post_len)], axis=1)
    return Template(beat=out, r_index=pre_len + half)


@dataclass(frozen=True)
class PWave:
    """Two Gaussian atrial dipoles (mV along LEAD_VECTORS' axes), right then left."""

    right: tuple[float, float, float]
    left: tuple[float, float, float]
    sigma_s: float  # width of each
    delay_s: float  # left atrium after right

    def leads(self, fs: float = SAMPLING_RATE) -> tuple[np.ndarray, int]:
        """(12, samples) and the sample of the P wave's centre (between the two)."""
        span = 3.5 * self.sigma_s + self.delay_s
        n = int(np.ceil(span * fs))
        t = np.arange(-n, n + 1) / fs
        right = np.exp(-0.5 * ((t + self.delay_s / 2) / self.sigma_s) ** 2)
        left = np.exp(-0.5 * ((t - self.delay_s / 2) / self.sigma_s) ** 2)
        dipole = np.outer(np.asarray(self.right), right) + np.outer(np.asarray(self.left),
                                                                     left)
        return LEAD_VECTORS @ dipole, n


def _dipole(amplitude: float, axis_deg: float, front: float) -> tuple[float, float, float]:
    a = np.radians(axis_deg)
    v = np.array([np.cos(a), np.sin(a), front])
    v = amplitude * v / np.linalg.norm(v)
    return float(v[0]), float(v[1]), float(v[2])


def sinus_p(rng: np.random.Generator, amplitude: float | None = None) -> PWave:
    """A sinus P wave: axis 30-80 deg, 0.08-0.25 mV, right atrium to the front and left
    atrium to the back (the biphasic P of V1), about 80-120 ms."""
    amp = rng.uniform(0.08, 0.25) if amplitude is None else amplitude
    axis = rng.uniform(30.0, 80.0)
    return PWave(right=_dipole(0.6 * amp, axis + 15.0, rng.uniform(0.3, 0.8)),
                 left=_dipole(0.6 * amp, axis - 15.0, -rng.uniform(0.3, 0.8)),
                 sigma_s=rng.uniform(0.014, 0.02), delay_s=rng.uniform(0.015, 0.04))


def ectopic_p(rng: np.random.Generator, amplitude: float | None = None) -> PWave:
    """An atrial focus away from the sinus node: any axis from -150 to +180 deg
    (inverted in the inferior leads from a low focus, in I from a left one), one or two
    components, 0.08-0.25 mV."""
    amp = rng.uniform(0.08, 0.25) if amplitude is None else amplitude
    axis = rng.uniform(-150.0, 180.0)
    front = rng.uniform(-0.8, 0.8)
    share = rng.uniform(0.0, 0.5)
    return PWave(right=_dipole((1 - share) * amp, axis, front),
                 left=_dipole(share * amp, axis + rng.uniform(-60, 60), -front),
                 sigma_s=rng.uniform(0.012, 0.024), delay_s=rng.uniform(0.0, 0.04))


def dipole_beat(rng: np.random.Generator, rr: float, *, ventricular: bool = False
                ) -> Template:
    """A QRS-T complex from Gaussian heart dipoles projected on LEAD_VECTORS, fitted to
    the RR interval ``rr`` (s): the model of ``sinus_p``, applied to the ventricles.

    Supraventricular: a septal Q (right and to the front), the main R (axis -30 to
    +90 deg, to the back: rS in V1, qR in V6, the transition in V3-V4), a terminal S (up,
    right and back), QRS 70-120 ms, and a T wave roughly concordant with the R (within
    +-50 deg; sometimes flat or inverted) peaking 0.24-0.30 x sqrt(rr) s after it.
    Ventricular: one broad QRS (140-200 ms) with any axis and a T opposite to it."""
    fs = SAMPLING_RATE
    waves: list[tuple[float, float, tuple[float, float, float]]] = []  # (t, sigma, dipole)
    t_peak = rng.uniform(0.24, 0.30) * np.sqrt(rr)
    if ventricular:
        axis, front = rng.uniform(-180.0, 180.0), rng.uniform(-1.0, 1.0)
        sigma = rng.uniform(0.03, 0.042)
        waves.append((0.0, sigma, _dipole(rng.uniform(1.0, 2.5), axis, front)))
        waves.append((rng.uniform(0.02, 0.04), 0.6 * sigma,
                      _dipole(rng.uniform(0.2, 0.6), axis + rng.uniform(-90, 90), -front)))
        t_amp = rng.uniform(0.3, 0.8)
        waves.append((t_peak + 0.04, rng.uniform(0.05, 0.07),
                      _dipole(t_amp, axis + 180.0 + rng.uniform(-30, 30), -front)))
    else:
        w = rng.uniform(0.8, 1.35)
        axis = rng.uniform(-30.0, 90.0)
        r_amp = rng.uniform(0.7, 2.0)
        waves.append((-0.022 * w, 0.007 * w,
                      _dipole(rng.uniform(0.05, 0.3), rng.uniform(150.0, 210.0),
                              rng.uniform(0.3, 1.0))))
        waves.append((0.0, 0.011 * w, _dipole(r_amp, axis, rng.uniform(-0.7, 0.1))))
        waves.append((0.026 * w, 0.009 * w,
                      _dipole(rng.uniform(0.15, 0.7) * r_amp, rng.uniform(-150.0, -80.0),
                              -rng.uniform(0.4, 1.2))))
        t_amp = rng.uniform(0.1, 0.6) * (1.0 if rng.random() < 0.85 else -0.6)
        t_axis = axis + rng.uniform(-50.0, 50.0)
        sigma_t = rng.uniform(0.04, 0.06) * np.sqrt(min(rr, 1.2))
        waves.append((t_peak, sigma_t, _dipole(t_amp, t_axis, rng.uniform(-0.4, 0.6))))
        # The T wave rises more slowly than it falls: a smaller, earlier, wider part.
        waves.append((t_peak - 1.2 * sigma_t, 1.3 * sigma_t,
                      _dipole(0.3 * t_amp, t_axis, rng.uniform(-0.4, 0.6))))
    pre = round(0.45 * rr * fs)
    end = max(round(0.55 * rr * fs), round((t_peak + 0.3) * fs))
    t = np.arange(-pre, end) / fs
    dipole = np.zeros((3, len(t)))
    for at, sigma, vec in waves:
        dipole += np.outer(np.asarray(vec), np.exp(-0.5 * ((t - at) / sigma) ** 2))
    return Template(beat=LEAD_VECTORS @ dipole, r_index=pre)


@dataclass
class _Plan:
    """Where the beats go: R waves (s) with kind "N" (normal QRS) or "V" (ventricular
    focus index), and P waves (s) with their shape index."""

    r: list[tuple[float, str, int]] = field(default_factory=list)
    p: list[tuple[float, int]] = field(default_factory=list)


def _ectopic_schedule(rng: np.random.Generator, every: int | None) -> tuple[int, float]:
    """(every k-th beat, or 0) and the random burden when not patterned."""
    if every is not None:
        return every, 0.0
    if rng.random() < 0.5:
        return int(rng.choice([2, 3, 3, 4])), 0.0
    return 0, float(rng.uniform(0.05, 0.4))


def _sinus_plan(rng: np.random.Generator, rhythm: str, rate: float, duration: float,
                every: int | None) -> tuple[_Plan, dict[str, float]]:
    rr0 = 60.0 / rate
    depth = rng.uniform(0.10, 0.25) if rhythm == "sinus_arrhythmia" else rng.uniform(0.0, 0.08)
    f_resp, phase = rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)
    pr = rng.uniform(0.13, 0.24) if rate < 150 else rng.uniform(0.12, 0.17)
    plan = _Plan()
    details: dict[str, float] = {"resp_depth": float(depth)}
    pvc = rhythm == "sinus_pvc"
    pac = rhythm == "sinus_pac"
    k_every, burden = _ectopic_schedule(rng, every) if (pvc or pac) else (0, 0.0)
    coupling = rng.uniform(0.45, 0.7) if pvc else rng.uniform(0.55, 0.85)
    foci = 2 if pvc and rng.random() < 0.25 else 1
    # An interpolated PVC (no pause) at slow rates, never in bigeminy: that would be a
    # ventricular rate of twice the sinus rate.
    interpolated = pvc and rate < 80 and k_every != 2 and rng.random() < 0.2
    ac_pr = rng.uniform(0.12, 0.26)
    n_ectopic = 0
    since = 0

    def rr_at(t: float) -> float:
        return float(rr0 * (1 + depth * np.sin(2 * np.pi * f_resp * t + phase)
                            + rng.normal(0, 0.01)))

    t = -2.0 - rng.uniform(0, rr0)
    plan.r.append((t, "N", 0))
    plan.p.append((t - pr, 0))
    while t < duration + 2:
        rr = rr_at(t)
        ectopic = False
        if pvc or pac:
            if k_every:
                ectopic = since == k_every - 1
            else:
                ectopic = since > 0 and rng.random() < burden
        if not ectopic:
            t += rr
            plan.r.append((t, "N", 0))
            plan.p.append((t - pr + rng.normal(0, 0.004), 0))
            since += 1
            continue
        since = 0
        n_ectopic += 1
        early = t + (coupling + rng.normal(0, 0.015)) * rr
        if pvc:
            plan.r.append((early, "V", int(rng.integers(foci))))
            if interpolated:
                continue  # the next sinus beat comes on time, conducted
            # The sinus P comes on time, blocked (often hidden in the PVC), and the next
            # sinus beat after a full compensatory pause.
            if rng.random() < 0.7:
                plan.p.append((t + rr - pr, 0))
            t += rr + rr_at(t + rr)
            plan.r.append((t, "N", 0))
            plan.p.append((t - pr, 0))
            since = 1
        else:
            plan.r.append((early, "N", 0))
            plan.p.append((early - ac_pr, 1))
            t = early  # the sinus node is reset by the premature atrial beat
    details["ectopic_beats"] = float(n_ectopic)
    details["ectopic_every"] = float(k_every)
    details["interpolated"] = float(interpolated)
    return plan, details


def _multifocal_plan(rng: np.random.Generator, rate: float, duration: float
                     ) -> tuple[_Plan, dict[str, float]]:
    rr0 = 60.0 / rate
    foci = int(rng.integers(3, 5))
    rr_gain = rng.uniform(0.8, 1.2, foci)
    prs = rng.uniform(0.11, 0.21, foci)
    stay = rng.uniform(0.0, 0.6)
    plan = _Plan()
    focus = int(rng.integers(foci))
    t = -2.0 - rng.uniform(0, rr0)
    while t < duration + 2:
        plan.r.append((t, "N", 0))
        plan.p.append((t - prs[focus], 1 + focus))
        if rng.random() >= stay:
            focus = int(rng.integers(foci))
        t += max(0.3, rr0 * rr_gain[focus] * (1 + rng.normal(0, 0.06)))
    return plan, {"foci": float(foci)}


def _af_plan(rng: np.random.Generator, rate: float, duration: float
             ) -> tuple[_Plan, dict[str, float]]:
    rr0 = 60.0 / rate
    cv = rng.uniform(0.12, 0.35)
    sigma = np.sqrt(np.log(1 + cv**2))
    pvc_burden = rng.uniform(0.03, 0.15) if rng.random() < 0.2 else 0.0
    plan = _Plan()
    t = -2.0 - rng.uniform(0, rr0)
    plan.r.append((t, "N", 0))
    while t < duration + 2:
        t += max(rr0 * rng.lognormal(-sigma**2 / 2, sigma), 0.26)
        plan.r.append((t, "V" if rng.random() < pvc_burden else "N", 0))
    return plan, {"rr_cv": float(cv), "pvc_burden": float(pvc_burden)}


def _add(signal: np.ndarray, wave: np.ndarray, at: int) -> None:
    """Overlap-add ``wave`` (12, m) starting at sample ``at`` (clipped to the strip)."""
    n, m = signal.shape[1], wave.shape[1]
    lo, hi = max(at, 0), min(at + m, n)
    if lo < hi:
        signal[:, lo:hi] += wave[:, lo - at:hi - at]


def _f_waves(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    n = len(t)
    f = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        freq = rng.uniform(4.0, 9.0)
        drift = np.cumsum(rng.normal(0, 0.05, n))
        f += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t + drift)
    f *= amplitude / max(float(np.std(f)) * np.sqrt(2), 1e-6)
    # Strongest in V1 and the inferior leads, as f-waves usually are.
    lead_gain = np.asarray([0.4, 0.8, 0.8, 0.5, 0.4, 0.8, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4])
    return lead_gain[:, None] * f[None, :] * rng.uniform(0.7, 1.3, (12, 1))


def _band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """(12, n) white noise kept between ``low`` and ``high`` Hz (FFT mask), unit RMS."""
    spec = np.fft.rfft(rng.normal(0, 1, (12, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLING_RATE)
    spec[:, (freqs < low) | (freqs > high)] = 0
    x = np.fft.irfft(spec, n, axis=1)
    return np.asarray(x / np.maximum(x.std(axis=1, keepdims=True), 1e-9))


def _artefacts(rng: np.random.Generator, t: np.ndarray, wander_mv: float | None
               ) -> tuple[np.ndarray, dict[str, float]]:
    """Baseline wander, mains hum, EMG and white noise for 12 leads."""
    n = len(t)
    out = np.zeros((12, n))
    wander = (rng.uniform(0.0, 1.5) if rng.random() < 0.85 else 0.0) if wander_mv is None \
        else wander_mv
    if wander > 0:
        # Respiration and electrode drift: 1-2 slow sinusoids (0.05-0.7 Hz), the leads
        # following the same ones with their own gains and signs.
        w = np.zeros(n)
        for k in range(int(rng.integers(1, 3))):
            w += (1.0 if k == 0 else rng.uniform(0.2, 0.6)) * np.sin(
                2 * np.pi * rng.uniform(0.05, 0.7) * t + rng.uniform(0, 2 * np.pi))
        w *= wander / max(float(np.abs(w).max()), 1e-9)
        out += rng.uniform(0.3, 1.0, (12, 1)) * rng.choice([-1.0, 1.0], (12, 1)) * w
    if rng.random() < 0.3:  # slow random drift
        drift = np.cumsum(rng.normal(0, 1, (12, n)), axis=1)
        drift -= drift.mean(axis=1, keepdims=True)
        out += rng.uniform(0.05, 0.4) * drift / max(float(np.abs(drift).max()), 1e-9)
    hum = rng.uniform(0.0, 0.3) if rng.random() < 0.5 else 0.0
    if hum > 0:
        mains = rng.choice([50.0, 60.0])
        out += hum * rng.uniform(0.3, 1.0, (12, 1)) * np.sin(
            2 * np.pi * mains * t + rng.uniform(0, 2 * np.pi))[None, :]
    emg = rng.uniform(0.005, 0.06) if rng.random() < 0.4 else 0.0
    if emg > 0:
        bursts = np.clip(np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t
                                + rng.uniform(0, 2 * np.pi)) + rng.uniform(-0.5, 1.0), 0, None)
        out += emg * _band_noise(rng, n, 20.0, 100.0) * bursts[None, :] \
            * rng.uniform(0.3, 1.0, (12, 1))
    out += rng.normal(0, rng.uniform(0.003, 0.03), (12, n))
    return out, {"wander_mv": float(wander), "hum_mv": float(hum), "emg_mv": float(emg)}


def simulate(rng: np.random.Generator, bank: TemplateBank, *, rhythm: str, rate: float,
             duration: float = DURATION_S, ectopic_every: int | None = None,
             f_wave_mv: float | None = None, wander_mv: float | None = None,
             artefacts: bool = True) -> SimulatedEcg:
    """One 12-lead record of ``rhythm`` (one of RHYTHMS) near ``rate`` /min.

    Everything not given is drawn from ``rng``: ``ectopic_every`` makes every k-th beat
    of ``sinus_pvc`` / ``sinus_pac`` premature (2 bigeminy, 3 trigeminy), ``f_wave_mv``
    is the amplitude of the f-waves of ``af``, ``wander_mv`` the peak baseline wander;
    ``artefacts=False`` leaves out wander, hum, EMG and noise."""
    if rhythm not in RHYTHMS:
        raise ValueError(f"rhythm must be one of {RHYTHMS}, not {rhythm!r}")
    fs = SAMPLING_RATE
    n = round(duration * fs)
    t = np.arange(n) / fs
    if rhythm == "af":
        plan, details = _af_plan(rng, rate, duration)
    elif rhythm == "multifocal_atrial":
        plan, details = _multifocal_plan(rng, rate, duration)
    else:
        plan, details = _sinus_plan(rng, rhythm, rate, duration, ectopic_every)
    rr0 = 60.0 / rate
    # Half the records take their QRS-T from the ECGSYN bank, half from heart dipoles.
    shape = -1
    if rng.random() < DIPOLE_SHARE:
        normal = dipole_beat(rng, rr0)
    else:
        shape = int(rng.integers(len(bank.shapes)))
        nearest = int(np.argmin(np.abs(bank.rates - rate)))
        normal = fit_beat(bank.templates[(nearest, shape)], rr0,
                          template_rr=60.0 / float(bank.rates[nearest]),
                          stretch=rng.uniform(0.93, 1.07))
    pvcs = []
    for _ in range(2):
        if rng.random() < DIPOLE_SHARE:
            pvcs.append(dipole_beat(rng, rr0, ventricular=True))
            continue
        # A focus of its own: the ECGSYN ventricular beat's leads with their own gains
        # and signs.
        focus = rng.uniform(0.6, 1.4, (12, 1)) * np.where(rng.random((12, 1)) < 0.4, -1, 1)
        fitted = fit_beat(bank.pvcs[int(rng.integers(len(bank.pvcs)))], rr0,
                          template_rr=60.0 / PVC_RATE, qrs_half_s=2 * _QRS_HALF_S)
        pvcs.append(Template(beat=fitted.beat * focus, r_index=fitted.r_index))
    p_shapes = [sinus_p(rng)] + [ectopic_p(rng) for _ in range(4)]
    p_waves = [shape_.leads(fs) for shape_ in p_shapes]
    signal = np.zeros((12, n))
    resp = rng.uniform(0.0, 0.06)
    f_resp, phase = rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)
    for r_time, kind, focus_id in plan.r:
        beat = normal if kind == "N" else pvcs[focus_id]
        gain = 1 + resp * np.sin(2 * np.pi * f_resp * r_time + phase)
        _add(signal, gain * beat.beat, round(r_time * fs) - beat.r_index)
    if rhythm != "af":
        for p_time, which in plan.p:
            wave, centre = p_waves[which]
            _add(signal, wave, round(p_time * fs) - centre)
    r_times = np.asarray(sorted(r for r, _, _ in plan.r))
    around = r_times[(r_times >= -1.0) & (r_times < duration + 1.0)]
    mean_rr = float(np.mean(np.diff(around))) if len(around) > 1 else rr0
    heart_rate = 60.0 / mean_rr
    details["template_shape"] = float(shape)
    if rhythm == "af":
        amp = rng.uniform(0.0, 0.1) if f_wave_mv is None else f_wave_mv
        signal += _f_waves(rng, t, amp)
        details["f_wave_mv"] = float(amp)
    signal *= rng.uniform(0.4, 1.6) * rng.uniform(0.7, 1.3, (12, 1))
    if artefacts:
        noise, drawn = _artefacts(rng, t, wander_mv)
        signal = signal + noise + rng.normal(0, 0.2, (12, 1))
        details.update(drawn)
    return SimulatedEcg(signal=signal.astype(np.float32), sampling_rate=float(fs),
                        rhythm=rhythm, heart_rate=heart_rate,
                        labels=rate_labels(rhythm, heart_rate), details=details)


#: How ``draw`` mixes the rhythms (share, lowest and highest rate /min).
MIX: dict[str, tuple[float, float, float]] = {
    "sinus": (0.18, 35.0, 185.0),
    "sinus_arrhythmia": (0.08, 45.0, 110.0),
    "sinus_pvc": (0.14, 45.0, 150.0),
    "sinus_pac": (0.12, 45.0, 150.0),
    "multifocal_atrial": (0.16, 50.0, 130.0),
    "af": (0.32, 50.0, 170.0),
}


def draw(rng: np.random.Generator) -> tuple[str, float]:
    """A rhythm and target rate as the training set draws them (``MIX``)."""
    names = list(MIX)
    shares = np.asarray([MIX[k][0] for k in names])
    rhythm = names[int(rng.choice(len(names), p=shares / shares.sum()))]
    _, low, high = MIX[rhythm]
    return rhythm, float(rng.uniform(low, high))


def dataset(seed: int, n: int, bank: TemplateBank | None = None) -> list[SimulatedEcg]:
    """``n`` records drawn from ``seed`` (the templates from the same seed unless given)."""
    bank = bank if bank is not None else TemplateBank(seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rhythm, rate = draw(rng)
        out.append(simulate(rng, bank, rhythm=rhythm, rate=rate))
    return out


def _code(value: str, scheme: str, meaning: str, version: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    if version is not None:
        item.CodingSchemeVersion = version
    return item


def waveform_dataset(signal_mv: np.ndarray, sampling_rate: float, *,
                     leads: Sequence[str] = LEADS, patient_id: str = "SIM-ECG",
                     patient_name: str = "Simulated^ECG",
                     sop_class: str = TWELVE_LEAD_ECG_STORAGE,
                     study_uid: str | None = None) -> Dataset:
    """A DICOM ECG waveform object (one ORIGINAL "RHYTHM" group, 16-bit, 2.5 µV per
    step) holding ``signal_mv`` (channels, samples) in mV, channel ``i`` labelled
    ``leads[i]`` with its SCP-ECG code (any other name gets a private code)."""
    signal_mv = np.asarray(signal_mv, dtype=np.float64)
    if signal_mv.ndim != 2 or signal_mv.shape[0] != len(leads):
        raise ValueError(f"signal of shape {signal_mv.shape} does not match {len(leads)} leads")
    sensitivity_uv = 2.5
    raw = np.clip(np.round(signal_mv * 1000 / sensitivity_uv), -32768, 32767).astype("<i2")
    now = datetime(2026, 1, 1, 12, 0, 0)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "ECG"
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate = ds.ContentDate = ds.AcquisitionDateTime = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "Simulated (ai_models.training.ecg_simulator)"
    group = Dataset()
    group.MultiplexGroupTimeOffset = "0.0"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(leads)
    group.NumberOfWaveformSamples = int(signal_mv.shape[1])
    group.SamplingFrequency = f"{sampling_rate:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    definitions = []
    for name in leads:
        d = Dataset()
        if name in SCPECG_CODES:
            source = _code(SCPECG_CODES[name], "SCPECG", SCPECG_MEANINGS[name], "1.3")
        else:
            source = _code(name, "99RDC", name)
        d.ChannelSourceSequence = DicomSequence([source])
        d.ChannelSensitivity = f"{sensitivity_uv:g}"
        d.ChannelSensitivityUnitsSequence = DicomSequence(
            [_code("uV", "UCUM", "microvolt", "1.4")])
        d.ChannelSensitivityCorrectionFactor = "1"
        d.ChannelBaseline = "0"
        d.ChannelSampleSkew = "0"
        d.WaveformBitsStored = 16
        definitions.append(d)
    group.ChannelDefinitionSequence = DicomSequence(definitions)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = raw.T.tobytes()  # samples x channels, interleaved
    ds.WaveformSequence = DicomSequence([group])
    return ds
