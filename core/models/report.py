"""Readers' signing keys, reports and their versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    exists,
    inspect,
    update,
)
from sqlalchemy.orm import Mapped, Session, UOWTransaction, mapped_column
from sqlalchemy.orm.attributes import set_committed_value

from core.db import UTCDateTime
from core.models.base import Base, utcnow
from core.models.study import Study


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


# studies.report_signed -----------------------------------------------------------------------
#: Report states that take a study off the open worklist (core.states.ReportState).
SIGNED_STATES = ("final", "amended")
_MIRRORED = ("state", "study_id", "subject_type")


@event.listens_for(Session, "after_flush")
def _mirror_report_signed(session: Session, _flush: UOWTransaction) -> None:
    """Set ``studies.report_signed`` of the studies whose report this flush created,
    changed (state, study or subject) or deleted: whether the study has a ``study``
    report in a signed state now, in the same transaction.

    Every report write of the center goes through the ORM (signing, drafts, addenda,
    the tests), so the flag cannot lag behind; a write that bypasses it (SQL by hand,
    a Core ``insert(Report)``) must set the flag itself.  A Study already loaded in the
    session gets the new value without a reload.
    """
    study_ids: set[int] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(obj, Report):
            continue
        attrs = inspect(obj).attrs
        if obj not in session.new and obj not in session.deleted and not any(
                attrs[name].history.has_changes() for name in _MIRRORED):
            continue  # a draft's text or timestamps: the signed state did not move
        history = attrs["study_id"].history
        study_ids.update(v for v in (*history.added, *history.unchanged, *history.deleted)
                         if v is not None)
    if not study_ids:
        return
    studies = cast(Table, Study.__table__)
    signed = exists().where(Report.study_id == studies.c.id, Report.subject_type == "study",
                            Report.state.in_(SIGNED_STATES))
    flipped = session.connection().execute(
        update(studies).where(studies.c.id.in_(sorted(study_ids)),
                              studies.c.report_signed != signed)
        .values(report_signed=signed).returning(studies.c.id, studies.c.report_signed))
    for study_id, value in flipped:
        loaded = session.identity_map.get(session.identity_key(Study, study_id))
        if loaded is not None and "report_signed" in loaded.__dict__:
            set_committed_value(loaded, "report_signed", bool(value))

