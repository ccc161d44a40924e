"""The AI model registry, model runs and their findings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
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
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


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
    #: A tile model's heat map over a whole slide, for the viewer's overlay: {rows, cols,
    #: cell_px (level-0 pixels per cell), labels, values (rows x cols scores)}; the same
    #: map is stored as DICOM in Orthanc.  None for models that do not make one.
    heatmap: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


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
