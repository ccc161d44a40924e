"""``rdc up``: run every process of the center, keep them running, stop them together.

At start every process must come up once, in dependency order (Orthanc, the
gateway, the worker, the scheduler, the storage commitment SCP, the web app); if one does
not, ``rdc up`` stops and says why, since that is nearly always configuration (a port in
use).

From then on it supervises like systemd's ``Restart=on-failure`` (see
:mod:`rdc.restart_policy`): a process that exits while the center is not
stopping, whether it crashed, was killed or exited cleanly, is restarted with
exponential backoff and the others keep serving.  A DICOM listener that dies
must not take the viewer away from readers, and an Orthanc that dies must not
stop the gateway, which keeps acknowledging into its spool while its uploader
retries.  Each restart is logged and audited.  A process that fails too often
in a short time is *given up*: marked ``gave-up`` in the state file, audited,
logged at CRITICAL, and left stopped, while the rest keep serving; SIGUSR1 to
``rdc up`` re-arms given-up processes once the cause is fixed (not SIGHUP: a
closed terminal sends that, and must still stop the center).  ``rdc up``
exits by itself only when every process has been given up.  Its exit status is
0 after a requested stop with nothing given up, 1 otherwise.

Children run in their own sessions, so Ctrl-C reaches only this process, and
in their own process groups, so that when one dies whatever it left behind (the
gateway's listener processes, Orthanc under its wrapper, Celery's pool) is
killed with it before the restart, instead of holding its port.  On stop they
go in reverse order (web, commitment, scheduler, worker, gateway, Orthanc last, so the gateway's
uploader can finish what it has in hand).

The state (per process: pid, state, start time, restarts, last exit) is written
atomically to ``$RDC_HOME/run/supervisor.json`` for ``rdc status``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from core.errors import ConfigurationError
from core.orthanc_process import check_installed, wait_healthy
from core.process import die_with_parent
from core.settings import Settings
from rdc.restart_policy import FailureHistory, RestartPolicy
from rdc.supervisor_audit import SupervisorAudit
from rdc.supervisor_state import (
    HEARTBEAT_S,
    ChildRecord,
    ChildStateName,
    ExitRecord,
    StateUnreadable,
    SupervisorRecord,
    SupervisorStateName,
    process_start_ticks,
    read_state,
    state_path,
    write_state,
)

log = logging.getLogger("rdc.supervisor")

#: An audit sink: (action, process name, detail).
AuditSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class ChildSpec:
    """One process to run: its command, where its output goes, and how to see it is ready."""

    name: str
    argv: tuple[str, ...]
    log_path: Path
    #: For the start-up summary.
    where: str = ""
    #: The TCP port it listens on once ready (None: ready when started).
    ready_port: int | None = None
    env: Mapping[str, str] | None = None


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    state: ChildStateName = "stopped"
    started_at: datetime | None = None
    started_mono: float = 0.0
    restarts: int = 0
    history: FailureHistory = field(default_factory=FailureHistory)
    last_exit: ExitRecord | None = None
    next_start_mono: float = 0.0
    next_start_at: datetime | None = None
    gave_up_at: datetime | None = None
    #: Set when the supervisor killed it for not becoming ready in time.
    kill_reason: str = ""

    def record(self) -> ChildRecord:
        return ChildRecord(name=self.spec.name, state=self.state,
                           pid=self.proc.pid if self.proc is not None else None,
                           started_at=self.started_at, restarts=self.restarts,
                           last_exit=self.last_exit,
                           next_start_at=self.next_start_at if self.state == "restarting"
                           else None, gave_up_at=self.gave_up_at)


def port_listening(port: int) -> bool:
    """Whether some socket listens on ``port`` (any address), without connecting to it.

    Connecting would look like a client to the process: the gateway would count
    and audit an empty association attempt at every probe.  Linux lists listening
    sockets in /proc/net/tcp{,6} (state 0A).
    """
    want = f":{port:04X}"
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and parts[1].endswith(want):
                return True
    if found_table:
        return False
    import socket  # not Linux: fall back to a connection

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _exit_record(returncode: int | None, uptime_s: float, reason: str = "") -> ExitRecord:
    code = signame = None
    if returncode is not None and returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
    else:
        code = returncode
    return ExitRecord(code=code, signal=signame, at=datetime.now(UTC),
                      uptime_s=round(uptime_s, 3), reason=reason)


def _describe_exit(e: ExitRecord) -> str:
    what = f"killed by {e.signal}" if e.signal else f"exited with code {e.code}"
    return f"{what} ({e.reason})" if e.reason else what


class Supervisor:
    """Runs a set of child processes and restarts the ones that exit (see the module doc).

    Single-threaded: every method except :meth:`request_stop` and :meth:`rearm`
    runs on the thread that called :meth:`supervise`; those two only set a flag,
    so a signal handler may call them.
    """

    def __init__(self, specs: Sequence[ChildSpec], policy: RestartPolicy, state_file: Path,
                 audit: AuditSink, *, start_timeout_s: float = 120.0, tick_s: float = 0.25,
                 stop_timeout_s: float = 30.0) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"process names must be unique: {names}")
        self.policy = policy
        self.state_file = state_file
        self.audit = audit
        self.start_timeout_s = start_timeout_s
        self.tick_s = tick_s
        self.stop_timeout_s = stop_timeout_s
        self.children = [_Child(spec) for spec in specs]
        self.state: SupervisorStateName = "starting"
        self.started_at = datetime.now(UTC)
        self._proc_start = process_start_ticks(os.getpid())
        self._stop_requested = False
        self._rearm_requested = False
        self._last_write = 0.0

    def child(self, name: str) -> _Child:
        return next(c for c in self.children if c.spec.name == name)

    # Requests from signal handlers or other threads --------------------------------
    def request_stop(self) -> None:
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def rearm(self) -> None:
        """Start given-up processes again, with their failure history forgotten."""
        self._rearm_requested = True

    # Starting ----------------------------------------------------------------
    def start(self, name: str) -> subprocess.Popen[bytes]:
        """First start of one process (the caller waits for it to be ready)."""
        c = self.child(name)
        c.proc = self._popen(c.spec)
        c.started_at, c.started_mono = datetime.now(UTC), time.monotonic()
        c.state = "starting" if c.spec.ready_port is not None else "running"
        self.write_state()
        return c.proc

    def ready(self, name: str) -> None:
        """The caller saw a first-started process become ready."""
        c = self.child(name)
        if c.state == "starting":
            c.state = "running"
            self.write_state()

    def _popen(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as out:
            return subprocess.Popen(
                list(spec.argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=dict(spec.env if spec.env is not None
                                                 else os.environ),
                preexec_fn=die_with_parent)

    # Supervising -------------------------------------------------------------
    def supervise(self) -> int:
        """Keep the children running until a stop is requested or all are given up.

        Returns the exit status for ``rdc up``: 0 when stopped with nothing given
        up, 1 when some process is given up (see the module doc).
        """
        self.state = "running"
        log.info("supervisor.running processes=%s policy=%r",
                 ",".join(c.spec.name for c in self.children), self.policy.describe())
        self.write_state()
        while not self._stop_requested:
            now = time.monotonic()
            changed = False
            if self._rearm_requested:
                self._rearm_requested = False
                changed = self._rearm(now)
            for c in self.children:
                changed = self._step(c, now) or changed
            if self.children and all(c.state == "gave-up" for c in self.children):
                log.critical("supervisor.nothing_left every process is given up; rdc up exits")
                self.write_state()
                return 1
            if changed or now - self._last_write >= HEARTBEAT_S:
                self.write_state()
            time.sleep(self.tick_s)
        return 1 if any(c.state == "gave-up" for c in self.children) else 0

    def _step(self, c: _Child, now: float) -> bool:
        """Advance one child; True when its state changed."""
        if c.state in ("starting", "running") and c.proc is not None:
            if c.proc.poll() is not None:
                self._on_exit(c, now)
                return True
            if c.state == "starting" and c.spec.ready_port is not None:
                if port_listening(c.spec.ready_port):
                    c.state = "running"
                    log.info("supervisor.ready process=%s pid=%s after=%.1fs", c.spec.name,
                             c.proc.pid, now - c.started_mono)
                    return True
                if now - c.started_mono > self.start_timeout_s and not c.kill_reason:
                    c.kill_reason = (f"not listening on port {c.spec.ready_port} within "
                                     f"{self.start_timeout_s:g} s")
                    log.error("supervisor.start_timeout process=%s pid=%s %s", c.spec.name,
                              c.proc.pid, c.kill_reason)
                    _kill_group(c.proc.pid)
            return False
        if c.state == "restarting" and now >= c.next_start_mono:
            self._restart(c, now)
            return True
        return False

    def _on_exit(self, c: _Child, now: float) -> None:
        assert c.proc is not None
        pid = c.proc.pid
        # Whatever it left in its group (listeners, Orthanc, a Celery pool) goes too,
        # or it would keep the port the restarted process needs.
        _kill_group(pid)
        c.last_exit = _exit_record(c.proc.returncode, now - c.started_mono, c.kill_reason)
        c.kill_reason = ""
        c.proc = None
        self._decide(c, now, pid)

    def _decide(self, c: _Child, now: float, pid: int | None) -> None:
        assert c.last_exit is not None
        e = c.last_exit
        decision = c.history.record(self.policy, now, e.uptime_s)
        detail: dict[str, Any] = {
            "name": c.spec.name, "pid": pid, "exit_code": e.code, "signal": e.signal,
            "reason": e.reason, "uptime_s": e.uptime_s, "attempt": decision.attempt,
            "failures_in_window": decision.failures_in_window,
            "restarts_so_far": c.restarts,
        }
        if decision.give_up:
            c.state = "gave-up"
            c.gave_up_at = datetime.now(UTC)
            log.critical(
                "supervisor.gave_up process=%s %s; %d failures within %g s: it stays stopped, "
                "the other processes keep serving; fix the cause (see %s), then send SIGUSR1 "
                "to rdc up (kill -USR1 %d) to start it again", c.spec.name, _describe_exit(e),
                decision.failures_in_window, self.policy.give_up_window_s, c.spec.log_path,
                os.getpid())
            self.audit("process.gave_up", c.spec.name, {
                **detail, "give_up_failures": self.policy.give_up_failures,
                "give_up_window_s": self.policy.give_up_window_s})
            return
        c.state = "restarting"
        c.next_start_mono = now + decision.backoff_s
        c.next_start_at = datetime.now(UTC) + timedelta(seconds=decision.backoff_s)
        log.error("supervisor.restart process=%s pid=%s %s after %.1f s up; restarting in "
                  "%.1f s (attempt %d, %d of %d failures allowed within %g s); see %s",
                  c.spec.name, pid, _describe_exit(e), e.uptime_s, decision.backoff_s,
                  decision.attempt, decision.failures_in_window, self.policy.give_up_failures,
                  self.policy.give_up_window_s, c.spec.log_path)
        self.audit("process.restart", c.spec.name, {**detail, "backoff_s": decision.backoff_s})

    def _restart(self, c: _Child, now: float) -> None:
        try:
            c.proc = self._popen(c.spec)
        except (OSError, subprocess.SubprocessError) as e:
            # Cannot even be started (a binary gone, no memory): a failure like any other.
            c.last_exit = _exit_record(None, 0.0, f"could not be started: {e}")
            self._decide(c, now, None)
            return
        c.restarts += 1
        c.started_at, c.started_mono = datetime.now(UTC), now
        c.state = "starting" if c.spec.ready_port is not None else "running"
        log.warning("supervisor.restarted process=%s pid=%s restarts=%d", c.spec.name,
                    c.proc.pid, c.restarts)

    def _rearm(self, now: float) -> bool:
        given_up = [c for c in self.children if c.state == "gave-up"]
        for c in given_up:
            c.history.reset()
            c.gave_up_at = None
            c.state = "restarting"
            c.next_start_mono = now
            c.next_start_at = datetime.now(UTC)
            log.warning("supervisor.rearmed process=%s", c.spec.name)
            self.audit("process.rearm", c.spec.name, {"name": c.spec.name})
        return bool(given_up)

    # Stopping ----------------------------------------------------------------
    def stop_all(self, on_stopped: Callable[[str], None] | None = None) -> None:
        """Stop every child, last started first: SIGTERM, then SIGKILL after the timeout."""
        self.state = "stopping"
        self.write_state()
        for c in reversed(self.children):
            if c.proc is not None:
                if c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGTERM)
                    try:
                        c.proc.wait(self.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        log.error("supervisor.stop_timeout process=%s pid=%s; killing",
                                  c.spec.name, c.proc.pid)
                        c.proc.kill()
                        c.proc.wait()
                _kill_group(c.proc.pid)
                c.proc = None
            if c.state != "gave-up":
                c.state = "stopped"
            if on_stopped is not None:
                on_stopped(c.spec.name)
        self.state = "stopped"
        self.write_state()

    # State file --------------------------------------------------------------
    def write_state(self) -> None:
        record = SupervisorRecord(
            pid=os.getpid(), proc_start=self._proc_start, started_at=self.started_at,
            updated_at=datetime.now(UTC), state=self.state, policy=self.policy.describe(),
            children=[c.record() for c in self.children])
        try:
            write_state(self.state_file, record)
        except OSError as e:
            log.error("supervisor.state_unwritten path=%s error=%s", self.state_file, e)
        self._last_write = time.monotonic()


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a child's process group (its pid: it leads a new session).

    Safe after the leader was reaped: a pid is not reused while a process group
    of that number still has members.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# rdc up ------------------------------------------------------------------------
def _local(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def center_specs(settings: Settings) -> list[ChildSpec]:
    """The center's processes, in start order."""
    def spec(name: str, where: str, port: int | None) -> ChildSpec:
        return ChildSpec(name=name, argv=(sys.executable, "-m", "rdc", name),
                         log_path=settings.log_dir / f"{name}.out", where=where,
                         ready_port=port)

    specs = [
        spec("orthanc", f"http://127.0.0.1:{settings.orthanc_http_port} (loopback, "
             f"authenticated), DICOM {settings.orthanc_aet}@127.0.0.1:"
             f"{settings.orthanc_dicom_port}", settings.orthanc_http_port),
        spec("gateway", f"DICOM AE {settings.gateway_ae} on {settings.gateway_host}:"
             f"{settings.gateway_port}", settings.gateway_port),
        spec("worker", f"queues routing,inference,delivery on "
             f"{settings.public_summary()['broker_url']}", None),
        # Stale-job recovery and delivery retries, apart from the gateway so that a
        # stopped gateway stops neither (core/scheduler.py).
        spec("scheduler", "periodic tasks: stale jobs, due delivery retries", None),
        spec("web", f"http://{settings.web_host}:{settings.web_port}", settings.web_port),
    ]
    commitment_port = settings.commitment_listen_port
    if commitment_port is not None:
        # Storage commitment reports that sites send on an association of their own
        # (delivery/commitment_scp.py); started before the web app, stopped after it.
        specs.insert(-1, spec("commitment", f"storage commitment SCP, AE "
                              f"{settings.gateway_ae} on {settings.gateway_host}:"
                              f"{commitment_port}", commitment_port))
    lab_port = settings.lab_mllp_port or settings.lab_astm_port
    if lab_port:
        # The lab's front doors (lab/listen.py): HL7 orders and results over MLLP, ASTM
        # from analyzers; one process, `rdc lab listen`.
        specs.insert(-1, ChildSpec(
            name="lab", argv=(sys.executable, "-m", "rdc", "lab", "listen"),
            log_path=settings.log_dir / "lab.out",
            where=f"lab MLLP on {settings.lab_host}:{settings.lab_mllp_port or 'off'}, "
                  f"ASTM on {settings.lab_host}:{settings.lab_astm_port or 'off'}",
            ready_port=lab_port))
    return specs


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if port_listening(port):
            return True
        time.sleep(0.2)
    return False


def claim_home(path: Path) -> int:
    """Take the home's supervisor lock, held for the life of this ``rdc up``.

    A second ``rdc up`` on the same home would find every port taken, and on its
    way out overwrite the running one's state file; it is refused before it
    starts anything.  An flock, not the pid in the state file: the kernel drops it
    when the holder dies, even by ``kill -9``, and two at once cannot both win.
    Returns the descriptor to keep open.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            record = read_state(path)
        except StateUnreadable:
            record = None
        who = f" (pid {record.pid})" if record is not None else ""
        raise ConfigurationError(f"rdc up is already running for {path.parent.parent}{who}; "
                                 "stop it first") from None
    return fd


def run_all(settings: Settings, console: Console) -> int:
    check_installed(settings)
    settings.ensure_dirs()
    lock = claim_home(state_path(settings.home))
    audit = SupervisorAudit(settings.database_url)
    sup = Supervisor(center_specs(settings), RestartPolicy.from_settings(settings),
                     state_path(settings.home), audit.record,
                     start_timeout_s=settings.supervisor_start_timeout_s)

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        sup.request_stop()

    def on_usr1(signum: int, _frame: FrameType | None) -> None:
        sup.rearm()

    # SIGHUP (the terminal closed) stops the center in order, like Ctrl-C.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_stop)
    signal.signal(signal.SIGUSR1, on_usr1)
    try:
        wait_healthy(settings, sup.start("orthanc"), 60)
        sup.ready("orthanc")
        for name in [c.spec.name for c in sup.children if c.spec.name != "orthanc"]:
            proc = sup.start(name)
            port = sup.child(name).spec.ready_port
            if port is not None and not _wait_listening(port, proc, 60):
                console.print(f"[red]the {name} did not start[/red]; see "
                              f"{settings.log_dir / (name + '.out')}")
                return 1
            sup.ready(name)
        console.print(f"[bold]{settings.center_name}[/bold] is up (home {settings.home})")
        for c in sup.children:
            console.print(f"  {c.spec.name:8} {c.spec.where}")
        console.print(f"logs in {settings.log_dir}; a process that exits is restarted "
                      f"({sup.policy.describe()}); press Ctrl-C to stop")
        code = sup.supervise()
        if sup.stop_requested:
            console.print("stopping...")
        return code
    finally:
        sup.stop_all(lambda name: console.print(f"  {name:8} stopped"))
        audit.close()
        os.close(lock)
