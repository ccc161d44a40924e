"""ECG rhythm: one 12-lead DICOM waveform → a probability per rhythm label.

Pre-processing decodes the waveform with the DICOM ECG decoder the ECG readers use
(``core.ecg_waveform.decode_ecg``: the rhythm group, every structural field checked
against the data, pydicom's ``Dataset.waveform_array`` applying each channel's
sensitivity, correction factor and baseline, channels converted to mV from their
sensitivity units) and puts the 12 standard leads in the order I, II, III, aVR, aVL,
aVF, V1-V6 (found by their channel sources' code meanings, as the ECG readers find
them).  Then, as the training script does
(``to_network_input``): the signal conditioning the ECG analysis shares
(``core.ecg_filters.prepare``: polyphase resampling to the manifest's
``sampling_rate``, a 0.5 Hz high-pass against baseline wander, 50 and 60 Hz notches),
the first ``size`` samples (10 s), each lead's median removed, the manifest's
``window`` (mV) mapped to 0..1.

A waveform sampled below ``core.ecg_filters.MIN_SAMPLING_RATE_HZ`` (100 Hz, the ECG
readers' minimum) is not read: the job is skipped with the reason, never resampled up;
so is one the ECG readers refuse (the decoder's reason becomes the skip's).

The decoding is in ``core`` rather than taken from the ``ecg`` package: the AI
pipelines and the domain packages are kept apart, and share only ``core``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from ai_models.manifest import Manifest
from ai_models.pipelines.base import NotApplicable, Predict, Prepared, Result
from ai_models.pipelines.classify import multilabel_result, predict_batch
from ai_models.pipelines.common import describe, uid_text
from core import ecg_filters, ecg_waveform

#: The network's lead order.
LEADS = ecg_waveform.LEADS
#: A strip shorter than this share of the network input is not read; a slightly
#: shorter one (a device that records 9.98 s) is padded with the baseline.
MIN_SHARE = 0.95


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

    def _leads(self, ds: Dataset) -> tuple[ecg_waveform.EcgWaveform, list[int]]:
        """(the decoded rhythm group, channel index per standard lead)."""
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
        index = ecg_waveform.pick_group(ds)
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
        names = [ecg_waveform.channel_lead(d) for d in definitions]
        missing = [lead for lead in LEADS if lead not in names]
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
        try:
            wave = ecg_waveform.decode_ecg(ds)
        except ecg_waveform.DicomWaveformError as e:
            raise NotApplicable(f"{describe(ds)}: {e}") from e
        return wave, [wave.labels.index(lead) for lead in LEADS]

    def check(self, datasets: Sequence[Dataset]) -> None:
        self._leads(self._one(datasets))

    # --- pre-process, predict, post-process -------------------------------------

    def signal_mv(self, ds: Dataset) -> tuple[np.ndarray, float]:
        """The 12 leads in mV (12, n) in the network's lead order, and their rate."""
        wave, channels = self._leads(ds)
        signal = wave.values_mv[:, channels].T
        if not np.all(np.isfinite(signal)):
            raise NotApplicable(f"{describe(ds)}: the waveform has non-finite samples")
        return signal, wave.sampling_rate

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
