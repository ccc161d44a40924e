"""The frozen-section path: page the on-duty pathologist, escalate, keep the clock.

A frozen section is read while the patient is still open on the table, so the case
pages the on-duty pathologist the moment it is received (``page_on_duty``, called by
intake), and if nobody has opened a slide within ``pathology_frozen_escalation_s`` of the
last page the scheduler pages the next pathologist on the rota (``escalate_unanswered``,
registered as a periodic task).  Paging stops once a slide was viewed (``first_tile``)
or the case is signed.  If there is nobody to page, that is recorded and shown to
admins (``page_failed``): a critical case must never go unanswered silently.

The rota: ``settings.pathology_on_duty`` (usernames, in order), else every enabled
pathologist who may read the case's site, by username.  Every function takes ``now``,
so the clock can be faked in tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from core.errors import InvalidInput
from core.models import PathologyCase, PathologyEvent, User, UserSite
from core.settings import Settings, get_settings
from core.timeutil import as_utc
from pathology import paging
from pathology.cases import record_event

#: The steps of the frozen-section clock, in order.
TIMELINE_STEPS = ("received", "qc", "first_tile", "call", "signed")
_CLOSED = ("signed", "amended")


def rota(session: Session, case: PathologyCase, settings: Settings) -> list[User]:
    """Who is paged for ``case``, in order (see the module doc)."""
    if settings.pathology_on_duty:
        users = {u.username: u for u in session.scalars(
            select(User).where(User.username.in_(settings.pathology_on_duty)))}
        return [users[name] for name in settings.pathology_on_duty
                if name in users and users[name].enabled]
    may_read_site = User.all_sites.is_(True) | exists().where(
        UserSite.user_id == User.id, UserSite.site_id == case.site_id)
    candidates = session.scalars(select(User).where(User.enabled.is_(True), may_read_site)
                                 .order_by(User.username))
    return [u for u in candidates if "pathologist" in (u.roles or [])]


def _viewed(session: Session, case_id: int) -> bool:
    return session.scalar(select(PathologyEvent.id).where(
        PathologyEvent.case_id == case_id, PathologyEvent.step == "first_tile")
        .limit(1)) is not None


def page_on_duty(session: Session, case: PathologyCase, now: datetime,
                 *, settings: Settings | None = None) -> User | None:
    """Page the first pathologist on the rota about a frozen case (once per case).

    Returns who was paged; None when the case was paged already, a slide was viewed
    already, or nobody could be paged (then a ``page_failed`` event says why).
    """
    settings = settings or get_settings()
    if case.paged_user_id is not None or case.state in _CLOSED or _viewed(session, case.id):
        return None
    on_duty = rota(session, case, settings)
    if not on_duty:
        why = ("no pathologist on the rota (RDC_PATHOLOGY_ON_DUTY names no enabled user)"
               if settings.pathology_on_duty else
               f"no enabled pathologist may read site {case.site_id}")
        paging.page_failed(session, case, why, now)
        return None
    paging.page(session, on_duty[0].id, case, "frozen section received", now,
                settings=settings)
    return on_duty[0]


def escalate_unanswered(session: Session, settings: Settings,
                        now: datetime | None = None) -> list[int]:
    """Page the next pathologist for every frozen case whose last page went unanswered
    for ``pathology_frozen_escalation_s``; page frozen cases nobody was paged for yet
    (the rota was empty).  The scheduler's periodic task; returns the case ids paged."""
    now = as_utc(now)
    wait = timedelta(seconds=settings.pathology_frozen_escalation_s)
    viewed = exists().where(PathologyEvent.case_id == PathologyCase.id,
                            PathologyEvent.step == "first_tile")
    cases = list(session.scalars(select(PathologyCase).where(
        PathologyCase.urgency == "frozen", PathologyCase.state.not_in(_CLOSED), ~viewed)
        .order_by(PathologyCase.id)))
    paged: list[int] = []
    for case in cases:
        if case.paged_user_id is None or case.paged_at is None:
            if page_on_duty(session, case, now, settings=settings) is not None:
                paged.append(case.id)
            continue
        if as_utc(case.paged_at) + wait > now:
            continue
        on_duty = rota(session, case, settings)
        if not on_duty:
            paging.page_failed(session, case, "nobody left on the rota to escalate to", now)
            continue
        ids = [u.id for u in on_duty]
        nxt = on_duty[(ids.index(case.paged_user_id) + 1) % len(on_duty)
                      if case.paged_user_id in ids else 0]
        previous = case.paged_user_id
        case.escalations = (case.escalations or 0) + 1
        record_event(session, case.id, "escalated", "system", now,
                     {"from_user_id": previous, "to_user_id": nxt.id,
                      "to_username": nxt.username, "escalation": case.escalations},
                     first_only=False)
        paging.page(session, nxt.id, case,
                    f"frozen section unanswered for {settings.pathology_frozen_escalation_s:g} s"
                    f" (escalation {case.escalations})", now, settings=settings)
        paged.append(case.id)
    session.flush()
    return paged


def record_call(session: Session, case: PathologyCase, actor: str, text: str,
                now: datetime) -> PathologyEvent | None:
    """The intra-operative call (what the surgeon was told), the clock's 4th step.
    Only the first call counts for the clock; later ones are recorded in the timeline."""
    text = text.strip()
    if not text:
        raise InvalidInput("the intra-operative call text must not be empty")
    first = record_event(session, case.id, "call", actor, now, {"text": text})
    if first is None:
        return record_event(session, case.id, "call_update", actor, now, {"text": text},
                            first_only=False)
    return first


def timeline(session: Session, case_id: int) -> dict[str, datetime]:
    """When each step of the case first happened, in time order (every step recorded,
    the frozen clock's five among them)."""
    out: dict[str, datetime] = {}
    for step, at in session.execute(select(PathologyEvent.step, PathologyEvent.at)
                                    .where(PathologyEvent.case_id == case_id)
                                    .order_by(PathologyEvent.at, PathologyEvent.id)):
        out.setdefault(step, at)
    return out
