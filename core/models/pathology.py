"""Pathology cases, their slides, the frozen-section timeline and second opinions.

A case is an accession at one site with its parts, blocks and slides, possibly over
several DICOM studies (a county lab may send a second block a day later).  Slides are
DICOM WSI series in Orthanc; these rows hold what the center decided about them (the
quality gate's grade and reasons) and who holds the case.  The state machine is in
``pathology/states.py``.
"""

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


class PathologyCase(Base):
    """One accession at one site: what the pathologists' worklist lists and claims."""

    __tablename__ = "pathology_cases"
    __table_args__ = (
        UniqueConstraint("site_id", "accession_number", name="uq_pathology_case_accession"),
        # The worklist's order: frozen/STAT first, then the due time, then age.
        Index("ix_pathology_cases_worklist", "state", "urgency", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    accession_number: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    #: Organ / body part of the specimen (what the worklist filters on).
    organ: Mapped[str] = mapped_column(String(64), default="")
    #: "frozen" (intra-operative), "stat" or "routine"; frozen and STAT sort first.
    urgency: Mapped[str] = mapped_column(String(16), default="routine")
    #: pathology.states.CaseState
    state: Mapped[str] = mapped_column(String(24), default="received")
    #: The study the report is filed under (the first one received for the case).
    primary_study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"),
                                                         nullable=True)
    #: The pathologist who holds the case (claimed with a conditional UPDATE).
    assigned_to: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Frozen sections: who was paged last, when, and how many escalations so far.
    paged_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    paged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PathologySlide(Base):
    """One whole-slide image (a DICOM WSI series) of a case, and its quality grade."""

    __tablename__ = "pathology_slides"
    __table_args__ = (Index("ix_pathology_slides_case", "case_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("pathology_cases.id"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    orthanc_series_id: Mapped[str] = mapped_column(String(64), default="")
    #: "cstore" (through the gateway) or "import" (rdc pathology import).
    source: Mapped[str] = mapped_column(String(16), default="cstore")
    part: Mapped[str] = mapped_column(String(16), default="")
    block: Mapped[str] = mapped_column(String(16), default="")
    stain: Mapped[str] = mapped_column(String(64), default="")
    specimen_id: Mapped[str] = mapped_column(String(64), default="")
    label: Mapped[str] = mapped_column(String(200), default="")
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    levels: Mapped[int] = mapped_column(Integer, default=0)
    #: Pixel spacing of the full-resolution level, in micrometres (0 when unknown).
    mpp: Mapped[float] = mapped_column(Float, default=0.0)
    #: "pending", "pass" or "fail" (flagged for rescanning; still shown, marked).
    qc_grade: Mapped[str] = mapped_column(String(16), default="pending")
    qc_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    qc_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    qc_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PathologyEvent(Base):
    """A timestamped step of a case (received, qc, first_tile, call, signed, paged,
    escalated, …): the frozen-section clock and the case's timeline."""

    __tablename__ = "pathology_events"
    __table_args__ = (Index("ix_pathology_events_case", "case_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("pathology_cases.id"))
    step: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PathologyConsult(Base):
    """A second opinion: a question about a case (or chosen slides) to a consultant."""

    __tablename__ = "pathology_consults"
    __table_args__ = (Index("ix_pathology_consults_case", "case_id"),
                      Index("ix_pathology_consults_consultant", "consultant_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("pathology_cases.id"))
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    consultant_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    question: Mapped[str] = mapped_column(Text)
    #: Slide ids the question is about (empty: the whole case).
    slide_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    #: The consultant does not see the first pathologist's diagnosis.
    blinded: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The requesting pathologist's diagnosis at the time of asking (hidden when blinded).
    first_diagnosis: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="requested")
    answer: Mapped[str] = mapped_column(Text, default="")
    #: "concordant", "minor" or "major" (discordance), recorded with the answer.
    concordance: Mapped[str | None] = mapped_column(String(16), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
