"""Web accounts: users, their sites, sessions, sign-in throttling and share links."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class User(Base):
    """A person who signs in to the web app.  Password (argon2 hash) plus TOTP."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(Text)
    #: The TOTP secret, encrypted with the center's secret key (never in clear at rest).
    totp_secret: Mapped[str] = mapped_column(Text)
    #: Last TOTP time step accepted, so a code is never accepted twice.
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    #: admin, radiologist, cardiologist, pathologist, lab_reviewer, site_user.
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Sees every site's work (center staff); otherwise only ``user_sites``.
    all_sites: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UserSite(Base):
    """A site whose studies, reports and links a user may see."""

    __tablename__ = "user_sites"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)


class WebSession(Base):
    """A server-side session: the cookie holds a random token, this row its hash.
    Deleting or revoking the row ends the session at once (logout, disable)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_user", "user_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    client: Mapped[str] = mapped_column(String(255), default="")


class LoginThrottle(Base):
    """Failed sign-ins of one username from one client address (see
    :mod:`viewer.login_throttle`).  The row with address ``"*"`` counts the username's
    failures from every address within the current window.  Keyed by the name typed,
    not by a user id, so that an unknown username is throttled exactly like a real one
    and the answers never tell which usernames exist."""

    __tablename__ = "login_throttles"
    __table_args__ = (Index("ix_login_throttles_last_failure", "last_failure_at"),)

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Pair: failures in a row since the last lockout or success.  ``"*"``: failures
    #: in the window that started at ``window_started_at``.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Lockouts of the pair so far; each one waits twice as long as the one before.
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Attempts refused while locked (audited at 1, 2, 4, 8 ... so a flood costs few rows).
    refused: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: The last successful sign-in from this address: it makes the address familiar.
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ShareLink(Base):
    """A "cloud film" link to one final report: expiring, revocable, every open audited.
    Only the token's hash is stored."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    report_version_id: Mapped[int] = mapped_column(ForeignKey("report_versions.id"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    opens: Mapped[int] = mapped_column(Integer, default=0)
