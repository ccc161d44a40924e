"""User accounts of the web app: who may sign in, with which roles, for which sites.

The service behind ``rdc users`` and ``/api/admin/users``; no HTTP here.  Sign-in
takes two factors: a password (argon2id, re-hashed when the parameters change)
and a TOTP code (RFC 6238, 30 s steps, one step of clock drift either way).  A
TOTP code is accepted once only: the step it matched is kept in
``User.totp_last_step`` and no later sign-in may use that step or an older one.

The TOTP secret is a shared secret, so unlike a password it cannot be hashed; it
is encrypted at rest with AES-256-GCM under a key generated once into
``$RDC_HOME/secrets/totp-key`` (mode 0600).  A database dump alone therefore does
not let anyone compute codes.  Several web servers must share that key file; if
it is lost, every user needs ``rdc users reset-totp``.

Credential failures (unknown user, wrong password, wrong code) all read
:data:`GENERIC_FAILURE`, so that the answer never tells whether a username
exists.  Lockouts are per username and client address, with back-off, and an
unknown username is locked exactly like a real one (see
:mod:`viewer.login_throttle`); a locked sign-in gets its own clear message.  A
disabled account's message is only said once the password was right.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core import audit
from core.errors import Conflict, InvalidInput, NotFound, RDCError
from core.models import Site, User, UserSite
from core.settings import Settings
from viewer import login_throttle
from viewer.sessions import revoke_user_sessions

#: Every role a user may hold.  ``admin`` manages accounts; it is not a reading role.
ROLES = frozenset({"admin", "radiologist", "cardiologist", "pathologist", "lab_reviewer",
                   "site_user"})
#: The one answer to every credential failure, so usernames cannot be probed.
GENERIC_FAILURE = "invalid username, password or code"
MIN_PASSWORD_LENGTH = 12
#: Longer passwords are refused so that a request cannot make argon2 hash megabytes.
MAX_PASSWORD_LENGTH = 1024
#: Names the center itself uses as actors in the audit log; no person may take them.
RESERVED_USERNAMES = frozenset({"operator", "cli", "system", "admin", "root"})

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,127}\Z")
_TOTP_CODE = re.compile(r"^[0-9]{6}\Z")
_TOTP_KEY_FILE = "totp-key"
_CIPHER_PREFIX = "v1:"

# argon2-cffi's defaults are RFC 9106's second recommended profile (argon2id,
# 64 MiB, 3 passes); when a later release changes them, stored hashes are
# upgraded at the next successful sign-in (``check_needs_rehash``).
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified against unknown usernames, so that a miss costs as long as a hit."""
    return _hasher.hash(secrets.token_urlsafe(16))


class AuthenticationFailed(RDCError):
    """Sign-in refused.  The message is safe to show to whoever tried."""

    http_status = 401
    exit_code = 5


class AccountLocked(AuthenticationFailed):
    """Too many failed sign-ins for this username from this address (or from many
    addresses, for an unfamiliar one); the sign-in waits out the lockout."""

    http_status = 403


class AccountDisabled(AuthenticationFailed):
    """An administrator disabled the account."""

    http_status = 403


class CodeReplayed(AuthenticationFailed):
    """A right TOTP code that was already used (one code, one sign-in)."""


@dataclass(frozen=True)
class Client:
    """Who is signing in: the audit log and session row show it, and lockouts count per
    username and ``address`` (already resolved through trusted proxies)."""

    address: str = ""
    user_agent: str = ""

    def describe(self) -> str:
        return f"{self.address} {self.user_agent}".strip()[:255]


def _now() -> datetime:
    return datetime.now(UTC)


# TOTP secret at rest ------------------------------------------------------------
def _totp_key(settings: Settings) -> bytes:
    """The AES-256 key of TOTP secrets, created once (0600) beside the API token."""
    settings.ensure_dirs()
    path: Path = settings.secrets_dir / _TOTP_KEY_FILE
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode())
    key = base64.b64decode(path.read_text().strip())
    if len(key) != 32:
        raise RDCError(f"{path} does not hold a 256-bit key")
    return key


def _encrypt_secret(settings: Settings, username: str, secret: str) -> str:
    # The username is the associated data: a ciphertext copied onto another
    # account's row does not decrypt there.
    nonce = os.urandom(12)
    sealed = AESGCM(_totp_key(settings)).encrypt(nonce, secret.encode(), username.encode())
    return _CIPHER_PREFIX + base64.b64encode(nonce + sealed).decode()


def _decrypt_secret(settings: Settings, user: User) -> str:
    if not user.totp_secret.startswith(_CIPHER_PREFIX):
        raise RDCError(f"TOTP secret of {user.username!r} is not in a known format")
    raw = base64.b64decode(user.totp_secret.removeprefix(_CIPHER_PREFIX))
    try:
        clear = AESGCM(_totp_key(settings)).decrypt(raw[:12], raw[12:],
                                                    user.username.encode())
    except InvalidTag as e:
        raise RDCError(f"TOTP secret of {user.username!r} does not decrypt with "
                       f"{settings.secrets_dir / _TOTP_KEY_FILE}; reset it "
                       "(rdc users reset-totp)") from e
    return clear.decode()


def _new_totp(settings: Settings, user: User) -> str:
    """Give ``user`` a fresh TOTP secret; return its provisioning URI (shown once)."""
    secret = pyotp.random_base32()
    user.totp_secret = _encrypt_secret(settings, user.username, secret)
    user.totp_last_step = 0
    return pyotp.TOTP(secret).provisioning_uri(name=user.username,
                                               issuer_name=settings.center_name)


# Validation ---------------------------------------------------------------------
def normalize_username(username: str) -> str:
    """Usernames compare case-insensitively: ``Dr.Li`` and ``dr.li`` are one account."""
    return username.strip().lower()


def _check_username(username: str) -> str:
    name = normalize_username(username)
    if not _USERNAME.match(name):
        raise InvalidInput(f"invalid username {username!r}: 1-128 characters, lowercase "
                           "letters, digits, '.', '_', '-' or '@', starting with a letter "
                           "or digit")
    if name in RESERVED_USERNAMES:
        raise InvalidInput(f"username {name!r} is reserved by the center")
    return name


def check_password_policy(password: str, username: str = "") -> None:
    """Refuse a password people or machines would guess; say exactly why."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if username and password.strip().lower() == username.lower():
        raise InvalidInput("password must not be the username")


def _check_roles(roles: Iterable[str]) -> list[str]:
    wanted = sorted({r.strip() for r in roles})
    if not wanted:
        raise InvalidInput(f"at least one role is required: {', '.join(sorted(ROLES))}")
    unknown = [r for r in wanted if r not in ROLES]
    if unknown:
        raise InvalidInput(f"unknown role(s) {', '.join(unknown)}: "
                           f"choose from {', '.join(sorted(ROLES))}")
    return wanted


def _check_sites(session: Session, sites: Iterable[str], all_sites: bool) -> list[str]:
    wanted = sorted({s.strip() for s in sites})
    if all_sites and wanted:
        raise InvalidInput("give either sites or all sites, not both")
    if not all_sites and not wanted:
        raise InvalidInput("give at least one site (or all sites) the user may see")
    known = set(session.scalars(select(Site.id).where(Site.id.in_(wanted))))
    missing = [s for s in wanted if s not in known]
    if missing:
        raise InvalidInput(f"unknown site(s) {', '.join(missing)} (see `rdc sites list`)")
    return wanted


# Accounts -----------------------------------------------------------------------
def get_user(session: Session, ref: int | str) -> User:
    """A user by id or by username; :class:`NotFound` otherwise."""
    if isinstance(ref, int):
        user = session.get(User, ref)
    else:
        user = session.scalar(select(User).where(User.username == normalize_username(ref)))
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


def user_site_ids(session: Session, user_id: int) -> frozenset[str]:
    """Sites a user was given (meaningless when ``all_sites`` is set)."""
    return frozenset(session.scalars(select(UserSite.site_id)
                                     .where(UserSite.user_id == user_id)))


def add_user(
    session: Session, settings: Settings, *, username: str, display_name: str,
    password: str, roles: Iterable[str], sites: Iterable[str] = (), all_sites: bool = False,
    actor: str,
) -> tuple[User, str]:
    """Create an account; return it with its TOTP provisioning URI (``otpauth://``).

    The URI holds the secret in clear and is shown once, to be scanned into the
    user's authenticator app; it is never stored or audited.
    """
    name = _check_username(username)
    if not display_name.strip():
        raise InvalidInput("display name must not be empty")
    check_password_policy(password, name)
    role_list = _check_roles(roles)
    site_list = _check_sites(session, sites, all_sites)
    if session.scalar(select(User.id).where(User.username == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = User(username=name, display_name=display_name.strip(),
                password_hash=_hasher.hash(password), roles=role_list, all_sites=all_sites,
                enabled=True, failed_logins=0, totp_last_step=0, totp_secret="")
    uri = _new_totp(settings, user)
    session.add(user)
    session.flush()
    session.add_all(UserSite(user_id=user.id, site_id=s) for s in site_list)
    audit.append(session, actor=actor, action="user.added", object_type="user",
                 object_id=name, detail={"id": user.id, "roles": role_list,
                                         "sites": "all" if all_sites else site_list})
    session.flush()
    return user, uri


def is_locked(user: User, now: datetime | None = None) -> bool:
    """Whether the account is waiting out a sign-in lockout."""
    return user.locked_until is not None and user.locked_until > (now or _now())


def list_users(session: Session) -> list[User]:
    """Every account, by username."""
    return list(session.scalars(select(User).order_by(User.username)))


def disable_user(session: Session, ref: int | str, *, actor: str,
                 reason: str = "") -> User:
    """Disable an account and end all its sessions now (not at their next expiry)."""
    user = get_user(session, ref)
    if user.enabled:
        user.enabled = False
        user.disabled_at = _now()
    ended = revoke_user_sessions(session, user.id)
    audit.append(session, actor=actor, action="user.disabled", object_type="user",
                 object_id=user.username, detail={"reason": reason, "sessions_ended": ended})
    return user


def enable_user(session: Session, ref: int | str, *, actor: str) -> User:
    """Enable an account again; this also lifts its sign-in lockouts, from every address."""
    user = get_user(session, ref)
    user.enabled = True
    user.disabled_at = None
    user.failed_logins = 0
    user.locked_until = None
    lifted = login_throttle.lift(session, user.username)
    audit.append(session, actor=actor, action="user.enabled", object_type="user",
                 object_id=user.username, detail={"lockouts_lifted": lifted})
    return user


def reset_totp(session: Session, settings: Settings, ref: int | str, *, actor: str) -> str:
    """New TOTP secret (lost phone); every session of the account ends.  Returns the URI."""
    user = get_user(session, ref)
    uri = _new_totp(settings, user)
    ended = revoke_user_sessions(session, user.id)
    audit.append(session, actor=actor, action="user.totp_reset", object_type="user",
                 object_id=user.username, detail={"sessions_ended": ended})
    return uri


def set_password(session: Session, ref: int | str, password: str, *, actor: str) -> User:
    """Replace the password (policy checked); every session of the account ends."""
    user = get_user(session, ref)
    check_password_policy(password, user.username)
    user.password_hash = _hasher.hash(password)
    ended = revoke_user_sessions(session, user.id)
    audit.append(session, actor=actor, action="user.password_set", object_type="user",
                 object_id=user.username, detail={"sessions_ended": ended})
    return user


# Sign-in ------------------------------------------------------------------------
def _refuse(session: Session, exc: AuthenticationFailed, *, username: str, reason: str,
            client: Client, audited: bool = True) -> AuthenticationFailed:
    """Audit a refused sign-in and commit it, then hand back ``exc`` to raise.

    Committed here because the caller's transaction rolls back with the error,
    and the failure count (lockout) and the audit record must outlive it.
    ``audited=False``: attempts refused during a lockout, which
    :func:`viewer.login_throttle.check` audits at a logarithmic rate instead.
    """
    if audited:
        audit.append(session, actor=username[:128] or "-", action="login.failed",
                     object_type="user", object_id=username[:128],
                     detail={"reason": reason, "client": client.describe()})
    session.commit()
    return exc


def _count_failure(session: Session, settings: Settings, name: str, user: User | None,
                   client: Client, now: datetime) -> None:
    """Count a failure for the lockouts (:mod:`viewer.login_throttle`) and the account."""
    login_throttle.record_failure(session, settings, name, client.address, now,
                                  known_user=user is not None)
    if user is None:
        return
    # Failed sign-ins in a row from any address, for the record (lockouts are counted
    # per address above).  In the database, so parallel failures all count.
    count = int(session.execute(
        update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1)
        .returning(User.failed_logins).execution_options(synchronize_session=False)
    ).scalar_one())
    set_committed_value(user, "failed_logins", count)  # in step, without a second write
    # The per-username ceiling, shown to administrators as the account's lockout.
    ceiling = login_throttle.account_locked_until(session, name, now)
    if ceiling is not None:
        user.locked_until = ceiling


def _match_totp_step(secret: str, code: str, now: datetime) -> list[int]:
    """Time steps (now, one before, one after) whose code equals ``code``."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    return [step for step in (current - 1, current, current + 1)
            if pyotp.utils.strings_equal(code, totp.generate_otp(step))]


def authenticate(
    session: Session, settings: Settings, username: str, password: str, totp_code: str,
    client: Client, *, now: datetime | None = None,
) -> User:
    """Check password and TOTP code; return the user, or raise :class:`AuthenticationFailed`.

    A failure is committed (failure count, lockout, audit record) before the error
    is raised.  Success resets the failure count, records the TOTP step (no replay)
    and upgrades an outdated password hash.
    """
    now = now or _now()
    name = normalize_username(username)
    # Before anything else, for known and unknown usernames alike, so that guessing
    # stops during a lockout and the answer tells nothing about the username.
    refusal = login_throttle.check(session, settings, name, client.address, now)
    if refusal is not None:
        raise _refuse(session, AccountLocked(refusal.message), username=name,
                      reason=f"locked ({refusal.scope})", client=client, audited=False)
    user = session.scalar(select(User).where(User.username == name)) if name else None
    if user is None:
        try:
            _hasher.verify(_dummy_hash(), password[:MAX_PASSWORD_LENGTH])
        except VerificationError:
            pass
        _count_failure(session, settings, name, None, client, now)
        raise _refuse(session, AuthenticationFailed(GENERIC_FAILURE), username=name,
                      reason="unknown user", client=client)

    try:
        # Cut one past the policy's limit: a huge request costs no more to hash, and
        # an over-long input still never matches a stored password.
        _hasher.verify(user.password_hash, password[:MAX_PASSWORD_LENGTH + 1])
    except (VerifyMismatchError, InvalidHashError, VerificationError):
        _count_failure(session, settings, name, user, client, now)
        raise _refuse(session, AuthenticationFailed(GENERIC_FAILURE), username=name,
                      reason="wrong password", client=client) from None

    if not user.enabled:
        # Only said to someone who knows the password, so it leaks nothing new.
        raise _refuse(session, AccountDisabled("account disabled; ask an administrator"),
                      username=name, reason="disabled", client=client)

    code = "".join(totp_code.split())
    steps = (_match_totp_step(_decrypt_secret(settings, user), code, now)
             if _TOTP_CODE.match(code) else [])
    fresh = [s for s in steps if s > user.totp_last_step]
    if not fresh:
        _count_failure(session, settings, name, user, client, now)
        if steps:
            raise _refuse(session, CodeReplayed(
                "this code was already used; wait for the next code and try again"),
                username=name, reason="replayed code", client=client)
        raise _refuse(session, AuthenticationFailed(GENERIC_FAILURE), username=name,
                      reason="wrong code", client=client)

    # Claim the step in the database: of two parallel sign-ins with one code, only
    # the first to update the row gets in.
    claimed = session.execute(
        update(User).where(User.id == user.id, User.totp_last_step < max(fresh))
        .values(totp_last_step=max(fresh)).execution_options(synchronize_session=False))
    if not getattr(claimed, "rowcount", 0):
        _count_failure(session, settings, name, user, client, now)
        raise _refuse(session, CodeReplayed(
            "this code was already used; wait for the next code and try again"),
            username=name, reason="replayed code", client=client)
    set_committed_value(user, "totp_last_step", max(fresh))
    user.failed_logins = 0
    login_throttle.record_success(session, name, client.address, now)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    audit.append(session, actor=name, action="login", object_type="user", object_id=name,
                 detail={"client": client.describe()})
    session.flush()
    return user

