"""The ``pathology_intake`` job: a complete SM study becomes (part of) a pathology case.

Routing queues the job by ID when a study of slides completes (C-STORE through the
gateway, or ``rdc pathology import``, which submits the same job).  The worker lists
the study's SM series in Orthanc, finds or opens the case of its accession at its
site (a second block sent a day later joins the same case), adds one
:class:`~core.models.PathologySlide` per new series and grades each with the quality
gate (:mod:`pathology.qc`) on the lowest useful pyramid level.  A slide that fails is
kept and shown, marked, with its reasons: nothing is hidden, the site rescans.

Every slide is read and graded before anything is stored, so an unreadable slide fails
the job with its precise reason and leaves no half-made case.  Orthanc not having the
study (yet) is transient; a re-run finds the slides by Series Instance UID and writes
nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit, jobs
from core.db import Database
from core.models import Job, PathologyCase, PathologySlide, Site, Study
from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound, OrthancRejected
from core.settings import get_settings
from core.timeutil import as_utc
from pathology import qc
from pathology import wsi_source as ws
from pathology.cases import record_event
from pathology.frozen import page_on_duty
from pathology.states import CaseState, check_case_transition

log = logging.getLogger(__name__)

JOB_KIND = "pathology_intake"

#: Study priority from which a case is STAT (the routing rules' "stat" is 9 and up).
STAT_PRIORITY = 9
#: A frozen section is answered while the patient is on the table: the intra-operative
#: consultation's usual target is 20 minutes from receipt, whatever the site's
#: turnaround for routine work.
FROZEN_TURNAROUND_MIN = 20
#: Scanners write 0.25 µm/px at 40x; a slide whose headers give no pixel spacing is
#: graded as if it had that (and its metrics say so).
ASSUMED_MPP = 0.25
#: The largest image the gate grades at once (pixels): a slide with no coarse levels is
#: shrunk further while its tiles are read, so memory stays bounded (at the price of
#: blur sensitivity, which the metrics' ``qc_mpp`` shows).
MAX_QC_PIXELS = 80_000_000
#: States in which the gate's outcome sets the case's state; once a pathologist holds
#: the case, a new slide is graded and marked but the case stays with them.
_GATE_STATES = {CaseState.RECEIVED, CaseState.QC_PASSED, CaseState.QC_FAILED}
_URGENCY_RANK = {"routine": 0, "stat": 1, "frozen": 2}


@dataclass(frozen=True)
class GradedSlide:
    series_uid: str
    orthanc_series_id: str
    headers: ws.SlideHeaders
    pyramid: ws.Pyramid
    result: qc.QCResult


def accession_for(study: Study) -> str:
    """The case's accession: the study's, or a stable stand-in derived from the study
    UID when the county sent none (never from other input, so it is always valid)."""
    if study.accession_number.strip():
        return study.accession_number.strip()[:32]
    return "NOACC-" + hashlib.sha256(study.study_uid.encode()).hexdigest()[:8]


def urgency_for(study: Study, texts: list[str]) -> str:
    """"frozen" when the study, procedure or specimen says frozen section; "stat" for a
    study routed at STAT priority; else "routine"."""
    if any("frozen" in t.lower() for t in [study.description, *texts]):
        return "frozen"
    if study.priority >= STAT_PRIORITY:
        return "stat"
    return "routine"


def choose_qc_level(pyramid: ws.Pyramid, mpp: float) -> tuple[int, int]:
    """(level, shrink): the coarsest level at or finer than :data:`qc.QC_TARGET_MPP`,
    shrunk by a whole factor towards it when that level is much finer (a pyramid with
    missing levels) or too large to hold (:data:`MAX_QC_PIXELS`)."""
    mpp = mpp if mpp > 0 else ASSUMED_MPP
    target = max(1.0, qc.QC_TARGET_MPP / mpp)
    candidates = [lv for lv in pyramid.levels if lv.downsample <= target * 1.01]
    level = max(candidates, key=lambda lv: lv.downsample) if candidates else pyramid.levels[0]
    shrink = max(1, math.floor(target / level.downsample + 1e-6))
    while level.width * level.height / shrink ** 2 > MAX_QC_PIXELS:
        shrink += 1
    return level.level, shrink


def grade_series(client: OrthancClient, study_uid: str, series_uid: str,
                 orthanc_series_id: str) -> GradedSlide:
    """Read one slide's headers and its QC level from Orthanc, and grade it."""
    headers = ws.read_headers(client, study_uid, series_uid)
    pyramid = ws.read_pyramid(client, orthanc_series_id)
    level, shrink = choose_qc_level(pyramid, headers.mpp)
    image = ws.read_level(client, pyramid, level, shrink=shrink)
    missing = qc.missing_levels([lv.downsample for lv in pyramid.levels], pyramid.width,
                                pyramid.height, pyramid.tile_width, pyramid.tile_height)
    result = qc.grade_slide(image.image, downsample=image.downsample,
                            missing_tiles=headers.missing_tiles,
                            total_tiles=headers.total_tiles,
                            missing_boxes=headers.missing_boxes,
                            expected_levels=len(pyramid.levels) + missing,
                            present_levels=len(pyramid.levels), stain=headers.stain)
    mpp = headers.mpp if headers.mpp > 0 else ASSUMED_MPP
    result.metrics["qc_level"] = level
    result.metrics["qc_mpp"] = round(mpp * image.downsample, 3)
    result.metrics["mpp_assumed"] = headers.mpp <= 0
    return GradedSlide(series_uid=series_uid, orthanc_series_id=orthanc_series_id,
                       headers=headers, pyramid=pyramid, result=result)


def _read_new_slides(db: Database, study_uid: str) -> tuple[list[GradedSlide], int]:
    """Grade the study's slides not yet known; returns them and how many of the study's
    slides were known already.  Orthanc trouble is transient; an unreadable slide fails
    the job; a study with no slide at all is skipped, saying so.

    Runs outside any write transaction: reading and grading a large slide takes tens of
    seconds, and on SQLite every transaction holds the write lock (core.db), which would
    make the gateway's C-STORE receipts wait and fail with "database is locked"."""
    try:
        with OrthancClient.from_settings(get_settings()) as client:
            found = [x for x in client.lookup(study_uid) if x.get("Type") == "Study"]
            if not found:
                raise jobs.TransientJobError(f"study {study_uid} is not in Orthanc yet")
            series = ws.wsi_series(client, str(found[0]["ID"]))
            uids = [str(s.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
                    for s in series]
            with db.session() as session:
                known = set(session.scalars(select(PathologySlide.series_uid).where(
                    PathologySlide.series_uid.in_(uids or [""]))))
            graded = []
            for s in series:
                uid = str(s.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
                if not uid or uid in known:
                    continue
                try:
                    graded.append(grade_series(client, study_uid, uid, str(s["ID"])))
                except ws.NoVolume as e:
                    log.info("pathology.intake.no_volume study=%s series=%s: %s",
                             study_uid, uid, e)
                except ws.WSIUnreadable as e:
                    raise jobs.JobFailed(f"slide series {uid} is unreadable: {e}") from e
                except OrthancNotFound as e:
                    raise jobs.TransientJobError(f"slide series {uid}: {e}") from e
                except OrthancRejected as e:
                    raise jobs.JobFailed(f"slide series {uid} is unreadable: Orthanc's WSI "
                                         f"plugin refused it ({e})") from e
    except OrthancError as e:
        raise jobs.TransientJobError(f"Orthanc: {e}") from e
    if not graded and not known:
        raise jobs.SkipJob("the study holds no slide (no SM series with a pyramid in Orthanc)"
                           if series else "the study holds no slide (no SM series in Orthanc)")
    return graded, len(known)


def _find_or_open_case(session: Session, study: Study, accession: str, organ: str,
                       now: datetime) -> tuple[PathologyCase, bool]:
    """The case of (site, accession), opened with the study as its primary study."""
    def find() -> PathologyCase | None:
        return session.scalar(select(PathologyCase).where(
            PathologyCase.site_id == study.site_id,
            PathologyCase.accession_number == accession))
    case = find()
    if case is not None:
        return case, False
    case = PathologyCase(site_id=study.site_id, accession_number=accession,
                         patient_id=study.patient_id, patient_name=study.patient_name,
                         organ=organ[:64], urgency="routine", state=CaseState.RECEIVED,
                         primary_study_id=study.id, received_at=now, updated_at=now)
    try:
        with session.begin_nested():
            session.add(case)
            session.flush()
    except IntegrityError:
        # Another worker opened it for another study of the same accession meanwhile.
        found = find()
        assert found is not None
        return found, False
    return case, True


def _due_at(session: Session, case: PathologyCase) -> datetime:
    site = session.get(Site, case.site_id)
    minutes = site.turnaround_target_min if site is not None else 240
    if case.urgency == "frozen":
        minutes = min(minutes, FROZEN_TURNAROUND_MIN)
    return as_utc(case.received_at) + timedelta(minutes=minutes)


def run_pathology_intake(db: Database, job: Job) -> None:
    """Open or extend the study's case with its new slides, each graded by the gate.

    A self-managed job (core.jobs.register_db_handler): the slides are read from Orthanc
    and graded with no transaction open, then stored in one short transaction.  The
    writes are idempotent (series UIDs are unique), as such a handler's must be.
    """
    with db.session() as session:
        found = session.get(Study, job.study_id) if job.study_id is not None else None
        if found is None:
            raise ValueError(f"{JOB_KIND} job {job.id} has no study")
        study_uid = found.study_uid
    graded, _known = _read_new_slides(db, study_uid)
    if not graded:
        return  # every slide is known already: a re-run
    with db.session() as session:
        study = session.get(Study, job.study_id)
        assert study is not None
        _store(session, study, job, graded)


def _store(session: Session, study: Study, job: Job, graded: list[GradedSlide]) -> None:
    """The case, its new slides with their grades, the events, the page and the audit."""
    now = as_utc()
    texts = [t for g in graded for t in g.headers.texts]
    organ = next((g.headers.organ for g in graded if g.headers.organ), study.body_part)
    case, opened = _find_or_open_case(session, study, accession_for(study), organ, now)
    urgency = urgency_for(study, texts)
    if _URGENCY_RANK[urgency] > _URGENCY_RANK.get(case.urgency, 0):
        case.urgency = urgency
    if not case.organ and organ:
        case.organ = organ[:64]
    case.due_at = _due_at(session, case)
    # rdc pathology import submits the job under the rule "import"; routing names its rule.
    imported = job.rule == "import" or (job.params or {}).get("source") == "import"
    source = "import" if imported else "cstore"
    rows = []
    for g in graded:
        h, r = g.headers, g.result
        row = PathologySlide(
            case_id=case.id, study_id=study.id, series_uid=g.series_uid,
            orthanc_series_id=g.orthanc_series_id, source=source, part=h.part[:16],
            block=h.block[:16], stain=h.stain[:64], specimen_id=h.specimen_id[:64],
            label=h.label[:200], width=g.pyramid.width, height=g.pyramid.height,
            levels=len(g.pyramid.levels), mpp=h.mpp, qc_grade=r.grade,
            qc_reasons=list(r.reasons), qc_metrics=dict(r.metrics), qc_at=now,
            received_at=now)
        rows.append(row)
    try:
        with session.begin_nested():
            session.add_all(rows)
            session.flush()
    except IntegrityError as e:
        # Another worker ran this study's intake at the same moment and stored these
        # slides (series UIDs are unique): try again, and that run finds them known.
        raise jobs.TransientJobError("another intake stored these slides meanwhile") from e
    all_grades = list(session.scalars(select(PathologySlide.qc_grade).where(
        PathologySlide.case_id == case.id)))
    case_grade = "fail" if "fail" in all_grades else "pass"
    if case.state in _GATE_STATES:
        new_state = CaseState.QC_FAILED if case_grade == "fail" else CaseState.QC_PASSED
        check_case_transition(case.state, new_state)
        case.state = new_state
    case.updated_at = now
    record_event(session, case.id, "received", "worker", now,
                 detail={"study_id": study.id, "slides": [r.id for r in rows]})
    record_event(session, case.id, "qc", "worker", now, first_only=False,
                 detail={"study_id": study.id, "grade": case_grade,
                         "slides": {str(r.id): r.qc_grade for r in rows},
                         "failed": [r.id for r in rows if r.qc_grade == "fail"]})
    paged = None
    if case.urgency == "frozen":
        paged = page_on_duty(session, case, now)
    audit.append(session, actor="worker", action="pathology.intake",
                 object_type="pathology_case", object_id=str(case.id), detail={
                     "study_id": study.id, "opened": opened, "urgency": case.urgency,
                     "state": case.state, "slides": [
                         {"id": r.id, "series_uid": r.series_uid, "qc": r.qc_grade,
                          "reasons": r.qc_reasons} for r in rows],
                     "paged": paged.id if paged is not None else None})
    log.info("pathology.intake study=%s case=%s slides=%s grades=%s", study.id, case.id,
             [r.id for r in rows], [r.qc_grade for r in rows])
