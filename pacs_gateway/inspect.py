"""Read what the gateway needs from an encoded dataset, in bounded memory.

A C-STORE dataset reaches the handler as a Part 10 file that the receive path wrote
into the spool while it arrived (see :mod:`pacs_gateway.receive_limits`), or as bytes
for callers that hold it already.  It may be gigabytes (tomosynthesis, a long cine, a
whole-slide level), and a deflated one may inflate to a thousand times its size, so
nothing here reads a value whose size the sender chose, except small ones:

* The file meta group is read element by element (each value at most 64 KiB, the
  group at most 1 MiB).
* The dataset is *walked*: every element header is read and checked (a known VR
  under an explicit syntax, a declared length that fits in the stream), values are
  skipped (a seek, or inflate-and-discard for a deflated dataset), and every
  undefined-length element is walked item by item down to its delimiter, nested
  sequences included (at most 32 deep).  A stream cut short anywhere is refused,
  where pydicom would silently hand back short values.
* Top-level values up to 64 KiB are kept (the identifiers always, any others within
  a 4 MiB budget) and decoded by pydicom, so that a garbled value fails here and not
  later in Orthanc.  Pixel data and other bulk values are never read.
* A deflated dataset (Deflated Explicit VR Little Endian, JPIP Referenced Deflate) is
  inflated as a stream, one 1 MiB step at a time, and refused with 0xA700 (*Refused:
  out of resources*) once it inflates beyond :class:`InflateLimits`: the gateway
  will not hand Orthanc (which inflates it in memory) an object it cannot afford.

Only identifiers are taken from the dataset; they go into database rows, never into
file paths.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, Protocol

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

# PS3.5 9.1: digits and dots, at most 64 characters.  Leading zeros in a
# component are tolerated because real modalities send them.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*\Z")

STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_INVALID_UID = 0xC001
STATUS_MISSING_UID = 0xC002
STATUS_SOP_CLASS_MISMATCH = 0xA900
#: A deflated dataset that inflates beyond the gateway's limits (PS3.4 B.2.3: A7xx).
STATUS_OUT_OF_RESOURCES = 0xA700

#: Transfer syntaxes whose dataset is one raw deflate stream (PS3.5 A.5, A.4.10).
DEFLATED_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})
#: Below this much inflated output the ratio limit does not apply: small objects that
#: compress very well (an empty report, a blank secondary capture) are ordinary.
INFLATE_RATIO_FLOOR = 64 * 2**20

_KEEP_VALUE_MAX = 64 * 1024
_KEEP_BUDGET = 4 * 2**20
_META_MAX = 2**20
_MAX_DEPTH = 32
_STEP = 2**20
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

#: The VRs of PS3.5 6.2: two bytes after a tag that read as one of these mean explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split())
#: Explicit VRs with two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

_KEYWORDS = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
             "SeriesInstanceUID", "Modality", "PatientID", "NumberOfStudyRelatedInstances",
             "PatientName", "PatientBirthDate", "IssuerOfPatientID", "StudyDescription",
             "StudyDate", "AccessionNumber", "PatientSex", "PatientAge", "BodyPartExamined")
#: Top-level elements always kept (when at most 64 KiB), whatever the budget.
_WANTED = frozenset(t for t in (tag_for_keyword(k) for k in _KEYWORDS) if t is not None)


class InvalidDataset(Exception):
    """The dataset is refused; ``status`` is the C-STORE failure status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InflateLimits:
    """How far a deflated dataset may inflate.

    ``max_bytes``: the inflated dataset, at most (the gateway sets it to its dataset
    limit unless configured otherwise).  ``max_ratio``: once past
    :data:`INFLATE_RATIO_FLOOR`, the inflated size may be at most this many times the
    deflated size; 0 turns the ratio limit off.  Real DICOM deflates 2-20:1; 261 KB
    that inflate to 256 MiB (1000:1) is a decompression bomb.
    """

    max_bytes: int = 2048 * 2**20
    max_ratio: int = 100


@dataclass(frozen=True)
class InstanceInfo:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    modality: str
    patient_id: str
    expected_study_instances: int | None
    #: What readers see on the worklist and what matches priors across sites.
    patient_name: str = ""
    patient_birth_date: str = ""
    issuer_of_patient_id: str = ""
    study_description: str = ""
    study_date: str = ""
    accession_number: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    body_part: str = ""


def valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID.match(value) is not None


def _uid(ds: Dataset, keyword: str, last_tag: int) -> str:
    raw = ds.get(keyword)
    tag = tag_for_keyword(keyword)
    if raw is None and tag is not None and last_tag < tag:
        # Nothing at or after where the UID belongs: the stream was cut at an element
        # boundary, which is a truncated dataset (0xC000) rather than a missing UID.
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND,
                             f"dataset cannot be parsed: it ends before {keyword} (truncated)")
    if raw is None or str(raw) == "":
        raise InvalidDataset(STATUS_MISSING_UID, f"{keyword} is missing")
    value = str(raw)
    if not valid_uid(value):
        raise InvalidDataset(STATUS_INVALID_UID, f"{keyword} is not a valid UID: {value[:80]!r}")
    return value


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    try:
        return str(ds.get(keyword, "") or "")[:limit]
    except Exception:
        return ""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Truncated(ValueError):
    """The stream ends where the encoding says more must follow."""


# Sources: forward-only byte streams with cheap skipping ------------------------------
class _Source(Protocol):
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""

    def skip(self, n: int, what: str) -> None:
        """Pass over ``n`` bytes without keeping them; :class:`_Truncated` if fewer remain."""


class _FileSource:
    """The dataset of a plain (not deflated) stream: skipping is a seek."""

    def __init__(self, fp: BinaryIO, end: int) -> None:
        self.fp = fp
        self.pos = fp.tell()
        self.end = end

    def read(self, n: int) -> bytes:
        n = min(n, self.end - self.pos)
        data = self.fp.read(n) if n > 0 else b""
        self.pos += len(data)
        return data

    def skip(self, n: int, what: str) -> None:
        left = self.end - self.pos
        if n > left:
            raise _Truncated(f"{what} declares {n} bytes but the stream ends after {left}")
        self.fp.seek(n, 1)
        self.pos += n


class _InflatingSource:
    """The dataset of a deflated stream, inflated one bounded step at a time."""

    def __init__(self, fp: BinaryIO, end: int, limits: InflateLimits) -> None:
        self.fp = fp
        self.left = end - fp.tell()  # deflated bytes not yet handed to zlib
        self.deflated = max(self.left, 1)
        self.limits = limits
        self.zobj = zlib.decompressobj(-zlib.MAX_WBITS)
        self.pending = b""  # inflated; pending[offset:] is not consumed yet
        self.offset = 0
        self.produced = 0

    def _step(self) -> bytes:
        """At most one step more of inflated bytes; b"" at the end of the stream."""
        z = self.zobj
        while not z.eof:
            data = z.unconsumed_tail
            if not data and self.left > 0:
                data = self.fp.read(min(_STEP, self.left))
                self.left = self.left - len(data) if data else 0
            out = z.decompress(data, _STEP)
            if out:
                self.produced += len(out)
                self._check()
                return out
            if z.eof:
                break
            if not data:
                raise _Truncated("the deflated dataset is cut short")
        return b""

    def _check(self) -> None:
        lim, n = self.limits, self.produced
        if n > lim.max_bytes:
            raise InvalidDataset(STATUS_OUT_OF_RESOURCES,
                                 f"deflated dataset inflates beyond {lim.max_bytes // 2**20} "
                                 "MiB (gateway limit)")
        if lim.max_ratio and n > INFLATE_RATIO_FLOOR and n > lim.max_ratio * self.deflated:
            raise InvalidDataset(STATUS_OUT_OF_RESOURCES,
                                 f"deflated dataset inflates over {lim.max_ratio}:1 "
                                 "(decompression bomb)")

    def read(self, n: int) -> bytes:
        while len(self.pending) - self.offset < n:
            more = self._step()
            if not more:
                break
            self.pending = self.pending[self.offset:] + more
            self.offset = 0
        data = self.pending[self.offset:self.offset + n]
        self.offset += len(data)
        return data

    def skip(self, n: int, what: str) -> None:
        wanted = n
        while n > 0:
            if self.offset >= len(self.pending):
                self.pending, self.offset = self._step(), 0
                if not self.pending:
                    raise _Truncated(f"{what} declares {wanted} bytes but the inflated "
                                     f"stream ends after {wanted - n}")
            take = min(n, len(self.pending) - self.offset)
            self.offset += take
            n -= take


# The walk -----------------------------------------------------------------------------
class _Walker:
    """Checks the structure of one dataset and keeps its small top-level elements."""

    def __init__(self, src: _Source, *, implicit: bool, little: bool, tsyntax: str) -> None:
        self.src = src
        self.implicit = implicit
        self.endian = "<" if little else ">"
        self.tsyntax = tsyntax
        self.kept: list[bytes] = []
        self.budget = _KEEP_BUDGET
        self.last_tag = -1
        self._first = True

    def _header(self, implicit: bool) -> tuple[int, bytes | None, int, bytes] | None:
        raw = self.src.read(8)
        if not raw:
            return None
        if len(raw) < 8:
            raise _Truncated("the stream ends inside an element header")
        group, elem = struct.unpack(self.endian + "HH", raw[:4])
        tag = group << 16 | elem
        if self._first:
            self._first = False
            self._check_encoding(raw, group)
        if implicit or group == 0xFFFE:  # items and delimiters have no VR
            return tag, None, struct.unpack(self.endian + "L", raw[4:])[0], raw
        vr = raw[4:6]
        if vr not in _VRS:
            raise ValueError(f"element {_tag(tag)} has no valid VR ({vr!r})")
        if vr in _LONG_VRS:
            ext = self.src.read(4)
            if len(ext) < 4:
                raise _Truncated("the stream ends inside an element header")
            return tag, vr, struct.unpack(self.endian + "L", ext)[0], raw + ext
        return tag, vr, struct.unpack(self.endian + "H", raw[6:])[0], raw

    def _check_encoding(self, raw: bytes, group: int) -> None:
        """Refuse a dataset whose VR encoding contradicts its transfer syntax.

        The transfer syntax is the negotiated one (the C-STORE's presentation
        context).  pydicom reads a contradicting stream with a warning, switching
        encodings; Orthanc refuses it.  Accepting it would acknowledge an instance that
        can never reach the archive.  Both directions are checked: implicit VR bytes
        under an explicit syntax, and explicit VR bytes under an implicit one.
        """
        vr = raw[4:6]
        if group == 0xFFFE:
            return
        if self.implicit:
            # A first element longer than 16 kB whose length happens to spell a VR is
            # the only way real implicit VR data looks like this (pydicom makes the
            # same call).  Short: the C-STORE's Error Comment keeps 64 characters.
            if vr in _VRS:
                raise ValueError(f"explicit VR bytes, implicit VR syntax ({self.tsyntax})")
        elif not all(0x40 < b < 0x5B for b in vr):
            raise ValueError(f"implicit VR bytes, explicit VR syntax ({self.tsyntax})")

    def dataset(self) -> None:
        """Walk the top-level dataset to the end of the stream."""
        self._elements(self.implicit, depth=0, top=True)

    def _elements(self, implicit: bool, depth: int, top: bool) -> None:
        while True:
            header = self._header(implicit)
            if header is None:
                if top:
                    return
                raise _Truncated("the stream ends inside a sequence item")
            tag, vr, length, raw = header
            if tag == _ITEM_END and not top:
                return
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise ValueError(f"{_tag(tag)} out of place, outside any sequence")
            what = f"element {_tag(tag)}"
            if top:
                self.last_tag = max(self.last_tag, tag)
            if length == _UNDEFINED:
                # UN of undefined length holds implicit VR items (PS3.5 6.2.2).
                self._items(implicit or vr == b"UN", depth + 1, what)
            elif top and length <= _KEEP_VALUE_MAX and (tag in _WANTED or length <= self.budget):
                value = self.src.read(length)
                if len(value) < length:
                    raise _Truncated(f"{what} declares {length} bytes but the stream ends "
                                     f"after {len(value)}")
                self.kept.append(raw + value)
                if tag not in _WANTED:
                    self.budget -= length
            else:
                self.src.skip(length, what)

    def _items(self, implicit: bool, depth: int, what: str) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError(f"sequences nested more than {_MAX_DEPTH} deep")
        while True:
            raw = self.src.read(8)
            if len(raw) < 8:
                raise _Truncated(f"{what} ends without its sequence delimiter")
            group, elem, length = struct.unpack(self.endian + "HHL", raw)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise ValueError(f"{what}: {_tag(tag)} where an item or delimiter belongs")
            if length == _UNDEFINED:
                self._elements(implicit, depth, top=False)
            else:
                self.src.skip(length, f"an item of {what}")


def _read_meta(fp: BinaryIO) -> Dataset:
    """The preamble and file meta group; ``fp`` is left where the dataset starts."""
    head = fp.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        raise InvalidDicomError("not a DICOM Part 10 stream: no 'DICM' after the preamble")
    kept: list[bytes] = []
    total = 0
    while True:
        start = fp.tell()
        raw = fp.read(8)
        if len(raw) < 8 or raw[:2] != b"\x02\x00":
            fp.seek(start)
            break
        vr = raw[4:6]
        if vr not in _VRS:
            raise ValueError(f"file meta element ({raw[1]:02X}{raw[0]:02X},"
                             f"{raw[3]:02X}{raw[2]:02X}) has no valid VR ({vr!r})")
        if vr in _LONG_VRS:
            ext = fp.read(4)
            if len(ext) < 4:
                raise _Truncated("the stream ends inside the file meta information")
            raw += ext
            length = struct.unpack("<L", ext)[0]
        else:
            length = struct.unpack("<H", raw[6:])[0]
        total += len(raw) + length
        if total > _META_MAX:
            raise ValueError("the file meta information is larger than 1 MiB")
        value = fp.read(length)
        if len(value) < length:
            raise _Truncated("the stream ends inside the file meta information")
        kept.append(raw + value)
    return _decode(b"".join(kept), implicit=False, little=True)


def _decode(data: bytes, *, implicit: bool, little: bool) -> Dataset:
    """Elements already in memory, decoded by pydicom, every one of them touched so that
    a garbled value fails here and not in Orthanc.  pydicom signals some malformed
    data with OSError: here that is the data's fault (a ValueError), never I/O."""
    try:
        ds = read_dataset(BytesIO(data), implicit, little)
        for elem in ds:
            _ = elem.VR
    except (InvalidDataset, ValueError):
        raise
    except Exception as e:
        raise ValueError(f"{type(e).__name__}: {e}") from e
    return ds


@contextmanager
def _opened(source: bytes | Path | str) -> Iterator[tuple[BinaryIO, int]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield BytesIO(source), len(source)
        return
    with open(source, "rb") as fp:
        end = fp.seek(0, 2)
        fp.seek(0)
        yield fp, end


def dataset_offset(data: bytes) -> int:
    """Where the encoded dataset starts, after the preamble and the file meta group."""
    fp = BytesIO(data)
    _read_meta(fp)
    return fp.tell()


def _walk(fp: BinaryIO, end: int, limits: InflateLimits) -> tuple[str, Dataset, int]:
    """(transfer syntax, the kept top-level elements decoded, the last top-level tag)."""
    meta = _read_meta(fp)
    tsyntax = str(meta.get("TransferSyntaxUID", "") or "").strip("\0 ")
    if not tsyntax:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND, "transfer syntax is missing")
    if not valid_uid(tsyntax):
        raise ValueError(f"transfer syntax {tsyntax[:70]!r} is not a UID")
    # Every syntax but these two is explicit VR little endian (PS3.5 10.1).
    implicit = tsyntax == ImplicitVRLittleEndian
    little = tsyntax != ExplicitVRBigEndian
    src: _Source
    if tsyntax in DEFLATED_SYNTAXES:
        src = _InflatingSource(fp, end, limits)
    else:
        src = _FileSource(fp, end)
    walker = _Walker(src, implicit=implicit, little=little, tsyntax=tsyntax)
    walker.dataset()
    ds = _decode(b"".join(walker.kept), implicit=implicit, little=little)
    return tsyntax, ds, walker.last_tag


def inspect_encoded(source: bytes | Path | str,
                    limits: InflateLimits | None = None) -> InstanceInfo:
    """Check a Part 10 stream (file meta + dataset) and read its identifiers.

    ``source`` is the stream itself or the path of a file holding it; memory use does
    not depend on its size.  Raises :class:`InvalidDataset` with the status to answer;
    an I/O error reading the file is not the sender's fault and propagates as OSError.
    """
    try:
        with _opened(source) as (fp, end):
            tsyntax, ds, last_tag = _walk(fp, end, limits or InflateLimits())
    except (InvalidDataset, OSError):
        raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError,
            struct.error, zlib.error) as e:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed: {e}") from e
    except Exception as e:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND,
                             f"dataset cannot be parsed: {type(e).__name__}: {e}") from e
    expected: int | None
    try:
        n = ds.get("NumberOfStudyRelatedInstances")
        expected = int(n) if n not in (None, "") and int(n) > 0 else None
    except (TypeError, ValueError):
        expected = None
    return InstanceInfo(
        sop_class_uid=_uid(ds, "SOPClassUID", last_tag),
        sop_instance_uid=_uid(ds, "SOPInstanceUID", last_tag),
        study_uid=_uid(ds, "StudyInstanceUID", last_tag),
        series_uid=_uid(ds, "SeriesInstanceUID", last_tag),
        transfer_syntax=tsyntax,
        modality=_text(ds, "Modality", 16),
        patient_id=_text(ds, "PatientID", 64),
        expected_study_instances=expected,
        patient_name=_text(ds, "PatientName", 200),
        patient_birth_date=_text(ds, "PatientBirthDate", 8),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        study_description=_text(ds, "StudyDescription", 200),
        study_date=_text(ds, "StudyDate", 8),
        accession_number=_text(ds, "AccessionNumber", 32),
        patient_sex=_text(ds, "PatientSex", 16),
        patient_age=_text(ds, "PatientAge", 4),
        body_part=_text(ds, "BodyPartExamined", 64),
    )
