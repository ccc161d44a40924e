"""Who is calling: a signed-in person (session cookie) or the operator (bearer token).

People sign in at ``/api/auth/login`` and get the ``rdc_session`` cookie: a
random token whose hash is a :class:`~core.models.WebSession` row (see
:mod:`viewer.sessions`).  Scripts and tests use ``Authorization: Bearer <token>``
with the operator token generated once under ``$RDC_HOME/secrets/api-token``.

A browser attaches the cookie to every request, including ones another site
makes it send, so a state-changing request (POST/PUT/PATCH/DELETE) that rests
on the cookie must also carry ``X-CSRF-Token`` with the session's CSRF token,
which only our own pages can read.  ``SameSite=Strict`` is a second line of that
defence, not the only one.  A bearer token is never sent by a browser on its
own, so it needs no CSRF token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core import metrics
from core.db import get_database
from core.settings import Settings, get_settings
from viewer.accounts import ROLES, user_site_ids
from viewer.sessions import load_session

SESSION_COOKIE = "rdc_session"
CSRF_HEADER = "X-CSRF-Token"
OPERATOR = "operator"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


#: Roles that may see patient data (worklist, studies, reports, images, cloud film
#: links) of the sites their account may see.  ``site_user`` is a county clerk: it
#: looks at its own site's studies and reports but does not report (see
#: :data:`viewer.worklist.READER_ROLES` for the roles that claim, write and sign).
#: ``admin`` is deliberately absent: it manages accounts and reads nothing.
READING_ROLES = ("radiologist", "cardiologist", "pathologist", "lab_reviewer", "site_user")


def api_token_path(settings: Settings) -> Path:
    """Where the operator token lives; it is generated (0600) the first time it is asked for.

    Written to a private temporary file and linked into place, so that two processes
    starting at once agree on one token and nobody ever reads a half-written file.
    """
    settings.ensure_dirs()
    path = settings.secrets_dir / "api-token"
    if not path.exists():
        tmp = path.with_name(f".api-token.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: its token stands
        finally:
            tmp.unlink()
    return path


def api_token(settings: Settings) -> str:
    """The operator token, generated once (0600) and read from the secrets folder."""
    return api_token_path(settings).read_text().strip()


@dataclass(frozen=True)
class UserContext:
    """The caller of one request, as routes see it.

    The operator token is nobody in particular: it has every role but belongs to
    no person, so routes that need a person's act (signing a report) must ask
    for :attr:`is_person` (:func:`require_person`), not a role.
    """

    user_id: int | None
    username: str
    display_name: str
    roles: frozenset[str]
    all_sites: bool
    site_ids: frozenset[str]
    csrf_token: str | None

    @property
    def is_operator(self) -> bool:
        return self.user_id is None and OPERATOR in self.roles

    @property
    def is_person(self) -> bool:
        return self.user_id is not None

    def can_see_site(self, site_id: str) -> bool:
        """Whether studies, reports and links of ``site_id`` are visible to the caller."""
        return self.all_sites or site_id in self.site_ids

    def has_role(self, *roles: str) -> bool:
        """Whether the caller holds one of ``roles``.

        ``admin`` is not a super-role: an administrator manages accounts and does
        not read studies unless also given a reading role.  The operator token
        passes every role check (scripts drive the whole center).
        """
        return self.is_operator or bool(self.roles.intersection(roles))


_bearer = HTTPBearer(auto_error=False)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _operator_context() -> UserContext:
    return UserContext(user_id=None, username=OPERATOR, display_name="operator token",
                       roles=frozenset({OPERATOR}), all_sites=True, site_ids=frozenset(),
                       csrf_token=None)


def _check_bearer(creds: HTTPAuthorizationCredentials) -> UserContext:
    # Constant-time comparison: the token must not leak a character at a time.
    if not hmac.compare_digest(creds.credentials.encode(),
                               api_token(get_settings()).encode()):
        metrics.SIGNIN_FAILURES.labels(reason="invalid_token").inc()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid token", headers=_CHALLENGE)
    return _operator_context()


def session_user(request: Request, token: str) -> UserContext:
    """The person behind session cookie ``token``; 401 if it ended, 403 on a bad CSRF token."""
    settings = get_settings()
    with get_database(settings.database_url).session() as s:
        found = load_session(s, token, settings)
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "session expired, sign in again",
                                headers=_CHALLENGE)
        user, ws = found
        ctx = UserContext(user_id=user.id, username=user.username,
                          display_name=user.display_name, roles=frozenset(user.roles),
                          all_sites=user.all_sites,
                          site_ids=frozenset() if user.all_sites else user_site_ids(s, user.id),
                          csrf_token=ws.csrf_token)
        if request.method.upper() in _UNSAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            # Raised inside the transaction: a forged request does not even count
            # as activity for the idle timeout.
            if not sent or not hmac.compare_digest(sent.encode(), ws.csrf_token.encode()):
                raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or invalid CSRF token")
    return ctx


def current_user(request: Request, creds: Bearer) -> UserContext:
    """The caller: operator token first, else the session cookie; 401/403 otherwise."""
    if creds is not None:
        return _check_bearer(creds)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in", headers=_CHALLENGE)
    return session_user(request, token)


CurrentUser = Annotated[UserContext, Depends(current_user)]


def _check_role_names(roles: tuple[str, ...]) -> None:
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        # A typo in a route's role would silently lock everyone out: fail at import.
        raise ValueError(f"unknown role(s) {unknown or '(none given)'}; roles are {sorted(ROLES)}")


def require_roles(*roles: str) -> Callable[..., UserContext]:
    """A dependency that admits callers holding one of ``roles``; 403 otherwise."""
    _check_role_names(roles)
    wanted = " or ".join(roles)

    def dependency(user: CurrentUser) -> UserContext:
        if not user.has_role(*roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"requires role {wanted}")
        return user

    return dependency


#: A caller holding one of :data:`READING_ROLES` (or the operator token).  Routes
#: that hand out patient data depend on it, then check the object's site
#: (:func:`check_site`, 404 for another site's object).
Reader = Annotated[UserContext, Depends(require_roles(*READING_ROLES))]


def require_person(user: CurrentUser) -> UserContext:
    """Admit only a signed-in person: an act in someone's name needs someone."""
    if not user.is_person:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "requires a signed-in user, not the operator token")
    return user


def check_site(user: UserContext, site_id: str) -> None:
    """404 (not 403) for another site's object, so its existence is not revealed."""
    if not user.can_see_site(site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")


def require_operator(request: Request, creds: Bearer) -> str:
    """Operator routes: the bearer token (``"operator"``) or an admin's session (username).

    The 401 messages of the token-only era are kept for scripts that match them.
    """
    if creds is None and not request.cookies.get(SESSION_COOKIE):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers=_CHALLENGE)
    user = current_user(request, creds)
    if user.is_operator:
        return OPERATOR
    if "admin" not in user.roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "requires role admin (or the operator token)")
    return user.username


#: Operator routes: the bearer token or an admin's session (see :func:`require_operator`).
Operator = Annotated[str, Depends(require_operator)]


def set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    """HttpOnly (no script reads it), SameSite=Strict, whole app; Secure per settings."""
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_max_age_s),
                        path="/", secure=settings.cookie_secure, httponly=True,
                        samesite="strict")


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=settings.cookie_secure,
                           httponly=True, samesite="strict")
