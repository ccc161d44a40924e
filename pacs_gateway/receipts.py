"""Receipt rows and study bookkeeping for received instances."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit
from core.models import Instance, Study
from core.states import InstanceState, StudyState, check_transition
from pacs_gateway.inspect import InstanceInfo

STAT_PRIORITY = 9

#: The tables themselves, for the statements on the hot path.  An ORM-enabled
#: statement (``session.execute(update(Instance)...)``) goes through the ORM's bulk
#: machinery (entity compilation, session synchronisation), which the gateway profile
#: found to be most of the per-instance cost of the database: about twice the Core
#: statement on the session's own connection, in the same transaction.
INSTANCES = cast(Table, Instance.__table__)
STUDIES = cast(Table, Study.__table__)


def _study_for(session: Session, site_id: str, info: InstanceInfo) -> Study:
    found = session.scalar(
        select(Study).where(Study.site_id == site_id, Study.study_uid == info.study_uid)
    )
    if found is not None:
        return found
    study = Study(site_id=site_id, study_uid=info.study_uid, patient_id=info.patient_id,
                  patient_name=info.patient_name, patient_birth_date=info.patient_birth_date,
                  issuer_of_patient_id=info.issuer_of_patient_id,
                  description=info.study_description, study_date=info.study_date,
                  accession_number=info.accession_number, patient_sex=info.patient_sex,
                  patient_age=info.patient_age, body_part=info.body_part,
                  modalities=[], state=StudyState.RECEIVED, generation=0)
    try:
        with session.begin_nested():
            session.add(study)
            session.flush()
    except IntegrityError:
        # Another association of the same site created it a moment ago.
        again = session.scalar(
            select(Study).where(Study.site_id == site_id, Study.study_uid == info.study_uid)
        )
        assert again is not None
        return again
    return study


def record_receipt(
    session: Session, *, receipt_id: str, site_id: str, info: InstanceInfo, size: int,
    calling_ae: str, peer_address: str, urgent: bool = False,
) -> int:
    """Record one spooled instance; reopen its study if it was complete.

    Returns the study's row ID (the uploader needs it, and reading it back would
    cost a transaction).

    This runs before every C-STORE answer, so the common case (an instance of
    a known, open study that changes nothing about it) costs one indexed
    look-up and one insert, without the ORM.  The study row is written only
    when something about the study changes (first instance, reopening, a new
    modality, an announced count, STAT); counts and the time of the last
    instance are derived from the receipts by the completeness monitor.
    """
    now = datetime.now(UTC)
    conn = session.connection()
    cols = STUDIES.c
    # FOR KEY SHARE (PostgreSQL; SQLite has one writer anyway): the completeness
    # monitor locks a study FOR UPDATE, which conflicts with it, before it counts the
    # study's receipts; so it skips the study while this receipt is uncommitted, or
    # it completed the study before this read (and this reopens it).  Without the
    # lock, a monitor on another gateway node could complete the study between this
    # read and the insert, and the late instance would never be routed.  KEY SHARE,
    # not SHARE: two receipts that both go on to update the study (a new modality,
    # a reopening) then queue on the row instead of deadlocking.
    row = conn.execute(
        select(cols.id, cols.state, cols.expected_instances, cols.priority, cols.modalities)
        .where(cols.site_id == site_id, cols.study_uid == info.study_uid)
        .with_for_update(read=True, key_share=True)
    ).first()
    unchanged = row is not None and row.state != StudyState.COMPLETE and (
        info.expected_study_instances is None
        or row.expected_instances == info.expected_study_instances) and (
        not urgent or row.priority >= STAT_PRIORITY) and (
        not info.modality or info.modality in row.modalities)
    study_id = row.id if row is not None and unchanged else \
        _update_study(session, site_id, info, urgent, now)
    conn.execute(insert(INSTANCES).values(
        id=receipt_id, site_id=site_id, study_id=study_id, series_uid=info.series_uid,
        sop_instance_uid=info.sop_instance_uid, sop_class_uid=info.sop_class_uid,
        transfer_syntax=info.transfer_syntax, modality=info.modality, size_bytes=size,
        state=InstanceState.SPOOLED, orthanc_id=None, attempts=0, last_error=None,
        calling_ae=calling_ae, peer_address=peer_address, received_at=now, stored_at=None,
    ))
    return study_id


def _update_study(session: Session, site_id: str, info: InstanceInfo, urgent: bool,
                  now: datetime) -> int:
    study = _study_for(session, site_id, info)
    if info.expected_study_instances is not None and \
            study.expected_instances != info.expected_study_instances:
        study.expected_instances = info.expected_study_instances
    if urgent and study.priority < STAT_PRIORITY:
        # C-STORE priority HIGH: the sender asks for a STAT read.
        study.priority = STAT_PRIORITY
    if info.modality and info.modality not in study.modalities:
        study.modalities = [*study.modalities, info.modality]
        if info.body_part and not study.body_part:  # e.g. the first image series
            study.body_part = info.body_part
    if study.state == StudyState.COMPLETE:
        check_transition(StudyState, study.state, StudyState.REOPENED)
        study.state = StudyState.REOPENED
        study.last_received_at = now
        audit.append(session, actor=f"site:{site_id}", action="study.reopen",
                     object_type="study", object_id=str(study.id),
                     detail={"study_uid": info.study_uid, "late_instance": info.sop_instance_uid})
    session.flush()
    return study.id


def mark_stored(session: Session, receipt_id: str, orthanc_id: str, study_id: int,
                orthanc_study: str | None = None, note: str | None = None) -> bool:
    """Note that Orthanc confirmed the instance (and, once, its study's Orthanc ID).

    False if it was already noted.  Core statements on the session's connection:
    this runs once per instance (see :data:`INSTANCES`).
    """
    conn = session.connection()
    if orthanc_study:
        conn.execute(update(STUDIES).where(STUDIES.c.id == study_id,
                                           STUDIES.c.orthanc_id.is_(None))
                     .values(orthanc_id=orthanc_study))
    i = INSTANCES.c
    result = conn.execute(
        update(INSTANCES).where(i.id == receipt_id, i.state != InstanceState.STORED)
        .values(state=InstanceState.STORED, orthanc_id=orthanc_id, stored_at=datetime.now(UTC),
                attempts=i.attempts + 1, last_error=note)
    )
    return bool(cast(CursorResult[Any], result).rowcount)


def mark_attempt_failed(session: Session, receipt_id: str, error: str, *, final: bool) -> None:
    inst = session.get(Instance, receipt_id)
    if inst is None or inst.state == InstanceState.STORED:
        return
    inst.attempts += 1
    inst.last_error = error[:2000]
    if final and inst.state != InstanceState.FAILED:
        check_transition(InstanceState, inst.state, InstanceState.FAILED)
        inst.state = InstanceState.FAILED
        audit.append(session, actor="gateway", action="instance.upload_failed",
                     object_type="instance", object_id=receipt_id,
                     detail={"sop_instance_uid": inst.sop_instance_uid, "error": error[:500]})
