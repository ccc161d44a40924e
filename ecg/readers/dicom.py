"""DICOM ECG waveform reader (PS3.3 A.34: 12-lead / General / Ambulatory ECG Waveform IODs).

Every structural field is checked against the data before pydicom decodes it, so a
truncated or mislabelled object is refused with the field at fault instead of yielding a
wrong-length or wrong-unit signal that would later produce plausible but false numbers.
"""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ecg.errors import EcgError, InconsistentWaveform, NotAnEcg, UnreadableWaveform
from ecg.signal import Ecg12, assemble, canonical_lead_name

#: SOP classes whose waveforms are ECGs (PS3.4 B.5). Hemodynamic, audio, arterial pulse,
#: respiratory and EEG waveform classes are deliberately absent.
ECG_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
}

#: Sensitivity units (UCUM, PS3.16 CID 3082) to the factor that gives millivolts.
_UNIT_TO_MV: dict[str, float] = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}


def _datetime(ds: Dataset) -> datetime | None:
    raw = str(ds.get("AcquisitionDateTime", "") or "")
    if not raw and ds.get("AcquisitionDate"):
        raw = f"{ds.AcquisitionDate}{ds.get('AcquisitionTime', '')}"
    if not raw and ds.get("ContentDate"):
        raw = f"{ds.ContentDate}{ds.get('ContentTime', '')}"
    raw = raw.split("+")[0].split("-")[0].split(".")[0]
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
        try:
            return datetime.strptime(raw, fmt)
        except ValueError:
            continue
    return None


def _age_years(ds: Dataset) -> float | None:
    age = str(ds.get("PatientAge", "") or "")
    if len(age) == 4 and age[:3].isdigit():
        per_year = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.25}.get(age[3])
        return int(age[:3]) / per_year if per_year else None
    return None


def _pick_group(ds: Dataset) -> int:
    """The rhythm group: the 12-lead IOD may also hold a derived median-beat group."""
    groups = list(ds.WaveformSequence)
    for i, group in enumerate(groups):
        if str(group.get("MultiplexGroupLabel", "")).upper() == "RHYTHM":
            return i
    originals = [i for i, g in enumerate(groups) if g.get("WaveformOriginality") == "ORIGINAL"]
    candidates = originals or list(range(len(groups)))
    return max(candidates, key=lambda i: int(groups[i].get("NumberOfWaveformSamples", 0) or 0))


def _check_group(group: Dataset, index: int) -> tuple[int, int, float]:
    where = f"WaveformSequence[{index}]"
    channels = int(group.get("NumberOfWaveformChannels", 0) or 0)
    samples = int(group.get("NumberOfWaveformSamples", 0) or 0)
    definitions = list(group.get("ChannelDefinitionSequence", []))
    if channels != len(definitions):
        raise InconsistentWaveform(
            f"{where}: NumberOfWaveformChannels is {channels} but ChannelDefinitionSequence "
            f"has {len(definitions)} items"
        )
    if channels < 8:
        raise InconsistentWaveform(
            f"{where}: {channels} channels; a 12-lead ECG needs at least 8 "
            "(I, II, V1-V6) to derive the rest"
        )
    fs_raw = group.get("SamplingFrequency")
    fs = float(fs_raw) if fs_raw not in (None, "") else 0.0
    if not np.isfinite(fs) or fs <= 0:
        raise InconsistentWaveform(f"{where}: SamplingFrequency must be > 0 Hz, got {fs_raw!r}")
    if samples <= 0:
        raise InconsistentWaveform(f"{where}: NumberOfWaveformSamples is {samples}")
    bits = int(group.get("WaveformBitsAllocated", 0) or 0)
    if bits not in (8, 16, 32):
        raise InconsistentWaveform(f"{where}: WaveformBitsAllocated {bits} is not 8, 16 or 32")
    data = group.get("WaveformData")
    have = len(data) if data is not None else 0
    need = channels * samples * bits // 8
    if have < need:
        raise InconsistentWaveform(
            f"{where}: WaveformData has {have} bytes but {channels} channels x {samples} "
            f"samples x {bits // 8} bytes = {need} are declared (truncated?)"
        )
    if have > need + 1:
        # More data than declared means the channel count, sample count or sample size is
        # wrong, and reading the declared layout would de-interleave the channels wrongly.
        # Only the one pad byte that makes a value's length even is allowed.
        raise InconsistentWaveform(
            f"{where}: WaveformData has {have} bytes but {channels} channels x {samples} "
            f"samples x {bits // 8} bytes = {need} are declared ({have - need} bytes too "
            "many: the channel count, sample count or bits allocated is wrong)"
        )
    return channels, samples, fs


def _lead_label(definition: Dataset, where: str) -> str | None:
    sources = definition.get("ChannelSourceSequence") or []
    if not sources:
        raise InconsistentWaveform(f"{where}: ChannelSourceSequence is missing")
    source = sources[0]
    meaning = str(source.get("CodeMeaning", ""))
    name = canonical_lead_name(meaning)
    if name is None and str(source.get("CodingSchemeDesignator", "")) == "MDC":
        name = canonical_lead_name(meaning.replace(" ", "_"))
    return name


def _unit_factor(definition: Dataset, where: str, warnings: list[str]) -> float:
    """Millivolts per unit of the channel's sensitivity units, after checking that the
    sensitivity itself is there: without it pydicom silently takes 1 unit per integer step
    (e.g. 1 uV instead of the file's 1.25 uV, every amplitude 20 % low)."""
    units = definition.get("ChannelSensitivityUnitsSequence") or []
    if not units:
        raise InconsistentWaveform(f"{where}: ChannelSensitivityUnitsSequence is missing")
    code = str(units[0].get("CodeValue", ""))
    if code not in _UNIT_TO_MV:
        raise NotAnEcg(f"{where}: channel units {code!r} are not a voltage")
    raw = definition.get("ChannelSensitivity")
    if raw is None or str(raw).strip() == "":
        raise InconsistentWaveform(
            f"{where}: ChannelSensitivity is missing, so the stored integers cannot be "
            f"converted to {code}; refusing rather than assuming 1 {code} per step"
        )
    sensitivity = float(raw)
    if not np.isfinite(sensitivity) or sensitivity <= 0:
        raise InconsistentWaveform(f"{where}: ChannelSensitivity must be > 0, got {raw!r}")
    correction = definition.get("ChannelSensitivityCorrectionFactor")
    if correction is None or str(correction).strip() == "":
        # Type 1C when ChannelSensitivity is present; 1 is what the sensitivity means
        # without a calibration correction (PS3.3 C.10.9.1.4.3).
        warnings.append(f"{where}: ChannelSensitivityCorrectionFactor is missing; 1 assumed")
    elif not np.isfinite(float(correction)) or float(correction) <= 0:
        raise InconsistentWaveform(
            f"{where}: ChannelSensitivityCorrectionFactor must be > 0, got {correction!r}"
        )
    return _UNIT_TO_MV[code]


def read_dicom_ecg(data: bytes) -> Ecg12:
    """Read a DICOM ECG waveform object into an :class:`Ecg12` (millivolts, standard order).

    Raises :class:`UnreadableWaveform` for non-DICOM bytes, :class:`NotAnEcg` for other
    waveform SOP classes or non-ECG channels, :class:`InconsistentWaveform` when channel
    counts, sample counts, data length (exact, one pad byte allowed) or sampling frequency
    disagree, when a lead is labelled twice, or when a channel has no sensitivity.
    """
    try:
        return _read_dicom_ecg(data)
    except EcgError:
        raise
    except Exception as exc:
        # pydicom decodes each element when it is first used, and a damaged value fails
        # there with whatever its decoder raises (BytesLengthException, ValueError,
        # LookupError for an unknown character set, struct.error ...): still the file.
        raise UnreadableWaveform(
            f"the DICOM file cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _read_dicom_ecg(data: bytes) -> Ecg12:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableWaveform(f"not a readable DICOM file: {exc}") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ECG_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "missing"
        raise NotAnEcg(f"SOP class {sop_class or '(none)'} ({name}) is not an ECG waveform")
    if not ds.get("WaveformSequence"):
        raise InconsistentWaveform("ECG object has no WaveformSequence")
    index = _pick_group(ds)
    group = ds.WaveformSequence[index]
    channels, samples, fs = _check_group(group, index)

    factors: list[float] = []
    labels: list[str | None] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    for c, definition in enumerate(group.ChannelDefinitionSequence):
        where = f"WaveformSequence[{index}].ChannelDefinitionSequence[{c}]"
        label = _lead_label(definition, where)
        if label is not None and label in seen:
            raise InconsistentWaveform(
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
        raise NotAnEcg(f"no channel is an ECG lead; channel sources: {meanings}")
    try:
        # Applies ChannelSensitivity x CorrectionFactor and ChannelBaseline.
        values = ds.waveform_array(index)
    except (ValueError, AttributeError, KeyError) as exc:
        raise InconsistentWaveform(f"WaveformSequence[{index}] cannot be decoded: {exc}") from exc
    if values.shape != (samples, channels):
        raise InconsistentWaveform(
            f"WaveformSequence[{index}] decoded to shape {values.shape}, "
            f"expected ({samples}, {channels})"
        )
    leads = [(label, values[:, c] * factors[c])
             for c, label in enumerate(labels) if label is not None]
    return assemble(
        leads, fs, warnings=tuple(warnings),
        patient_id=str(ds.get("PatientID", "")) or None,
        acquisition_time=_datetime(ds),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
        patient_sex=str(ds.get("PatientSex", "")) or None,
        patient_age_years=_age_years(ds),
        source_format="dicom",
    )
