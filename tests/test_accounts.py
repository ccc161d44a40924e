"""User accounts and web sign-in on a real database: password + TOTP, server-side
sessions, CSRF, roles and sites, the operator token, and ``rdc users``."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pyotp
import pytest
from argon2 import PasswordHasher
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from conftest import _create_pg_database, _drop_pg_database
from core import audit
from core.db import Database, get_database
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AuditRecord, LoginThrottle, User, WebSession
from core.settings import Settings, get_settings
from core.sites import SiteSpec, add_site
from rdc.users_cli import users_app
from viewer import accounts, sessions
from viewer.api.auth import router
from viewer.auth import (
    SESSION_COOKIE,
    CurrentUser,
    UserContext,
    api_token,
    check_site,
    require_operator,
    require_roles,
)

PASSWORD = "correct horse battery"
CLIENT = accounts.Client(address="127.0.0.1", user_agent="pytest")


def code(uri: str, steps_ahead: int = 0) -> str:
    """The TOTP code the user's phone shows now (or ``steps_ahead`` steps later)."""
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    return totp.at(time.time() + 30 * steps_ahead)


def _site(db: Database, site_id: str, ae: str) -> None:
    with db.session() as s:
        add_site(s, SiteSpec(id=site_id, name=f"{site_id} hospital", ae_title=ae,
                             host="127.0.0.1", port=11199,
                             allowed_addresses=("127.0.0.1/32",)), actor="test")


def _user(db: Database, settings: Settings, username: str, roles: tuple[str, ...],
          sites: tuple[str, ...] = ("county-a",), all_sites: bool = False) -> str:
    with db.session() as s:
        _, uri = accounts.add_user(s, settings, username=username, display_name=username.title(),
                                   password=PASSWORD, roles=roles,
                                   sites=() if all_sites else sites, all_sites=all_sites,
                                   actor="test")
    return uri


# Service on SQLite and PostgreSQL ---------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def svc(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str,
        ) -> Iterator[tuple[Database, Settings]]:
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'accounts.sqlite3'}"
    else:
        pg_name, url = _create_pg_database(pg_admin)
    settings = Settings(home=tmp_path / "home", database_url=url)
    db = get_database(url)
    _site(db, "county-a", "COUNTY_A")
    _site(db, "county-b", "COUNTY_B")
    try:
        yield db, settings
    finally:
        db.dispose()
        get_database.cache_clear()
        if pg_name is not None:
            _drop_pg_database(pg_admin, pg_name)


def test_add_user_validates_and_keeps_no_secret_in_clear(
        svc: tuple[Database, Settings]) -> None:
    db, settings = svc
    uri = _user(db, settings, "Dr.Li", ("radiologist",))
    assert uri.startswith("otpauth://totp/") and "Regional%20Diagnostic%20Center" in uri
    secret = pyotp.parse_uri(uri).secret
    with db.session() as s:
        user = accounts.get_user(s, "dr.li")  # usernames are case-insensitive
        assert user.username == "dr.li" and user.roles == ["radiologist"]
        assert accounts.user_site_ids(s, user.id) == {"county-a"}
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash
        raw = s.execute(text("SELECT totp_secret FROM users WHERE username = 'dr.li'")).scalar()
        assert raw and secret not in raw and secret.lower() not in raw.lower()
        assert raw.startswith("v1:")
    key = settings.secrets_dir / "totp-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"password": "short pass"}, InvalidInput, "at least 12 characters"),
        ({"roles": ("radiologist", "wizard")}, InvalidInput, "unknown role(s) wizard"),
        ({"roles": ()}, InvalidInput, "at least one role"),
        ({"sites": ("county-z",)}, InvalidInput, "unknown site(s) county-z"),
        ({"sites": ()}, InvalidInput, "at least one site"),
        ({"all_sites": True}, InvalidInput, "not both"),
        ({"username": "operator"}, InvalidInput, "reserved"),
        ({"username": "bad name!"}, InvalidInput, "invalid username"),
        ({"username": "DR.LI"}, Conflict, "already exists"),
    ]
    for change, error, message in cases:
        args: dict[str, Any] = {"username": "new.user", "display_name": "New",
                                "password": PASSWORD, "roles": ("radiologist",),
                                "sites": ("county-a",), "all_sites": False, **change}
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")), \
                db.session() as s:
            accounts.add_user(s, settings, actor="test", **args)
    with db.session() as s, pytest.raises(NotFound):
        accounts.get_user(s, "nobody")


def test_authenticate_password_totp_replay_and_lockout(svc: tuple[Database, Settings]) -> None:
    db, settings = svc
    uri = _user(db, settings, "dr.wang", ("radiologist",))

    def attempt(password: str, totp: str, username: str = "dr.wang",
                later_s: float = 0) -> User:
        with db.session() as s:
            return accounts.authenticate(s, settings, username, password, totp, CLIENT,
                                         now=datetime.now(UTC) + timedelta(seconds=later_s))

    generic = accounts.GENERIC_FAILURE
    with pytest.raises(accounts.AuthenticationFailed, match=generic):
        attempt(PASSWORD, code(uri), username="nobody")
    with pytest.raises(accounts.AuthenticationFailed, match=generic):
        attempt("wrong password!", code(uri))
    wrong = f"{(int(code(uri)) + 1) % 1_000_000:06d}"
    with pytest.raises(accounts.AuthenticationFailed, match=generic):
        attempt(PASSWORD, wrong)
    with pytest.raises(accounts.AuthenticationFailed, match=generic):
        attempt(PASSWORD, "not-a-code")

    user = attempt(PASSWORD, code(uri))
    assert user.username == "dr.wang"
    with db.session() as s:  # success clears the failures and remembers the step
        u = accounts.get_user(s, "dr.wang")
        assert u.failed_logins == 0 and u.totp_last_step > 0
    with pytest.raises(accounts.CodeReplayed, match="already used"):
        attempt(PASSWORD, code(uri))
    assert attempt(PASSWORD, code(uri, 1)).username == "dr.wang"  # the next code is fine
    # An older code than the last one used is refused too, even inside the window.
    with pytest.raises(accounts.CodeReplayed):
        attempt(PASSWORD, code(uri, -1))

    # The replay since the last success counts as a failure too.
    for _ in range(settings.login_max_failures - 1):
        with pytest.raises(accounts.AuthenticationFailed, match=generic):
            attempt("wrong password!", code(uri, 1))
    # Locked (for this username from this address; tests/test_web_hardening.py has the
    # other addresses): even the right password and a fresh code are refused, clearly.
    with pytest.raises(accounts.AccountLocked, match="sign-in locked"):
        attempt(PASSWORD, code(uri, 2))
    with db.session() as s:
        accounts.enable_user(s, "dr.wang", actor="admin")  # lifts the lockout
    # The last code used was one step ahead; the next is accepted 30 s from now.
    assert attempt(PASSWORD, code(uri, 2), later_s=30).username == "dr.wang"

    with db.session() as s:
        actions = [r.action for r in s.scalars(select(AuditRecord).order_by(AuditRecord.seq))]
        failed = s.scalars(select(AuditRecord).where(AuditRecord.action == "login.failed")
                           .order_by(AuditRecord.seq)).all()
        assert audit.verify(s).ok
    assert actions.count("login") == 3 and "user.locked" in actions
    assert "user.enabled" in actions and "user.added" in actions
    assert [f.detail["reason"] for f in failed][:4] == [
        "unknown user", "wrong password", "wrong code", "wrong code"]


def test_one_code_one_sign_in_even_in_parallel(svc: tuple[Database, Settings]) -> None:
    db, settings = svc
    uri = _user(db, settings, "dr.qian", ("radiologist",))
    totp = code(uri)

    def attempt(_: int) -> str:
        try:
            with db.session() as s:
                accounts.authenticate(s, settings, "dr.qian", PASSWORD, totp, CLIENT)
        except accounts.CodeReplayed:
            return "replayed"
        return "ok"

    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(pool.map(attempt, range(4)))
    assert outcomes == ["ok", "replayed", "replayed", "replayed"]


def test_disabled_account_and_rehash(svc: tuple[Database, Settings]) -> None:
    db, settings = svc
    uri = _user(db, settings, "dr.zhao", ("pathologist",))
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    with db.session() as s:
        s.execute(update(User).where(User.username == "dr.zhao")
                  .values(password_hash=weak.hash(PASSWORD)))
    with db.session() as s:
        accounts.authenticate(s, settings, "dr.zhao", PASSWORD, code(uri), CLIENT)
    with db.session() as s:
        new_hash = accounts.get_user(s, "dr.zhao").password_hash
    assert "m=8192" not in new_hash and PasswordHasher().verify(new_hash, PASSWORD)

    with db.session() as s:
        accounts.disable_user(s, "dr.zhao", actor="admin", reason="left")
    with pytest.raises(accounts.AccountDisabled, match="account disabled"), db.session() as s:
        accounts.authenticate(s, settings, "dr.zhao", PASSWORD, code(uri, 1), CLIENT)
    # A wrong password on a disabled account says nothing about the account.
    with pytest.raises(accounts.AuthenticationFailed, match=accounts.GENERIC_FAILURE), \
            db.session() as s:
        accounts.authenticate(s, settings, "dr.zhao", "wrong password!", code(uri, 1), CLIENT)

    with db.session() as s:
        accounts.enable_user(s, "dr.zhao", actor="admin")
        with pytest.raises(InvalidInput, match="at least 12"):
            accounts.set_password(s, "dr.zhao", "tiny", actor="admin")
        accounts.set_password(s, "dr.zhao", "a whole new passphrase", actor="admin")
    with db.session() as s:
        accounts.authenticate(s, settings, "dr.zhao", "a whole new passphrase", code(uri, 1),
                              CLIENT)


def test_sessions_idle_absolute_revoked_and_disabled(svc: tuple[Database, Settings]) -> None:
    db, settings = svc
    _user(db, settings, "dr.sun", ("cardiologist",))
    with db.session() as s:
        user = accounts.get_user(s, "dr.sun")
        token, csrf = sessions.create_session(s, user, CLIENT.describe(), settings)
        other, _ = sessions.create_session(s, user, CLIENT.describe(), settings)
    with db.session() as s:
        row = s.scalars(select(WebSession)).first()
        assert row is not None and token not in {row.token_hash} and len(row.token_hash) == 64
        assert s.get(WebSession, sessions.token_hash(token)) is not None
        found = sessions.load_session(s, token, settings)
        assert found is not None and found[0].username == "dr.sun" and found[1].csrf_token == csrf
        assert sessions.load_session(s, "forged", settings) is None

    now = datetime.now(UTC)

    def shift(tok: str, **values: Any) -> None:
        with db.session() as s:
            s.execute(update(WebSession).where(WebSession.token_hash == sessions.token_hash(tok))
                      .values(**values))

    # Touch: a request refreshes last_seen_at once it is older than 30 s.
    shift(token, last_seen_at=now - timedelta(seconds=60))
    with db.session() as s:
        assert sessions.load_session(s, token, settings) is not None
        seen = s.get(WebSession, sessions.token_hash(token))
        assert seen is not None
        assert now - seen.last_seen_at < timedelta(seconds=5)

    # Idle timeout.
    shift(token, last_seen_at=now - timedelta(seconds=settings.session_idle_timeout_s + 1))
    with db.session() as s:
        assert sessions.load_session(s, token, settings) is None
    # Absolute lifetime, however active the session was.
    shift(token, last_seen_at=now, expires_at=now - timedelta(seconds=1))
    with db.session() as s:
        assert sessions.load_session(s, token, settings) is None
    shift(token, expires_at=now + timedelta(hours=1))
    with db.session() as s:
        assert sessions.load_session(s, token, settings) is not None
        assert sessions.revoke_session(s, token)
    with db.session() as s:
        assert sessions.load_session(s, token, settings) is None
        assert sessions.load_session(s, other, settings) is not None
        accounts.disable_user(s, "dr.sun", actor="admin")
    with db.session() as s:
        assert sessions.load_session(s, other, settings) is None
        assert all(r.revoked_at is not None for r in s.scalars(select(WebSession)))
        # Even re-enabled, the sessions killed by the disable stay dead.
        accounts.enable_user(s, "dr.sun", actor="admin")
    with db.session() as s:
        assert sessions.load_session(s, other, settings) is None
    shift(other, revoked_at=now - timedelta(days=2))
    with db.session() as s:
        assert sessions.purge_sessions(s, settings) == 1


# The web edge (SQLite) ----------------------------------------------------------------
@dataclass
class Web:
    client: TestClient
    db: Database
    settings: Settings

    def login(self, username: str, uri: str, steps_ahead: int = 0,
              password: str = PASSWORD) -> Any:
        return self.client.post("/api/auth/login", json={
            "username": username, "password": password, "totp": code(uri, steps_ahead)})

    def csrf(self) -> dict[str, str]:
        me = self.client.get("/api/auth/me")
        assert me.status_code == 200, me.text
        return {"X-CSRF-Token": me.json()["csrf_token"]}


Reader = Annotated[UserContext, Depends(require_roles("radiologist"))]
Operator = Annotated[str, Depends(require_operator)]


def _test_app() -> FastAPI:
    app = FastAPI()
    app.include_router(router)

    @app.get("/probe")
    def probe_get(user: CurrentUser) -> dict[str, Any]:
        return {"username": user.username, "roles": sorted(user.roles)}

    @app.post("/probe")
    def probe_post(user: CurrentUser) -> dict[str, Any]:
        return {"username": user.username}

    @app.get("/probe/site/{site_id}")
    def probe_site(site_id: str, user: CurrentUser) -> dict[str, str]:
        check_site(user, site_id)
        return {"site": site_id}

    @app.get("/probe/reader")
    def probe_reader(user: Reader) -> dict[str, str]:
        return {"username": user.username}

    @app.post("/probe/operator")
    def probe_operator(actor: Operator) -> dict[str, str]:
        return {"actor": actor}

    return app


@pytest.fixture
def web(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    for k in list(os.environ):
        if k.startswith("RDC_"):
            monkeypatch.delenv(k)
    url = f"sqlite:///{tmp_path / 'home' / 'rdc.sqlite3'}"
    monkeypatch.setenv("RDC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RDC_DATABASE_URL", url)
    get_settings.cache_clear()
    db = get_database(url)
    _site(db, "county-a", "COUNTY_A")
    _site(db, "county-b", "COUNTY_B")
    with TestClient(_test_app()) as client:
        yield Web(client, db, get_settings())
    get_settings.cache_clear()
    get_database.cache_clear()


def test_login_me_logout_and_the_old_cookie_is_dead(web: Web) -> None:
    uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    r = web.client.get("/probe")
    assert r.status_code == 401 and r.json()["detail"] == "not signed in"

    r = web.login("dr.li", uri)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == "dr.li" and body["user"]["sites"] == ["county-a"]
    assert body["user"]["roles"] == ["radiologist"] and body["csrf_token"]
    assert body["user"]["csrf_token"] == body["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # development: plain http on 127.0.0.1
    assert r.headers["cache-control"] == "no-store"
    token = web.client.cookies[SESSION_COOKIE]
    with web.db.session() as s:  # only the token's hash is stored
        assert s.get(WebSession, token) is None
        assert s.get(WebSession, sessions.token_hash(token)) is not None

    me = web.client.get("/api/auth/me").json()
    assert me == {**body["user"], "csrf_token": body["csrf_token"]}
    assert web.client.get("/probe").json()["username"] == "dr.li"
    assert web.client.get("/probe/site/county-a").status_code == 200
    r = web.client.get("/probe/site/county-b")
    assert r.status_code == 404 and r.json()["detail"] == "not found"

    r = web.client.post("/api/auth/logout")  # a live session needs its CSRF token
    assert r.status_code == 403
    r = web.client.post("/api/auth/logout", headers={"X-CSRF-Token": body["csrf_token"]})
    assert r.status_code == 204
    assert SESSION_COOKIE not in web.client.cookies
    web.client.cookies.set(SESSION_COOKIE, token)  # replay the old cookie
    r = web.client.get("/probe")
    assert r.status_code == 401 and r.json()["detail"] == "session expired, sign in again"
    assert web.client.post("/api/auth/logout").status_code == 204  # idempotent
    with web.db.session() as s:
        assert "logout" in {r.action for r in s.scalars(select(AuditRecord))}


def test_login_refusals_are_clear(web: Web) -> None:
    uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    generic = accounts.GENERIC_FAILURE
    r = web.login("dr.li", uri, password="wrong password!")
    assert r.status_code == 401 and r.json()["detail"] == generic
    assert SESSION_COOKIE not in web.client.cookies
    r = web.login("nobody", uri)
    assert r.status_code == 401 and r.json()["detail"] == generic
    r = web.client.post("/api/auth/login", json={"username": "dr.li", "password": PASSWORD,
                                                 "totp": "000000" if code(uri) != "000000"
                                                 else "111111"})
    assert r.status_code == 401 and r.json()["detail"] == generic
    assert web.login("dr.li", uri).status_code == 200
    r = web.login("dr.li", uri)  # the same code again
    assert r.status_code == 401 and "already used" in r.json()["detail"]
    r = web.client.post("/api/auth/login", json={"username": "dr.li"})
    assert r.status_code == 422

    for _ in range(web.settings.login_max_failures - 1):  # one failure (replay) already counted
        assert web.login("dr.li", uri, 1, password="wrong password!").status_code == 401
    r = web.login("dr.li", uri, 1)
    assert r.status_code == 403 and "sign-in locked" in r.json()["detail"]
    with web.db.session() as s:  # the lockout has run out
        s.execute(update(LoginThrottle).where(LoginThrottle.username == "dr.li")
                  .values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert web.login("dr.li", uri, 1).status_code == 200


def test_csrf_on_state_changes_only(web: Web) -> None:
    uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    csrf = web.login("dr.li", uri).json()["csrf_token"]
    assert web.client.get("/probe").status_code == 200  # GET needs no CSRF token
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": ""}):
        r = web.client.post("/probe", headers=headers)
        assert r.status_code == 403 and r.json()["detail"] == "missing or invalid CSRF token"
    r = web.client.post("/probe", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["username"] == "dr.li"


def test_timeouts_over_http(web: Web) -> None:
    uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    assert web.login("dr.li", uri).status_code == 200
    token_hash = sessions.token_hash(web.client.cookies[SESSION_COOKIE])
    idle = timedelta(seconds=web.settings.session_idle_timeout_s + 5)
    with web.db.session() as s:
        s.execute(update(WebSession).where(WebSession.token_hash == token_hash)
                  .values(last_seen_at=datetime.now(UTC) - idle))
    r = web.client.get("/probe")
    assert r.status_code == 401 and r.json()["detail"] == "session expired, sign in again"

    assert web.login("dr.li", uri, 1).status_code == 200
    token_hash = sessions.token_hash(web.client.cookies[SESSION_COOKIE])
    with web.db.session() as s:
        row = s.get(WebSession, token_hash)
        assert row is not None
        assert row.expires_at - row.created_at == timedelta(seconds=web.settings.session_max_age_s)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert web.client.get("/probe").status_code == 401


def test_cookie_is_secure_in_production() -> None:
    prod = Settings(environment="production", database_url="postgresql://rdc@db/rdc",
                    broker_url="redis://broker:6379/0")
    assert prod.cookie_secure is True
    assert Settings(environment="development").cookie_secure is False
    assert Settings(session_cookie_secure=True).cookie_secure is True


def test_operator_token_and_require_operator(web: Web) -> None:
    token = api_token(web.settings)
    bearer = {"Authorization": f"Bearer {token}"}
    r = web.client.get("/probe", headers=bearer)
    assert r.json() == {"username": "operator", "roles": ["operator"]}
    assert web.client.post("/probe", headers=bearer).status_code == 200  # no CSRF needed
    assert web.client.get("/probe/site/county-b", headers=bearer).status_code == 200
    assert web.client.get("/probe/reader", headers=bearer).status_code == 200
    me = web.client.get("/api/auth/me", headers=bearer).json()
    assert me["sites"] == "all" and me["id"] is None and me["csrf_token"] is None
    r = web.client.get("/probe", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"

    r = web.client.post("/probe/operator")
    assert r.status_code == 401 and r.json()["detail"] == "missing bearer token"
    r = web.client.post("/probe/operator", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    assert web.client.post("/probe/operator", headers=bearer).json() == {"actor": "operator"}

    reader_uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    csrf = web.login("dr.li", reader_uri).json()["csrf_token"]
    r = web.client.post("/probe/operator", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "requires role admin" in r.json()["detail"]
    admin_uri = _user(web.db, web.settings, "boss", ("admin",), all_sites=True)
    csrf = web.login("boss", admin_uri).json()["csrf_token"]
    assert web.client.post("/probe/operator").status_code == 403  # CSRF still applies
    r = web.client.post("/probe/operator", headers={"X-CSRF-Token": csrf})
    assert r.json() == {"actor": "boss"}
    r = web.client.get("/probe/reader")  # admin is not a reading role
    assert r.status_code == 403 and r.json()["detail"] == "requires role radiologist"


def test_admin_routes(web: Web) -> None:
    reader_uri = _user(web.db, web.settings, "dr.li", ("radiologist",))
    admin_uri = _user(web.db, web.settings, "boss", ("admin",), all_sites=True)

    assert web.login("dr.li", reader_uri).status_code == 200
    r = web.client.get("/api/admin/users")
    assert r.status_code == 403 and r.json()["detail"] == "requires role admin"
    r = web.client.post("/api/admin/users/1/disable", headers=web.csrf())
    assert r.status_code == 403

    web.client.cookies.clear()
    admin = web.login("boss", admin_uri).json()
    headers = {"X-CSRF-Token": admin["csrf_token"]}
    users = web.client.get("/api/admin/users").json()
    assert [u["username"] for u in users] == ["boss", "dr.li"]
    assert users[0]["sites"] == "all" and users[1]["sites"] == ["county-a"]

    new = {"username": "lab.chen", "display_name": "Chen", "password": PASSWORD,
           "roles": ["lab_reviewer"], "sites": ["county-a", "county-b"]}
    assert web.client.post("/api/admin/users", json=new).status_code == 403  # no CSRF
    r = web.client.post("/api/admin/users", json=new, headers=headers)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["user"]["sites"] == ["county-a", "county-b"]
    chen_uri = created["provisioning_uri"]
    assert chen_uri.startswith("otpauth://totp/")
    r = web.client.post("/api/admin/users", json=new, headers=headers)
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = web.client.post("/api/admin/users", json={**new, "username": "x.y", "password": "short"},
                        headers=headers)
    assert r.status_code == 422 and "at least 12 characters" in r.json()["detail"]
    r = web.client.post("/api/admin/users", json={**new, "username": "x.y", "roles": ["god"]},
                        headers=headers)
    assert r.status_code == 422 and "unknown role" in r.json()["detail"]
    r = web.client.post("/api/admin/users/999/enable", headers=headers)
    assert r.status_code == 404

    # Chen signs in elsewhere; disabling the account kills that live session.
    chen = TestClient(web.client.app)
    assert chen.post("/api/auth/login", json={"username": "lab.chen", "password": PASSWORD,
                                              "totp": code(chen_uri)}).status_code == 200
    assert chen.get("/probe").status_code == 200
    chen_id = created["user"]["id"]
    r = web.client.post(f"/api/admin/users/{chen_id}/disable", headers=headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = chen.get("/probe")
    assert r.status_code == 401 and r.json()["detail"] == "session expired, sign in again"
    r = chen.post("/api/auth/login", json={"username": "lab.chen", "password": PASSWORD,
                                           "totp": code(chen_uri, 1)})
    assert r.status_code == 403 and "disabled" in r.json()["detail"]
    r = web.client.post(f"/api/admin/users/{chen_id}/enable", headers=headers)
    assert r.status_code == 200 and r.json()["enabled"] is True

    # Reset TOTP: the old phone's codes stop working, the new URI's work.
    r = web.client.post(f"/api/admin/users/{chen_id}/reset-totp", headers=headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    new_uri = r.json()["provisioning_uri"]
    assert pyotp.parse_uri(new_uri).secret != pyotp.parse_uri(chen_uri).secret
    r = chen.post("/api/auth/login", json={"username": "lab.chen", "password": PASSWORD,
                                           "totp": code(chen_uri, 1)})
    if code(chen_uri, 1) != code(new_uri, 1):
        assert r.status_code == 401
    r = chen.post("/api/auth/login", json={"username": "lab.chen", "password": PASSWORD,
                                           "totp": code(new_uri)})
    assert r.status_code == 200, r.text

    boss_id = admin["user"]["id"]
    r = web.client.post(f"/api/admin/users/{boss_id}/disable", headers=headers)
    assert r.status_code == 409 and "your own account" in r.json()["detail"]

    # The operator token manages accounts too (scripts).
    bearer = {"Authorization": f"Bearer {api_token(web.settings)}"}
    assert web.client.get("/api/admin/users", headers=bearer).status_code == 200
    with web.db.session() as s:
        records = s.scalars(select(AuditRecord).where(AuditRecord.action.like("user.%"))).all()
        assert audit.verify(s).ok
    by_action = {(r.action, r.actor) for r in records}
    assert {("user.added", "boss"), ("user.disabled", "boss"), ("user.enabled", "boss"),
            ("user.totp_reset", "boss")} <= by_action
    assert all(new_uri not in str(r.detail) for r in records)


# rdc users (the typer app; rdc/cli.py wires it as `rdc users`) --------------------------
def test_users_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("RDC_"):
            monkeypatch.delenv(k)
    url = f"sqlite:///{tmp_path / 'home' / 'rdc.sqlite3'}"
    monkeypatch.setenv("RDC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RDC_DATABASE_URL", url)
    get_settings.cache_clear()
    db = get_database(url)
    _site(db, "county-a", "COUNTY_A")
    runner = CliRunner()
    try:
        for args in ([], ["add"], ["list"], ["reset-totp"]):
            r = runner.invoke(users_app, [*args, "--help"])
            assert r.exit_code == 0 and "Usage" in r.output

        r = runner.invoke(users_app, ["add", "dr.li", "--name", "Dr Li", "--role", "radiologist",
                                      "--site", "county-a"])
        assert r.exit_code == 2 and "no password" in r.output

        r = runner.invoke(users_app, ["add", "dr.li", "--name", "Dr Li", "--role", "radiologist",
                                      "--role", "cardiologist", "--site", "county-a"],
                          env={"RDC_USER_PASSWORD": PASSWORD})
        assert r.exit_code == 0, r.output
        uri = next(line for line in r.stdout.splitlines() if line.startswith("otpauth://"))
        with db.session() as s:
            user = accounts.authenticate(s, get_settings(), "dr.li", PASSWORD, code(uri),
                                         CLIENT)
            assert sorted(user.roles) == ["cardiologist", "radiologist"]

        pw_file = tmp_path / "pw"
        pw_file.write_text(PASSWORD + "\n")
        r = runner.invoke(users_app, ["add", "boss", "--name", "Boss", "--role", "admin",
                                      "--all-sites", "--password-file", str(pw_file)])
        assert r.exit_code == 0 and "otpauth://" in r.stdout
        r = runner.invoke(users_app, ["add", "x.y", "--name", "X", "--role", "wizard",
                                      "--all-sites"], env={"RDC_USER_PASSWORD": PASSWORD})
        assert r.exit_code == 2 and "unknown role" in r.output
        r = runner.invoke(users_app, ["add", "x.y", "--name", "X", "--role", "site_user",
                                      "--site", "county-q"], env={"RDC_USER_PASSWORD": PASSWORD})
        assert r.exit_code == 2 and "unknown site" in r.output
        r = runner.invoke(users_app, ["add", "x.y", "--name", "X", "--role", "site_user",
                                      "--all-sites"], env={"RDC_USER_PASSWORD": "too short"})
        assert r.exit_code == 2 and "at least 12 characters" in r.output

        r = runner.invoke(users_app, ["list"])
        assert r.exit_code == 0 and "dr.li" in r.stdout and "boss" in r.stdout
        assert "county-a" in r.stdout and "enabled" in r.stdout

        r = runner.invoke(users_app, ["disable", "dr.li", "--reason", "left"])
        assert r.exit_code == 0 and "disabled" in r.stdout
        assert "disabled" in runner.invoke(users_app, ["list"]).stdout
        r = runner.invoke(users_app, ["enable", "dr.li"])
        assert r.exit_code == 0 and "enabled" in r.stdout
        r = runner.invoke(users_app, ["disable", "nobody"])
        assert r.exit_code == 3 and "no user" in r.output

        r = runner.invoke(users_app, ["reset-totp", "dr.li"])
        assert r.exit_code == 0
        new_uri = next(line for line in r.stdout.splitlines() if line.startswith("otpauth://"))
        assert pyotp.parse_uri(new_uri).secret != pyotp.parse_uri(uri).secret
        r = runner.invoke(users_app, ["set-password", "dr.li"],
                          env={"RDC_USER_PASSWORD": "another long passphrase"})
        assert r.exit_code == 0, r.output
        with db.session() as s:
            accounts.authenticate(s, get_settings(), "dr.li", "another long passphrase",
                                  code(new_uri), CLIENT)
            actors = {r.actor for r in s.scalars(select(AuditRecord)
                                                 .where(AuditRecord.action.like("user.%")))}
        assert actors == {"cli"}
    finally:
        get_settings.cache_clear()
        get_database.cache_clear()
