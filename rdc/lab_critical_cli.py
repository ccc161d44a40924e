"""``rdc lab critical``: the closed loop of critical values from a terminal.

List the notices (open ones first), acknowledge one with the read-back on behalf of the
person who took the call, run the escalation once, and print the per-site dashboard.
Merged into ``rdc lab`` by rdc/lab_cli.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select

from core.db import get_database
from core.errors import Forbidden, NotFound, RDCError
from core.models import LabCriticalNotice, User, UserSite
from rdc.console import console
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

app = typer.Typer()
critical_app = typer.Typer(help="Critical values: notices, acknowledgement with read-back, "
                                "escalation, dashboard.", no_args_is_help=True)
app.add_typer(critical_app, name="critical")

#: Roles that may take a critical value: the site's own accounts and the lab reviewers.
ACK_ROLES = ("site_user", "lab_reviewer")


def _sites(site: list[str] | None) -> frozenset[str] | None:
    return frozenset(site) if site else None


def _value(row: dict[str, Any]) -> str:
    """The value as the site was sent it: the one to read back."""
    return f"{row['value_sent']} {row['units']}".strip()


@critical_app.command("list")
def list_cmd(
    open_only: Annotated[bool, typer.Option("--open", help="Only notices not yet "
                                                           "acknowledged.")] = False,
    site: Annotated[list[str] | None, typer.Option("--site", help="Only this site "
                                                                  "(repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List critical-value notices: open ones first, then the oldest."""
    from lab.critical import notices

    s = _settings()
    with get_database(s.database_url).session() as session:
        rows = notices(session, site_ids=_sites(site), open_only=open_only)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print("no critical-value notices", markup=False)
        return
    table = Table("id", "site", "state", "tier", "patient", "accession", "test", "value",
                  "flag", "notified", "next escalation", "acknowledged by")
    for r in rows:
        ack = f"{r['ack_name']} ({r['ack_by']}) read back {r['ack_readback']}" \
            if r["ack_at"] else ""
        table.add_row(str(r["id"]), r["site_id"], r["state"], str(r["tier"]), r["patient_id"],
                      r["accession"], r["test_code"], _value(r), r["flag"],
                      r["notified_at"] or "", r["next_escalation_at"] or "", ack)
    console.print(table)


def _check_may_ack(user: User | None, username: str, site_id: str, linked: set[str]) -> None:
    if user is None or not user.enabled:
        raise NotFound(f"no enabled account {username!r}")
    if not any(role in (user.roles or []) for role in ACK_ROLES):
        raise Forbidden(f"{username!r} has none of the roles {list(ACK_ROLES)} that take "
                        "critical values")
    if not (user.all_sites or site_id in linked):
        raise Forbidden(f"{username!r} may not see site {site_id!r}")


@critical_app.command("ack")
def ack_cmd(
    notice_id: Annotated[int, typer.Argument(help="The notice's id (rdc lab critical list).")],
    name: Annotated[str, typer.Option("--name", help="Who took the call, e.g. \"Dr Li\".")],
    readback: Annotated[str, typer.Option("--readback",
                                          help="The value as the person repeated it.")],
    as_user: Annotated[str, typer.Option("--as", help="The account acknowledging (a "
                                                      "site_user of the notice's site or a "
                                                      "lab_reviewer).")],
) -> None:
    """Acknowledge a critical value with its read-back; a wrong read-back is refused
    (exit 4), recorded, and the notice stays open."""
    from lab.critical import acknowledge

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            notice = session.get(LabCriticalNotice, notice_id)
            if notice is None:
                raise NotFound(f"critical notice {notice_id} not found")
            user = session.scalar(select(User).where(User.username == as_user))
            linked = set(session.scalars(select(UserSite.site_id).where(
                UserSite.user_id == user.id))) if user is not None else set()
            _check_may_ack(user, as_user, notice.site_id, linked)
            done = acknowledge(session, notice_id, actor=as_user, name=name,
                               readback=readback, settings=s)
            line = (f"critical notice {done.id} acknowledged by {done.ack_name} "
                    f"({done.ack_by}), read back {done.ack_readback!r} at {done.ack_at}")
    except RDCError as e:
        raise _fail(e) from e
    console.print(line, markup=False)


@critical_app.command("escalate")
def escalate_cmd() -> None:
    """Escalate every notice whose timer has run out, now (what the scheduler's
    lab.critical_escalation task does each period)."""
    from lab.critical import escalate_due

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            ids = escalate_due(session, s)
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"escalated {len(ids)} notice(s): {ids}" if ids else "nothing due",
                  markup=False)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


@critical_app.command("dashboard")
def dashboard_cmd(
    hours: Annotated[float, typer.Option("--hours", min=0.0,
                                         help="Critical values measured in the last N "
                                              "hours.")] = 24.0 * 30,
    site: Annotated[list[str] | None, typer.Option("--site", help="Only this site "
                                                                  "(repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per site: result → notification and notification → acknowledgement medians, and
    whether every critical value was acknowledged or escalated (exit 1 if not)."""
    from lab.critical import dashboard

    s = _settings()
    since = datetime.now(UTC) - timedelta(hours=hours)
    with get_database(s.database_url).session() as session:
        rows = dashboard(session, site_ids=_sites(site), since=since)
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        table = Table("site", "critical", "median result→notified", "median notified→ack",
                      "acknowledged", "escalated", "open", "without notice", "closed loop")
        for r in rows:
            table.add_row(r["site_id"], str(r["count"]),
                          _seconds(r["median_result_to_notification_s"]),
                          _seconds(r["median_notification_to_ack_s"]), str(r["acknowledged"]),
                          str(r["escalated"]), str(r["open"]), str(r["without_notice"]),
                          f"{r['closed_loop_pct']:.1f} %")
        console.print(table if rows else "no critical values in that period")
    if not all(r["closed_loop"] for r in rows):
        raise typer.Exit(1)
