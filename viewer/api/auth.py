"""HTTP edge of sign-in and account administration.

Thin endpoints: schemas, cookies and status codes here; the logic in
:mod:`viewer.accounts` and :mod:`viewer.sessions`, which also audit every change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response, status

from core import audit, metrics
from core.errors import RDCError
from viewer import accounts
from viewer.auth import (
    SESSION_COOKIE,
    UserContext,
    clear_session_cookie,
    session_user,
    set_session_cookie,
)
from viewer.deps import Admin, CurrentUser, DatabaseDep, SessionDep, SettingsDep
from viewer.schemas import LoginIn, LoginOut, Me, NewUserIn, NewUserOut, TotpOut, UserOut
from viewer.sessions import create_session, revoke_session

router = APIRouter(prefix="/api", tags=["auth"])
#: Answers that carry a session's CSRF token or a TOTP secret must not sit in caches.
_NO_STORE = {"Cache-Control": "no-store"}


@contextmanager
def _service_errors() -> Iterator[None]:
    """Domain errors become their HTTP status here, whatever app includes the router."""
    try:
        yield
    except RDCError as e:
        raise HTTPException(e.http_status, str(e)) from e


def _me(ctx: UserContext) -> Me:
    return Me(id=ctx.user_id, username=ctx.username, display_name=ctx.display_name,
              roles=sorted(ctx.roles), sites="all" if ctx.all_sites else sorted(ctx.site_ids),
              csrf_token=ctx.csrf_token)


def _user_out(s: Any, user: Any) -> UserOut:
    """An account as administrators see it (``user`` is a ``core.models.User``)."""
    sites: list[str] | Literal["all"] = (
        "all" if user.all_sites else sorted(accounts.user_site_ids(s, user.id)))
    return UserOut(id=user.id, username=user.username, display_name=user.display_name,
                   roles=sorted(user.roles), sites=sites, enabled=user.enabled,
                   locked_until=user.locked_until, created_at=user.created_at,
                   disabled_at=user.disabled_at)


def _client(request: Request) -> accounts.Client:
    return accounts.Client(address=request.client.host if request.client else "",
                           user_agent=request.headers.get("user-agent", "")[:200])


# Sign-in ------------------------------------------------------------------------
@router.post("/auth/login", responses={401: {"description": "bad credentials"},
                                       403: {"description": "account locked or disabled"}})
def login(body: LoginIn, request: Request, response: Response, s: SessionDep,
          settings: SettingsDep) -> LoginOut:
    """Password + TOTP → a new session cookie and the CSRF token to echo."""
    client = _client(request)
    previous = request.cookies.get(SESSION_COOKIE)
    try:
        user = accounts.authenticate(s, settings, body.username, body.password,
                                     body.totp, client)
    except accounts.AuthenticationFailed as e:
        # authenticate committed the failure count and its audit record already.
        metrics.SIGNIN_FAILURES.labels(reason=_signin_failure_reason(e)).inc()
        raise HTTPException(e.http_status, str(e)) from None
    if previous:
        # A fresh token at every sign-in (no session fixation); the old one ends.
        revoke_session(s, previous)
    token, csrf = create_session(s, user, client.describe(), settings)
    sites = frozenset() if user.all_sites else accounts.user_site_ids(s, user.id)
    me = Me(id=user.id, username=user.username, display_name=user.display_name,
            roles=sorted(user.roles), sites="all" if user.all_sites else sorted(sites),
            csrf_token=csrf)
    set_session_cookie(response, token, settings)
    response.headers.update(_NO_STORE)
    return LoginOut(user=me, csrf_token=csrf)


def _signin_failure_reason(e: accounts.AuthenticationFailed) -> str:
    """The metrics' reason for a refused sign-in; a wrong password, code or username are
    one reason there as they are one message to the caller."""
    if isinstance(e, accounts.AccountLocked):
        return "locked"
    if isinstance(e, accounts.AccountDisabled):
        return "disabled"
    if isinstance(e, accounts.CodeReplayed):
        return "replayed_code"
    return "bad_credentials"


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT,
             response_class=Response)
def logout(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    """End the session server-side and drop the cookie.

    Idempotent: with no session, or one that already ended, it just clears the
    cookie.  A live session still needs its CSRF token, so another site cannot
    sign a user out.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        try:
            ctx = session_user(request, token)
        except HTTPException as e:
            if e.status_code != status.HTTP_401_UNAUTHORIZED:
                raise
        else:
            with db.session() as s:
                revoke_session(s, token)
                audit.append(s, actor=ctx.username, action="logout", object_type="user",
                             object_id=ctx.username)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_session_cookie(response, settings)
    return response


@router.get("/auth/me")
def me(user: CurrentUser, response: Response) -> Me:
    """The caller, with the CSRF token a reloaded page needs for its next change."""
    response.headers.update(_NO_STORE)
    return _me(user)


# Administration -----------------------------------------------------------------
@router.get("/admin/users", tags=["admin"])
def list_users(s: SessionDep, _: Admin) -> list[UserOut]:
    """Every account with its roles, sites and state."""
    return [_user_out(s, u) for u in accounts.list_users(s)]


@router.post("/admin/users", tags=["admin"], status_code=status.HTTP_201_CREATED)
def add_user(body: NewUserIn, s: SessionDep, settings: SettingsDep, actor: Admin,
             response: Response) -> NewUserOut:
    """Create an account; the answer holds its TOTP provisioning URI, shown only once."""
    with _service_errors():
        user, uri = accounts.add_user(
            s, settings, username=body.username, display_name=body.display_name,
            password=body.password, roles=body.roles, sites=body.sites,
            all_sites=body.all_sites, actor=actor.username)
        out = NewUserOut(user=_user_out(s, user), provisioning_uri=uri)
    response.headers.update(_NO_STORE)
    return out


@router.post("/admin/users/{user_id}/disable", tags=["admin"])
def disable_user(user_id: int, s: SessionDep, actor: Admin) -> UserOut:
    """Disable an account; its sessions end at once."""
    if actor.user_id == user_id:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            "you cannot disable your own account; ask another administrator")
    with _service_errors():
        return _user_out(s, accounts.disable_user(s, user_id, actor=actor.username))


@router.post("/admin/users/{user_id}/enable", tags=["admin"])
def enable_user(user_id: int, s: SessionDep, actor: Admin) -> UserOut:
    """Enable an account again (this also lifts a sign-in lockout)."""
    with _service_errors():
        return _user_out(s, accounts.enable_user(s, user_id, actor=actor.username))


@router.post("/admin/users/{user_id}/reset-totp", tags=["admin"])
def reset_totp(user_id: int, s: SessionDep, settings: SettingsDep, actor: Admin,
               response: Response) -> TotpOut:
    """New TOTP secret for a lost phone; the account's sessions end."""
    with _service_errors():
        uri = accounts.reset_totp(s, settings, user_id, actor=actor.username)
    response.headers.update(_NO_STORE)
    return TotpOut(provisioning_uri=uri)
