"""The reading worklist: sorted and paged in the database, claim and release.

Order: STAT requests first, then studies an AI pre-read marked critical, then
the time left against the site's turnaround target (``Study.due_at``), then the
study id (:func:`core.models.study.worklist_order`).  The order and the filters
run in SQL on partial expression indexes of that very key (migration 0011), so a
page costs the same with a year of studies (100,000) as with a hundred; only the
page's rows are joined and turned into items.

Paging: by page number (``OFFSET``, kept for the page's "page 3 / 40" pager), or by
keyset: a page answers ``next_cursor``, an opaque token holding the sort key of its
last row, signed (HMAC-SHA256) and bound to the filters; the next page is the rows
after that key, found by a row comparison on the index however deep it is.  The
cursor carries a position, never a permission: the account's site filter applies to
every page, whatever the cursor says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    String,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from core import audit
from core.db import UTCDateTime
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import AIFinding, Report, Site, Study, User
from core.models.study import WORKLIST_STAT_PRIORITY, worklist_order, worklist_ready
from core.settings import Settings
from core.states import ReportState, StudyState
from viewer.auth import UserContext, api_token

#: Worklist priorities: a STAT request (C-STORE priority HIGH, pacs_gateway.receipts),
#: an AI pre-read's or an ECG analysis's critical finding (ai_models.inference, ecg.jobs),
#: an urgent request; anything lower is routine.
STAT = WORKLIST_STAT_PRIORITY
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
    text = value.strip()[:8]
    try:
        if len(text) == 8 and text.isdigit() and text.isascii():
            # The usual YYYYMMDD without strptime (a third of a page's time otherwise).
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return datetime.strptime(text, "%Y%m%d").date()
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


def _base_query() -> Select[Study, str, int, str, str]:
    """A worklist row: the study, its site's name, its report and who holds it."""
    return (select(Study, Site.name, Report.id, Report.state, User.username)
            .join(Site, Site.id == Study.site_id)
            .outerjoin(Report, and_(Report.study_id == Study.id,
                                    Report.subject_type == "study"))
            .outerjoin(User, User.id == Study.claimed_by))


def _base(user: UserContext) -> Select[Any]:
    narrowed: Select[Any] = visible(_base_query().where(Study.state.in_(list(READY))), user)
    return narrowed


def _filters(user: UserContext, status: str, site: str | None, modality: str | None,
             mine: bool) -> list[ColumnElement[bool]]:
    """The worklist's WHERE on the studies table alone (no join: the count and the page's
    ids come from one partial index)."""
    if status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    where = [worklist_ready()]
    if not user.all_sites:
        where.append(Study.site_id.in_(sorted(user.site_ids)))
    if status == "signed":
        where.append(Study.report_signed.expression)
    elif status != "all":  # open, and the three kinds of open below
        where.append(~Study.report_signed)
        reported = exists().where(Report.study_id == Study.id, Report.subject_type == "study")
        if status == "unread":
            where += [~reported, Study.claimed_by.is_(None)]
        elif status == "claimed":
            where.append(Study.claimed_by.is_not(None))
        elif status == "reported":
            where.append(reported)
    if site:
        where.append(Study.site_id == site)
    if modality:
        # The JSON list as text: portable across SQLite and PostgreSQL.
        where.append(cast(Study.modalities, String).like(f'%"{modality.upper()}"%'))
    if mine:
        if user.user_id is None:
            raise InvalidInput("'assigned to me' needs a signed-in user")
        where.append(Study.claimed_by == user.user_id)
    return where


def _status(study: Study, report_state: str | None) -> str:
    if report_state in SIGNED:
        return "signed"
    if report_state is not None:
        return "reported"
    return "claimed" if study.claimed_by is not None else "unread"


# Keyset cursors -------------------------------------------------------------------------------
class InvalidCursor(InvalidInput):
    """A ``cursor`` that is not one this worklist handed out for these filters: 400."""

    http_status = 400


@dataclass(frozen=True)
class SortKey:
    """Where a study sits in the worklist's order (:func:`worklist_order`)."""

    not_stat: bool
    not_critical: bool
    due: datetime
    study_id: int

    @classmethod
    def of(cls, study: Study) -> SortKey:
        due = study.due_at or study.completed_at or study.first_received_at
        return cls(study.priority < STAT, not study.ai_critical, due, study.id)


#: version, flags (1: not STAT, 2: not AI-critical), due (microseconds since the epoch,
#: UTC), study id; then the first 16 bytes of its HMAC-SHA256.
_CURSOR = struct.Struct(">BBqq")
_CURSOR_VERSION = 1
_MAC_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_CHARS = len(base64.urlsafe_b64encode(bytes(_CURSOR.size + _MAC_BYTES)).rstrip(b"="))
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_MAX_ID = 2**31 - 1  # studies.id is a 32-bit integer


def cursor_secret(settings: Settings) -> bytes:
    """The key that signs worklist cursors: derived from the operator token, which every
    web process of the center shares (a new token invalidates open cursors, harmlessly:
    the client starts again from the first page)."""
    return hmac.new(api_token(settings).encode(), b"rdc worklist cursor v1",
                    hashlib.sha256).digest()


def cursor_scope(status: str, site: str | None, modality: str | None, mine: bool) -> bytes:
    """The filters a cursor is valid for: the same list, page after page."""
    return "\x1f".join((status, site or "", (modality or "").upper(),
                        "1" if mine else "0")).encode()


def _mac(secret: bytes, scope: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"worklist\x00" + scope + b"\x00" + payload,
                    hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(secret: bytes, key: SortKey, scope: bytes) -> str:
    """The opaque ``next_cursor`` token for the rows after ``key``."""
    delta = key.due.astimezone(UTC) - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    flags = (1 if key.not_stat else 0) | (2 if key.not_critical else 0)
    payload = _CURSOR.pack(_CURSOR_VERSION, flags, micros, key.study_id)
    return base64.urlsafe_b64encode(payload + _mac(secret, scope, payload)) \
        .rstrip(b"=").decode("ascii")


def decode_cursor(secret: bytes, token: str, scope: bytes) -> SortKey:
    """The sort key inside ``token``; :class:`InvalidCursor` (400) unless it is exactly a
    token :func:`encode_cursor` made with ``secret`` for ``scope``."""
    if len(token) != _CURSOR_CHARS or not _CURSOR_TEXT.fullmatch(token):
        raise InvalidCursor("malformed cursor: pass the next_cursor of the previous page "
                            "unchanged, or leave it out for the first page")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as e:
        raise InvalidCursor("malformed cursor: not base64url") from e
    payload, mac = raw[:_CURSOR.size], raw[_CURSOR.size:]
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token \
            or not hmac.compare_digest(mac, _mac(secret, scope, payload)):
        raise InvalidCursor("invalid cursor: altered, or made for other filters (status, "
                            "site, modality, assigned to me); start again from the first page")
    version, flags, micros, study_id = _CURSOR.unpack(payload)
    if version != _CURSOR_VERSION or flags > 3 or not 1 <= study_id <= _MAX_ID:
        raise InvalidCursor("invalid cursor: unknown version or fields out of range")
    try:
        due = _EPOCH + timedelta(microseconds=micros)
    except OverflowError as e:
        raise InvalidCursor("invalid cursor: due time out of range") from e
    return SortKey(bool(flags & 1), bool(flags & 2), due, study_id)


def _inline(number: int) -> ColumnElement[int]:
    return literal(number, Integer(), literal_execute=True)


def _after(key: SortKey) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in the worklist's order: one row comparison, which the
    database answers from the index (an index condition on PostgreSQL)."""
    return tuple_(*worklist_order()) > tuple_(
        literal(key.not_stat, Boolean()), literal(key.not_critical, Boolean()),
        literal(key.due, UTCDateTime()), literal(key.study_id, Integer()))


# The page ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorklistPage:
    """One page, the length of the whole list, and the cursor of the next page (None on
    the last page, or when no ``secret`` was given to sign it)."""

    total: int
    items: list[WorkItem]
    next_cursor: str | None
    next_key: SortKey | None


def worklist_page(session: Session, user: UserContext, *, site: str | None = None,
                  modality: str | None = None, status: str = "open", mine: bool = False,
                  page: int = 1, page_size: int = 50, cursor: str | None = None,
                  secret: bytes | None = None, now: datetime | None = None) -> WorklistPage:
    """One page of the worklist: the ``page``-th by offset, or, given ``cursor`` (a
    ``next_cursor`` signed with ``secret``), the rows after it; ``page`` is then unused."""
    if not 1 <= page_size <= 200 or page < 1:
        raise InvalidInput("page must be >= 1 and page_size between 1 and 200")
    where = _filters(user, status, site, modality, mine)
    scope = cursor_scope(status, site, modality, mine)
    after = None
    if cursor:
        if secret is None:
            raise ValueError("a cursor needs the secret it was signed with")
        after = decode_cursor(secret, cursor, scope)
    now = now or datetime.now(UTC)
    order = worklist_order()
    total = session.scalar(select(func.count()).select_from(Study).where(*where)) or 0
    # The page's ids from the index alone (an offset skips index entries, not joined
    # rows), one more than asked to know whether a next page exists; then those rows.
    # LIMIT and OFFSET are written into the SQL: a generic plan of a prepared statement
    # guesses a bound LIMIT at a tenth of the table and joins them all.
    ids = select(Study.id).where(*where).order_by(*order).limit(_inline(page_size + 1))
    if after is not None:
        ids = ids.where(_after(after))
    else:
        ids = ids.offset(_inline((page - 1) * page_size))
    rows = session.execute(_base_query().where(Study.id.in_(ids.scalar_subquery()))
                           .order_by(*order)).all()
    more, rows = len(rows) > page_size, rows[:page_size]
    flags = _ai_flags(session, [r[0].id for r in rows])
    last = SortKey.of(rows[-1][0]) if rows and more else None
    token = encode_cursor(secret, last, scope) if last is not None and secret else None
    return WorklistPage(int(total), [_item(r, flags, now) for r in rows], token, last)


def query_worklist(session: Session, user: UserContext, *, site: str | None = None,
                   modality: str | None = None, status: str = "open", mine: bool = False,
                   page: int = 1, page_size: int = 50,
                   now: datetime | None = None) -> tuple[int, list[WorkItem]]:
    """One page of the worklist (by page number) and the total count behind it."""
    result = worklist_page(session, user, site=site, modality=modality, status=status,
                           mine=mine, page=page, page_size=page_size, now=now)
    return result.total, result.items


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
