"""Format readers; :func:`read_ecg` picks one from the bytes themselves.

Dispatch is by content, with the file name only as a tie-breaker, because county sites
send files with arbitrary or missing extensions.
"""

from __future__ import annotations

import io
import lzma
import zipfile
import zlib

from ecg.errors import UnreadableWaveform
from ecg.readers.aecg import read_aecg
from ecg.readers.dicom import read_dicom_ecg
from ecg.readers.wfdb import read_wfdb_record
from ecg.signal import Ecg12

__all__ = ["read_aecg", "read_dicom_ecg", "read_ecg", "read_wfdb_record"]

#: A zip of a WFDB record is read whole; cap it so a zip bomb cannot fill the disk.
MAX_WFDB_ZIP_BYTES = 64 * 1024 * 1024


def _read_wfdb_zip(data: bytes) -> Ecg12:
    try:
        header, others = _wfdb_zip_entries(data)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, IndexError,
            NotImplementedError, RuntimeError, ValueError, OverflowError) as exc:
        # zipfile trips over a damaged archive in many ways (a bad CRC, a corrupt deflate,
        # bzip2 or LZMA stream, an empty entry name, an unsupported method, an encrypted
        # entry): all are the file's fault, and reach the sender as an unreadable file.
        raise UnreadableWaveform(f"not a readable zip: {type(exc).__name__}: {exc}") from exc
    return read_wfdb_record(header, others)


def _wfdb_zip_entries(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """(header, other entries by name) of a zipped WFDB record."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > MAX_WFDB_ZIP_BYTES:
            raise UnreadableWaveform(f"zip expands beyond {MAX_WFDB_ZIP_BYTES} bytes")
        headers = [i for i in infos if i.filename.lower().endswith(".hea")]
        if len(headers) != 1:
            raise UnreadableWaveform(
                f"a WFDB zip must hold exactly one .hea header, found {len(headers)}"
            )
        others = {i.filename: archive.read(i) for i in infos if i is not headers[0]}
        return archive.read(headers[0]), others


def read_ecg(data: bytes, filename_hint: str | None = None) -> Ecg12:
    """Read an ECG from DICOM, HL7 aECG XML or a zipped WFDB record (.hea + .dat).

    Raises an :class:`ecg.errors.EcgError` subclass naming what is wrong; nothing is
    returned for input that is only partly valid.
    """
    if not data:
        raise UnreadableWaveform("empty input")
    hint = (filename_hint or "").lower()
    if data[128:132] == b"DICM" or hint.endswith((".dcm", ".dicom")):
        return read_dicom_ecg(data)
    if data[:4] == b"PK\x03\x04":
        return _read_wfdb_zip(data)
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<") or hint.endswith(".xml"):
        return read_aecg(data)
    if hint.endswith(".hea"):
        raise UnreadableWaveform(
            "a WFDB header alone has no samples; send the .hea and its .dat files as one zip"
        )
    raise UnreadableWaveform(
        f"unrecognised ECG format (first bytes {data[:8]!r}); expected DICOM, HL7 aECG or a "
        "zipped WFDB record"
    )
