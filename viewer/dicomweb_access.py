"""Who may see which DICOM objects through the web app's DICOMweb proxy, and its audit.

Membership is decided in the center's own database (steps 2 and 3 of
:mod:`viewer.api.dicomweb`): the study UID must belong to a study of a site the user may
see, and the series and instance to that study: received instances (``instances``), the
AI pre-reads' SR and SEG (``ai_results``) and the signed reports' SR and PDF
(``report_versions``).  Orthanc merges studies with the same UID from two sites, so its
answer alone is not proof.  Every refusal is 404, so that another site's objects are
not even revealed to exist.

Access is audited per user and study, aggregated over a window
(``RDC_DICOMWEB_AUDIT_WINDOW_S``) so that a 300-frame stack is one record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_models.output_uids import result_uids
from core import audit
from core.db import Database
from core.models import AIResult, Instance, Report, ReportVersion, Study
from core.settings import get_settings
from viewer.auth import UserContext
from viewer.dicomweb_paths import JSON_RESOURCES, Resource, Target


def _not_found(detail: str = "not found") -> HTTPException:
    return HTTPException(404, detail)


# Membership in the center's own database -----------------------------------------


@dataclass(frozen=True)
class StudyScope:
    """The user's view of one study UID: the center's study rows they may see, and
    whether rows of the same UID exist at sites they may not (Orthanc merges them)."""

    study_ids: tuple[int, ...]
    shared_with_hidden: bool


def study_scope(s: Session, user: UserContext, study_uid: str) -> StudyScope:
    rows = s.execute(select(Study.id, Study.site_id).where(Study.study_uid == study_uid)).all()
    mine = tuple(int(r[0]) for r in rows if user.can_see_site(str(r[1])))
    if not mine:
        raise _not_found()
    return StudyScope(mine, len(mine) < len(rows))


def visible_objects(s: Session, study_ids: tuple[int, ...], series_uid: str | None = None,
                    *, received: bool = True) -> dict[str, set[str]]:
    """Series UID → SOP Instance UIDs of everything in ``study_ids`` (one series if
    given): what the sites sent (unless ``received`` is false), the AI results and
    the signed report outputs."""
    found: dict[str, set[str]] = {}

    def add(series: str | None, sop: str | None) -> None:
        if series and sop and (series_uid is None or series == series_uid):
            found.setdefault(series, set()).add(sop)

    if received:
        q = select(Instance.series_uid, Instance.sop_instance_uid).where(
            Instance.study_id.in_(study_ids))
        if series_uid is not None:
            q = q.where(Instance.series_uid == series_uid)
        for series, sop in s.execute(q):
            add(series, sop)
    for name, version, source, seg in s.execute(
            select(AIResult.model_name, AIResult.model_version, AIResult.series_uid,
                   AIResult.seg_sop_uid).where(AIResult.study_id.in_(study_ids))):
        uids = result_uids(source, name, version)
        add(uids.sr_series, uids.sr)
        if seg is not None:
            add(uids.seg_series, uids.seg)
    for sr_series, sr, pdf_series, pdf in s.execute(
            select(ReportVersion.sr_series_uid, ReportVersion.sr_sop_uid,
                   ReportVersion.pdf_series_uid, ReportVersion.pdf_sop_uid)
            .join(Report, Report.id == ReportVersion.report_id)
            .where(Report.study_id.in_(study_ids))):
        add(sr_series, sr)
        add(pdf_series, pdf)
    return found


def instance_visible(s: Session, study_ids: tuple[int, ...], series_uid: str,
                     sop_uid: str) -> bool:
    """Whether one instance belongs to ``study_ids``: the per-frame check, kept to an
    indexed lookup instead of listing the series for each of hundreds of frames."""
    if s.scalar(select(Instance.id).where(
            Instance.sop_instance_uid == sop_uid, Instance.series_uid == series_uid,
            Instance.study_id.in_(study_ids)).limit(1)) is not None:
        return True
    objects = visible_objects(s, study_ids, series_uid, received=False)
    return sop_uid in objects.get(series_uid, set())


def _series_elsewhere(s: Session, study_ids: tuple[int, ...], series_uid: str) -> bool:
    """Whether instances of ``series_uid`` were received into any other study row."""
    return s.scalar(select(Instance.id).where(
        Instance.series_uid == series_uid, Instance.study_id.not_in(study_ids)).limit(1)
    ) is not None


# Aggregated audit ----------------------------------------------------------------


class AccessAudit:
    """One audit record per (user, study) per window, with the requests it covers.

    The first request in a window is written at once (so access is never
    unrecorded); the requests that followed it in that window are counted and
    carried into the next record.  Per process: each web worker keeps its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], tuple[float, int]] = {}

    def should_write(self, actor: str, study_uid: str, window_s: float) -> int | None:
        """The number of earlier requests to report if a record is due now, else None."""
        now = time.monotonic()
        key = (actor, study_uid)
        with self._lock:
            started, count = self._open.get(key, (0.0, 0))
            if key in self._open and now - started < window_s:
                self._open[key] = (started, count + 1)
                return None
            self._open[key] = (now, 1)
            if len(self._open) > 10_000:  # forget the oldest windows; they were written
                for k in sorted(self._open, key=lambda k: self._open[k][0])[:5_000]:
                    del self._open[k]
            return count

    def reset(self) -> None:
        with self._lock:
            self._open.clear()


ACCESS_AUDIT = AccessAudit()


def _audit(s: Session, user: UserContext, target: Target, scope: StudyScope | None) -> None:
    """``dicomweb.access`` per (user, study), ``dicomweb.search`` per user, each once
    per window."""
    key = target.study or "search"
    earlier = ACCESS_AUDIT.should_write(user.username, key,
                                        get_settings().dicomweb_audit_window_s)
    if earlier is None:
        return
    detail: dict[str, Any] = {"resource": target.resource.value,
                              "earlier_requests_in_last_window": earlier}
    if target.study is None:
        audit.append(s, actor=user.username, action="dicomweb.search", object_type="query",
                     object_id="studies", detail=detail)
        return
    detail.update(series=target.series, study_ids=list(scope.study_ids) if scope else [])
    audit.append(s, actor=user.username, action="dicomweb.access", object_type="study",
                 object_id=target.study, detail=detail)


# What the routes ask -------------------------------------------------------------


def audit_search(db: Database, user: UserContext, target: Target) -> None:
    """Record a study search by a user who sees every site (once per window)."""
    with db.session() as s:
        _audit(s, user, target, None)


def visible_study_uids(db: Database, user: UserContext, target: Target) -> set[str]:
    """The study UIDs of the sites a site-limited user may see (the search is audited)."""
    with db.session() as s:
        mine = set(s.scalars(select(Study.study_uid).where(
            Study.site_id.in_(sorted(user.site_ids)))))
        _audit(s, user, target, None)
    return mine


def check_access(db: Database, user: UserContext, target: Target) -> dict[str, set[str]]:
    """Refuse (404) unless ``user`` may see the object of ``target``; the access is
    audited.  Returns the series UID → SOP Instance UIDs the user may see, for
    filtering a JSON answer at study or series level (empty for one instance)."""
    assert target.study is not None  # the grammar gives every resource here a study
    with db.session() as s:
        scope = study_scope(s, user, target.study)
        objects: dict[str, set[str]] = {}
        if target.instance is not None:
            assert target.series is not None
            if not instance_visible(s, scope.study_ids, target.series, target.instance):
                raise _not_found()
        elif target.series is not None or target.resource in JSON_RESOURCES:
            objects = visible_objects(s, scope.study_ids, target.series)
            if target.series is not None and target.series not in objects:
                raise _not_found()
        # A whole study or series goes out as one multipart answer that cannot be
        # filtered: refuse it when part of it was received for a site the user may not see.
        if target.resource is Resource.STUDY and scope.shared_with_hidden:
            raise _not_found("this study UID is shared with another site; "
                             "retrieve its series one by one")
        if target.resource is Resource.SERIES and target.series is not None and (
                _series_elsewhere(s, scope.study_ids, target.series)):
            raise _not_found()
        _audit(s, user, target, scope)
    return objects
