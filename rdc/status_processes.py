"""The "Processes" part of ``rdc status``: what ``rdc up`` runs, and how often it restarted it.

Read from the supervisor's state file, and said plainly when that file cannot be
believed: no ``rdc up`` ever ran here, it stopped, or it died (its pid is gone,
so the table is how things were when it last wrote).
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from core.settings import Settings
from rdc.supervisor_state import (
    STUCK_AFTER_S,
    ChildRecord,
    StateUnreadable,
    read_state,
    state_path,
    supervisor_alive,
)

_STATE_STYLE = {"running": "green", "starting": "yellow", "restarting": "yellow",
                "gave-up": "bold red", "stopped": "dim"}


def _when(ts: datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def _last_exit(c: ChildRecord) -> str:
    e = c.last_exit
    if e is None:
        return "-"
    what = f"killed by {e.signal}" if e.signal else f"exit code {e.code}"
    extra = f", {e.reason}" if e.reason else ""
    return f"{what} at {_when(e.at)} after {e.uptime_s:.0f} s{extra}"


def print_processes(settings: Settings, console: Console) -> None:
    path = state_path(settings.home)
    try:
        record = read_state(path)
    except StateUnreadable as e:
        console.print(f"[red]Processes: {e}[/red]")
        return
    if record is None:
        console.print(f"[yellow]Processes: rdc up is not running[/yellow] (no state file at "
                      f"{path}; processes started on their own are not shown)")
        return
    alive = supervisor_alive(record)
    age = (datetime.now(UTC) - record.updated_at).total_seconds()
    if record.state == "stopped":
        console.print(f"[yellow]Processes: rdc up is not running[/yellow] (it stopped at "
                      f"{_when(record.updated_at)})")
        return
    if not alive:
        title = (f"[red]rdc up is not running: pid {record.pid} is gone, the state file is "
                 f"stale[/red] (as last written at {_when(record.updated_at)})")
    elif age > STUCK_AFTER_S:
        title = (f"[red]rdc up (pid {record.pid}) has not updated its state for {age:.0f} s: "
                 f"it may be stuck[/red]")
    else:
        title = f"Processes (rdc up pid {record.pid}, {record.state}, since " \
                f"{_when(record.started_at)})"
    table = Table("process", "state", "pid", "started", "restarts", "last exit", title=title)
    for c in record.children:
        state: str = c.state
        if c.state == "restarting" and c.next_start_at is not None:
            state += f" at {_when(c.next_start_at)}"
        elif c.state == "gave-up":
            state += f" at {_when(c.gave_up_at)}"
        style = _STATE_STYLE.get(c.state, "")
        table.add_row(c.name, f"[{style}]{state}[/{style}]" if style and alive else state,
                      str(c.pid) if c.pid is not None else "-", _when(c.started_at),
                      f"[red]{c.restarts}[/red]" if c.restarts else "0", _last_exit(c))
    console.print(table)
    if alive and any(c.state == "gave-up" for c in record.children):
        console.print(f"[bold red]A process was given up after repeated failures[/bold red]; "
                      f"see {settings.log_dir}, fix the cause, then: kill -USR1 {record.pid}")
