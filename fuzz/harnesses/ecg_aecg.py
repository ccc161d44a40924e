"""``ecg.readers.aecg.read_aecg``: HL7 aECG XML from outside sites (defusedxml).

Refusal: any :class:`~ecg.errors.EcgError`.
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("ecg", "defusedxml", "xml")
MAX_LEN = 64 * 1024


def load() -> Callable[[bytes], None]:
    from ecg.errors import EcgError
    from ecg.readers.aecg import read_aecg

    def one_input(data: bytes) -> None:
        try:
            read_aecg(data)
        except EcgError:
            pass

    return one_input
