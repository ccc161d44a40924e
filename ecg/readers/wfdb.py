"""WFDB (PhysioNet) record reader, through the ``wfdb`` package.

A WFDB record is a text header plus one or more signal files named in it, so the reader
takes all of them; ``read_ecg`` accepts them as one zip. The header's record line is
checked here before ``wfdb`` parses it because ``wfdb`` silently substitutes 250 Hz for a
missing or zero sampling frequency, which would mis-time every interval.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import wfdb

from ecg.errors import InconsistentWaveform, UnreadableWaveform
from ecg.signal import Ecg12, assemble, canonical_lead_name

_UNIT_TO_MV: dict[str, float] = {"mv": 1.0, "uv": 1e-3, "μv": 1e-3, "µv": 1e-3, "v": 1e3}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\Z")


def _specification_lines(header: str) -> list[str]:
    """The header's non-empty, non-comment lines: the record line, then one per signal."""
    lines = [line.strip() for line in header.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _record_line(header: str) -> list[str]:
    lines = _specification_lines(header)
    if not lines:
        raise UnreadableWaveform("WFDB header has no record line")
    return lines[0].split()


def _check_header(header: str) -> tuple[str, int, float, int | None]:
    fields = _record_line(header)
    if len(fields) < 2 or not fields[1].isdigit():
        raise UnreadableWaveform(f"WFDB record line is malformed: {' '.join(fields)!r}")
    if "/" in fields[0]:
        raise UnreadableWaveform(
            f"WFDB record {fields[0]!r} is a multi-segment record; send a single-segment "
            "record (one .hea and its signal files)"
        )
    name = fields[0]
    n_sig = int(fields[1])
    if len(fields) < 3:
        raise InconsistentWaveform("WFDB header gives no sampling frequency")
    fs_text = re.split(r"[/(]", fields[2])[0]
    try:
        fs = float(fs_text)
    except ValueError as exc:
        raise InconsistentWaveform(
            f"WFDB sampling frequency {fields[2]!r} is not a number"
        ) from exc
    if not np.isfinite(fs) or fs <= 0:
        raise InconsistentWaveform(f"WFDB sampling frequency must be > 0 Hz, got {fields[2]!r}")
    n_samples = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
    signal_lines = _specification_lines(header)[1:]
    if len(signal_lines) != n_sig:
        # wfdb reads the first n_sig lines and then fails on the rest with a raw TypeError
        # (or, with fewer lines, reads fewer signals than declared).
        raise InconsistentWaveform(
            f"WFDB header declares {n_sig} signals but has {len(signal_lines)} signal lines"
        )
    for number, line in enumerate(signal_lines, start=1):
        _check_gain(line.split(), number)
    return name, n_sig, fs, n_samples


def _check_gain(fields: list[str], number: int) -> None:
    """An ECG lead must state its ADC gain: WFDB takes a missing or zero gain to mean
    "uncalibrated" and wfdb then assumes 200 units per mV, a plausible but invented scale."""
    label = " ".join(fields[8:])
    if label and canonical_lead_name(label) is None:
        return  # not a lead the analysis reads
    where = f"WFDB signal {number} ({label or 'no description'})"
    gain_text = re.split(r"[(/]", fields[2])[0] if len(fields) > 2 else ""
    try:
        gain = float(gain_text) if gain_text else 0.0
    except ValueError as exc:
        raise InconsistentWaveform(f"{where}: ADC gain {fields[2]!r} is not a number") from exc
    if not np.isfinite(gain) or gain <= 0:
        raise InconsistentWaveform(
            f"{where}: ADC gain is {'missing' if not gain_text else repr(fields[2])}, so its "
            "samples cannot be converted to millivolts (WFDB would assume 200 per mV)"
        )


#: The longest recording a WFDB upload may declare: a 24-hour Holter.
MAX_DURATION_S = 24 * 3600.0


def _check_declared_size(name: str, header: Any, signal_bytes: int) -> None:
    """Refuse a header whose declared length the signal files cannot hold, before wfdb
    allocates it: wfdb sizes its buffers from the header (fuzzed headers declaring
    ~10^10 samples made it ask numpy for 27 GiB and 1 TiB).  The values are those wfdb
    itself parsed (``rdheader``), so they are what ``rdrecord`` would allocate for.
    Every uncompressed WFDB format stores at least one byte per sample (format 8/80;
    212 takes 1.5, 16 takes 2), so each signal's samples (times its samples per frame)
    need at least as many bytes; FLAC formats (5xx) at least one byte per 64 samples.
    A skew beyond the record's length is refused too (wfdb pads the skewed frames)."""
    n_samples = header.sig_len
    skews = [int(k) for k in (header.skew or []) if k is not None]
    limit = n_samples if n_samples is not None else signal_bytes
    if skews and (min(skews) < 0 or max(skews) > limit):
        # wfdb reads (samples + skew) frames and pads what the file lacks with zeros.
        raise InconsistentWaveform(
            f"WFDB record {name!r}: a signal's skew ({max(skews, key=abs)} samples) is "
            f"negative or longer than the record"
        )
    if n_samples is None:
        return
    fs = float(header.fs or 0)
    if n_samples < 0 or n_samples > fs * MAX_DURATION_S:
        raise InconsistentWaveform(
            f"WFDB record {name!r} declares {n_samples} samples at {fs:g} Hz, more than "
            f"{MAX_DURATION_S / 3600:g} hours"
        )
    formats = list(header.fmt or [])
    per_frame = list(header.samps_per_frame or [1] * len(formats))
    needed = 0
    for fmt, spf in zip(formats, per_frame, strict=False):
        samples = int(n_samples) * int(spf or 1)
        compressed = str(fmt).isdigit() and int(str(fmt)) >= 500
        needed += samples // 64 if compressed else samples
    if needed > signal_bytes:
        raise InconsistentWaveform(
            f"WFDB record {name!r}: header declares {n_samples} samples per signal, but "
            f"the signal files hold only {signal_bytes} bytes (truncated?)"
        )


def read_wfdb_record(header: bytes, files: Mapping[str, bytes]) -> Ecg12:
    """Read a WFDB record from its header bytes and its signal files (name -> bytes).

    Raises :class:`UnreadableWaveform` when the header or a signal file cannot be parsed
    or is absent, :class:`InconsistentWaveform` when the sampling frequency is not > 0 or
    a signal file holds fewer samples than the header declares.
    """
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError as exc:
        raise UnreadableWaveform("WFDB header is not ASCII text") from exc
    name, n_sig, fs, n_samples = _check_header(text)
    if not _SAFE_NAME.match(name):
        raise UnreadableWaveform(f"WFDB record name {name!r} is not a plain file name")
    with tempfile.TemporaryDirectory(prefix="rdc-wfdb-") as tmp:
        root = Path(tmp)
        (root / f"{name}.hea").write_bytes(header)
        for file_name, content in files.items():
            base = Path(file_name).name
            if not _SAFE_NAME.match(base):
                raise UnreadableWaveform(f"WFDB signal file name {file_name!r} is not plain")
            (root / base).write_bytes(content)
        try:
            _check_declared_size(name, wfdb.rdheader(str(root / name)),
                                 sum(len(c) for c in files.values()))
            record = wfdb.rdrecord(str(root / name), physical=True)
        except FileNotFoundError as exc:
            missing = Path(str(exc.filename)).name
            raise UnreadableWaveform(f"WFDB signal file missing: {missing}") from exc
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, ZeroDivisionError,
                OverflowError, OSError) as exc:
            # wfdb parses untrusted text: whatever it trips over is the file's fault, and
            # must reach the user as the reader's error (HTTP 422, a clear job failure),
            # not as a Python exception.
            raise InconsistentWaveform(
                f"WFDB record {name!r} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc
    signals = record.p_signal
    if signals is None or signals.ndim != 2 or signals.shape[1] != n_sig:
        raise InconsistentWaveform(f"WFDB record {name!r} decoded to no {n_sig}-signal array")
    if n_samples is not None and signals.shape[0] < n_samples:
        raise InconsistentWaveform(
            f"WFDB record {name!r}: header declares {n_samples} samples, "
            f"signal files hold {signals.shape[0]} (truncated?)"
        )
    leads: list[tuple[str, np.ndarray]] = []
    for i, (label, unit) in enumerate(zip(record.sig_name, record.units, strict=True)):
        if canonical_lead_name(str(label)) is None:
            # Frank leads (vx, vy, vz), respiration, ...: assemble ignores them, but they
            # keep their place so a duplicated lead is reported by its channel number.
            leads.append((str(label), signals[:, i]))
            continue
        factor = _UNIT_TO_MV.get(str(unit).strip().lower())
        if factor is None:
            raise InconsistentWaveform(f"WFDB signal {label!r} has non-voltage unit {unit!r}")
        leads.append((str(label), signals[:, i] * factor))
    age: float | None = None
    sex: str | None = None
    for comment in record.comments or []:
        if m := re.match(r"\s*age:\s*(\d+)", comment, re.IGNORECASE):
            age = float(m.group(1))
        if m := re.match(r"\s*sex:\s*([MF])", comment, re.IGNORECASE):
            sex = m.group(1).upper()
    return assemble(
        leads, fs, patient_id=None, patient_sex=sex, patient_age_years=age,
        acquisition_time=record.base_datetime, source_format="wfdb",
    )
