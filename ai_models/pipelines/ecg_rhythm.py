"""ECG rhythm: one 12-lead DICOM waveform → a probability per rhythm label.

Pre-processing reads the waveform with pydicom (``Dataset.waveform_array``, which
applies each channel's sensitivity, correction factor and baseline), converts the
channels to mV from their sensitivity units and puts the 12 standard leads in the
order I, II, III, aVR, aVL, aVF, V1-V6 (found by their channel source codes).  Then,
as the training script does (``to_network_input``): the signal conditioning the ECG
analysis shares (``core.ecg_filters.prepare``: polyphase resampling to the manifest's
``sampling_rate``, a 0.5 Hz high-pass against baseline wander, 50 and 60 Hz notches),
the first ``size`` samples (10 s), each lead's median removed, the manifest's
``window`` (mV) mapped to 0..1.

A waveform sampled below ``core.ecg_filters.MIN_SAMPLING_RATE_HZ`` (100 Hz, the ECG
readers' minimum) is not read: the job is skipped with the reason, never resampled up.

This module reads DICOM itself rather than using the ``ecg`` package: the AI
pipelines and the domain packages are kept apart, and share only ``core``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest
from ai_models.pipelines.base import NotApplicable, Predict, Prepared, Result
from ai_models.pipelines.classify import multilabel_result, predict_batch
from ai_models.pipelines.common import describe, uid_text
from core import ecg_filters

#: The network's lead order.
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
#: SCP-ECG channel source codes (PS3.16 CID 3001) of the 12 leads.
_SCPECG = {"5.6.3-9-1": "I", "5.6.3-9-2": "II", "5.6.3-9-61": "III", "5.6.3-9-62": "aVR",
           "5.6.3-9-63": "aVL", "5.6.3-9-64": "aVF", "5.6.3-9-3": "V1", "5.6.3-9-4": "V2",
           "5.6.3-9-5": "V3", "5.6.3-9-6": "V4", "5.6.3-9-7": "V5", "5.6.3-9-8": "V6"}
#: Sensitivity units (UCUM) → factor to mV.
_TO_MV = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}
#: A strip shorter than this share of the network input is not read; a slightly
#: shorter one (a device that records 9.98 s) is padded with the baseline.
MIN_SHARE = 0.95


def lead_name(definition: Dataset) -> str | None:
    """The standard lead a channel definition names, from its SCP-ECG or MDC code or
    its code meaning ("Lead I (Einthoven)", "MDC_ECG_LEAD_V1", "aVR"); None if none."""
    sources = definition.get("ChannelSourceSequence") or []
    if not sources:
        return None
    source = sources[0]
    code = str(source.get("CodeValue", ""))
    if str(source.get("CodingSchemeDesignator", "")) == "SCPECG" and code in _SCPECG:
        return _SCPECG[code]
    for text in (str(source.get("CodeMeaning", "")), code):
        t = re.sub(r"\(.*?\)", "", text).strip()
        t = re.sub(r"^(MDC_ECG_LEAD_|Lead\s+)", "", t, flags=re.IGNORECASE).strip()
        for lead in LEADS:
            if t.lower() == lead.lower():
                return lead
    return None


def pick_group(ds: Dataset) -> int:
    """The rhythm multiplex group: labelled RHYTHM, else the longest ORIGINAL one."""
    groups = list(ds.WaveformSequence)
    for i, group in enumerate(groups):
        if str(group.get("MultiplexGroupLabel", "")).upper() == "RHYTHM":
            return i
    originals = [i for i, g in enumerate(groups) if g.get("WaveformOriginality") == "ORIGINAL"]
    candidates = originals or list(range(len(groups)))
    return max(candidates, key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0) or 0))


def to_network_input(signal_mv: np.ndarray, rate: float, *, target_rate: float,
                     samples: int, window: tuple[float, float]) -> np.ndarray:
    """(12, n) mV at ``rate`` → (12, samples) float32 in 0..1: conditioned as the ECG
    analysis conditions a signal (``core.ecg_filters.prepare``: resampled to
    ``target_rate``, high-passed at 0.5 Hz, 50/60 Hz notched), the first ``samples``
    kept (padded with the baseline if a little short), each lead's median removed,
    ``window`` (mV) mapped to 0..1 and clipped.  The training script applies this same
    function to its simulated records.  A ``rate`` below MIN_SAMPLING_RATE_HZ raises
    ``core.ecg_filters.SamplingRateTooLow`` (a ValueError)."""
    x = ecg_filters.prepare(signal_mv, rate, target_rate)[:, :samples]
    x = x - np.median(x, axis=1, keepdims=True)
    if x.shape[1] < samples:
        x = np.pad(x, ((0, 0), (0, samples - x.shape[1])))
    low, high = window
    unit = np.clip((x - low) / (high - low), 0.0, 1.0)
    return unit.astype(np.float32)


class EcgRhythmPipeline:
    """``pipeline: ecg_rhythm`` in model.yaml (task classification, waveform input)."""

    def __init__(self, manifest: Manifest) -> None:
        spec = manifest.input
        if (manifest.task != "classification" or len(spec.size) != 1
                or spec.sampling_rate is None or spec.channels != len(LEADS)):
            raise ValueError(f"{manifest.ref}: ecg_rhythm needs a classification model with "
                             f"a 1-D input size, {len(LEADS)} channels and a sampling_rate, "
                             f"not {manifest.task} {spec.size} x {spec.channels} channels "
                             f"at {spec.sampling_rate} Hz")
        self.manifest = manifest
        self.rate = float(spec.sampling_rate)
        self.samples = int(spec.size[0])

    # --- check ------------------------------------------------------------------

    def _one(self, datasets: Sequence[Dataset]) -> Dataset:
        ref = self.manifest.ref
        if not datasets:
            raise NotApplicable("the series has no instances")
        if len(datasets) != 1:
            raise NotApplicable(f"the series has {len(datasets)} instances; {ref} reads one "
                                "ECG waveform per series")
        return datasets[0]

    def _leads(self, ds: Dataset) -> tuple[int, list[int], float, list[float]]:
        """(group index, channel index per standard lead, Hz, mV factor per lead)."""
        ref, a = self.manifest.ref, self.manifest.applies_to
        modality = str(ds.get("Modality", ""))
        if modality not in a.modalities:
            raise NotApplicable(f"modality {modality or '(none)'} is not read by {ref} "
                                f"(it reads {', '.join(a.modalities)})")
        sop_class = str(ds.get("SOPClassUID", ""))
        if a.sop_classes and sop_class not in a.sop_classes:
            reads = ", ".join(uid_text(u) for u in a.sop_classes)
            raise NotApplicable(f"{describe(ds)}: SOP class {uid_text(sop_class)} is not "
                                f"read by {ref} (it reads {reads})")
        if not ds.get("WaveformSequence"):
            raise NotApplicable(f"{describe(ds)} has no waveform (WaveformSequence is "
                                f"missing or empty); {ref} reads 12-lead ECG waveforms")
        index = pick_group(ds)
        group = ds.WaveformSequence[index]
        where = f"{describe(ds)}, waveform group {index}"
        fs_raw = group.get("SamplingFrequency")
        try:
            fs = float(fs_raw) if fs_raw not in (None, "") else 0.0
        except (TypeError, ValueError):
            fs = 0.0
        if not np.isfinite(fs) or fs <= 0:
            raise NotApplicable(f"{where}: sampling frequency {fs_raw!r} is not a positive "
                                "number of Hz")
        if fs < ecg_filters.MIN_SAMPLING_RATE_HZ:
            raise NotApplicable(
                f"{where}: sampled at {fs:g} Hz, below the "
                f"{ecg_filters.MIN_SAMPLING_RATE_HZ:g} Hz a diagnostic ECG needs (the ECG "
                f"readers refuse it too); {ref} does not resample it up to "
                f"{self.rate:g} Hz")
        definitions = list(group.get("ChannelDefinitionSequence") or [])
        names = [lead_name(d) for d in definitions]
        channels: list[int] = []
        factors: list[float] = []
        missing = []
        for lead in LEADS:
            if lead not in names:
                missing.append(lead)
                continue
            i = names.index(lead)
            channels.append(i)
            units = definitions[i].get("ChannelSensitivityUnitsSequence") or []
            unit = str(units[0].get("CodeValue", "")) if units else ""
            if unit not in _TO_MV:
                raise NotApplicable(f"{where}: lead {lead} is in {unit or '(no units)'}, "
                                    "not a voltage")
            factors.append(_TO_MV[unit])
        if missing:
            found = ", ".join(n or "?" for n in names) or "none"
            raise NotApplicable(
                f"{where}: {len(definitions)} channels ({found}) are not a 12-lead ECG; "
                f"{ref} needs the leads {', '.join(LEADS)} (missing {', '.join(missing)})")
        samples = int(group.get("NumberOfWaveformSamples", 0) or 0)
        need = self.samples / self.rate
        if samples / fs < MIN_SHARE * need:
            raise NotApplicable(f"{where}: the strip lasts {samples / fs:.2f} s; {ref} reads "
                                f"{need:g} s")
        return index, channels, fs, factors

    def check(self, datasets: Sequence[Dataset]) -> None:
        self._leads(self._one(datasets))

    # --- pre-process, predict, post-process -------------------------------------

    def signal_mv(self, ds: Dataset) -> tuple[np.ndarray, float]:
        """The 12 leads in mV (12, n) in the network's lead order, and their rate."""
        index, channels, fs, factors = self._leads(ds)
        try:
            raw = np.asarray(ds.waveform_array(index), dtype=np.float64)
        except Exception as e:  # pydicom raises ValueError, AttributeError, ...
            raise NotApplicable(f"{describe(ds)}: waveform group {index} cannot be decoded: "
                                f"{e}") from e
        if raw.ndim != 2 or raw.shape[1] <= max(channels):
            raise NotApplicable(f"{describe(ds)}: waveform group {index} decodes to shape "
                                f"{raw.shape}, not samples x channels")
        signal = raw[:, channels].T * np.asarray(factors)[:, None]
        if not np.all(np.isfinite(signal)):
            raise NotApplicable(f"{describe(ds)}: the waveform has non-finite samples")
        return signal, fs

    def preprocess(self, datasets: Sequence[Dataset]) -> Prepared:
        ds = self._one(datasets)
        signal, fs = self.signal_mv(ds)
        array = to_network_input(signal, fs, target_rate=self.rate, samples=self.samples,
                                 window=self.manifest.input.window)
        return Prepared(array=array, datasets=[ds],
                        meta={"sampling_rate": fs, "duration_s": signal.shape[1] / fs})

    def predict(self, prepared: Sequence[Prepared], run: Predict) -> list[np.ndarray]:
        return predict_batch(self.manifest, prepared, run)

    def postprocess(self, prepared: Prepared, output: np.ndarray) -> Result:
        return multilabel_result(self.manifest, output)
