"""DICOM ECG waveform decoding (PS3.3 A.34: 12-lead / General / Ambulatory ECG Waveform IODs),
shared by the ECG readers and the ECG rhythm model.

Why it lives in ``core``: the domain packages do not import each other, so the ECG
reader (``ecg.readers.dicom``) and the rhythm network's pipeline
(``ai_models.pipelines.ecg_rhythm``) can share it only through here, as they share the
signal conditioning (``core.ecg_filters``).  They must share it: two decoders drift (the
pipeline's copy read a channel without ChannelSensitivity as 1 unit per step, 20 % low
on a 1.25 uV file, while the reader refused it).

Every structural field is checked against the data before pydicom decodes it, so a
truncated or mislabelled object is refused with the field at fault instead of yielding a
wrong-length or wrong-unit signal that would later produce plausible but false numbers.
Each caller maps :class:`DicomWaveformError` to its own refusal (the ECG reader's
``ecg.errors`` family, the pipeline's ``NotApplicable``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from core.errors import InvalidInput

#: The 12 standard leads, in the order the ECG analysis and the rhythm network use.
LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)

#: SOP classes whose waveforms are ECGs (PS3.4 B.5). Hemodynamic, audio, arterial pulse,
#: respiratory and EEG waveform classes are deliberately absent.
ECG_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
}

#: Sensitivity units (UCUM, PS3.16 CID 3082) to the factor that gives millivolts.
UNIT_TO_MV: dict[str, float] = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}

class DicomWaveformError(InvalidInput):
    """A DICOM ECG waveform that is refused; the message names the field at fault."""


class UnreadableDicomWaveform(DicomWaveformError):
    """The bytes are not a readable DICOM file, or an element cannot be decoded."""


class InconsistentDicomWaveform(DicomWaveformError):
    """The object parses, but its declared structure contradicts its data."""


class NotAnEcgWaveform(DicomWaveformError):
    """A waveform, but not an electrocardiogram (other SOP class, non-voltage channels)."""


@dataclass(frozen=True)
class EcgWaveform:
    """The rhythm group of a DICOM ECG, decoded.

    ``values_mv`` is (samples, channels) in millivolts (sensitivity, correction factor
    and baseline applied), ``labels`` the standard lead of each channel (None for a
    channel that is not one), ``warnings`` what was assumed on the file's behalf.
    """

    group: int
    sampling_rate: float
    labels: tuple[str | None, ...]
    values_mv: npt.NDArray[np.float64]
    warnings: tuple[str, ...]


def canonical_lead_name(label: str) -> str | None:
    """Map a lead label as exporters write it ('Lead I (Einthoven)', 'AVR', 'MDC_ECG_LEAD_V1',
    'v5') to the standard name, or None when it is not one of the 12 standard leads."""
    text = label.strip()
    text = re.sub(r"^(MDC_ECG_LEAD_|ECG_LEAD_|LEAD[\s_-]*)", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s*\(.*\)\s*$", "", text).strip()
    upper = text.upper()
    for name in LEADS:
        if upper == name.upper():
            return name
    return None


def channel_lead(definition: Dataset) -> str | None:
    """The standard lead a channel definition names by its code meaning ("Lead I
    (Einthoven)", "MDC_ECG_LEAD_V1", "aVR", or an MDC meaning written with spaces); None
    when it has no source or names no standard lead.  The code value alone does not make
    a channel a lead: a channel whose meaning says "Audio" is not read as lead I."""
    sources = definition.get("ChannelSourceSequence") or []
    if not sources:
        return None
    source = sources[0]
    meaning = str(source.get("CodeMeaning", ""))
    name = canonical_lead_name(meaning)
    if name is None and str(source.get("CodingSchemeDesignator", "")) == "MDC":
        name = canonical_lead_name(meaning.replace(" ", "_"))
    return name


def pick_group(ds: Dataset) -> int:
    """The rhythm group: the 12-lead IOD may also hold a derived median-beat group.
    Labelled RHYTHM, else the longest ORIGINAL one, else the longest."""
    groups = list(ds.WaveformSequence)
    for i, group in enumerate(groups):
        if str(group.get("MultiplexGroupLabel", "")).upper() == "RHYTHM":
            return i
    originals = [i for i, g in enumerate(groups) if g.get("WaveformOriginality") == "ORIGINAL"]
    candidates = originals or list(range(len(groups)))
    return max(candidates, key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0) or 0))


def check_group(group: Dataset, index: int) -> tuple[int, int, float]:
    """(channels, samples, Hz) of a multiplex group, after checking that its channel
    count, sample count, sampling frequency, sample size and data length agree."""
    where = f"WaveformSequence[{index}]"
    channels = int(group.get("NumberOfWaveformChannels", 0) or 0)
    samples = int(group.get("NumberOfWaveformSamples", 0) or 0)
    definitions = list(group.get("ChannelDefinitionSequence", []))
    if channels != len(definitions):
        raise InconsistentDicomWaveform(
            f"{where}: NumberOfWaveformChannels is {channels} but ChannelDefinitionSequence "
            f"has {len(definitions)} items"
        )
    if channels < 8:
        raise InconsistentDicomWaveform(
            f"{where}: {channels} channels; a 12-lead ECG needs at least 8 "
            "(I, II, V1-V6) to derive the rest"
        )
    fs_raw = group.get("SamplingFrequency")
    fs = float(fs_raw) if fs_raw not in (None, "") else 0.0
    if not np.isfinite(fs) or fs <= 0:
        raise InconsistentDicomWaveform(
            f"{where}: SamplingFrequency must be > 0 Hz, got {fs_raw!r}")
    if samples <= 0:
        raise InconsistentDicomWaveform(f"{where}: NumberOfWaveformSamples is {samples}")
    bits = int(group.get("WaveformBitsAllocated", 0) or 0)
    if bits not in (8, 16, 32):
        raise InconsistentDicomWaveform(
            f"{where}: WaveformBitsAllocated {bits} is not 8, 16 or 32")
    data = group.get("WaveformData")
    have = len(data) if data is not None else 0
    need = channels * samples * bits // 8
    if have < need:
        raise InconsistentDicomWaveform(
            f"{where}: WaveformData has {have} bytes but {channels} channels x {samples} "
            f"samples x {bits // 8} bytes = {need} are declared (truncated?)"
        )
    if have > need + 1:
        # More data than declared means the channel count, sample count or sample size is
        # wrong, and reading the declared layout would de-interleave the channels wrongly.
        # Only the one pad byte that makes a value's length even is allowed.
        raise InconsistentDicomWaveform(
            f"{where}: WaveformData has {have} bytes but {channels} channels x {samples} "
            f"samples x {bits // 8} bytes = {need} are declared ({have - need} bytes too "
            "many: the channel count, sample count or bits allocated is wrong)"
        )
    return channels, samples, fs


def _lead_label(definition: Dataset, where: str) -> str | None:
    if not (definition.get("ChannelSourceSequence") or []):
        raise InconsistentDicomWaveform(f"{where}: ChannelSourceSequence is missing")
    return channel_lead(definition)


def _unit_factor(definition: Dataset, where: str, warnings: list[str]) -> float:
    """Millivolts per unit of the channel's sensitivity units, after checking that the
    sensitivity itself is there: without it pydicom silently takes 1 unit per integer step
    (e.g. 1 uV instead of the file's 1.25 uV, every amplitude 20 % low)."""
    units = definition.get("ChannelSensitivityUnitsSequence") or []
    if not units:
        raise InconsistentDicomWaveform(f"{where}: ChannelSensitivityUnitsSequence is missing")
    code = str(units[0].get("CodeValue", ""))
    if code not in UNIT_TO_MV:
        raise NotAnEcgWaveform(f"{where}: channel units {code!r} are not a voltage")
    raw = definition.get("ChannelSensitivity")
    if raw is None or str(raw).strip() == "":
        raise InconsistentDicomWaveform(
            f"{where}: ChannelSensitivity is missing, so the stored integers cannot be "
            f"converted to {code}; refusing rather than assuming 1 {code} per step"
        )
    sensitivity = float(raw)
    if not np.isfinite(sensitivity) or sensitivity <= 0:
        raise InconsistentDicomWaveform(
            f"{where}: ChannelSensitivity must be > 0, got {raw!r}")
    correction = definition.get("ChannelSensitivityCorrectionFactor")
    if correction is None or str(correction).strip() == "":
        # Type 1C when ChannelSensitivity is present; 1 is what the sensitivity means
        # without a calibration correction (PS3.3 C.10.9.1.4.3).
        warnings.append(f"{where}: ChannelSensitivityCorrectionFactor is missing; 1 assumed")
    elif not np.isfinite(float(correction)) or float(correction) <= 0:
        raise InconsistentDicomWaveform(
            f"{where}: ChannelSensitivityCorrectionFactor must be > 0, got {correction!r}"
        )
    return UNIT_TO_MV[code]


def read_dicom(data: bytes) -> Dataset:
    """The dataset in ``data``; :class:`UnreadableDicomWaveform` when it is not DICOM."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDicomWaveform(f"not a readable DICOM file: {exc}") from exc


def decode_ecg(ds: Dataset) -> EcgWaveform:
    """Decode the rhythm group of a DICOM ECG waveform object, in millivolts.

    Raises :class:`NotAnEcgWaveform` for other waveform SOP classes or non-ECG channels,
    :class:`InconsistentDicomWaveform` when channel counts, sample counts, data length
    (exact, one pad byte allowed) or sampling frequency disagree, when a lead is
    labelled twice, or when a channel has no sensitivity, and
    :class:`UnreadableDicomWaveform` when an element cannot be decoded at all.
    """
    try:
        return _decode_ecg(ds)
    except DicomWaveformError:
        raise
    except Exception as exc:
        # pydicom decodes each element when it is first used, and a damaged value fails
        # there with whatever its decoder raises (BytesLengthException, ValueError,
        # LookupError for an unknown character set, struct.error ...): still the file.
        raise UnreadableDicomWaveform(
            f"the DICOM file cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _decode_ecg(ds: Dataset) -> EcgWaveform:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ECG_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "missing"
        raise NotAnEcgWaveform(
            f"SOP class {sop_class or '(none)'} ({name}) is not an ECG waveform")
    if not ds.get("WaveformSequence"):
        raise InconsistentDicomWaveform("ECG object has no WaveformSequence")
    index = pick_group(ds)
    group = ds.WaveformSequence[index]
    channels, samples, fs = check_group(group, index)

    factors: list[float] = []
    labels: list[str | None] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    for c, definition in enumerate(group.ChannelDefinitionSequence):
        where = f"WaveformSequence[{index}].ChannelDefinitionSequence[{c}]"
        label = _lead_label(definition, where)
        if label is not None and label in seen:
            raise InconsistentDicomWaveform(
                f"lead {label} appears twice: WaveformSequence[{index}]."
                f"ChannelDefinitionSequence[{seen[label]}] and [{c}] are both labelled "
                f"{label}; refusing rather than guessing which channel is lead {label}"
            )
        if label is not None:
            seen[label] = c
        labels.append(label)
        factors.append(_unit_factor(definition, where, warnings))
    if not any(labels):
        meanings = [
            str((d.get("ChannelSourceSequence") or [Dataset()])[0].get("CodeMeaning", "?"))
            for d in group.ChannelDefinitionSequence
        ]
        raise NotAnEcgWaveform(f"no channel is an ECG lead; channel sources: {meanings}")
    try:
        # Applies ChannelSensitivity x CorrectionFactor and ChannelBaseline.
        values = ds.waveform_array(index)
    except (ValueError, AttributeError, KeyError) as exc:
        raise InconsistentDicomWaveform(
            f"WaveformSequence[{index}] cannot be decoded: {exc}") from exc
    if values.shape != (samples, channels):
        raise InconsistentDicomWaveform(
            f"WaveformSequence[{index}] decoded to shape {values.shape}, "
            f"expected ({samples}, {channels})"
        )
    values_mv = np.asarray(values, dtype=np.float64) * np.asarray(factors)[None, :]
    return EcgWaveform(group=index, sampling_rate=fs, labels=tuple(labels),
                       values_mv=values_mv, warnings=tuple(warnings))
