"""``rdc users``: accounts of the people who sign in to the web app.

Run on the center's own machine, so it needs no sign-in itself; every change is
audited with the actor ``cli``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.db import get_database
from core.errors import InvalidInput, RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

users_app = typer.Typer(
    help="Add, list, disable and enable web app users; reset their TOTP second factor.",
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
PASSWORD_ENV = "RDC_USER_PASSWORD"  # noqa: S105 (the variable's name, not a password)




def _password(password_file: Path | None) -> str:
    """From a file, from ``RDC_USER_PASSWORD`` (scripts), else asked twice without echo."""
    if password_file is not None:
        return password_file.read_text(encoding="utf-8").rstrip("\n")
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise InvalidInput(f"no password: give --password-file or {PASSWORD_ENV}")
    value: str = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    return value


def _show_totp(uri: str) -> None:
    # Plain echo, not rich: the URI must come out in one piece, never wrapped.
    err.print("Scan this into the user's authenticator app (it holds the secret; "
              "shown only now):")
    typer.echo(uri)


PasswordFile = Annotated[Path | None, typer.Option(
    "--password-file", exists=True, dir_okay=False,
    help=f"File holding the password (else {PASSWORD_ENV}, else asked).")]
UserArg = Annotated[str, typer.Argument(help="The username, e.g. 'dr.li'.")]


@users_app.command("add")
def users_add(
    username: UserArg,
    name: Annotated[str, typer.Option(help="Name shown in the app, e.g. '李医生'.")],
    role: Annotated[list[str], typer.Option(
        help="admin, radiologist, cardiologist, pathologist, lab_reviewer or site_user "
             "(repeatable).")],
    site: Annotated[list[str] | None, typer.Option(
        help="A site whose work the user sees (repeatable).")] = None,
    all_sites: Annotated[bool, typer.Option(
        "--all-sites", help="The user sees every site's work (center staff).")] = False,
    password_file: PasswordFile = None,
) -> None:
    """Create a user (password of 12+ characters) and print the TOTP provisioning URI."""
    from viewer import accounts

    s = _settings()
    try:
        password = _password(password_file)
        with get_database(s.database_url).session() as sess:
            user, uri = accounts.add_user(sess, s, username=username, display_name=name,
                                          password=password, roles=role, sites=site or (),
                                          all_sites=all_sites, actor="cli")
            sites = "all sites" if user.all_sites else ", ".join(sorted(site or ()))
            err.print(f"user {user.username!r} added (id {user.id}; roles "
                      f"{', '.join(user.roles)}; {sites})")
    except RDCError as e:
        raise _fail(e) from e
    _show_totp(uri)


@users_app.command("list")
def users_list() -> None:
    """Users with their roles, sites and state (enabled, disabled, locked)."""
    from viewer import accounts

    s = _settings()
    table = Table("id", "username", "name", "roles", "sites", "state", "created")
    with get_database(s.database_url).session() as sess:
        for u in accounts.list_users(sess):
            sites = "all" if u.all_sites else ", ".join(sorted(accounts.user_site_ids(sess,
                                                                                      u.id)))
            state = "enabled" if u.enabled else "disabled"
            if u.locked_until is not None and accounts.is_locked(u):
                state += f", locked until {u.locked_until:%Y-%m-%d %H:%M}"
            table.add_row(str(u.id), u.username, u.display_name, ", ".join(u.roles), sites,
                          state, f"{u.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@users_app.command("disable")
def users_disable(
    username: UserArg,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
) -> None:
    """Disable a user; every session of theirs ends at once."""
    from viewer import accounts

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            u = accounts.disable_user(sess, username, actor="cli", reason=reason)
            console.print(f"user {u.username!r} disabled; their sessions have ended")
    except RDCError as e:
        raise _fail(e) from e


@users_app.command("enable")
def users_enable(username: UserArg) -> None:
    """Enable a user again (this also lifts a sign-in lockout)."""
    from viewer import accounts

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            u = accounts.enable_user(sess, username, actor="cli")
            console.print(f"user {u.username!r} enabled")
    except RDCError as e:
        raise _fail(e) from e


@users_app.command("reset-totp")
def users_reset_totp(username: UserArg) -> None:
    """Give a user a new TOTP secret (lost phone) and print its provisioning URI."""
    from viewer import accounts

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            uri = accounts.reset_totp(sess, s, username, actor="cli")
    except RDCError as e:
        raise _fail(e) from e
    _show_totp(uri)


@users_app.command("set-password")
def users_set_password(username: UserArg, password_file: PasswordFile = None) -> None:
    """Set a user's password (12+ characters); their sessions end."""
    from viewer import accounts

    s = _settings()
    try:
        password = _password(password_file)
        with get_database(s.database_url).session() as sess:
            u = accounts.set_password(sess, username, password, actor="cli")
            console.print(f"password of {u.username!r} set; their sessions have ended")
    except RDCError as e:
        raise _fail(e) from e
