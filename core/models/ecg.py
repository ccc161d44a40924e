"""ECG analyses."""

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
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class ECGAnalysis(Base):
    """The automatic analysis of one ECG waveform object, and a cardiologist's edits.

    ``result`` is what the analysis produced and never changes; ``measurements`` and
    ``statements`` start as its copy and are what the cardiologist edits and signs.
    Unique per SOP instance: a re-run finds the row instead of writing a second one.
    """

    __tablename__ = "ecg_analyses"
    __table_args__ = (Index("ix_ecg_analyses_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    analysis_version: Mapped[str] = mapped_column(String(32))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    statements: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    quality: Mapped[str] = mapped_column(String(16), default="")
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    edited_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
