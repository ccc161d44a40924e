"""The pathology case worklist, claim/release, and the case's state moves and events.

Pure service functions on a SQLAlchemy session: the web edge (``viewer/pathology_*``)
checks who is asking and which sites they may see, and passes them in.  Every time is
the caller's ``now``, so the frozen-section clock can be tested with a fake one.

Order of the worklist: frozen sections first (a surgeon is waiting with the patient
open), then STAT, then the time left against the site's turnaround target
(``due_at``), then age.  Claiming is one conditional UPDATE, like the radiology
worklist's claim, so two pathologists never hold one case.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from core import audit
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import PathologyCase, PathologyConsult, PathologyEvent, PathologySlide, User
from core.timeutil import as_utc
from pathology.states import OPEN_STATES, CaseState, check_case_transition

#: Worklist status filters: open cases, every case, or one state by name.
STATUSES = ("open", "all", *(s.value for s in CaseState))
#: States from which a claim moves the case to "assigned" (a held case keeps its state).
_UNHELD = (CaseState.RECEIVED, CaseState.QC_PASSED, CaseState.QC_FAILED)
#: A case in these states can no longer be claimed.
_CLOSED = (CaseState.SIGNED, CaseState.AMENDED)
_URGENCY_RANK = {"frozen": 0, "stat": 1}


@dataclass(frozen=True)
class CaseSummary:
    """One worklist row (the web edge adds ``mine`` and serialises the datetimes)."""

    id: int
    site_id: str
    accession_number: str
    patient_id: str
    patient_name: str
    organ: str
    urgency: str
    state: str
    assigned_to: int | None
    assigned_name: str | None
    due_at: datetime | None
    received_at: datetime
    slide_count: int
    stains: list[str] = field(default_factory=list)
    #: "fail" when any slide failed the quality gate, "pending" while any is ungraded.
    qc: str = "pending"
    qc_failed_slides: int = 0
    consult_open: bool = False


def get_case(session: Session, case_id: int) -> PathologyCase:
    """The case, or NotFound (the web edge checks the site before saying anything)."""
    row = session.get(PathologyCase, case_id)
    if row is None:
        raise NotFound(f"pathology case {case_id} not found")
    return row


def case_qc(slides: list[PathologySlide]) -> str:
    """The case's quality grade from its slides' grades."""
    grades = {s.qc_grade for s in slides}
    if "fail" in grades:
        return "fail"
    if not slides or "pending" in grades:
        return "pending"
    return "pass"


def worklist(
    session: Session, *, visible_sites: set[str] | None, user_id: int | None,
    site: str | None = None, stain: str | None = None, organ: str | None = None,
    mine: bool = False, status: str = "open", technician: bool = False,
    also_case_ids: set[int] | None = None,
) -> list[CaseSummary]:
    """The cases a user may see, filtered, in reading order.

    ``visible_sites`` None means every site (center staff).  ``also_case_ids`` adds
    cases outside those sites (a consultant's consult cases).  ``technician`` (a county
    site_user) lists the cases that failed the quality gate first: they need a rescan.
    """
    if status not in STATUSES:
        raise InvalidInput(f"unknown case status {status!r}; expected one of {list(STATUSES)}")
    if mine and user_id is None:
        raise InvalidInput("'mine' needs a signed-in user")
    query = select(PathologyCase)
    if visible_sites is not None:
        allowed: ColumnElement[bool] = PathologyCase.site_id.in_(sorted(visible_sites))
        if also_case_ids:
            allowed = or_(allowed, PathologyCase.id.in_(sorted(also_case_ids)))
        query = query.where(allowed)
    if site:
        query = query.where(PathologyCase.site_id == site)
    if organ:
        query = query.where(PathologyCase.organ == organ)
    if stain:
        query = query.where(exists().where(PathologySlide.case_id == PathologyCase.id,
                                           PathologySlide.stain == stain))
    if mine:
        query = query.where(PathologyCase.assigned_to == user_id)
    if status == "open":
        query = query.where(PathologyCase.state.in_(sorted(OPEN_STATES)))
    elif status != "all":
        query = query.where(PathologyCase.state == status)
    urgency_rank = case(_URGENCY_RANK, value=PathologyCase.urgency, else_=2)
    order: list[Any] = []
    if technician:
        order.append(case((PathologyCase.state == CaseState.QC_FAILED.value, 0), else_=1))
    order += [urgency_rank, PathologyCase.due_at.is_(None), PathologyCase.due_at,
              PathologyCase.received_at, PathologyCase.id]
    cases = list(session.scalars(query.order_by(*order)))
    return summaries(session, cases)


def summaries(session: Session, cases: list[PathologyCase]) -> list[CaseSummary]:
    """Worklist rows for ``cases`` (three queries, whatever the number of cases)."""
    ids = [c.id for c in cases]
    slides: dict[int, list[PathologySlide]] = defaultdict(list)
    open_consults: set[int] = set()
    if ids:
        for s in session.scalars(select(PathologySlide).where(PathologySlide.case_id.in_(ids))
                                 .order_by(PathologySlide.id)):
            slides[s.case_id].append(s)
        open_consults = set(session.scalars(
            select(PathologyConsult.case_id).where(PathologyConsult.case_id.in_(ids),
                                                   PathologyConsult.state == "requested")))
    holder_ids = {c.assigned_to for c in cases if c.assigned_to is not None}
    names = ({u.id: u.display_name for u in
              session.scalars(select(User).where(User.id.in_(sorted(holder_ids))))}
             if holder_ids else {})
    out = []
    for c in cases:
        own = slides[c.id]
        out.append(CaseSummary(
            id=c.id, site_id=c.site_id, accession_number=c.accession_number,
            patient_id=c.patient_id, patient_name=c.patient_name, organ=c.organ,
            urgency=c.urgency, state=c.state, assigned_to=c.assigned_to,
            assigned_name=names.get(c.assigned_to) if c.assigned_to is not None else None,
            due_at=c.due_at, received_at=c.received_at, slide_count=len(own),
            stains=sorted({s.stain for s in own if s.stain}), qc=case_qc(own),
            qc_failed_slides=sum(1 for s in own if s.qc_grade == "fail"),
            consult_open=c.id in open_consults))
    return out


def summary(session: Session, case_id: int) -> CaseSummary:
    """One case's worklist row."""
    return summaries(session, [get_case(session, case_id)])[0]


def record_event(
    session: Session, case_id: int, step: str, actor: str, now: datetime,
    detail: dict[str, Any] | None = None, first_only: bool = True,
) -> PathologyEvent | None:
    """Record a step of the case's timeline.

    With ``first_only`` a step already recorded is left as it was and None returned:
    the frozen-section clock measures the *first* tile viewed, the first call.
    """
    if first_only:
        known = session.scalar(select(PathologyEvent.id).where(
            PathologyEvent.case_id == case_id, PathologyEvent.step == step).limit(1))
        if known is not None:
            return None
    event = PathologyEvent(case_id=case_id, step=step, at=as_utc(now), actor=actor,
                           detail=dict(detail or {}))
    session.add(event)
    session.flush()
    return event


def _holder_name(session: Session, user_id: int | None) -> str:
    holder = session.get(User, user_id) if user_id is not None else None
    return holder.display_name if holder is not None else "another pathologist"


def claim(session: Session, case_id: int, user_id: int, username: str,
          now: datetime) -> PathologyCase:
    """Take the case: one conditional UPDATE, so two pathologists never both hold it.

    Claiming a case one holds already is a no-op; a signed case cannot be claimed.
    """
    now = as_utc(now)
    get_case(session, case_id)
    new_state = case((PathologyCase.state.in_([s.value for s in _UNHELD]),
                      CaseState.ASSIGNED.value), else_=PathologyCase.state)
    result = session.execute(
        update(PathologyCase)
        .where(PathologyCase.id == case_id,
               PathologyCase.state.not_in([s.value for s in _CLOSED]),
               or_(PathologyCase.assigned_to.is_(None), PathologyCase.assigned_to == user_id))
        .values(assigned_to=user_id, state=new_state, updated_at=now,
                assigned_at=case((and_(PathologyCase.assigned_to == user_id,
                                       PathologyCase.assigned_at.is_not(None)),
                                  PathologyCase.assigned_at), else_=now))
        .execution_options(synchronize_session=False))
    row = get_case(session, case_id)
    session.refresh(row)
    if result.rowcount == 0:  # type: ignore[attr-defined]
        if row.state in _CLOSED:
            raise Conflict(f"case {case_id} is {row.state}; it can no longer be claimed")
        raise Conflict(f"case {case_id} is being read by {_holder_name(session, row.assigned_to)}")
    record_event(session, case_id, "claimed", username, now, {"user_id": user_id},
                 first_only=False)
    audit.append(session, actor=username, action="pathology.case_claim",
                 object_type="pathology_case", object_id=str(case_id))
    return row


def _qc_state(session: Session, case_id: int) -> str:
    slides = list(session.scalars(select(PathologySlide)
                                  .where(PathologySlide.case_id == case_id)))
    return {"fail": CaseState.QC_FAILED, "pass": CaseState.QC_PASSED}.get(
        case_qc(slides), CaseState.RECEIVED).value


def release(session: Session, case_id: int, user_id: int, username: str, now: datetime,
            *, force: bool = False) -> PathologyCase:
    """Give the case back; only its holder may, or an admin with ``force``.

    An assigned or in-review case goes back to its quality state (unheld); a case
    waiting on a consult keeps its state.
    """
    row = get_case(session, case_id)
    if row.assigned_to is None:
        return row
    if row.assigned_to != user_id and not force:
        raise Forbidden(f"case {case_id} is held by {_holder_name(session, row.assigned_to)}; "
                        "only they or an admin can release it")
    if row.state in _CLOSED:
        raise Conflict(f"case {case_id} is {row.state}; it cannot be released")
    row.assigned_to, row.assigned_at = None, None
    if row.state in (CaseState.ASSIGNED, CaseState.IN_REVIEW):
        row.state = _qc_state(session, case_id)
    row.updated_at = as_utc(now)
    audit.append(session, actor=username, action="pathology.case_release",
                 object_type="pathology_case", object_id=str(case_id))
    session.flush()
    return row


def _user(session: Session, user: User | int) -> User:
    if isinstance(user, User):
        return user
    row = session.get(User, user)
    if row is None:
        raise NotFound(f"user {user} not found")
    return row


def _move(row: PathologyCase, new: CaseState, now: datetime) -> None:
    check_case_transition(row.state, new.value)
    row.state = new.value
    row.updated_at = as_utc(now)


def start_review(session: Session, case: PathologyCase, user: User | int,
                 now: datetime) -> PathologyCase:
    """The holder opens the case for reading: assigned → in review (once)."""
    who = _user(session, user)
    if case.assigned_to != who.id:
        raise Conflict(f"case {case.id} must be claimed by {who.display_name} before review "
                       f"(held by {_holder_name(session, case.assigned_to)})"
                       if case.assigned_to is not None else
                       f"case {case.id} must be claimed before review")
    if case.state == CaseState.ASSIGNED:
        _move(case, CaseState.IN_REVIEW, now)
        session.flush()
    return case


def mark_signed(session: Session, case: PathologyCase, actor: str,
                now: datetime) -> PathologyCase:
    """The case's report was signed (by the reports service): the case is signed.

    Called in the signing transaction, so a refusal here rolls the signature back too:
    a case is signed by the pathologist who holds it, with no consult left open."""
    if case.assigned_to is None and case.state not in _CLOSED:
        raise Conflict(f"case {case.id} must be claimed before it is signed")
    if case.state == CaseState.CONSULT_REQUESTED:
        raise Conflict(f"case {case.id} waits on a consult; it is signed once answered")
    if case.state == CaseState.ASSIGNED:
        _move(case, CaseState.IN_REVIEW, now)
    _move(case, CaseState.SIGNED, now)
    record_event(session, case.id, "signed", actor, now)
    session.flush()
    return case


def mark_amended(session: Session, case: PathologyCase, actor: str,
                 now: datetime) -> PathologyCase:
    """A signed amendment (addendum) of the case's report: the case is amended."""
    _move(case, CaseState.AMENDED, now)
    record_event(session, case.id, "amended", actor, now, first_only=False)
    session.flush()
    return case
