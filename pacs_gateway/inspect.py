"""Read what the gateway needs from an encoded dataset, without decoding pixels.

Only identifiers are taken from the dataset; they go into database rows,
never into file paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

# PS3.5 9.1: digits and dots, at most 64 characters.  Leading zeros in a
# component are tolerated because real modalities send them.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_INVALID_UID = 0xC001
STATUS_MISSING_UID = 0xC002
STATUS_SOP_CLASS_MISMATCH = 0xA900


class InvalidDataset(Exception):
    """The dataset is refused; ``status`` is the C-STORE failure status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def _uid(ds: Dataset, keyword: str) -> str:
    raw = ds.get(keyword)
    if raw is None and _ends_before(ds, keyword):
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


def _ends_before(ds: Dataset, keyword: str) -> bool:
    tag = tag_for_keyword(keyword)
    return tag is not None and all(int(t) < tag for t in ds.keys())


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    try:
        return str(ds.get(keyword, "") or "")[:limit]
    except Exception:
        return ""


_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITER = {True: b"\xfe\xff\xdd\xe0", False: b"\xff\xfe\xe0\xdd"}


def dataset_offset(data: bytes) -> int:
    """Where the encoded dataset starts, after the preamble and the file meta group."""
    fp = BytesIO(data)
    read_preamble(fp, force=False)
    _read_file_meta_info(fp)
    return fp.tell()


#: The VRs of PS3.5 6.2: two bytes after a tag that read as one of these mean explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split())


def _check_encoding(ds: Dataset, data: bytes) -> None:
    """Refuse a dataset whose VR encoding contradicts its transfer syntax.

    The transfer syntax is the negotiated one (the C-STORE's presentation context).
    pydicom reads a contradicting stream with a warning, switching encodings; Orthanc
    refuses it.  Accepting it would acknowledge an instance that can never reach the
    archive.  Both directions are checked: implicit VR bytes under an explicit syntax,
    and explicit VR bytes under Implicit VR Little Endian.
    """
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or tsyntax.is_deflated:
        return
    start = dataset_offset(data)
    vr = data[start + 4:start + 6]
    if len(vr) < 2:
        return
    if tsyntax.is_implicit_VR:
        # A first element longer than 16 kB whose length happens to spell a VR is the
        # only way real implicit VR data looks like this (pydicom makes the same call).
        if vr in _VRS:
            # Short: the C-STORE's Error Comment keeps 64 characters.
            raise ValueError(f"explicit VR bytes, implicit VR syntax ({tsyntax})")
    elif not all(0x40 < b < 0x5B for b in vr):
        raise ValueError(f"implicit VR bytes, explicit VR syntax ({tsyntax})")


def _check_lengths(ds: Dataset, data: bytes) -> None:
    """Refuse a stream cut short: pydicom would silently hand back short values.

    Checks, before any value is decoded, that every top-level element's declared
    length fits in the stream and that undefined-length elements are closed by
    their sequence delimiter.  Deflated streams are checked by zlib instead
    (offsets there refer to inflated data).
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return
    delimiter = _SEQ_DELIMITER[ds.is_little_endian is not False]
    end_of_elements = dataset_offset(data) if len(ds) == 0 else 0
    tags = list(ds.keys())
    # pydicom decodes Specific Character Set while reading; the others stay raw.
    last = ds.get_item(tags[-1]) if tags else None
    last_raw = last is None or (isinstance(last, RawDataElement) and last.value_tell is not None)
    for tag in tags:
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.value_tell is None:
            continue
        if raw.length == _UNDEFINED:
            end = raw.value_tell + len(raw.value or b"")
            if data[end:end + 8] != delimiter + b"\0\0\0\0":
                raise ValueError(f"element {tag} ends without its sequence delimiter")
            end_of_elements = max(end_of_elements, end + 8)
        elif raw.value_tell + raw.length > len(data):
            raise ValueError(f"element {tag} declares {raw.length} bytes but the stream "
                             f"ends after {len(data) - raw.value_tell}")
        else:
            end_of_elements = max(end_of_elements, raw.value_tell + raw.length)
    if last_raw and end_of_elements and end_of_elements < len(data):
        # pydicom stops quietly at a partial element header; what follows the last
        # whole element is the start of one that was cut off.
        raise ValueError(f"the stream ends inside an element header after byte "
                         f"{end_of_elements}")


def inspect_encoded(data: bytes) -> InstanceInfo:
    """Parse a Part 10 byte stream (file meta + dataset) and validate its identifiers."""
    try:
        ds = dcmread(BytesIO(data), force=False)
        _check_lengths(ds, data)
        _check_encoding(ds, data)
        # Touch every top-level element so that a garbled value fails here,
        # not later in Orthanc.
        for elem in ds:
            _ = elem.VR
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as e:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed: {e}") from e
    except Exception as e:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND,
                             f"dataset cannot be parsed: {type(e).__name__}: {e}") from e
    try:
        tsyntax = str(ds.file_meta.TransferSyntaxUID)
    except AttributeError as e:
        raise InvalidDataset(STATUS_CANNOT_UNDERSTAND, "transfer syntax is missing") from e
    expected: int | None
    try:
        n = ds.get("NumberOfStudyRelatedInstances")
        expected = int(n) if n not in (None, "") and int(n) > 0 else None
    except (TypeError, ValueError):
        expected = None
    return InstanceInfo(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
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
