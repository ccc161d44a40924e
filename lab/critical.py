"""The closed loop of critical values: notify the site at once, ask for an acknowledgement
with read-back, escalate on a timer until someone acknowledges, and measure it per site.

Why a loop and not a message: CAP's Q-Probes found that almost no lab confirms that a
critical value reached a person.  Here each critical result gets one
:class:`~core.models.LabCriticalNotice` that stays open, and keeps paging, until a named
person at the site repeats the value back correctly.

* **Notify** (:func:`open_notice`, once per result): a preliminary ORU^R01 with the
  abnormal flags (``lab.results_out.build_oru``), scheduled through delivery's retries
  when the site takes HL7 results; the in-app notice, which is the row itself, listed
  (:func:`notices`) to the site's accounts; and the center's webhook
  (:func:`core.notify.post_webhook`).  Every channel's outcome is a step on the notice
  and in the audit.  The ORU and the webhook are best effort on top of the row: a site
  with no HL7 endpoint or a pager that is down must not stop the notice from opening.
* **Acknowledge** (:func:`acknowledge`): who took the call, and the value as they
  repeated it.  The read-back must equal the value the site was sent (see
  :func:`readback_matches` for what "equal" accepts); a wrong read-back is refused and
  audited, and the notice stays open.
* **Escalate** (:func:`escalate_due`, periodic): a notice still open at its
  ``next_escalation_at`` moves to the next tier of ``RDC_LAB_CRITICAL_TIERS`` ("site":
  the site's accounts and the webhook again; "center": the center's lab reviewers and
  the webhook), with a new timer.  Past the last tier it stays there and re-notifies
  every period: an unacknowledged critical value never goes quiet.
* **Measure** (:func:`dashboard`): result → notification and notification →
  acknowledgement medians per site, and the closed-loop check (every critical value
  acknowledged or escalated).
"""

from __future__ import annotations

import logging
import re
import statistics
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit, notify
from core.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from core.models import (
    Delivery,
    LabCriticalNotice,
    LabOrder,
    LabResult,
    LabSpecimen,
    OutboundMessage,
    Site,
    User,
    UserSite,
)
from core.settings import Settings, get_settings
from core.timeutil import as_utc
from delivery.service import schedule_message
from lab.catalog import get_catalog
from lab.results_out import build_oru, format_value, site_takes_hl7
from lab.states import NoticeState, check_notice

log = logging.getLogger(__name__)

#: The name of the periodic escalation task (core.scheduler.register_periodic).
PERIODIC_TASK = "lab.critical_escalation"
TIER_KINDS = ("site", "center")
#: What the webhook body says it is (the paging system routes on it).
WEBHOOK_KIND = "lab.critical"
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?\Z")


# Settings -----------------------------------------------------------------------------
def tiers(settings: Settings) -> list[str]:
    """``RDC_LAB_CRITICAL_TIERS``, checked: a tier nobody understands would silently
    notify no one, so it stops the center instead."""
    found = list(settings.lab_critical_tiers)
    if not found:
        raise ConfigurationError("RDC_LAB_CRITICAL_TIERS is empty: a critical value must "
                                 "notify someone (use e.g. site,site,center)")
    unknown = [t for t in found if t not in TIER_KINDS]
    if unknown:
        raise ConfigurationError(f"RDC_LAB_CRITICAL_TIERS: unknown tier(s) {unknown}; "
                                 f"each is one of {list(TIER_KINDS)}")
    return found


def _period(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.lab_critical_escalation_s)


# Who is told --------------------------------------------------------------------------
def _accounts(session: Session, site_id: str, role: str) -> list[str]:
    """Enabled accounts with ``role`` that may see ``site_id``, by username."""
    linked = set(session.scalars(select(UserSite.user_id).where(UserSite.site_id == site_id)))
    users = session.scalars(select(User).where(User.enabled.is_(True)).order_by(User.username))
    return [u.username for u in users
            if role in (u.roles or []) and (u.all_sites or u.id in linked)]


def _step(tier: int, tier_name: str, now: datetime, channel: str, to: Any,
          outcome: str, kind: str) -> dict[str, Any]:
    return {"step": kind, "tier": tier, "tier_name": tier_name, "at": now.isoformat(),
            "channel": channel, "to": to, "outcome": outcome}


def _in_app(session: Session, notice: LabCriticalNotice, tier_name: str, now: datetime,
            kind: str) -> dict[str, Any]:
    """The in-app notice is the row; this records who it is listed to at this tier."""
    role = "site_user" if tier_name == "site" else "lab_reviewer"
    who = _accounts(session, notice.site_id, role)
    outcome = "listed" if who else f"no enabled {role} account can see site {notice.site_id}"
    return _step(notice.tier, tier_name, now, "in-app", who, outcome, kind)


def _webhook(settings: Settings, notice: LabCriticalNotice, result: LabResult,
             tier_name: str, now: datetime, kind: str) -> dict[str, Any]:
    url = settings.notify_webhook_url
    if not url:
        return _step(notice.tier, tier_name, now, "webhook", "", "not configured", kind)
    body = {"kind": WEBHOOK_KIND, "step": kind, "site": notice.site_id,
            "notice_id": notice.id, "result_id": result.id, "test": result.test_code,
            "value": result.value, "value_text": result.value_text, "units": result.units,
            "flag": result.abnormal_flag, "tier": notice.tier, "tier_name": tier_name,
            "at": now.isoformat()}
    outcome = notify.post_webhook(url, body)
    # The pager's address only: the notice's steps are shown to the site's accounts.
    return _step(notice.tier, tier_name, now, "webhook", outcome.url, outcome.outcome, kind)


def _send_oru(session: Session, notice: LabCriticalNotice, result: LabResult,
              now: datetime) -> dict[str, Any]:
    """The preliminary ORU with the abnormal flags, scheduled when the site takes HL7.

    Best effort: any failure (the message does not validate, the site has no endpoint)
    is rolled back to its savepoint and recorded as the step's outcome; the in-app
    notice and the webhook still go out.
    """
    site = session.get(Site, notice.site_id)
    try:
        with session.begin_nested():
            message = build_oru(session, [result], kind="lab-critical", preliminary=True)
            notice.message_id = message.id
            if site is None or not site_takes_hl7(site):
                outcome = "stored, not sent: the site takes no HL7 results"
            else:
                delivery = schedule_message(session, message)
                outcome = f"scheduled (delivery {delivery.id}, message {message.control_id})"
    except Exception as exc:  # any failure of the ORU leg must not lose the notice
        log.exception("lab critical notice %s: the ORU could not be sent", notice.id)
        outcome = f"failed: {type(exc).__name__}: {exc}"
    return _step(notice.tier, "site", now, "hl7", notice.site_id, outcome, "notify")


def _oru_status(session: Session, notice: LabCriticalNotice, now: datetime) -> dict[str, Any]:
    """Where the notice's ORU stands (a site tier again): delivery's own retries and
    dead letters resend it, so it is reported, not sent a second time under a new id."""
    message = session.get(OutboundMessage, notice.message_id) if notice.message_id else None
    if message is None:
        outcome = "no ORU was stored for this notice"
    else:
        delivery = session.scalar(select(Delivery).where(Delivery.message_id == message.id))
        state = f"delivery {delivery.id} {delivery.state}" if delivery else "not scheduled"
        ack = f", ACK {message.ack_code}" if message.ack_code else ", no ACK yet"
        outcome = f"message {message.control_id}: {state}{ack}"
    return _step(notice.tier, "site", now, "hl7", notice.site_id, outcome, "escalate")


def _notify(session: Session, settings: Settings, notice: LabCriticalNotice,
            result: LabResult, tier_name: str, now: datetime, kind: str) -> list[dict[str, Any]]:
    steps = [_oru_status(session, notice, now)] if tier_name == "site" else []
    steps.append(_in_app(session, notice, tier_name, now, kind))
    steps.append(_webhook(settings, notice, result, tier_name, now, kind))
    return steps


def _summary(result: LabResult) -> dict[str, Any]:
    return {"result_id": result.id, "site": result.site_id, "patient_id": result.patient_id,
            "test": result.test_code, "value": result.value, "value_text": result.value_text,
            "units": result.units, "flag": result.abnormal_flag}


# Notify -------------------------------------------------------------------------------
def open_notice(session: Session, result: LabResult, *, now: datetime | None = None,
                settings: Settings | None = None) -> LabCriticalNotice:
    """Open the critical-value notice of ``result`` and notify its site at once.

    Idempotent per result: a second call (a rerun job, a retried run) returns the notice
    already open and notifies no one again.  Refused (InvalidInput) for a result that is
    not critical or has no value at all (a censored ">10" is notified, read back with its
    comparator), since there would be nothing to read back.
    """
    found = session.scalar(select(LabCriticalNotice).where(
        LabCriticalNotice.result_id == result.id))
    if found is not None:
        return found
    if not result.critical:
        raise InvalidInput(f"lab result {result.id} is not a critical value")
    if result.value is None and _parse_readback(result.value_text or "", "") is None:
        # A censored value (">10" beyond the measuring range) is notified and read back
        # with its comparator; only a result with no number at all cannot be.
        raise InvalidInput(f"lab result {result.id} ({result.test_code}) has no value to "
                           "notify and read back")
    settings = settings or get_settings()
    ladder = tiers(settings)
    now = as_utc(now)
    notice = LabCriticalNotice(
        result_id=result.id, site_id=result.site_id, state=NoticeState.NOTIFIED,
        result_at=as_utc(result.measured_at or now), notified_at=now, tier=0,
        next_escalation_at=now + _period(settings), steps=[])
    try:
        with session.begin_nested():
            session.add(notice)
            session.flush()
    except IntegrityError:  # opened by a concurrent call in the meantime
        raced = session.scalar(select(LabCriticalNotice).where(
            LabCriticalNotice.result_id == result.id))
        assert raced is not None
        return raced
    steps = [_send_oru(session, notice, result, now)]
    # The site is told first whatever the ladder says; a ladder starting at "center"
    # tells the center's reviewers at once as well.
    steps.append(_in_app(session, notice, "site", now, "notify"))
    if ladder[0] == "center":
        steps.append(_in_app(session, notice, "center", now, "notify"))
    steps.append(_webhook(settings, notice, result, ladder[0], now, "notify"))
    notice.steps = steps
    audit.append(session, actor="system", action="lab.critical_notify",
                 object_type="lab_critical_notice", object_id=str(notice.id),
                 detail={**_summary(result), "tier": 0, "tier_name": ladder[0],
                         "result_at": notice.result_at.isoformat(),
                         "notified_at": now.isoformat(), "steps": steps})
    session.flush()
    return notice


# Escalate -----------------------------------------------------------------------------
def escalate_due(session: Session, settings: Settings,
                 now: datetime | None = None) -> list[int]:
    """Escalate every open notice whose timer has run out; returns their ids.

    Each moves one tier up the ladder (staying on the last one), tells that tier again
    and starts a new timer from ``now`` (a scheduler that was down does not fire a burst
    of tiers at once).  The periodic task of the lab (:data:`PERIODIC_TASK`).
    """
    ladder = tiers(settings)
    now = as_utc(now)
    due = list(session.scalars(select(LabCriticalNotice).where(
        LabCriticalNotice.state != NoticeState.ACKNOWLEDGED,
        LabCriticalNotice.next_escalation_at.is_not(None),
        LabCriticalNotice.next_escalation_at <= now)
        .order_by(LabCriticalNotice.next_escalation_at, LabCriticalNotice.id)
        # PostgreSQL: an acknowledgement committing meanwhile is waited for and seen
        # (the notice drops out), never overwritten (SQLite serialises writers anyway).
        .with_for_update()))
    for notice in due:
        result = session.get(LabResult, notice.result_id)
        assert result is not None  # a foreign key
        check_notice(notice.state, NoticeState.ESCALATED)
        repeated = notice.tier >= len(ladder) - 1
        notice.tier = min(notice.tier + 1, len(ladder) - 1)
        tier_name = ladder[notice.tier]
        notice.state = NoticeState.ESCALATED
        steps = _notify(session, settings, notice, result, tier_name, now, "escalate")
        notice.steps = [*notice.steps, *steps]
        notice.next_escalation_at = now + _period(settings)
        audit.append(session, actor="system", action="lab.critical_escalate",
                     object_type="lab_critical_notice", object_id=str(notice.id),
                     detail={**_summary(result), "tier": notice.tier, "tier_name": tier_name,
                             "repeated_last_tier": repeated, "steps": steps,
                             "next_escalation_at": notice.next_escalation_at.isoformat()})
        log.warning("lab critical notice %s (site %s, %s) unacknowledged: escalated to tier "
                    "%s (%s)", notice.id, notice.site_id, result.test_code, notice.tier,
                    tier_name)
    session.flush()
    return [n.id for n in due]


# Acknowledge --------------------------------------------------------------------------
def _parse_readback(text: str, units: str) -> tuple[str, Decimal] | None:
    """(comparator, number) of a read-back, or None when it is not a plain number."""
    value = " ".join(text.split())
    if units and value.lower().endswith(units.lower()):
        value = value[: -len(units)].strip()
    comparator = value[0] if value[:1] in ("<", ">") else ""
    value = value[len(comparator):].strip()
    if value.count(",") == 1 and "." not in value:
        value = value.replace(",", ".")
    if not _NUMBER.match(value):
        return None
    try:
        return comparator, Decimal(value)
    except InvalidOperation:
        return None


def readback_matches(readback: str, result: LabResult, decimals: int) -> tuple[bool, str]:
    """Whether ``readback`` repeats the result's value; (matches, the value as sent).

    Accepted: the value as the site's ORU shows it (the test's decimals) written with any
    number of trailing zeros ("7.1", "7.10"), a decimal comma ("7,1"), the units after it
    ("7.1 mmol/L"), or the analyzer's unrounded value; a censored value needs its
    comparator (">70.0").  Refused: anything else, including a value that merely rounds
    to the same ("7.14" for "7.1": not what the site was told), and thousands
    separators ("1,234" reads as 1.234).
    """
    _kind, sent = format_value(result, decimals)
    parsed = _parse_readback(readback, result.units)
    expected = _parse_readback(sent, "")
    if parsed is None or expected is None:
        return False, sent
    if parsed == expected:
        return True, sent
    exact = result.value
    if exact is not None and parsed[0] == "" and expected[0] == "":
        return parsed[1] == Decimal(repr(exact)), sent
    return False, sent


def acknowledge(session: Session, notice_id: int, *, actor: str, name: str, readback: str,
                now: datetime | None = None,
                settings: Settings | None = None) -> LabCriticalNotice:
    """Record that ``name`` (signed in as ``actor``) took the critical value and read it
    back.  The loop closes only when the read-back matches (:func:`readback_matches`).

    A wrong read-back is refused with :class:`Conflict` and the notice stays open.  The
    refusal is a step on the notice and a ``lab.critical_readback_mismatch`` audit
    record, and both are **committed here** before raising (the precedent is a refused
    sign-in): the caller's transaction rolls back with the error, and a wrong read-back
    of a critical value must stay on the record.
    """
    name = " ".join(name.split())
    if not name:
        raise InvalidInput("the name of the person who took the critical value is required")
    if not readback.strip():
        raise InvalidInput("the read-back (the value as the person repeated it) is required")
    if len(name) > 200 or len(readback) > 64:
        raise InvalidInput("the name (200 characters) or the read-back (64) is too long")
    notice = session.get(LabCriticalNotice, notice_id, with_for_update=True)
    if notice is None:
        raise NotFound(f"critical notice {notice_id} not found")
    if notice.state == NoticeState.ACKNOWLEDGED:
        raise Conflict(f"critical notice {notice_id} was already acknowledged by "
                       f"{notice.ack_name} ({notice.ack_by}) at {notice.ack_at}")
    result = session.get(LabResult, notice.result_id)
    assert result is not None  # a foreign key
    now = as_utc(now)
    decimals = get_catalog(settings).test(result.test_code).decimals
    ok, sent = readback_matches(readback, result, decimals)
    detail = {**_summary(result), "name": name, "readback": readback, "sent": sent,
              "tier": notice.tier}
    if not ok:
        notice.steps = [*notice.steps, _step(notice.tier, "", now, "read-back",
                                             {"actor": actor, "name": name},
                                             f"mismatch: heard {readback!r}, sent {sent!r}",
                                             "readback")]
        audit.append(session, actor=actor, action="lab.critical_readback_mismatch",
                     object_type="lab_critical_notice", object_id=str(notice.id),
                     detail=detail)
        session.commit()
        raise Conflict(f"read-back {readback!r} does not match the critical value "
                       f"{sent} {result.units} of {result.test_code}: the notice stays open;"
                       " repeat the value as sent")
    check_notice(notice.state, NoticeState.ACKNOWLEDGED)
    notice.state = NoticeState.ACKNOWLEDGED
    notice.ack_by, notice.ack_name, notice.ack_readback = actor, name, readback
    notice.ack_matches, notice.ack_at = True, now
    notice.next_escalation_at = None
    notice.steps = [*notice.steps, _step(notice.tier, "", now, "read-back",
                                         {"actor": actor, "name": name}, "acknowledged",
                                         "ack")]
    audit.append(session, actor=actor, action="lab.critical_ack",
                 object_type="lab_critical_notice", object_id=str(notice.id),
                 detail={**detail, "notified_at": _iso(notice.notified_at),
                         "ack_at": now.isoformat()})
    session.flush()
    return notice


# Lists and the dashboard --------------------------------------------------------------
def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _escalated(notice: LabCriticalNotice) -> bool:
    return any(s.get("step") == "escalate" for s in notice.steps or [])


def _sent(result: LabResult, settings: Settings | None) -> str:
    """The value as the site's ORU carries it (what a read-back is checked against)."""
    try:
        decimals = get_catalog(settings).test(result.test_code).decimals
    except InvalidInput:  # a code the current catalog no longer has: the raw text
        return result.value_text
    return format_value(result, decimals)[1]


def notice_json(notice: LabCriticalNotice, result: LabResult, accession: str,
                order: LabOrder | None, settings: Settings | None = None) -> dict[str, Any]:
    """One notice as the app and the CLI list it.  ``value_sent`` is the value as the
    site was sent it (the test's decimals): the one to read back."""
    return {
        "id": notice.id, "result_id": result.id, "site_id": notice.site_id,
        "state": notice.state, "tier": notice.tier, "escalated": _escalated(notice),
        "patient_id": result.patient_id,
        "patient_name": order.patient_name if order is not None else "",
        "accession": accession, "test_code": result.test_code, "value": result.value,
        "value_text": result.value_text, "value_sent": _sent(result, settings),
        "units": result.units, "flag": result.abnormal_flag,
        "result_at": _iso(notice.result_at),
        "notified_at": _iso(notice.notified_at),
        "next_escalation_at": _iso(notice.next_escalation_at),
        "ack_by": notice.ack_by, "ack_name": notice.ack_name,
        "ack_readback": notice.ack_readback, "ack_at": _iso(notice.ack_at),
        "message_id": notice.message_id, "steps": list(notice.steps or []),
    }


def notices(session: Session, *, site_ids: frozenset[str] | None,
            open_only: bool = False, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Notices of ``site_ids`` (None: every site): open ones first, oldest first."""
    query = (select(LabCriticalNotice, LabResult, LabSpecimen.accession, LabOrder)
             .join(LabResult, LabResult.id == LabCriticalNotice.result_id)
             .join(LabSpecimen, LabSpecimen.id == LabResult.specimen_id)
             .join(LabOrder, LabOrder.id == LabResult.order_id))
    if site_ids is not None:
        query = query.where(LabCriticalNotice.site_id.in_(sorted(site_ids)))
    if open_only:
        query = query.where(LabCriticalNotice.state != NoticeState.ACKNOWLEDGED)
    rows = session.execute(query.order_by(LabCriticalNotice.notified_at,
                                          LabCriticalNotice.id)).all()
    listed = [notice_json(n, r, acc, o, settings) for n, r, acc, o in rows]
    return sorted(listed, key=lambda d: d["state"] == NoticeState.ACKNOWLEDGED)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def dashboard(session: Session, *, site_ids: frozenset[str] | None,
              since: datetime) -> list[dict[str, Any]]:
    """Per site, for critical values measured since ``since``: how many, the medians of
    result → notification and notification → acknowledgement (seconds), how many were
    acknowledged, escalated, still open, critical results with no notice at all, and the
    closed-loop check: every critical value acknowledged or escalated.

    A notice still inside its first timer is neither yet; it counts as pending, so
    ``closed_loop`` is only true once none is pending and none lacks a notice.
    """
    since = as_utc(since)
    query = select(LabCriticalNotice).where(LabCriticalNotice.result_at >= since)
    missing_q = (select(LabResult.site_id, LabResult.id)
                 .outerjoin(LabCriticalNotice, LabCriticalNotice.result_id == LabResult.id)
                 .where(LabResult.critical.is_(True), LabResult.measured_at >= since,
                        LabCriticalNotice.id.is_(None)))
    if site_ids is not None:
        query = query.where(LabCriticalNotice.site_id.in_(sorted(site_ids)))
        missing_q = missing_q.where(LabResult.site_id.in_(sorted(site_ids)))
    per_site: dict[str, list[LabCriticalNotice]] = {}
    for notice in session.scalars(query.order_by(LabCriticalNotice.id)):
        per_site.setdefault(notice.site_id, []).append(notice)
    unnotified: dict[str, int] = {}
    for site_id, _rid in session.execute(missing_q):
        unnotified[site_id] = unnotified.get(site_id, 0) + 1
    rows = []
    for site_id in sorted(set(per_site) | set(unnotified)):
        found = per_site.get(site_id, [])
        to_notify = [(n.notified_at - n.result_at).total_seconds() for n in found
                     if n.notified_at is not None]
        to_ack = [(n.ack_at - n.notified_at).total_seconds() for n in found
                  if n.ack_at is not None and n.notified_at is not None]
        acknowledged = sum(n.state == NoticeState.ACKNOWLEDGED for n in found)
        escalated = sum(_escalated(n) for n in found)
        open_ = len(found) - acknowledged
        closed = sum(n.state in (NoticeState.ACKNOWLEDGED, NoticeState.ESCALATED)
                     for n in found)
        missing = unnotified.get(site_id, 0)
        total = len(found) + missing
        rows.append({
            "site_id": site_id, "count": total, "notices": len(found),
            "median_result_to_notification_s": _median(to_notify),
            "median_notification_to_ack_s": _median(to_ack),
            "acknowledged": acknowledged, "escalated": escalated, "open": open_,
            "pending_first_contact": len(found) - closed, "without_notice": missing,
            "closed_loop_pct": round(100.0 * closed / total, 1) if total else 100.0,
            "closed_loop": closed == total,
        })
    return rows
