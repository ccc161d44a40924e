"""Received studies and the receipt of each instance (the gateway's state)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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


class Study(Base):
    """A study as received from one site; completeness is decided here, not by Orthanc."""

    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("site_id", "study_uid", name="uq_study_site_uid"),
        # The worklist's order: STAT, AI-critical, then the time left.
        Index("ix_studies_worklist", "state", "priority", "ai_critical", "due_at"),
        Index("ix_studies_patient", "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(32), default="")
    #: DICOM PatientSex (M, F, O) and PatientAge (e.g. "045Y") as sent, and the body
    #: part examined: what the worklist shows and what picks the report template.
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    patient_age: Mapped[str] = mapped_column(String(4), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    #: When the signed report is due: completion + the site's turnaround target.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    modalities: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="received")
    #: How many times the study has been completed; job keys include it.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    received_instances: Mapped[int] = mapped_column(Integer, default=0)
    stored_instances: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: An AI pre-read found a critical label above its threshold (unverified).
    ai_critical: Mapped[bool] = mapped_column(Boolean, default=False)
    orthanc_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The reader who holds the study (claim/lock), so two never read the same one.
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: First time a reader opened it (turnaround: complete → opened).
    first_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Instance(Base):
    """The receipt of one C-STORE: written before success is answered."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_state", "state"),
        Index("ix_instances_study", "study_id"),
        Index("ix_instances_sop", "sop_instance_uid"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # also the spool file name
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="spooled")
    orthanc_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
