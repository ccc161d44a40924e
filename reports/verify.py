"""Check a delivered report file on its own: an SR, a PDF, or a DICOM-wrapped PDF.

The file carries its seal and the signer's certificate; the trust anchor is the
center's CA certificate (and, when the center's database is at hand, its list
of revoked reader certificates).  Any change to the sealed bytes or the seal
fails with a message that names the check that failed.

A DICOM-wrapped PDF is filed by the receiving PACS under the wrapper's patient,
study and document attributes, not under what the PDF shows: those attributes are
checked against the values the PDF's seal records, and a changed one fails naming
it (``PatientID differs from the sealed value``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

import pydicom
from pydicom.errors import InvalidDicomError

from core.crypto import SignatureInvalid
from core.errors import InvalidInput, RDCError
from reports import envelope, pdf, sr

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass(frozen=True)
class FileVerification:
    kind: str  # "sr", "pdf", "dicom-pdf"
    result: envelope.Verified
    #: For a PDF, the sealed identifying attributes of its DICOM wrapper (keyword →
    #: value), checked against the wrapper for a "dicom-pdf"; None when not sealed.
    subject: Mapping[str, str] | None = None


def verify_bytes(data: bytes, ca_cert_pem: bytes,
                 revoked: Mapping[str, datetime] | None = None) -> FileVerification:
    """Verify one file's bytes; raise :class:`SignatureInvalid` or ``InvalidInput``."""
    try:
        return _verify_bytes(data, ca_cert_pem, revoked)
    except RDCError:
        raise
    except Exception as e:
        # pydicom decodes elements lazily and fails on a damaged one with whatever its
        # decoder raises (BytesLengthException, LookupError, struct.error ...): the file
        # does not verify, and `rdc reports verify` says so instead of a traceback.
        raise InvalidInput(f"the file cannot be read: {type(e).__name__}: {e}") from e


def _verify_bytes(data: bytes, ca_cert_pem: bytes,
                  revoked: Mapping[str, datetime] | None) -> FileVerification:
    if data.startswith(b"%PDF-"):
        signed, env = pdf.sealed_content_of_pdf(data)
        result = envelope.verify(signed, env, ca_cert_pem, revoked=revoked)
        return FileVerification("pdf", result, pdf.sealed_subject_of_pdf(signed))
    try:
        ds = pydicom.dcmread(BytesIO(data), force=False)
    except (InvalidDicomError, EOFError, ValueError, OSError) as e:
        raise InvalidInput(f"not a PDF and not a readable DICOM file: {e}") from e
    if str(ds.get("SOPClassUID", "")) == ENCAPSULATED_PDF:
        document = pdf.pdf_from_dataset(ds)
        signed, env = pdf.sealed_content_of_pdf(document)
        result = envelope.verify(signed, env, ca_cert_pem, revoked=revoked)
        # After the signature: the record checked against is then the signer's.
        subject = pdf.check_wrapper(ds, signed)
        return FileVerification("dicom-pdf", result, subject)
    signed, env = sr.sealed_content_of_sr(data)
    return FileVerification("sr", envelope.verify(signed, env, ca_cert_pem, revoked=revoked))


__all__ = ["FileVerification", "SignatureInvalid", "verify_bytes"]
