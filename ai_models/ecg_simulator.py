"""Simulated 12-lead ECGs for the demonstration rhythm model, reproducible from a seed.

Beat shapes come from neurokit2's ECGSYN (``nk.ecg_simulate(method="multileads")``,
McSharry et al. 2003, with neurokit2's per-lead amplitude factors).  ECGSYN drives
its beats from a smooth heart-rate process, which cannot give the irregularly
irregular RR intervals of atrial fibrillation, so a record is assembled beat by beat:

1. a *template bank*: for a grid of heart rates, one ECGSYN run with P waves and one
   with the P wave's amplitude set to 0, cut at the R peaks into one median beat per
   lead (one cardiac cycle, ends pulled to the baseline).  A run in which too few R
   peaks are found is cut again against its typical beat, then replaced by runs from
   sub-seeds derived from the seed (``_template``), so every rate gives a template
   and the same seed the same one;
2. R-peak times: sinus rhythm is regular with a respiratory modulation (sinus
   arrhythmia, up to ±6 %) and ±1 % jitter; "atrial fibrillation" draws every RR
   interval independently (log-normal, coefficient of variation 12-30 %) and uses the
   templates *without* P waves;
3. the beats are overlap-added at those times, with the AF approximation's
   fibrillatory baseline (4-9 Hz waves, 0-0.12 mV), then per-lead gain, baseline
   wander, mains hum and white noise.

This is an approximation for a demonstration, not an electrophysiological model:
the f-waves are filtered sinusoids, the AV node is not modelled, and there are no
ectopic beats, flutter or blocks.  Labels follow from how a record was drawn:
``sinus_rhythm`` or ``atrial_fibrillation``, and ``bradycardia`` (< 60 /min) or
``tachycardia`` (> 100 /min) from the mean RR interval of the beats in the strip.
Nothing here is patient data, and a model trained on it recognises simulations.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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
RHYTHMS = ("sinus", "af")
#: Heart rates of the template bank (/min); a record uses the nearest template.
TEMPLATE_RATES = tuple(range(35, 200, 10))
#: Rate boundaries of the labels (/min).
BRADYCARDIA_BELOW = 60.0
TACHYCARDIA_ABOVE = 100.0
#: ECGSYN's default P, Q, R, S, T amplitudes; AF templates set P to 0.
_ECGSYN_AI = (1.2, -5.0, 30.0, -7.5, 0.75)


@dataclass(frozen=True)
class SimulatedEcg:
    signal: np.ndarray  # (12, samples) float32, mV, lead order LEADS
    sampling_rate: float
    rhythm: str  # "sinus" or "af"
    heart_rate: float  # mean ventricular rate of the strip, /min
    labels: dict[str, bool]


def rate_labels(rhythm: str, heart_rate: float) -> dict[str, bool]:
    return {"sinus_rhythm": rhythm == "sinus", "atrial_fibrillation": rhythm == "af",
            "bradycardia": heart_rate < BRADYCARDIA_BELOW,
            "tachycardia": heart_rate > TACHYCARDIA_ABOVE}


def _ecgsyn(rate: float, with_p: bool, seed: int, duration: float | None = None
            ) -> np.ndarray:
    """One neurokit2 multileads run, (12, samples) at SAMPLING_RATE: by default long
    enough for about nine beats (at least 6 s)."""
    import neurokit2 as nk  # heavy import; only the simulator needs it

    if duration is None:
        duration = max(6.0, 9 * 60.0 / rate)
    ai = _ECGSYN_AI if with_p else (0.0, *_ECGSYN_AI[1:])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        frame = nk.ecg_simulate(duration=duration, sampling_rate=SAMPLING_RATE,
                                heart_rate=rate, heart_rate_std=0.5, method="multileads",
                                noise=0.0, random_state=seed, ai=ai)
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


def _template(rate: float, with_p: bool, seed: int) -> Template:
    """One template, reproducible from ``seed``.

    The first ECGSYN run (``seed`` itself) is cut at the R peaks above 60 % of the
    tallest one, as it always was, so every template that was cut that way is
    unchanged.  When that gives fewer than two complete cycles, the same run is cut
    at the peaks found against the typical beat (see ``_r_peaks_typical``); if that
    fails too, runs with sub-seeds derived from ``seed`` (``_sub_seed``), each a few
    beats longer, are cut the same way.  Only when all TEMPLATE_TRIES runs fail is
    there an error."""
    rr = 60.0 / rate
    sig = _ecgsyn(rate, with_p, seed)
    template = _cut(sig, _r_peaks(sig[0], rr), rate)
    if template is None:
        template = _cut(sig, _r_peaks_typical(sig[0], rr), rate)
    attempt = 1
    while template is None and attempt < TEMPLATE_TRIES:
        sig = _ecgsyn(rate, with_p, _sub_seed(seed, attempt),
                      duration=max(6.0, (9 + 3 * attempt) * rr))
        template = _cut(sig, _r_peaks_typical(sig[0], rr), rate)
        attempt += 1
    if template is None:
        raise RuntimeError(f"ECGSYN at {rate}/min gave too few beats to cut a template in "
                           f"{TEMPLATE_TRIES} runs (seed {seed})")
    return template


class TemplateBank:
    """ECGSYN beats per (rate, with P wave), drawn once per seed."""

    def __init__(self, seed: int, rates: Sequence[int] = TEMPLATE_RATES) -> None:
        self.rates = np.asarray(rates, dtype=np.float64)
        self.templates: dict[tuple[int, bool], Template] = {}
        for i, rate in enumerate(rates):
            for with_p in (True, False):
                self.templates[(i, with_p)] = _template(float(rate), with_p,
                                                        seed * 1000 + 2 * i + int(with_p))

    def nearest(self, rate: float, with_p: bool) -> Template:
        i = int(np.argmin(np.abs(self.rates - rate)))
        return self.templates[(i, with_p)]


def _r_times(rng: np.random.Generator, rhythm: str, rate: float, duration: float
             ) -> np.ndarray:
    """R-peak times (s) covering [-2, duration + 2]."""
    rr0 = 60.0 / rate
    times = [-2.0 - rng.uniform(0, rr0)]
    if rhythm == "sinus":
        depth = rng.uniform(0.0, 0.06)
        f_resp, phase = rng.uniform(0.15, 0.35), rng.uniform(0, 2 * np.pi)
        while times[-1] < duration + 2:
            t = times[-1]
            rr = rr0 * (1 + depth * np.sin(2 * np.pi * f_resp * t + phase)
                        + rng.normal(0, 0.01))
            times.append(t + rr)
    else:
        cv = rng.uniform(0.12, 0.30)
        sigma = np.sqrt(np.log(1 + cv**2))
        while times[-1] < duration + 2:
            rr = rr0 * rng.lognormal(-sigma**2 / 2, sigma)
            times.append(times[-1] + max(rr, 0.26))
    return np.asarray(times)


def simulate(rng: np.random.Generator, bank: TemplateBank, *, rhythm: str, rate: float,
             duration: float = DURATION_S) -> SimulatedEcg:
    """One 12-lead record of ``rhythm`` ("sinus" or "af") near ``rate`` /min."""
    if rhythm not in RHYTHMS:
        raise ValueError(f"rhythm must be one of {RHYTHMS}, not {rhythm!r}")
    fs = SAMPLING_RATE
    n = round(duration * fs)
    t = np.arange(n) / fs
    r_times = _r_times(rng, rhythm, rate, duration)
    template = bank.nearest(rate, with_p=rhythm == "sinus")
    # Small variations of the beat: a time stretch and per-lead gains.
    stretch = rng.uniform(0.9, 1.1)
    beat_len = template.beat.shape[1]
    src = np.arange(beat_len)
    dst_len = max(8, round(beat_len * stretch))
    beat = np.stack([np.interp(np.linspace(0, beat_len - 1, dst_len), src, lead)
                     for lead in template.beat])
    r_index = round(template.r_index * (dst_len - 1) / max(beat_len - 1, 1))
    signal = np.zeros((12, n))
    for rt in r_times:
        start = round(rt * fs) - r_index
        lo, hi = max(start, 0), min(start + dst_len, n)
        if lo < hi:
            signal[:, lo:hi] += beat[:, lo - start:hi - start]
    around = r_times[(r_times >= -1.0) & (r_times < duration + 1.0)]
    mean_rr = float(np.mean(np.diff(around))) if len(around) > 1 else 60.0 / rate
    heart_rate = 60.0 / mean_rr
    if rhythm == "af":
        f = np.zeros(n)
        for _ in range(int(rng.integers(1, 4))):
            freq = rng.uniform(4.0, 9.0)
            drift = np.cumsum(rng.normal(0, 0.05, n))
            f += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t + drift)
        f *= rng.uniform(0.0, 0.12) / max(float(np.std(f)) * np.sqrt(2), 1e-6)
        # Strongest in V1 and the inferior leads, as f-waves usually are.
        lead_gain = np.asarray([0.4, 0.8, 0.8, 0.5, 0.4, 0.8, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4])
        signal += lead_gain[:, None] * f[None, :] * rng.uniform(0.7, 1.3, (12, 1))
    signal *= rng.uniform(0.4, 1.6) * rng.uniform(0.7, 1.3, (12, 1))
    wander = rng.uniform(0, 0.3, (12, 1)) * np.sin(
        2 * np.pi * rng.uniform(0.05, 0.5) * t[None, :] + rng.uniform(0, 2 * np.pi, (12, 1)))
    hum = rng.uniform(0, 0.03) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t
                                        + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0, rng.uniform(0.005, 0.05), (12, n))
    signal = signal + wander + hum[None, :] + noise + rng.normal(0, 0.2, (12, 1))
    return SimulatedEcg(signal=signal.astype(np.float32), sampling_rate=float(fs),
                        rhythm=rhythm, heart_rate=heart_rate,
                        labels=rate_labels(rhythm, heart_rate))


def draw(rng: np.random.Generator) -> tuple[str, float]:
    """A rhythm and target rate as the training set draws them: 60 % sinus at
    35-185 /min, 40 % AF at 50-170 /min."""
    if rng.random() < 0.6:
        return "sinus", float(rng.uniform(35, 185))
    return "af", float(rng.uniform(50, 170))


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
    ds.Manufacturer = "Simulated (ai_models.ecg_simulator)"
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
