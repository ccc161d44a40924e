"""SQLAlchemy 2 models of the center's state.

The schema is owned by Alembic migrations in ``core/migrations``; these
classes must stay in step with them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Site(Base):
    """A county hospital that sends studies and may receive results back."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    allowed_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    accepts_results: Mapped[bool] = mapped_column(Boolean, default=False)
    inactivity_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Study(Base):
    """A study as received from one site; completeness is decided here, not by Orthanc."""

    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("site_id", "study_uid", name="uq_study_site_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
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
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Job(Base):
    """A unit of work passed between stages by ID through the queue."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: Idempotency key: what the job processes; a second job with it is never made.
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True)
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    rule: Mapped[str] = mapped_column(String(128), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRecord(Base):
    """One append-only, hash-chained audit entry."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Single row serialising appends to the chain across processes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    last_hash: Mapped[str] = mapped_column(String(64))


class AIModel(Base):
    """A registered model version.  The folder holds ``model.yaml`` and the weights;
    the manifest is copied here so the registry can be listed without the files."""

    __tablename__ = "ai_models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_ai_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    demonstration: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    registered_by: Mapped[str] = mapped_column(String(128), default="")
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)


class AIResult(Base):
    """One model run on one series.  Unique per (series, model version): a rerun
    after a crash finds it and writes nothing twice."""

    __tablename__ = "ai_results"
    __table_args__ = (UniqueConstraint("series_uid", "model_name", "model_version",
                                       name="uq_ai_results_series_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_uid: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    duration_ms: Mapped[float] = mapped_column(Float)
    sr_sop_uid: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AIFinding(Base):
    """A label's outcome in one run; always unverified until a reader accepts it."""

    __tablename__ = "ai_findings"
    __table_args__ = (Index("ix_ai_findings_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("ai_results.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    critical: Mapped[bool] = mapped_column(Boolean)
    volume_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    review: Mapped[str] = mapped_column(String(16), default="unreviewed")
