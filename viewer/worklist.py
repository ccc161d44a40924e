"""The reading worklist: sorted and paged in the database, claim and release.

Order: STAT requests first, then studies an AI pre-read marked critical, then
the time left against the site's turnaround target (``Study.due_at``).  The
order and the filters run in SQL on an index, so the worklist stays fast with
tens of thousands of studies; only the page's rows are turned into items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import String, and_, case, cast, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from core import audit
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import AIFinding, Report, Site, Study, User
from core.states import ReportState, StudyState
from viewer.auth import UserContext

#: Worklist priorities: a STAT request (C-STORE priority HIGH, pacs_gateway.receipts),
#: an AI pre-read's or an ECG analysis's critical finding (ai_models.inference, ecg.jobs),
#: an urgent request; anything lower is routine.
STAT = 9
AI_CRITICAL = 8
URGENT = 7
READY = (StudyState.COMPLETE, StudyState.REOPENED)
STATUSES = ("unread", "claimed", "reported", "signed", "open", "all")
SIGNED = (ReportState.FINAL, ReportState.AMENDED)
READER_ROLES = ("radiologist", "cardiologist", "pathologist", "lab_reviewer")


def priority_label(priority: int | None) -> str:
    """What a reader sees for a priority number: STAT, AI CRITICAL, URGENT or ROUTINE."""
    p = priority or 0
    if p >= STAT:
        return "STAT"
    if p >= AI_CRITICAL:
        return "AI CRITICAL"
    return "URGENT" if p >= URGENT else "ROUTINE"


_AGE_UNITS = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}


def _dicom_date(value: str) -> date | None:
    try:
        return datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def patient_age(study: Study, today: date | None = None) -> str:
    """The patient's age at the study: DICOM PatientAge ("045Y" → "45y") when sent,
    else from the birth date and the study date (or today); "" when unknown."""
    raw = (study.patient_age or "").strip().upper()
    if len(raw) == 4 and raw[:3].isdigit() and raw[3] in _AGE_UNITS:
        return f"{int(raw[:3])}{_AGE_UNITS[raw[3]]}"
    born = _dicom_date(study.patient_birth_date or "")
    if born is None:
        return ""
    at = _dicom_date(study.study_date or "") or today or datetime.now(UTC).date()
    years = at.year - born.year - ((at.month, at.day) < (born.month, born.day))
    if years >= 2:
        return f"{years}y"
    months = (at.year - born.year) * 12 + at.month - born.month - (at.day < born.day)
    return f"{max(months, 0)}mo" if months >= 1 else f"{max((at - born).days, 0)}d"


def patient_sex(study: Study) -> str:
    """DICOM PatientSex as sent: M, F or O ("" when not sent)."""
    sex = (study.patient_sex or "").strip().upper()
    return sex if sex in ("M", "F", "O") else ""


@dataclass(frozen=True)
class WorkItem:
    study_id: int
    study_uid: str
    site_id: str
    site_name: str
    patient_id: str
    patient_name: str
    description: str
    modalities: list[str]
    instances: int
    priority: int
    ai_critical: bool
    ai_flags: list[str]
    status: str
    claimed_by: str | None
    completed_at: datetime | None
    due_at: datetime | None
    seconds_left: int | None
    report_id: int | None
    #: STAT, AI CRITICAL, URGENT or ROUTINE (see :func:`priority_label`).
    priority_label: str = "ROUTINE"
    #: DICOM StudyDate (YYYYMMDD), accession number, patient sex and age, body part.
    study_date: str = ""
    accession_number: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    body_part: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def visible(query: Any, user: UserContext) -> Any:
    """Only the studies of sites the user may see (``query`` selects from studies)."""
    if user.all_sites:
        return query
    return query.where(Study.site_id.in_(sorted(user.site_ids)))


def visible_sites(session: Session, user: UserContext) -> list[dict[str, Any]]:
    """The sites whose work the user may see, by name: the worklist's site filter."""
    q = select(Site.id, Site.name, Site.enabled).order_by(Site.name, Site.id)
    if not user.all_sites:
        q = q.where(Site.id.in_(sorted(user.site_ids)))
    return [{"id": i, "name": n, "enabled": bool(e)} for i, n, e in session.execute(q)]


def _base(user: UserContext) -> Select[Any]:
    q = (select(Study, Site.name, Report.id, Report.state, User.username)
         .join(Site, Site.id == Study.site_id)
         .outerjoin(Report, and_(Report.study_id == Study.id, Report.subject_type == "study"))
         .outerjoin(User, User.id == Study.claimed_by)
         .where(Study.state.in_(list(READY))))
    narrowed: Select[Any] = visible(q, user)
    return narrowed


def _status_filter(q: Select[Any], status: str) -> Select[Any]:
    if status == "all":
        return q
    if status == "signed":
        return q.where(Report.state.in_(list(SIGNED)))
    open_ = or_(Report.id.is_(None), Report.state.not_in(list(SIGNED)))
    if status == "open":
        return q.where(open_)
    if status == "unread":
        return q.where(Report.id.is_(None), Study.claimed_by.is_(None))
    if status == "claimed":
        return q.where(open_, Study.claimed_by.is_not(None))
    return q.where(Report.id.is_not(None), Report.state.not_in(list(SIGNED)))  # reported


def _status(study: Study, report_state: str | None) -> str:
    if report_state in SIGNED:
        return "signed"
    if report_state is not None:
        return "reported"
    return "claimed" if study.claimed_by is not None else "unread"


def query_worklist(session: Session, user: UserContext, *, site: str | None = None,
                   modality: str | None = None, status: str = "open", mine: bool = False,
                   page: int = 1, page_size: int = 50,
                   now: datetime | None = None) -> tuple[int, list[WorkItem]]:
    """One page of the worklist and the total count behind it."""
    if status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    if not 1 <= page_size <= 200 or page < 1:
        raise InvalidInput("page must be >= 1 and page_size between 1 and 200")
    now = now or datetime.now(UTC)
    q = _status_filter(_base(user), status)
    if site:
        q = q.where(Study.site_id == site)
    if modality:
        # The JSON list as text: portable across SQLite and PostgreSQL.
        q = q.where(cast(Study.modalities, String).like(f'%"{modality.upper()}"%'))
    if mine:
        if user.user_id is None:
            raise InvalidInput("'assigned to me' needs a signed-in user")
        q = q.where(Study.claimed_by == user.user_id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    order = (case((Study.priority >= STAT, 0), else_=1), case((Study.ai_critical, 0), else_=1),
             func.coalesce(Study.due_at, Study.completed_at), Study.id)
    rows = session.execute(q.order_by(*order).limit(page_size)
                           .offset((page - 1) * page_size)).all()
    flags = _ai_flags(session, [r[0].id for r in rows])
    return int(total), [_item(r, flags, now) for r in rows]


def _ai_flags(session: Session, study_ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if not study_ids:
        return found
    for study_id, label in session.execute(
            select(AIFinding.study_id, AIFinding.label).where(
                AIFinding.study_id.in_(study_ids), AIFinding.positive.is_(True),
                AIFinding.review != "rejected").order_by(AIFinding.id)):
        labels = found.setdefault(study_id, [])
        if label not in labels:
            labels.append(label)
    return found


def _item(row: Any, flags: dict[int, list[str]], now: datetime) -> WorkItem:
    study, site_name, report_id, report_state, claimer = row
    due = study.due_at
    return WorkItem(
        study_id=study.id, study_uid=study.study_uid, site_id=study.site_id,
        site_name=site_name, patient_id=study.patient_id, patient_name=study.patient_name,
        description=study.description, modalities=list(study.modalities),
        instances=study.stored_instances, priority=study.priority,
        ai_critical=study.ai_critical, ai_flags=flags.get(study.id, []),
        status=_status(study, report_state), claimed_by=claimer,
        completed_at=study.completed_at, due_at=due,
        seconds_left=int((due - now).total_seconds()) if due is not None else None,
        report_id=report_id, priority_label=priority_label(study.priority),
        study_date=study.study_date, accession_number=study.accession_number,
        patient_sex=patient_sex(study), patient_age=patient_age(study, now.date()),
        body_part=study.body_part)


def get_visible_study(session: Session, user: UserContext, study_id: int) -> Study:
    """The study if the user may see its site; 404 otherwise (existence is not revealed)."""
    study = session.get(Study, study_id)
    if study is None or not user.can_see_site(study.site_id):
        raise NotFound(f"no study {study_id}")
    return study


def work_item(session: Session, user: UserContext, study_id: int) -> WorkItem:
    get_visible_study(session, user, study_id)
    q = _base(user).where(Study.id == study_id)
    row = session.execute(q).first()
    if row is None:
        raise NotFound(f"study {study_id} is not ready to read")
    return _item(row, _ai_flags(session, [study_id]), datetime.now(UTC))


def claim(session: Session, user: UserContext, study_id: int) -> WorkItem:
    """Take the study: one conditional UPDATE, so two readers never both get it."""
    if user.user_id is None or not user.has_role(*READER_ROLES):
        raise Forbidden("only a signed-in reader can claim a study")
    study = get_visible_study(session, user, study_id)
    result = session.execute(
        update(Study).where(Study.id == study.id, or_(Study.claimed_by.is_(None),
                                                      Study.claimed_by == user.user_id))
        .values(claimed_by=user.user_id, claimed_at=datetime.now(UTC))
        .execution_options(synchronize_session=False))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.refresh(study)
        holder = session.get(User, study.claimed_by) if study.claimed_by else None
        raise Conflict(f"study {study_id} is being read by "
                       f"{holder.display_name if holder else 'another reader'}")
    audit.append(session, actor=user.username, action="study.claim", object_type="study",
                 object_id=str(study_id))
    session.expire(study)
    return work_item(session, user, study_id)


def release(session: Session, user: UserContext, study_id: int) -> WorkItem:
    """Give the study back; only its holder or an admin may."""
    study = get_visible_study(session, user, study_id)
    if study.claimed_by is not None and study.claimed_by != user.user_id \
            and not user.has_role("admin"):
        raise Forbidden(f"study {study_id} is held by another reader; only they or an "
                        "admin can release it")
    study.claimed_by, study.claimed_at = None, None
    audit.append(session, actor=user.username, action="study.release", object_type="study",
                 object_id=str(study_id))
    session.flush()
    return work_item(session, user, study_id)
