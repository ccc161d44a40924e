"""Delivery of signed results back to the sites."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
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


class Delivery(Base):
    """Sending one signed version's outputs back to the originating site.

    Unique per (version, site, channel): a retry or a second worker finds the row
    and never sends a result twice once it is ``sent``.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("report_version_id", "site_id", "channel", name="uq_deliveries_target"),
        Index("ix_deliveries_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_version_id: Mapped[int] = mapped_column(ForeignKey("report_versions.id"))
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: "dicom" (C-STORE of SR + PDF) or "hl7" (ORU^R01 over MLLP).
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    commitment_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    committed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
