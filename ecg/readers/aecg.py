"""HL7 annotated ECG (aECG, HL7 v3 / FDA format) reader.

Parsed with defusedxml because aECG files come from outside sites: entity expansion and
external entities must not be honoured. Only the rhythm ``series`` is read; a
``derivedSeries`` (median beats computed by the cart) is ignored because the center
computes its own from the rhythm data.
"""

from __future__ import annotations

import re
from datetime import datetime
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
import numpy as np
from defusedxml import DefusedXmlException

from ecg.errors import InconsistentWaveform, NotAnEcg, UnreadableWaveform
from ecg.signal import Ecg12, assemble, canonical_lead_name

NS = "{urn:hl7-org:v3}"
_TIME_UNIT_TO_S: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_UNIT_TO_MV: dict[str, float] = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}


def _float_attr(element: Element | None, where: str, attr: str = "value") -> float:
    if element is None or element.get(attr) is None:
        raise InconsistentWaveform(f"aECG {where} is missing")
    try:
        return float(element.get(attr, ""))
    except ValueError as exc:
        raise InconsistentWaveform(f"aECG {where} {element.get(attr)!r} is not a number") from exc


def _hl7_time(value: str | None) -> datetime | None:
    if not value:
        return None
    digits = re.split(r"[.+-]", value)[0]
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
        try:
            return datetime.strptime(digits, fmt)
        except ValueError:
            continue
    return None


def _sampling_rate(sequence_set: Element) -> float:
    for sequence in sequence_set.iter(f"{NS}sequence"):
        code = sequence.find(f"{NS}code")
        if code is not None and code.get("code", "").startswith("TIME_"):
            increment = sequence.find(f"{NS}value/{NS}increment")
            step = _float_attr(increment, "time increment")
            unit = (increment.get("unit") if increment is not None else None) or "s"
            if unit not in _TIME_UNIT_TO_S:
                raise InconsistentWaveform(f"aECG time increment unit {unit!r} is not s/ms/us")
            seconds = step * _TIME_UNIT_TO_S[unit]
            if not np.isfinite(seconds) or seconds <= 0:
                raise InconsistentWaveform(
                    f"aECG time increment must be > 0 (sampling rate > 0 Hz), got {step!r} {unit}"
                )
            return 1.0 / seconds
    raise InconsistentWaveform("aECG sequenceSet has no TIME_ABSOLUTE/TIME_RELATIVE sequence")


def _lead_values(sequence: Element, code: str) -> np.ndarray:
    value = sequence.find(f"{NS}value")
    if value is None:
        raise InconsistentWaveform(f"aECG sequence {code} has no value")
    origin_el, scale_el = value.find(f"{NS}origin"), value.find(f"{NS}scale")
    origin = _float_attr(origin_el, f"{code} origin") if origin_el is not None else 0.0
    scale = _float_attr(scale_el, f"{code} scale")
    unit = (scale_el.get("unit") if scale_el is not None else None) or "uV"
    if unit not in _UNIT_TO_MV:
        raise NotAnEcg(f"aECG sequence {code} unit {unit!r} is not a voltage")
    origin_unit = (origin_el.get("unit") if origin_el is not None else None) or unit
    digits_el = value.find(f"{NS}digits")
    if digits_el is None or not (digits_el.text or "").strip():
        raise InconsistentWaveform(f"aECG sequence {code} has no digits")
    try:
        digits = np.array((digits_el.text or "").split(), dtype=np.float64)
    except ValueError as exc:
        raise UnreadableWaveform(f"aECG sequence {code} digits are not numbers") from exc
    origin_mv = origin * _UNIT_TO_MV.get(origin_unit, _UNIT_TO_MV[unit])
    result: np.ndarray = origin_mv + digits * scale * _UNIT_TO_MV[unit]
    return result


def read_aecg(data: bytes) -> Ecg12:
    """Read an HL7 aECG document's rhythm series into an :class:`Ecg12`.

    Raises :class:`UnreadableWaveform` for XML that is malformed or not an AnnotatedECG,
    :class:`NotAnEcg` when no sequence is an ``MDC_ECG_LEAD_*`` lead, and
    :class:`InconsistentWaveform` for a missing or non-positive sampling increment or
    leads of different lengths.
    """
    try:
        root = SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException, ValueError, LookupError) as exc:
        # LookupError: the XML declaration names an encoding Python does not know.
        raise UnreadableWaveform(f"aECG is not well-formed or safe XML: {exc}") from exc
    if root.tag != f"{NS}AnnotatedECG":
        raise UnreadableWaveform(f"root element is {root.tag!r}, not HL7 v3 AnnotatedECG")
    series = root.find(f".//{NS}series")
    sequence_set = series.find(f"{NS}component/{NS}sequenceSet") if series is not None else None
    if sequence_set is None:
        raise InconsistentWaveform("aECG has no series/component/sequenceSet")
    fs = _sampling_rate(sequence_set)
    leads: list[tuple[str, np.ndarray]] = []
    codes: list[str] = []
    for sequence in sequence_set.iter(f"{NS}sequence"):
        code_el = sequence.find(f"{NS}code")
        code = code_el.get("code", "") if code_el is not None else ""
        if code.startswith("TIME_"):
            continue
        codes.append(code)
        name = canonical_lead_name(code) if code.startswith("MDC_ECG_LEAD_") else None
        if name is not None:
            leads.append((code, _lead_values(sequence, code)))
    if not leads:
        raise NotAnEcg(f"aECG has no MDC_ECG_LEAD_* sequences; found {codes or 'none'}")
    subject = root.find(f".//{NS}trialSubject")
    patient_id = None
    sex = None
    if subject is not None:
        id_el = subject.find(f"{NS}id")
        patient_id = id_el.get("extension") if id_el is not None else None
        gender = subject.find(f".//{NS}administrativeGenderCode")
        sex = gender.get("code") if gender is not None else None
    low = root.find(f"{NS}effectiveTime/{NS}low")
    return assemble(
        leads, fs, patient_id=patient_id, patient_sex=sex,
        acquisition_time=_hl7_time(low.get("value") if low is not None else None),
        source_format="aecg",
    )
