"""The center's processes by node and role, as they last reported themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class NodeHeartbeat(Base):
    """One role of one node (``rdc gateway`` on ``gw1``...).  Written every few seconds
    by the role itself (core/heartbeat.py), so that ``rdc status`` on any node shows
    every node, and which of them fell silent."""

    __tablename__ = "node_heartbeats"

    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Set when the role stopped cleanly; None while it runs (or after it crashed).
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: What the role wants an operator to see: its ports, queues, metrics port.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
