"""``ecg.readers.wfdb.read_wfdb_record``: a WFDB header and its signal file, as a zip's
entries reach it.

Input layout: two bytes (big endian) giving the header's length, the header, then the
bytes of the signal file ``rec.dat`` (seed headers name their record ``rec``).
Refusal: any :class:`~ecg.errors.EcgError`.
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("ecg", "wfdb")
MAX_LEN = 32 * 1024


def split(data: bytes) -> tuple[bytes, bytes]:
    """(header, signal file) of one input."""
    n = int.from_bytes(data[:2], "big")
    return data[2:2 + n], data[2 + n:]


def join(header: bytes, dat: bytes) -> bytes:
    return len(header).to_bytes(2, "big") + header + dat


def load() -> Callable[[bytes], None]:
    from ecg.errors import EcgError
    from ecg.readers.wfdb import read_wfdb_record

    def one_input(data: bytes) -> None:
        header, dat = split(data)
        try:
            read_wfdb_record(header, {"rec.dat": dat})
        except EcgError:
            pass

    return one_input
