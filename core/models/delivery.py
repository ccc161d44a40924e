"""Delivery of signed results back to the sites."""

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


class OutboundMessage(Base):
    """An HL7 message the center owes a site that is not a report version's output:
    a lab result ORU^R01, a critical-value ORU with its abnormal flags.

    The domain builds the message; :mod:`delivery` sends it through the same channel as
    the reports (retries, dead letters, resend) and records the site's ACK here.
    """

    __tablename__ = "outbound_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    #: What it is, for lists and audit: "lab-result", "lab-critical", ...
    kind: Mapped[str] = mapped_column(String(32))
    #: What it carries, e.g. "lab_order:12" (the domain's own reference).
    subject: Mapped[str] = mapped_column(String(64), default="")
    #: MSH-10: unique, so an ACK names exactly one message.
    control_id: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[str] = mapped_column(Text)
    #: The site's answer (MSA-1) and when it came; empty until acknowledged.
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    ack_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Delivery(Base):
    """Sending one signed version's outputs (or one outbound message) back to a site.

    Unique per (version, site, channel), or per message: a retry or a second worker
    finds the row and never sends a result twice once it is ``sent``.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("report_version_id", "site_id", "channel", name="uq_deliveries_target"),
        UniqueConstraint("message_id", name="uq_deliveries_message"),
        Index("ix_deliveries_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: The signed report version delivered, or None for an outbound message.
    report_version_id: Mapped[int | None] = mapped_column(ForeignKey("report_versions.id"),
                                                          nullable=True)
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("outbound_messages.id", name="fk_deliveries_message_id"), nullable=True)
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
