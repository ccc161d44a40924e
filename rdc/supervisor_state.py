"""The state file ``rdc up`` keeps for ``rdc status``: ``$RDC_HOME/run/supervisor.json``.

``rdc status`` runs in another process, possibly while ``rdc up`` is writing, so the
file is replaced atomically (written beside it, then ``os.replace``): a reader sees
the old state or the new one, never half of one.  The file outlives the supervisor
(a ``kill -9`` leaves it behind), so it names the supervisor's pid and that
process's start time; a reader checks both before believing it.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

ChildStateName = Literal["starting", "running", "restarting", "gave-up", "stopped"]
SupervisorStateName = Literal["starting", "running", "stopping", "stopped"]

#: A live supervisor rewrites the file at least this often (seconds).
HEARTBEAT_S = 2.0
#: A file older than this from a live pid means the supervisor is stuck.
STUCK_AFTER_S = 30.0


class ExitRecord(BaseModel):
    """How a process last ended."""

    #: Exit status, or None when a signal ended it.
    code: int | None
    signal: str | None
    at: datetime
    uptime_s: float
    #: Why, in words, when the exit status alone does not say it.
    reason: str = ""


class ChildRecord(BaseModel):
    name: str
    state: ChildStateName
    pid: int | None
    started_at: datetime | None
    #: Times the supervisor started it again after its first start.
    restarts: int
    last_exit: ExitRecord | None = None
    next_start_at: datetime | None = None
    gave_up_at: datetime | None = None


class SupervisorRecord(BaseModel):
    pid: int
    #: The supervisor's start time in clock ticks since boot (/proc/PID/stat field 22),
    #: so that a recycled pid is not taken for the supervisor.
    proc_start: str | None
    started_at: datetime
    updated_at: datetime
    state: SupervisorStateName
    policy: str
    children: list[ChildRecord]


def state_path(home: Path) -> Path:
    return home / "run" / "supervisor.json"


def process_start_ticks(pid: int) -> str | None:
    """A process's start time from ``/proc`` (None off Linux or when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def write_state(path: Path, record: SupervisorRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".supervisor.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(record.model_dump_json(indent=1))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateUnreadable(Exception):
    """The state file exists but is not a supervisor state."""


def read_state(path: Path) -> SupervisorRecord | None:
    """The last state written, None when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return SupervisorRecord.model_validate_json(text)
    except ValidationError as e:
        raise StateUnreadable(f"{path} is not a supervisor state file: {e}") from e


def supervisor_alive(record: SupervisorRecord) -> bool:
    """Whether the process that wrote ``record`` still runs."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the start time below decides
    if record.proc_start is None:
        return True
    return process_start_ticks(record.pid) == record.proc_start
