"""``ecg.readers.read_ecg`` on a zipped WFDB record (.hea + signal files in one zip).

The zip layer: entries, sizes, names, CRCs.  Mutations rarely get past the CRC into the
record itself, which :mod:`fuzz.harnesses.ecg_wfdb_record` fuzzes directly.
Refusal: any :class:`~ecg.errors.EcgError`.
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("ecg", "zipfile", "wfdb")
MAX_LEN = 32 * 1024


def load() -> Callable[[bytes], None]:
    from ecg.errors import EcgError
    from ecg.readers import read_ecg

    def one_input(data: bytes) -> None:
        try:
            read_ecg(data, "record.zip")
        except EcgError:
            pass

    return one_input
