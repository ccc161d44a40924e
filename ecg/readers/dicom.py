"""DICOM ECG waveform reader (PS3.3 A.34: 12-lead / General / Ambulatory ECG Waveform IODs).

The decoding and its refusals (``core.ecg_waveform``: every structural field is checked
against the data before pydicom decodes it) are shared with the ECG rhythm model's
pipeline; this module turns the decoded rhythm group into an :class:`Ecg12` and its
refusals into the ``ecg.errors`` family.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset

from core import ecg_waveform
from ecg.errors import EcgError, InconsistentWaveform, NotAnEcg, UnreadableWaveform
from ecg.signal import Ecg12, assemble

#: The shared decoder's refusals, as the ECG package's own.
_AS_ECG_ERROR: dict[type[ecg_waveform.DicomWaveformError], type[EcgError]] = {
    ecg_waveform.UnreadableDicomWaveform: UnreadableWaveform,
    ecg_waveform.InconsistentDicomWaveform: InconsistentWaveform,
    ecg_waveform.NotAnEcgWaveform: NotAnEcg,
}


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
    except ecg_waveform.DicomWaveformError as exc:
        raise _AS_ECG_ERROR.get(type(exc), InconsistentWaveform)(str(exc)) from exc
    except Exception as exc:
        # pydicom decodes each element when it is first used, and a damaged value fails
        # there with whatever its decoder raises (BytesLengthException, ValueError,
        # LookupError for an unknown character set, struct.error ...): still the file.
        raise UnreadableWaveform(
            f"the DICOM file cannot be decoded: {type(exc).__name__}: {exc}") from exc


def _read_dicom_ecg(data: bytes) -> Ecg12:
    ds = ecg_waveform.read_dicom(data)
    wave = ecg_waveform.decode_ecg(ds)
    leads = [(label, wave.values_mv[:, c])
             for c, label in enumerate(wave.labels) if label is not None]
    return assemble(
        leads, wave.sampling_rate, warnings=wave.warnings,
        patient_id=str(ds.get("PatientID", "")) or None,
        acquisition_time=_datetime(ds),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
        patient_sex=str(ds.get("PatientSex", "")) or None,
        patient_age_years=_age_years(ds),
        source_format="dicom",
    )
