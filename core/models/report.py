"""Readers' signing keys, reports and their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class ReaderKey(Base):
    """A reader's signing key pair and X.509 certificate from the center's CA.

    The private key is stored only encrypted under the reader's passphrase.  A
    revoked key never signs again, but signatures made before ``revoked_at``
    still verify as made at their time.
    """

    __tablename__ = "reader_keys"
    __table_args__ = (Index("ix_reader_keys_reader", "reader_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reader_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(16))
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    encrypted_private_key: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(200), default="")


class Report(Base):
    """One report per reported object (a study; later an ECG, a slide case, a lab
    order), with its versions in :class:`ReportVersion`."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("subject_type", "subject_id", name="uq_reports_subject"),
                      Index("ix_reports_study", "study_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16), default="study")
    subject_id: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    template_id: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="draft")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReportVersion(Base):
    """One version of a report.  Once ``final`` it is frozen: its canonical content,
    hash and signature never change; an addendum is a new version that points at it."""

    __tablename__ = "report_versions"
    __table_args__ = (UniqueConstraint("report_id", "number", name="uq_report_versions_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="report")
    state: Mapped[str] = mapped_column(String(16), default="draft")
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    author: Mapped[str] = mapped_column(String(128), default="")
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("report_versions.id"),
                                                       nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    signed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    signer_key_id: Mapped[int | None] = mapped_column(ForeignKey("reader_keys.id"),
                                                      nullable=True)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Exactly the bytes that were signed (canonical JSON, UTF-8).
    canonical: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash_algorithm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    envelope: Mapped[str | None] = mapped_column(Text, nullable=True)
    sr_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sr_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pdf_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pdf_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hl7_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    fhir_report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
