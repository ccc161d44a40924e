"""Compare what a sender sent with what Orthanc holds, file meta header aside."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread

from pacs_gateway.inspect import dataset_offset


def body(data: bytes) -> bytes:
    """The encoded dataset after the Part 10 preamble and file meta group."""
    return data[dataset_offset(data):]


def _insignificant(tag: int) -> bool:
    # Dataset Trailing Padding and group lengths carry no content; DICOM senders
    # such as DCMTK drop or recompute them in transit (PS3.5 7.2, 7.3).
    return tag == 0xFFFCFFFC or (tag & 0xFFFF) == 0


def same_dataset(sent: bytes, stored: bytes) -> tuple[bool, str]:
    """True when the datasets match element for element and pixel data byte for byte."""
    a, b = body(sent), body(stored)
    if a == b:
        return True, "identical bytes"
    da, db = dcmread(BytesIO(sent)), dcmread(BytesIO(stored))
    if da.file_meta.TransferSyntaxUID != db.file_meta.TransferSyntaxUID:
        return False, "transfer syntax differs"
    for elem in da:
        if _insignificant(elem.tag):
            continue
        other = db.get(elem.tag)
        if other is None:
            return False, f"{elem.tag} missing in stored copy"
        if elem.value != other.value:
            return False, f"{elem.tag} differs"
    extra = {e.tag for e in db if not _insignificant(e.tag)} - {e.tag for e in da}
    if extra:
        return False, f"stored copy has extra elements {sorted(extra)}"
    if "PixelData" in da and da.PixelData != db.PixelData:
        return False, "pixel data differs"
    return True, "equal elements"

