"""Sign-in lockout per username *and* client address, with back-off.

Why not per account: a lockout that counts every failure of a username lets anyone who
knows the name (they are printed on reports) lock an on-call radiologist out of the
center from their own workstation, five wrong passwords at a time.  So failures are
counted per (username, client address):

* After ``login_max_failures`` failures in a row from one address, that pair is locked
  for ``login_lockout_s``.  Each further lockout of the same pair waits twice as long
  (15 min, 30 min, 1 h, ...) up to ``login_lockout_max_s``; a successful sign-in from
  the address forgets its lockouts, and a pair quiet for ``login_lockout_max_s`` is
  forgotten altogether.  The attacker's address is locked, not the account: the
  radiologist signs in from their workstation as usual.
* The password is only checked while the pair is not locked, and the pair's row stays
  locked in the database (``SELECT ... FOR UPDATE``; SQLite's write lock) from that
  check until the failure is counted, so parallel guesses from one address cannot slip
  past the limit.

Against guessing spread over many addresses (a botnet, each address staying under the
per-pair limit) there is a second, much higher ceiling per username:
``login_account_max_failures`` failures from all addresses within
``login_account_window_s``.  The trade-off: a ceiling that refused every address would
hand back exactly the denial of service above, to anyone able to send that many guesses.
So the ceiling refuses only *unfamiliar* addresses, those the account has not signed in
from successfully within :data:`FAMILIAR_FOR`.  A radiologist at their usual workstation
is never affected; one at a new workstation during an attack is refused until the
window ends or an administrator lifts it (``rdc users enable``, the admin page's
Unlock), which is the price of bounding distributed guessing at all.  What it does not
stop: an attacker who guesses from an address the account really used (a shared
reading-room workstation, or a NAT or proxy address that many users share) gets the
per-pair limit with its doubling back-off, not the ceiling.

Rows are keyed by the username as typed (normalized), not by a user id, so an unknown
username is counted and locked exactly like a real one: the answers never tell which
usernames exist.  Stale rows of addresses that never signed in are deleted as new
failures arrive, so random usernames cost rows for ``login_lockout_max_s`` at most, at a
rate the password hash itself limits.

Every lockout is audited (``user.locked``, with the address, the scope and the wait);
attempts refused while locked are audited at the 1st, 2nd, 4th, 8th ... refusal, so a
flood of refused attempts costs a logarithmic number of audit rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit
from core.models import LoginThrottle
from core.settings import Settings

#: The address of the row that counts a username's failures from every address.
ACCOUNT = "*"
#: An address the account signed in from within this long is familiar: the per-username
#: ceiling does not apply to it.
FAMILIAR_FOR = timedelta(days=90)
_MAX_NAME = 128
_MAX_ADDRESS = 64


@dataclass(frozen=True)
class Refusal:
    """Why a sign-in is refused before its password is even checked."""

    scope: Literal["address", "account"]
    until: datetime
    message: str


def _key(username: str, address: str) -> tuple[str, str]:
    return username[:_MAX_NAME], (address or "-")[:_MAX_ADDRESS]


def _row(session: Session, username: str, address: str) -> LoginThrottle:
    """The (username, address) row, created if missing, locked until the transaction ends."""
    name, addr = _key(username, address)
    query = (select(LoginThrottle).where(LoginThrottle.username == name,
                                         LoginThrottle.address == addr)
             .with_for_update().execution_options(populate_existing=True))
    row = session.scalar(query)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            session.add(LoginThrottle(username=name, address=addr, failures=0, lockouts=0,
                                      refused=0))
            session.flush()
    except IntegrityError:
        pass  # another sign-in made it first: use theirs
    row = session.scalar(query)
    assert row is not None
    return row


def lockout_s(settings: Settings, lockouts: int) -> float:
    """The wait of a pair's ``lockouts``-th lockout: doubling from the base, capped."""
    exponent = min(max(lockouts, 1) - 1, 40)  # 2**40 times any base is past any cap
    return float(min(settings.login_lockout_max_s, settings.login_lockout_s * 2 ** exponent))


def _minutes(until: datetime, now: datetime) -> int:
    return max(1, round((until - now).total_seconds() / 60))


def check(session: Session, settings: Settings, username: str, address: str,
          now: datetime) -> Refusal | None:
    """Before the password: whether this username may try from ``address`` now.

    Locks the pair's row until the caller's transaction ends (see the module docstring).
    A refused attempt is counted and, at powers of two, audited here.
    """
    pair = _row(session, username, address)
    refusal: Refusal | None = None
    locked_until = pair.locked_until
    if locked_until is not None and locked_until > now:
        refusal = Refusal("address", locked_until, (
            "sign-in locked for this username from your address after too many failed "
            f"attempts; try again in {_minutes(locked_until, now)} min or ask an "
            "administrator"))
    else:
        familiar = pair.last_success_at
        if familiar is None or now - familiar > FAMILIAR_FOR:
            name, _ = _key(username, ACCOUNT)
            account = session.get(LoginThrottle, (name, ACCOUNT))
            started = account.window_started_at if account is not None else None
            if (account is not None and started is not None
                    and account.failures >= settings.login_account_max_failures
                    and now - started < timedelta(seconds=settings.login_account_window_s)):
                until = started + timedelta(seconds=settings.login_account_window_s)
                refusal = Refusal("account", until, (
                    "sign-in locked for this username from addresses it has not signed in "
                    "from before, after too many failed attempts from many addresses; "
                    f"try again in {_minutes(until, now)} min from your usual workstation, "
                    "or ask an administrator"))
    if refusal is not None:
        pair.refused += 1
        if pair.refused & (pair.refused - 1) == 0:  # 1, 2, 4, 8, ...
            audit.append(session, actor="system", action="login.refused_locked",
                         object_type="user", object_id=pair.username, detail={
                             "address": pair.address, "scope": refusal.scope,
                             "until": refusal.until.isoformat(),
                             "refused_during_lockout": pair.refused})
    return refusal


def record_failure(session: Session, settings: Settings, username: str, address: str,
                   now: datetime, *, known_user: bool) -> None:
    """Count a failed sign-in for the pair and for the username; lock and audit as due.

    Call after :func:`check` in the same transaction (the pair's row is locked).
    """
    pair = _row(session, username, address)
    pair.failures += 1
    pair.last_failure_at = now
    if pair.failures >= settings.login_max_failures:
        pair.lockouts += 1
        wait = lockout_s(settings, pair.lockouts)
        pair.locked_until = now + timedelta(seconds=wait)
        pair.failures = 0  # the next round after the lockout starts afresh
        pair.refused = 0
        audit.append(session, actor="system", action="user.locked", object_type="user",
                     object_id=pair.username, detail={
                         "scope": "address", "address": pair.address,
                         "until": pair.locked_until.isoformat(), "lockout_s": wait,
                         "lockout_number": pair.lockouts,
                         "after_failures": settings.login_max_failures,
                         "known_user": known_user})
    account = _row(session, username, ACCOUNT)
    window = timedelta(seconds=settings.login_account_window_s)
    started = account.window_started_at
    if started is None or now - started >= window:
        account.window_started_at, account.failures, account.refused = now, 0, 0
        started = now
    account.failures += 1
    account.last_failure_at = now
    if account.failures == settings.login_account_max_failures:
        account.locked_until = started + window
        audit.append(session, actor="system", action="user.locked", object_type="user",
                     object_id=account.username, detail={
                         "scope": "account", "address": pair.address,
                         "until": account.locked_until.isoformat(),
                         "after_failures": account.failures,
                         "window_s": settings.login_account_window_s,
                         "known_user": known_user,
                         "note": "refused from unfamiliar addresses until then"})
    _prune(session, settings, now)


def record_success(session: Session, username: str, address: str, now: datetime) -> None:
    """A successful sign-in: the pair's failures and lockouts are forgotten, and the
    address becomes familiar for the per-username ceiling."""
    pair = _row(session, username, address)
    pair.failures = pair.lockouts = pair.refused = 0
    pair.locked_until = None
    pair.last_success_at = now


def account_locked_until(session: Session, username: str, now: datetime) -> datetime | None:
    """End of the username's ceiling for unfamiliar addresses, if it is in force."""
    name, _ = _key(username, ACCOUNT)
    account = session.get(LoginThrottle, (name, ACCOUNT))
    until = account.locked_until if account is not None else None
    return until if until is not None and until > now else None


def lift(session: Session, username: str) -> int:
    """An administrator lifts every lockout of ``username`` (all addresses, the ceiling).

    Familiar addresses stay familiar; everything else about the username is forgotten.
    Returns the number of rows that held a lockout or failures.
    """
    name, _ = _key(username, ACCOUNT)
    # Address order, descending, locks "*" last, as sign-ins do: no lock cycle with them.
    rows = list(session.scalars(select(LoginThrottle).where(LoginThrottle.username == name)
                                .order_by(LoginThrottle.address.desc()).with_for_update()))
    lifted = 0
    for row in rows:
        if row.failures or row.locked_until is not None:
            lifted += 1
        if row.last_success_at is None:
            session.delete(row)
        else:
            row.failures = row.lockouts = row.refused = 0
            row.locked_until = None
    session.flush()
    return lifted


def _prune(session: Session, settings: Settings, now: datetime) -> None:
    """Forget addresses that never signed in and have been quiet for the longest lockout.

    Rows another sign-in holds are skipped (``SKIP LOCKED``): waiting for them could
    deadlock with that sign-in, and the next failure prunes them anyway.
    """
    cutoff = now - timedelta(seconds=settings.login_lockout_max_s)
    stale = session.scalars(select(LoginThrottle).where(
        LoginThrottle.last_success_at.is_(None), LoginThrottle.last_failure_at < cutoff,
        or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now))
        .limit(500).with_for_update(skip_locked=True))
    for row in stale:
        session.delete(row)
