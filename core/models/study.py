"""Received studies and the receipt of each instance (the gateway's state)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    false,
    func,
    literal_column,
    not_,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import Grouping

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
    #: The study's report is signed (final or amended): it has left the open worklist.
    #: A mirror of ``reports.state`` kept by :mod:`core.models.report` on every flush
    #: that changes a study report's state, so that the open worklist is a partial index
    #: of the studies table instead of an anti-join with every report of the year.
    report_signed: Mapped[bool] = mapped_column(Boolean, default=False,
                                                server_default=false())


# The reading worklist's order (viewer.worklist) and its indexes -----------------------------
#: Priority from which a study is STAT (C-STORE priority HIGH, pacs_gateway.receipts).
WORKLIST_STAT_PRIORITY = 9
#: Study states on the reading worklist.
WORKLIST_STATES = ("complete", "reopened")


def worklist_ready() -> ColumnElement[bool]:
    """``state IN ('complete', 'reopened')`` with the states written into the SQL (not
    bound), so that even a generic (prepared) plan matches the partial indexes below."""
    return Study.state.in_(bindparam("worklist_states", list(WORKLIST_STATES),
                                     expanding=True, literal_execute=True))


def worklist_order() -> tuple[ColumnElement[bool], ColumnElement[bool],
                              ColumnElement[datetime], ColumnElement[int]]:
    """The worklist's sort key, ascending: not STAT, not AI-critical (false sorts first),
    the due time (completion, else first receipt, when a study has none), the id.

    These are the expressions the ``ix_studies_worklist_*`` indexes are built on, with
    constants inline: PostgreSQL and SQLite use an expression index only for a query
    that spells the same expression.  Every part is NOT NULL, so the key is a total
    order and a row comparison with the last row of a page (keyset paging) is exact.
    """
    not_stat: ColumnElement[bool] = Grouping(
        Study.priority < literal_column(str(WORKLIST_STAT_PRIORITY), Integer))
    not_critical: ColumnElement[bool] = Grouping(not_(Study.ai_critical))
    due: ColumnElement[datetime] = func.coalesce(Study.due_at, Study.completed_at,
                                                 Study.first_received_at)
    return not_stat, not_critical, due, Study.id.expression


def _worklist_index(name: str, *, by_site: bool, open_only: bool) -> Index:
    where = worklist_ready() if not open_only else worklist_ready() & not_(Study.report_signed)
    columns = (Study.site_id.expression, *worklist_order()) if by_site else worklist_order()
    return Index(name, *columns, postgresql_where=where, sqlite_where=where)


# The whole year's list (status=all) and the open list, for every site and for one site:
# the first page is the index's first entries and a keyset page starts where the cursor
# points, whatever the depth; the open ones hold only unsigned studies (a few thousand).
_worklist_index("ix_studies_worklist_all", by_site=False, open_only=False)
_worklist_index("ix_studies_worklist_all_site", by_site=True, open_only=False)
_worklist_index("ix_studies_worklist_open", by_site=False, open_only=True)
_worklist_index("ix_studies_worklist_open_site", by_site=True, open_only=True)


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
