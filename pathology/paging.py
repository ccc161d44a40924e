"""Paging a pathologist: the in-app notice and the center's notification webhook.

A frozen section is a surgeon waiting with the patient on the table, so a page must
never be lost: the in-app notice (a ``paged`` event on the case, which the app's banner
reads through :func:`open_pages`) is written first, in the caller's transaction, and
the webhook (the paging system the center uses for critical results) is best effort on
top of it (the center's shared :func:`core.notify.post_webhook`).  A webhook that
fails or times out is logged and audited, never raised: an unreachable pager must not
roll back the in-app page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, notify
from core.errors import NotFound
from core.models import PathologyCase, PathologyEvent, User
from core.settings import Settings, get_settings
from core.timeutil import as_utc
from pathology.cases import record_event

log = logging.getLogger(__name__)

_CLOSED = ("signed", "amended")


@dataclass(frozen=True)
class OpenPage:
    """A page still waiting for an answer (no slide of the case viewed yet)."""

    case_id: int
    accession_number: str
    reason: str
    at: datetime
    #: "page" (you are paged) or "page_failed" (nobody could be paged: admins see it).
    kind: str = "page"

    def as_json(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "accession_number": self.accession_number,
                "reason": self.reason, "at": self.at.isoformat(), "kind": self.kind}


def page(session: Session, user_id: int, case: PathologyCase, reason: str, now: datetime,
         *, settings: Settings | None = None) -> PathologyEvent:
    """Page ``user_id`` about ``case``: in-app notice, audit, then the webhook."""
    settings = settings or get_settings()
    now = as_utc(now)
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    event = record_event(session, case.id, "paged", "system", now,
                         {"user_id": user.id, "username": user.username, "reason": reason},
                         first_only=False)
    assert event is not None  # first_only=False always records
    case.paged_user_id, case.paged_at = user.id, now
    audit.append(session, actor="system", action="pathology.page",
                 object_type="pathology_case", object_id=str(case.id),
                 detail={"user": user.username, "reason": reason})
    if settings.notify_webhook_url:
        _post_webhook(session, settings.notify_webhook_url, case, user, reason, now)
    session.flush()
    return event


def _post_webhook(session: Session, url: str, case: PathologyCase, user: User, reason: str,
                  now: datetime) -> None:
    body = {"kind": "pathology.page", "case_id": case.id, "site_id": case.site_id,
            "accession_number": case.accession_number, "urgency": case.urgency,
            "user": user.username, "reason": reason, "at": now.isoformat()}
    outcome = notify.post_webhook(url, body)
    if not outcome.ok:
        log.warning("pathology page webhook failed for case %s: %s", case.id, outcome.error)
        audit.append(session, actor="system", action="pathology.page_webhook_failed",
                     object_type="pathology_case", object_id=str(case.id),
                     detail={"user": user.username, "error": outcome.error})


def page_failed(session: Session, case: PathologyCase, reason: str,
                now: datetime) -> PathologyEvent | None:
    """Nobody could be paged: record it loudly (event, audit, log) so admins see it.

    Recorded once per case (a scheduler retrying every minute does not pile events up).
    """
    event = record_event(session, case.id, "page_failed", "system", now, {"reason": reason})
    if event is not None:
        log.error("pathology case %s (%s): nobody could be paged: %s", case.id,
                  case.accession_number, reason)
        audit.append(session, actor="system", action="pathology.page_failed",
                      object_type="pathology_case", object_id=str(case.id),
                      detail={"reason": reason})
    return event


def _answered(session: Session, case_ids: list[int]) -> set[int]:
    if not case_ids:
        return set()
    return set(session.scalars(select(PathologyEvent.case_id).where(
        PathologyEvent.case_id.in_(case_ids), PathologyEvent.step == "first_tile")))


def open_pages(session: Session, user_id: int, *, admin: bool = False) -> list[OpenPage]:
    """Pages for ``user_id`` not yet answered by viewing a slide of the case; with
    ``admin``, also the frozen cases nobody could be paged for."""
    cases = list(session.scalars(select(PathologyCase).where(
        PathologyCase.urgency == "frozen", PathologyCase.state.not_in(_CLOSED))))
    answered = _answered(session, [c.id for c in cases])
    waiting = {c.id: c for c in cases if c.id not in answered}
    pages: list[OpenPage] = []
    if not waiting:
        return pages
    events = session.scalars(select(PathologyEvent).where(
        PathologyEvent.case_id.in_(sorted(waiting)),
        PathologyEvent.step.in_(("paged", "page_failed"))).order_by(PathologyEvent.at,
                                                                     PathologyEvent.id))
    last: dict[int, PathologyEvent] = {}
    for event in events:
        last[event.case_id] = event
    for case_id, event in last.items():
        case = waiting[case_id]
        if event.step == "paged" and case.paged_user_id == user_id:
            pages.append(OpenPage(case_id, case.accession_number,
                                  str(event.detail.get("reason", "")), event.at))
        elif event.step == "page_failed" and admin:
            pages.append(OpenPage(case_id, case.accession_number,
                                  str(event.detail.get("reason", "")), event.at,
                                  kind="page_failed"))
    return sorted(pages, key=lambda p: p.at)
