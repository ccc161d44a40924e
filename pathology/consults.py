"""Second opinions: a question about a case (or chosen slides) to a consultant.

The consultant may work for another site: an open or answered consult gives that
consultant read access to that one case (:func:`consultant_case_ids`, which the web
edge adds to the user's sites), nothing else at the site.  A blinded consult hides the
first pathologist's diagnosis from the consultant, so the second opinion is
independent; the requester grades the answer (concordant, minor or major discordance),
which feeds the dashboard's concordance table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import PathologyCase, PathologyConsult, PathologySlide, User, UserSite
from core.timeutil import as_utc
from pathology import cases
from pathology.states import CaseState

CONCORDANCE = ("concordant", "minor", "major")
_CLOSED = (CaseState.SIGNED, CaseState.AMENDED)


def _user(session: Session, user: User | int) -> User:
    row = user if isinstance(user, User) else session.get(User, user)
    if row is None:
        raise NotFound(f"user {user} not found")
    return row


def get_consult(session: Session, consult_id: int) -> PathologyConsult:
    row = session.get(PathologyConsult, consult_id)
    if row is None:
        raise NotFound(f"consult {consult_id} not found")
    return row


def request_consult(
    session: Session, case: PathologyCase, requester: User | int, consultant_id: int,
    question: str, slide_ids: list[int], blinded: bool, first_diagnosis: str,
    now: datetime,
) -> PathologyConsult:
    """Ask ``consultant_id`` about ``case``.

    The requester takes the case if nobody holds it (one does not ask about a case
    someone else is reading); the case moves to ``consult_requested``.
    """
    now = as_utc(now)
    asker = _user(session, requester)
    question = question.strip()
    if not question:
        raise InvalidInput("a consult needs a question")
    consultant = session.get(User, consultant_id)
    if consultant is None or not consultant.enabled \
            or "pathologist" not in (consultant.roles or []):
        raise InvalidInput(f"user {consultant_id} is not an active pathologist")
    if consultant.id == asker.id:
        raise InvalidInput("a pathologist cannot ask themselves for a second opinion")
    if case.state in _CLOSED:
        raise Conflict(f"case {case.id} is {case.state}; amend it instead of asking")
    chosen = sorted(set(slide_ids))
    if chosen:
        own = set(session.scalars(select(PathologySlide.id).where(
            PathologySlide.case_id == case.id, PathologySlide.id.in_(chosen))))
        stray = [s for s in chosen if s not in own]
        if stray:
            raise InvalidInput(f"slides {stray} are not slides of case {case.id}")
    if case.assigned_to is None:
        cases.claim(session, case.id, asker.id, asker.username, now)
        session.refresh(case)
    elif case.assigned_to != asker.id:
        raise Conflict(f"case {case.id} is held by another pathologist; only the holder asks "
                       "for a second opinion")
    cases.start_review(session, case, asker, now)
    if case.state != CaseState.CONSULT_REQUESTED:
        case.state = CaseState.CONSULT_REQUESTED.value  # from in_review / consult_answered
        case.updated_at = now
    consult = PathologyConsult(
        case_id=case.id, requested_by=asker.id, consultant_id=consultant.id,
        question=question, slide_ids=chosen, blinded=bool(blinded),
        first_diagnosis=first_diagnosis.strip(), state="requested", requested_at=now)
    session.add(consult)
    session.flush()
    cases.record_event(session, case.id, "consult_requested", asker.username, now,
                       {"consult_id": consult.id, "consultant": consultant.username,
                        "blinded": consult.blinded}, first_only=False)
    audit.append(session, actor=asker.username, action="pathology.consult_request",
                 object_type="pathology_consult", object_id=str(consult.id),
                 detail={"case_id": case.id, "consultant": consultant.username,
                         "blinded": consult.blinded, "slides": chosen})
    return consult


def answer_consult(session: Session, consult: PathologyConsult, consultant: User | int,
                   answer: str, now: datetime) -> PathologyConsult:
    """The consultant's answer; the case moves on once no consult is left open."""
    now = as_utc(now)
    who = _user(session, consultant)
    if who.id != consult.consultant_id:
        raise Forbidden(f"consult {consult.id} was sent to another consultant")
    if consult.state != "requested":
        raise Conflict(f"consult {consult.id} is answered already")
    answer = answer.strip()
    if not answer:
        raise InvalidInput("the answer must not be empty")
    consult.answer, consult.state, consult.answered_at = answer, "answered", now
    session.flush()
    case = cases.get_case(session, consult.case_id)
    still_open = session.scalar(select(PathologyConsult.id).where(
        PathologyConsult.case_id == case.id, PathologyConsult.state == "requested").limit(1))
    if still_open is None and case.state == CaseState.CONSULT_REQUESTED:
        case.state, case.updated_at = CaseState.CONSULT_ANSWERED.value, now
    cases.record_event(session, case.id, "consult_answered", who.username, now,
                       {"consult_id": consult.id}, first_only=False)
    audit.append(session, actor=who.username, action="pathology.consult_answer",
                 object_type="pathology_consult", object_id=str(consult.id),
                 detail={"case_id": case.id})
    session.flush()
    return consult


def grade_consult(session: Session, consult: PathologyConsult, requester: User | int,
                  concordance: str) -> PathologyConsult:
    """The requester records whether the answer agrees with their diagnosis."""
    who = _user(session, requester)
    if who.id != consult.requested_by:
        raise Forbidden(f"only the pathologist who asked consult {consult.id} grades it")
    if concordance not in CONCORDANCE:
        raise InvalidInput(f"concordance must be one of {list(CONCORDANCE)}, "
                           f"not {concordance!r}")
    if consult.state != "answered":
        raise Conflict(f"consult {consult.id} has no answer to grade yet")
    consult.concordance = concordance
    audit.append(session, actor=who.username, action="pathology.consult_grade",
                 object_type="pathology_consult", object_id=str(consult.id),
                 detail={"case_id": consult.case_id, "concordance": concordance})
    session.flush()
    return consult


def consults_for(session: Session, user_id: int) -> list[PathologyConsult]:
    """Consults sent to the user and asked by the user, newest first."""
    return list(session.scalars(select(PathologyConsult).where(or_(
        PathologyConsult.consultant_id == user_id, PathologyConsult.requested_by == user_id))
        .order_by(PathologyConsult.requested_at.desc(), PathologyConsult.id.desc())))


def consults_of_case(session: Session, case_id: int) -> list[PathologyConsult]:
    return list(session.scalars(select(PathologyConsult)
                                .where(PathologyConsult.case_id == case_id)
                                .order_by(PathologyConsult.id)))


def consultant_case_ids(session: Session, user_id: int) -> set[int]:
    """Cases the user may read because they were asked about them (open or answered)."""
    return set(session.scalars(select(PathologyConsult.case_id).where(
        PathologyConsult.consultant_id == user_id,
        PathologyConsult.state.in_(("requested", "answered")))))


def visible_first_diagnosis(consult: PathologyConsult, viewer_id: int | None) -> str:
    """The first diagnosis as ``viewer_id`` may see it: hidden from a blinded
    consultant (and from anyone but the requester while blinded)."""
    if consult.blinded and viewer_id != consult.requested_by:
        return ""
    return consult.first_diagnosis


def consult_out(session: Session, consult: PathologyConsult,
                viewer_id: int | None) -> dict[str, Any]:
    """ConsultOut (spec) as ``viewer_id`` may see it; datetimes ISO."""
    names = {u.id: u.display_name for u in session.scalars(select(User).where(
        User.id.in_((consult.requested_by, consult.consultant_id))))}
    return {
        "id": consult.id, "case_id": consult.case_id,
        "requested_by": consult.requested_by,
        "requester_name": names.get(consult.requested_by, ""),
        "consultant_id": consult.consultant_id,
        "consultant_name": names.get(consult.consultant_id, ""),
        "question": consult.question, "slide_ids": list(consult.slide_ids or []),
        "blinded": consult.blinded,
        "first_diagnosis": visible_first_diagnosis(consult, viewer_id),
        "state": consult.state, "answer": consult.answer,
        "concordance": consult.concordance,
        "requested_at": as_utc(consult.requested_at).isoformat(),
        "answered_at": as_utc(consult.answered_at).isoformat()
        if consult.answered_at is not None else None,
    }


def consultants(session: Session, *, exclude_user_id: int | None = None) -> list[dict[str, Any]]:
    """Every enabled pathologist, at any site, who can be asked: {"id","display_name",
    "sites"} ("*" for center staff who read every site)."""
    users = [u for u in session.scalars(select(User).where(User.enabled.is_(True))
                                        .order_by(User.display_name, User.id))
             if "pathologist" in (u.roles or []) and u.id != exclude_user_id]
    sites: dict[int, list[str]] = {u.id: [] for u in users}
    if users:
        for user_id, site_id in session.execute(
                select(UserSite.user_id, UserSite.site_id)
                .where(UserSite.user_id.in_(list(sites))).order_by(UserSite.site_id)):
            sites[user_id].append(site_id)
    return [{"id": u.id, "display_name": u.display_name,
             "sites": ["*"] if u.all_sites else sites[u.id]} for u in users]
