"""The frozen form of one report version, as it is signed and rendered.

Every output (SR, PDF, HL7, FHIR) is built from a :class:`ReportDocument`, so
that what a reader signed and what a county site receives say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

#: Seals bytes with the signer's key: given the exact bytes to protect, returns
#: the serialized signature envelope (see :mod:`reports.envelope`).
Sealer = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Section:
    """One titled part of the report (e.g. "Findings", "Impression")."""

    key: str
    title: str
    text: str


@dataclass(frozen=True)
class SignerInfo:
    """Who signed, as shown in the signature block of every output."""

    name: str
    #: Reader account id (login), stable across certificate renewals.
    reader_id: str
    #: SHA-256 of the signer certificate's DER, lowercase hex.
    fingerprint: str
    #: "sm2" (with SM3), "ed25519" or "ecdsa-p256" (with SHA-256).
    algorithm: str
    signed_at: datetime


@dataclass(frozen=True)
class Figure:
    """A picture that belongs in the rendered report (e.g. the 12-lead tracing)."""

    title: str
    png: bytes = field(repr=False)
    #: Width on the page, in millimetres (height follows the picture's aspect).
    width_mm: float = 180.0


@dataclass(frozen=True)
class ReportDocument:
    """A signed report version, ready to render into SR, PDF, HL7 ORU and FHIR."""

    report_id: int
    #: Version number within the report, 1-based.
    version: int
    #: "report" for the main report, "addendum" for an amendment.
    kind: str
    title: str
    center_name: str
    site_id: str
    site_name: str
    patient_id: str
    patient_name: str
    study_uid: str
    accession_number: str
    modality: str
    sections: tuple[Section, ...]
    signer: SignerInfo
    #: Hex digest of the canonical content that the signer signed.
    content_hash: str
    #: "sm3" or "sha256".
    hash_algorithm: str
    #: SOP Instance UID of the previous signed version's SR, for an addendum.
    predecessor_sr_uid: str | None = None
    #: UIDs of the new objects, chosen by the caller so that a retry writes the same ones.
    sr_sop_uid: str = ""
    sr_series_uid: str = ""
    pdf_sop_uid: str = ""
    pdf_series_uid: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    figures: tuple[Figure, ...] = ()
    #: DICOM StudyDate (YYYYMMDD) and StudyDescription of the reported study.
    study_date: str = ""
    study_description: str = ""
