"""``ecg.readers.dicom.read_dicom_ecg``: DICOM ECG waveforms uploaded or received.

Refusal: any :class:`~ecg.errors.EcgError` (the web app's 422, the job's clear failure).
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("pydicom", "ecg")
MAX_LEN = 64 * 1024


def load() -> Callable[[bytes], None]:
    from ecg.errors import EcgError
    from ecg.readers.dicom import read_dicom_ecg

    def one_input(data: bytes) -> None:
        try:
            read_dicom_ecg(data)
        except EcgError:
            pass

    return one_input
