"""A multi-node center simulated on one machine, started from the files that
``rdc deploy systemd`` writes: each node's ``rdc.toml`` and systemd units, and the
balancer's ``haproxy.cfg``.  The units are not handed to systemd (a test cannot own
the machine's init); their ``Environment=`` and ``ExecStart=`` lines are run as they
are, so a unit that would not start a node does not start it here either.

Each node has its own ``RDC_HOME`` (its own spool, logs and ports); the nodes share
PostgreSQL, the broker and Orthanc's index and storage, as on separate machines.
A private RabbitMQ node (its own port, data and Erlang distribution port) can be
started and restarted without touching the machine's own broker.

devkit never imports ``rdc`` (the CLI is run as a process, as an operator would).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from devkit.ports import free_port


def parse_unit(path: Path) -> tuple[list[str], dict[str, str]]:
    """``(ExecStart argv, Environment)`` of a systemd service unit."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val
    if not argv:
        raise ValueError(f"{path}: no ExecStart")
    return argv, env


@dataclass
class Service:
    """One role of one node, run from its unit."""

    node: str
    role: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return Path(self.env["RDC_HOME"])

    def settings_file(self) -> dict[str, object]:
        return tomllib.loads(Path(self.env["RDC_CONFIG"]).read_text())

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} runs already"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDC_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        # A process group of its own: kill -9 of the node's role takes its children
        # (Celery's pool, the gateway's listeners) with it, as systemd's KillMode would.
        self.proc = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    @property
    def name(self) -> str:
        return f"{self.node}/{self.role}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, as ``systemctl stop`` sends it; SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reap_group()
        self.proc = None

    def kill(self) -> None:
        """kill -9 of the whole role (the node lost power, or the OOM killer)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def _reap_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log})\n{text[-chars:]}"


@dataclass
class Topology:
    """The services of every node, and the balancer, from ``rdc deploy``'s output."""

    out_dir: Path
    logs: Path
    services: list[Service] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_deploy(cls, out_dir: Path, logs: Path) -> Topology:
        topo = cls(out_dir, logs)
        for node_dir in sorted(p for p in out_dir.iterdir() if p.is_dir()):
            for unit in sorted(node_dir.glob("rdc-*.service")):
                role = unit.stem.removeprefix("rdc-")
                argv, env = parse_unit(unit)
                topo.services.append(Service(node_dir.name, role, argv, env,
                                             logs / f"{node_dir.name}-{role}.log"))
        return topo

    def install_configs(self) -> None:
        """Copy each node's ``rdc.toml`` to its home, as the operator does."""
        for svc in self.services:
            target = Path(svc.env["RDC_CONFIG"])
            target.parent.mkdir(parents=True, exist_ok=True)
            src = self.out_dir / svc.node / "rdc.toml"
            shutil.copyfile(src, target)
            target.chmod(0o600)

    def get(self, node: str, role: str) -> Service:
        for svc in self.services:
            if svc.node == node and svc.role == role:
                return svc
        raise KeyError(f"{node}/{role}")

    def role(self, role: str) -> list[Service]:
        return [s for s in self.services if s.role == role]

    def start_balancer(self) -> None:
        cfg = self.out_dir / "balancer" / "haproxy.cfg"
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                               check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses {cfg}:\n{check.stdout}{check.stderr}")
        self.logs.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / "haproxy.log", "ab")
        self.haproxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        out.close()

    def shutdown(self) -> None:
        for svc in reversed(self.services):
            try:
                svc.stop(timeout=15)
            except Exception as exc:  # keep stopping the others
                print(f"stopping {svc.name} failed: {exc!r}")
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()

    def tails(self) -> str:
        parts = [s.tail() for s in self.services]
        hp = self.logs / "haproxy.log"
        if hp.exists():
            parts.append("--- haproxy\n" + hp.read_text(errors="replace")[-3000:])
        return "\n".join(parts)


class PrivateRabbitMQ:
    """A RabbitMQ node of its own (Debian's rabbitmq-server): its port, its data, its
    Erlang node name, so that a test may stop and restart it."""

    def __init__(self, root: Path, taken: set[int] | None = None) -> None:
        self.root = root
        self.port = free_port(taken)
        self.dist_port = free_port(taken)
        self.name = f"rdc{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n")
        (root / "enabled_plugins").write_text("[].\n")
        (root / "mnesia").mkdir(exist_ok=True)
        (root / "log").mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 60.0) -> None:
        # The server itself: /usr/sbin/rabbitmq-server is Debian's wrapper, which as root
        # switches to the rabbitmq user (who cannot write into this test's directory).
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(server).exists():
            raise RuntimeError(f"{server} is required (apt-get install rabbitmq-server)")
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.root / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.root / "plugins-expand"),
            "HOME": str(self.root),  # its own Erlang cookie
        })
        out = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen([server], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("rabbitmq-server exited:\n"
                                   + (self.root / "server.log").read_text()[-2000:])
            if _amqp_answers(self.port):
                return
            time.sleep(0.3)
        raise TimeoutError(f"RabbitMQ did not answer on {self.port} within {timeout:g} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:  # epmd-registered children of the Erlang VM
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None


def _amqp_answers(port: int) -> bool:
    """The broker speaks AMQP (not only the socket is open: RabbitMQ opens it early)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            s.settimeout(2)
            return s.recv(8).startswith(b"\x01\x00\x00")  # connection.start frame
    except OSError:
        return False

