"""Study completeness: ours to decide, Orthanc's "stable" is not the same thing.

A study is complete when the number of instances the sender announced
(Number of Study Related Instances) is stored, or when the site's inactivity
window has passed with nothing left in the spool.  Only instances Orthanc holds
count: a study none of whose instances reached Orthanc never completes.  Completion moves the study
to ``complete``, bumps its generation and queues a ``route`` job by ID.  A
late instance reopens the study (see :mod:`pacs_gateway.receipts`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core import audit, jobs
from core.models import Instance, Site, Study
from core.states import InstanceState, StudyState, check_transition
from pacs_gateway.receipts import STAT_PRIORITY

log = logging.getLogger(__name__)


def _receipt_counts(session: Session, study_ids: list[int],
                    ) -> dict[int, tuple[int, int, int, datetime | None]]:
    """{study: (received, stored, spooled, last received)} from the receipts."""
    stored = case((Instance.state == InstanceState.STORED, 1), else_=0)
    spooled = case((Instance.state == InstanceState.SPOOLED, 1), else_=0)
    out: dict[int, tuple[int, int, int, datetime | None]] = {}
    for start in range(0, len(study_ids), 500):
        chunk = study_ids[start:start + 500]
        for sid, n, n_stored, n_spooled, last in session.execute(
            select(Instance.study_id, func.count(), func.sum(stored), func.sum(spooled),
                   func.max(Instance.received_at))
            .where(Instance.study_id.in_(chunk)).group_by(Instance.study_id)):
            out[sid] = (int(n), int(n_stored or 0), int(n_spooled or 0), last)
    return out


def complete_ready_studies(session: Session, default_window_s: float,
                           now: datetime | None = None) -> list[int]:
    """Refresh the counts of open studies and complete those that are ready."""
    now = now or datetime.now(UTC)
    open_states = [StudyState.RECEIVED, StudyState.REOPENED]
    # Several gateway nodes each run this monitor.  FOR UPDATE OF the studies SKIP
    # LOCKED (PostgreSQL): a study another monitor is deciding, or whose receipt is
    # being recorded right now (FOR SHARE in record_receipt), is left for the next
    # round, so a study is never completed twice and never before a receipt that
    # committed meanwhile is counted.
    rows = session.execute(
        select(Study, Site.inactivity_s).join(Site, Site.id == Study.site_id)
        .where(Study.state.in_(open_states))
        .with_for_update(skip_locked=True, of=Study)
    ).all()
    counts = _receipt_counts(session, [study.id for study, _ in rows])
    done: list[int] = []
    for study, site_window in rows:
        received, stored, spooled, last = counts.get(study.id, (0, 0, 0, None))
        if (received, stored) != (study.received_instances, study.stored_instances):
            study.received_instances, study.stored_instances = received, stored
        if last is not None and last > study.last_received_at:
            study.last_received_at = last
        if spooled:
            continue
        if stored == 0:
            # Nothing of it reached the archive (every instance Orthanc refused after
            # acknowledgement is ``failed``): completing it would put a study with no
            # images on the worklist.  The failures are in ``rdc status`` and the audit.
            continue
        window = timedelta(seconds=site_window or default_window_s)
        announced = study.expected_instances is not None and \
            study.stored_instances >= study.expected_instances
        quiet = now - study.last_received_at >= window
        if not (announced or quiet):
            continue
        _complete(session, study, "announced count reached" if announced else "inactivity")
        done.append(study.id)
    return done


def _complete(session: Session, study: Study, why: str) -> None:
    check_transition(StudyState, study.state, StudyState.COMPLETE)
    study.state = StudyState.COMPLETE
    study.generation += 1
    study.completed_at = datetime.now(UTC)
    site = session.get(Site, study.site_id)
    target_min = site.turnaround_target_min if site is not None else 240
    if study.priority >= STAT_PRIORITY:
        target_min = max(15, target_min // 4)  # STAT: a quarter of the routine target
    study.due_at = study.completed_at + timedelta(minutes=target_min)
    job, _created = jobs.submit(session, jobs.NewJob(
        key=f"route:study-{study.id}:gen-{study.generation}", kind="route", queue="routing",
        study_id=study.id, priority=max(5, study.priority)))
    audit.append(session, actor="gateway", action="study.complete", object_type="study",
                 object_id=str(study.id), detail={
                     "study_uid": study.study_uid, "site": study.site_id, "why": why,
                     "generation": study.generation, "stored": study.stored_instances,
                     "expected": study.expected_instances, "route_job": job.id})
    log.info("study.complete study=%s site=%s why=%r generation=%s", study.id, study.site_id,
             why, study.generation)
