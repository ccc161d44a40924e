"""``pacs_gateway.inspect.inspect_encoded``: the Part 10 stream of every C-STORE.

Its only refusal is :class:`~pacs_gateway.inspect.InvalidDataset` (the C-STORE failure
status to answer); any other exception would reach the handler's safety net as 0x0110.
"""

from __future__ import annotations

from collections.abc import Callable

INSTRUMENT = ("pydicom", "pacs_gateway")
MAX_LEN = 64 * 1024


def load() -> Callable[[bytes], None]:
    from pacs_gateway.inspect import InvalidDataset, inspect_encoded

    def one_input(data: bytes) -> None:
        try:
            info = inspect_encoded(data)
        except InvalidDataset as e:
            if not 0xA000 <= e.status <= 0xCFFF:
                raise AssertionError(f"refusal with a non-failure status 0x{e.status:04X}") from e
            return
        # What is accepted goes into database rows: the UIDs must be valid UIDs.
        for uid in (info.sop_class_uid, info.sop_instance_uid, info.study_uid,
                    info.series_uid):
            if not (0 < len(uid) <= 64 and all(c.isdigit() or c == "." for c in uid)):
                raise AssertionError(f"accepted an invalid UID {uid!r}")

    return one_input
