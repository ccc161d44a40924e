"""Server-side web sessions.

The cookie holds a random token; the database holds only its SHA-256, so a
leaked database or backup cannot be replayed as cookies.  Because the session
lives in the database, logging out or disabling an account ends it at once on
every web server, which a signed, self-contained cookie could not do.

A session ends at the first of: ``session_idle_timeout_s`` without a request,
``session_max_age_s`` after sign-in, revocation (logout, account disabled, new
password or TOTP secret), or its user being disabled.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.models import User, WebSession
from core.settings import Settings

#: ``last_seen_at`` is written at most this often, not on every request: the idle
#: timeout is minutes long, so 30 s of slack costs nothing and saves a write per click.
TOUCH_EVERY = timedelta(seconds=30)


def _now() -> datetime:
    return datetime.now(UTC)


def token_hash(token: str) -> str:
    """What the database stores of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(session: Session, user: User, client: str,
                   settings: Settings) -> tuple[str, str]:
    """Start a session for ``user``; return ``(token, csrf_token)``.

    The token goes into the cookie and is not kept anywhere; the CSRF token is
    handed to the page, which echoes it in ``X-CSRF-Token``.
    """
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = _now()
    session.add(WebSession(token_hash=token_hash(token), user_id=user.id, csrf_token=csrf,
                           created_at=now, last_seen_at=now,
                           expires_at=now + timedelta(seconds=settings.session_max_age_s),
                           client=client[:255]))
    session.flush()
    return token, csrf


def load_session(session: Session, token: str, settings: Settings, *,
                 now: datetime | None = None) -> tuple[User, WebSession] | None:
    """The live session of ``token`` and its user, or ``None`` if it has ended.

    Refreshes ``last_seen_at`` (at most every :data:`TOUCH_EVERY`), which is what
    keeps an active session from reaching its idle timeout.
    """
    if not token:
        return None
    now = now or _now()
    ws = session.get(WebSession, token_hash(token))
    if ws is None or ws.revoked_at is not None:
        return None
    if now >= ws.expires_at:
        return None
    last_seen = ws.last_seen_at
    if now - last_seen > timedelta(seconds=settings.session_idle_timeout_s):
        return None
    user = session.get(User, ws.user_id)
    if user is None or not user.enabled:
        return None
    if now - last_seen >= TOUCH_EVERY:
        ws.last_seen_at = now
        session.flush()
    return user, ws


def revoke_session(session: Session, token: str) -> bool:
    """End one session (logout).  True if a live session was ended."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.token_hash == token_hash(token), WebSession.revoked_at.is_(None))
        .values(revoked_at=_now()))
    return bool(getattr(result, "rowcount", 0))


def revoke_user_sessions(session: Session, user_id: int) -> int:
    """End every session of a user (disable, new password, new TOTP); how many ended."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=_now()))
    return int(getattr(result, "rowcount", 0))


def purge_sessions(session: Session, settings: Settings, *,
                   keep: timedelta = timedelta(days=1)) -> int:
    """Delete session rows that ended more than ``keep`` ago; how many went.

    Ended rows are harmless but pile up; the audit log, not this table, is the
    record of who signed in when.
    """
    cutoff = _now() - keep
    idle_cutoff = cutoff - timedelta(seconds=settings.session_idle_timeout_s)
    result = session.execute(delete(WebSession).where(or_(
        WebSession.revoked_at < cutoff,
        WebSession.expires_at < cutoff,
        WebSession.last_seen_at < idle_cutoff,
    )))
    return int(getattr(result, "rowcount", 0))


def user_sessions(session: Session, user_id: int) -> list[WebSession]:
    """A user's sessions, newest first (for an administrator's view)."""
    return list(session.scalars(select(WebSession).where(WebSession.user_id == user_id)
                                .order_by(WebSession.created_at.desc())))
