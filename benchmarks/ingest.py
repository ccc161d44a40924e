"""Ingest throughput of the gateway against DCMTK and Orthanc, measured in one run.

One synthetic CT series (512x512, 16 bit) is sent with DCMTK ``storescu`` by
1 and by 4 concurrent senders to:

(a) DCMTK ``storescp`` writing to disk: the ceiling of this machine;
(b) the center's Orthanc directly, on its own DICOM port: the baseline;
(c) the gateway, counting acknowledged instances (until every storescu exits);
(d) the gateway, until every instance is stored in Orthanc (all receipts in
    state ``stored``, polled from the gateway's database).

(c) and (d) are two clocks on the same send: both start when the senders are
launched.  Every scenario gets a fresh center home (its own Orthanc storage,
index and SQLite database) so that every instance is really stored, never
answered "AlreadyStored".  Only 127.0.0.1 is ever contacted.

Run from the repository root::

    .venv/bin/python -m benchmarks.ingest [--instances 400] [--senders 1,4] [--repeat 3]
        [--profile] [--out DIR] [--keep]

Every scenario runs ``--repeat`` times, in rounds (a, b, c/d, then again), and each
figure is the median of its rounds.  ``--profile`` adds one send with the largest
sender count, recorded with py-spy and left out of the figures, and prints the
gateway's CPU per instance by stage
(``benchmarks/gateway_profile.py``).

Results go to ``ingest.json`` and ``ingest.png`` under ``--out``
(``benchmarks/results`` by default).  The targets are printed with PASS/FAIL;
the exit status is 0 either way and non-zero only when something failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from sqlalchemy import func, select

from benchmarks import gateway_profile
from benchmarks.harness import (
    BenchError,
    free_port,
    ratio_text,
    tail_text,
    target_text,
    tree_cpu_s,
    verdict,
    wait_port,
    write_json,
)
from core.db import Database, get_database
from core.errors import RDCError
from core.models import Instance
from core.orthanc_client import OrthancError
from core.orthanc_process import stop_process
from core.states import InstanceState
from devkit.center import Center
from devkit.dcmtk import nodelay_env, require, start_storescp
from devkit.samples import write_ct_series

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
LOOPBACK = "127.0.0.1"

CALLING_AE = "RDC_BENCH_SCU"
STORESCP_AE = "RDC_BENCH_SCP"
GATEWAY_AE = "RDC_CENTER"
ORTHANC_AE = "RDC_ARCHIVE"
SITE_ID = "benchmark"
SERIES_SEED = 4242

TARGETS: dict[str, str] = {
    "storescp": "(a) DCMTK storescp (ceiling)",
    "orthanc": "(b) Orthanc direct",
    "gateway_ack": "(c) gateway, acknowledged",
    "gateway_stored": "(d) gateway, stored in Orthanc",
}
#: Labels short enough for an 80-column table.
SHORT: dict[str, str] = {
    "storescp": "(a) storescp (ceiling)",
    "orthanc": "(b) Orthanc direct",
    "gateway_ack": "(c) gateway, acked",
    "gateway_stored": "(d) gateway, in Orthanc",
}
#: (numerator, denominator, sender count the target applies to (None: all), target ratio)
#: Issue 15: with 4 senders, the gateway acknowledges at least as fast as Orthanc stores
#: directly, and gets everything into Orthanc at 0.8x of it (1 sender: measured only).
RATIO_TARGETS: list[tuple[str, str, int | None, float]] = [
    ("gateway_ack", "orthanc", 4, 1.0),
    ("gateway_stored", "orthanc", 4, 0.8),
]

_ACK_SUCCESS = b"Received Store Response (Success"
_ACK_ANY = b"Received Store Response ("


# Small helpers -------------------------------------------------------------------
def split(items: Sequence[Path], parts: int) -> list[list[Path]]:
    """``items`` in ``parts`` contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(len(items), parts)
    out: list[list[Path]] = []
    start = 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return [p for p in out if p]


def count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.is_file())
    except FileNotFoundError:
        return 0


# Results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    target: str
    senders: int
    instances: int
    bytes: int
    seconds: float
    #: CPU seconds per process group during the send ("orthanc", "gateway"), read
    #: from /proc: what the physics of a CPU-bound machine is about.
    cpu_s: dict[str, float] = field(default_factory=dict)

    def cpu_ms_per_instance(self, who: str) -> float | None:
        spent = self.cpu_s.get(who)
        return None if spent is None else 1000 * spent / self.instances

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": TARGETS[self.target],
                "cpu_ms_per_instance": {who: round(1000 * v / self.instances, 2)
                                        for who, v in self.cpu_s.items()},
                "instances_per_s": round(self.instances_per_s, 2),
                "mb_per_s": round(self.mb_per_s, 2)}


@dataclass(frozen=True)
class Ratio:
    numerator: str
    denominator: str
    senders: int
    value: float
    target: float | None

    @property
    def name(self) -> str:
        return f"{TARGETS[self.numerator][:3]}/{TARGETS[self.denominator][:3]}"

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.value >= self.target

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "numerator": self.numerator, "denominator": self.denominator,
                "senders": self.senders, "value": round(self.value, 3), "target": self.target,
                "pass": self.passed}


def ratios(results: Sequence[Measurement], sender_counts: Sequence[int]) -> list[Ratio]:
    by_key = {(m.target, m.senders): m for m in results}
    out: list[Ratio] = []
    for numerator, denominator in (("gateway_ack", "orthanc"), ("gateway_stored", "orthanc")):
        for n in sender_counts:
            num, den = by_key.get((numerator, n)), by_key.get((denominator, n))
            if num is None or den is None:
                continue
            target = next((t for tn, td, ts, t in RATIO_TARGETS
                           if (tn, td) == (numerator, denominator) and ts in (None, n)), None)
            out.append(Ratio(numerator, denominator, n,
                             num.instances_per_s / den.instances_per_s, target))
    return out


# The senders -----------------------------------------------------------------------
class Senders:
    """Concurrent ``storescu`` processes, one per part of the series, timed to the exit."""

    def __init__(self, parts: Sequence[Sequence[Path]], *, port: int, called_ae: str,
                 log_dir: Path) -> None:
        self.parts = [list(p) for p in parts]
        self.port = port
        self.called_ae = called_ae
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.started = 0.0
        self._ended: list[float | None] = []
        self._waiters: list[threading.Thread] = []
        self._offsets: list[int] = []
        self._acks = 0

    def start(self) -> float:
        """Launch every sender; returns the start time (``time.perf_counter``)."""
        storescu = require("storescu")
        env = nodelay_env()  # TCP_NODELAY=1 for DCMTK; the receivers get it too
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        for i, part in enumerate(self.parts):
            log = self.log_dir / f"storescu-{i + 1}.log"
            cmd = [storescu, "-v", "-nh", "-R", "-aet", CALLING_AE, "-aec", self.called_ae,
                   "-to", "30", "-ta", "30", "-td", "120", LOOPBACK, str(self.port),
                   *[str(f) for f in part]]
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh,
                                        stderr=subprocess.STDOUT, env=env)
            self.procs.append(proc)
            self.logs.append(log)
            self._ended.append(None)
            self._offsets.append(0)
            waiter = threading.Thread(target=self._wait, args=(i,), daemon=True)
            waiter.start()
            self._waiters.append(waiter)
        return self.started

    def _wait(self, i: int) -> None:
        self.procs[i].wait()
        self._ended[i] = time.perf_counter()

    def done(self) -> bool:
        return all(t is not None for t in self._ended)

    def acknowledged(self) -> int:
        """Successful C-STORE responses so far (read incrementally from the logs)."""
        for i, log in enumerate(self.logs):
            try:
                with open(log, "rb") as fh:
                    fh.seek(self._offsets[i])
                    chunk = fh.read()
            except OSError:
                continue
            cut = chunk.rfind(b"\n") + 1
            self._acks += chunk[:cut].count(_ACK_SUCCESS)
            self._offsets[i] += cut
        return self._acks

    def seconds(self) -> float:
        ends = [t for t in self._ended if t is not None]
        if len(ends) != len(self._ended):
            raise BenchError("senders still running")
        return max(ends) - self.started

    def wait(self, timeout: float, on_tick: Callable[[int], None]) -> float:
        deadline = time.monotonic() + timeout
        while not self.done():
            if time.monotonic() > deadline:
                raise BenchError(f"storescu did not finish within {timeout:g} s")
            on_tick(self.acknowledged())
            time.sleep(0.05)
        for t in self._waiters:
            t.join()
        on_tick(self.acknowledged())
        return self.seconds()

    def check(self, target: str) -> int:
        """Raise unless every sender exited 0 and every file was acknowledged with Success."""
        total = 0
        for part, proc, log in zip(self.parts, self.procs, self.logs, strict=True):
            out = log.read_bytes()
            ok = out.count(_ACK_SUCCESS)
            answered = out.count(_ACK_ANY)
            if proc.returncode != 0 or ok != len(part):
                reason = "association rejected" if b"Association Rejected" in out else \
                    f"{ok} of {len(part)} acknowledged with Success, {answered - ok} refused"
                raise BenchError(f"{TARGETS[target]}: storescu exited with code "
                                 f"{proc.returncode}: {reason}{tail_text(log)}")
            total += ok
        return total

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, 5.0)


# The center ---------------------------------------------------------------------------
def bench_center(home: Path, config: Path, taken_ports: set[int],
                 extra: dict[str, str]) -> Center:
    """One throw-away center (``devkit.center.Center``): its own home, ports (distinct from
    ``taken_ports``) and SQLite database, the embedded filesystem broker, the center's
    own timings, every server on 127.0.0.1, and TCP_NODELAY=1 for DCMTK."""
    return Center(
        home=home, db_url=f"sqlite:///{home / 'rdc.sqlite3'}", broker_url="filesystem://",
        gateway_ae=GATEWAY_AE, config=config, taken_ports=taken_ports, quick_timers=False,
        extra_settings={"gateway_host": LOOPBACK, "orthanc_aet": ORTHANC_AE,
                        "web_host": LOOPBACK, **extra},
        extra_env={"TCP_NODELAY": "1"})


def stop_gateway(center: Center) -> None:
    """Stop the center's gateway (SIGTERM: it stops cleanly; killed after 30 s)."""
    if center.gateway_proc is not None:
        stop_process(center.gateway_proc, 30.0)
        center.gateway_proc = None


def _isolate_environment(config: Path, console: Console) -> None:
    """Keep the user's center configuration out of the benchmark's throw-away centers."""
    inherited = sorted(k for k in os.environ if k.startswith("RDC_"))
    if inherited:
        console.print(f"[yellow]note:[/yellow] ignoring {', '.join(inherited)}: the benchmark "
                      "runs its own temporary centers")
    for key in inherited:
        del os.environ[key]
    # An empty rdc.toml, so that no ./rdc.toml or ~/.rdc/rdc.toml is read either.
    config.write_text("# the ingest benchmark passes every setting explicitly\n")
    os.environ["RDC_CONFIG"] = str(config)
    # Every DCMTK end must run with TCP_NODELAY=1 (start_orthanc() sets it for Orthanc;
    # this covers anything else started from this process).
    os.environ["TCP_NODELAY"] = "1"


# Scenarios -------------------------------------------------------------------------------
class Bench:
    def __init__(self, files: Sequence[Path], root: Path, progress: Progress, keep: bool,
                 timeout_s: float, gateway_processes: int = 0) -> None:
        #: Where ``gateway()`` writes py-spy's collapsed stacks of the next send (once).
        self.profile_to: Path | None = None
        #: What py-spy printed on stderr, for the error when it wrote nothing.
        self.spy_errors = ""
        self.gateway_extra = {"gateway_processes": str(gateway_processes)} \
            if gateway_processes else {}
        self.files = list(files)
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.root = root
        self.progress = progress
        self.keep = keep
        self.timeout_s = timeout_s
        self.config = root / "rdc.toml"
        self.ports: set[int] = set()

    def _workdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True)
        return path

    def _done_with(self, path: Path) -> None:
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)

    def _measure(self, target: str, senders: int, seconds: float,
                 cpu_s: dict[str, float] | None = None) -> Measurement:
        return Measurement(target, senders, len(self.files), self.total_bytes, seconds,
                           cpu_s or {})

    def _send(self, stack: ExitStack, label: str, senders: int, port: int, called_ae: str,
              work: Path, target: str) -> tuple[Senders, float]:
        task = self.progress.add_task(f"{label}, {senders} sender(s): acknowledged",
                                      total=len(self.files))
        run = Senders(split(self.files, senders), port=port, called_ae=called_ae,
                      log_dir=work / "senders")
        stack.callback(run.stop)
        run.start()
        seconds = run.wait(self.timeout_s,
                           lambda n: self.progress.update(task, completed=n))
        run.check(target)
        return run, seconds

    def storescp(self, senders: int) -> Measurement:
        work = self._workdir(f"storescp-{senders}")
        port = free_port(self.ports)
        received = work / "received"
        with ExitStack() as stack:
            proc = start_storescp(received, port, STORESCP_AE)  # --fork, TCP_NODELAY=1
            stack.callback(stop_process, proc)
            wait_port(port, 30, proc, "storescp")
            cpu_before = tree_cpu_s(proc.pid)
            _, seconds = self._send(stack, TARGETS["storescp"], senders, port, STORESCP_AE,
                                    work, "storescp")
            # storescp --fork: each association's child has ended by now; the parent
            # has collected them (cutime), so the difference still counts them.
            cpu = {"storescp": tree_cpu_s(proc.pid, children_done=True) - cpu_before}
            written = count_files(received)
            if written != len(self.files):
                raise BenchError(f"{TARGETS['storescp']}: {written} files written, "
                                 f"expected {len(self.files)}")
        self._done_with(work)
        return self._measure("storescp", senders, seconds, cpu)

    def orthanc(self, senders: int) -> Measurement:
        work = self._workdir(f"orthanc-{senders}")
        center = bench_center(work / "home", self.config, self.ports, self.gateway_extra)
        s = center.settings
        with ExitStack() as stack:
            task = self.progress.add_task(f"starting Orthanc ({senders} sender(s))", total=None)
            stack.callback(center.stop_orthanc)
            center.start_orthanc()
            proc = center.orthanc_proc
            client = stack.enter_context(center.orthanc())
            # The generated config only lets the gateway's AE store: register ours, on
            # 127.0.0.1 (DicomCheckModalityHost is on), for the life of this home.
            client.put_modality("benchmark", CALLING_AE, LOOPBACK, free_port(self.ports))
            wait_port(s.orthanc_dicom_port, 30, proc, "Orthanc DICOM")
            self.progress.remove_task(task)
            before = int(client.statistics()["CountInstances"])
            if before:
                raise BenchError(f"fresh Orthanc already holds {before} instances")
            assert proc is not None
            cpu_before = tree_cpu_s(proc.pid)
            _, seconds = self._send(stack, TARGETS["orthanc"], senders, s.orthanc_dicom_port,
                                    s.orthanc_aet, work, "orthanc")
            cpu = {"orthanc": tree_cpu_s(proc.pid) - cpu_before}
            stored = int(client.statistics()["CountInstances"])
            if stored != len(self.files):
                raise BenchError(f"{TARGETS['orthanc']}: Orthanc holds {stored} instances "
                                 f"after the send, expected {len(self.files)}")
            client.delete_modality("benchmark")
        self._done_with(work)
        return self._measure("orthanc", senders, seconds, cpu)

    def gateway(self, senders: int) -> tuple[Measurement, Measurement]:
        work = self._workdir(f"gateway-{senders}")
        center = bench_center(work / "home", self.config, self.ports, self.gateway_extra)
        s = center.settings
        gateway_log = center.log_path("gateway")
        with ExitStack() as stack:
            task = self.progress.add_task(f"starting Orthanc and the gateway "
                                          f"({senders} sender(s))", total=None)
            stack.callback(center.stop_orthanc)
            center.start_orthanc()
            client = stack.enter_context(center.orthanc())
            db = center.db
            stack.callback(db.dispose)
            center.add_site(SITE_ID, CALLING_AE, allowed=(f"{LOOPBACK}/32",),
                            actor="benchmark", name="ingest benchmark sender",
                            port=free_port(self.ports))
            stack.callback(stop_gateway, center)
            try:
                center.start_gateway()  # waits up to 60 s for its port
            except (RuntimeError, TimeoutError) as e:
                raise BenchError(f"the gateway: {e}{tail_text(gateway_log)}") from e
            gw = center.gateway_proc
            assert gw is not None
            self.progress.remove_task(task)

            acked = self.progress.add_task(f"{TARGETS['gateway_ack']}, {senders} sender(s)",
                                           total=len(self.files))
            stored_task = self.progress.add_task(
                f"{TARGETS['gateway_stored']}, {senders} sender(s)", total=len(self.files))
            run = Senders(split(self.files, senders), port=s.gateway_port, called_ae=GATEWAY_AE,
                          log_dir=work / "senders")
            stack.callback(run.stop)
            spy = None
            if self.profile_to is not None:
                spy = gateway_profile.start_recording(gw.pid, self.profile_to)
                time.sleep(1.0)  # py-spy attaches to every process before the first byte
            orthanc_proc = center.orthanc_proc
            assert orthanc_proc is not None
            cpu_before = {"gateway": tree_cpu_s(gw.pid), "orthanc": tree_cpu_s(orthanc_proc.pid)}
            cpu: dict[str, float] = {}
            start = run.start()
            deadline = time.monotonic() + self.timeout_s
            stored_at: float | None = None
            while True:
                if gw.poll() is not None:
                    raise BenchError(f"the gateway exited with code {gw.returncode} during "
                                     f"the send{tail_text(gateway_log)}")
                counts = instance_states(db)
                now = time.perf_counter()  # after the query: never early for the gateway
                stored = counts.get(InstanceState.STORED, 0)
                failed = counts.get(InstanceState.FAILED, 0)
                self.progress.update(acked, completed=run.acknowledged())
                self.progress.update(stored_task, completed=stored)
                if failed:
                    raise BenchError(f"{failed} receipts failed to upload to Orthanc"
                                     f"{tail_text(s.log_dir / 'gateway.log')}")
                if stored_at is None and stored >= len(self.files):
                    stored_at = now
                    cpu = {"gateway": tree_cpu_s(gw.pid) - cpu_before["gateway"],
                           "orthanc": tree_cpu_s(orthanc_proc.pid) - cpu_before["orthanc"]}
                if stored_at is not None and run.done():
                    break
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"after {self.timeout_s:.0f} s: {run.acknowledged()} acknowledged, "
                        f"{stored} of {len(self.files)} stored in Orthanc"
                        f"{tail_text(s.log_dir / 'gateway.log')}")
                time.sleep(0.05)
            ack_seconds = run.wait(10, lambda n: self.progress.update(acked, completed=n))
            run.check("gateway_ack")
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                try:
                    _, err = spy.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                self.spy_errors = f"; py-spy said: {err.decode(errors='replace')[-500:]}" \
                    if err else ""
                self.profile_to = None
            stored_seconds = stored_at - start
            in_orthanc = int(client.statistics()["CountInstances"])
            if in_orthanc != len(self.files):
                raise BenchError(f"{TARGETS['gateway_stored']}: Orthanc holds {in_orthanc} "
                                 f"instances, expected {len(self.files)}")
        get_database.cache_clear()
        self._done_with(work)
        return (self._measure("gateway_ack", senders, ack_seconds),
                self._measure("gateway_stored", senders, stored_seconds, cpu))


def instance_states(db: Database) -> dict[str, int]:
    with db.session() as s:
        rows = s.execute(select(Instance.state, func.count()).group_by(Instance.state)).all()
    return {str(state): int(n) for state, n in rows}


def generate(out: Path, instances: int, progress: Progress) -> list[Path]:
    """The synthetic CT series (write_ct_series), with a progress bar while it is written."""
    task = progress.add_task(f"generating {instances} CT slices (512x512, 16 bit)",
                             total=instances)
    result: list[list[Path]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            study = write_ct_series(out, slices=instances, seed=SERIES_SEED,
                                    announce_count=False)
            result.append(study.paths)
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    thread = threading.Thread(target=work, name="generate", daemon=True)
    thread.start()
    while thread.is_alive():
        progress.update(task, completed=count_files(out))
        thread.join(0.25)
    if errors:
        raise BenchError(f"generating the series failed: {errors[0]!r}") from errors[0]
    progress.update(task, completed=instances)
    return result[0]


# Machine, output ---------------------------------------------------------------------------
def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def machine_info(work_root: Path) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except (OSError, ValueError):
        pass
    orthanc = shutil.which("Orthanc", path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor(),
        "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "orthanc": _first_line([orthanc, "--version"]) if orthanc else "",
        "dcmtk": _first_line([require("storescu"), "--version"]),
        "work_dir": str(work_root),
    }


def write_chart(path: Path, results: Sequence[Measurement], instances: int,
                sender_counts: Sequence[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in TARGETS if any(m.target == t for m in results)]
    width = 0.8 / max(1, len(sender_counts))
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for j, n in enumerate(sender_counts):
        xs, ys = [], []
        for i, t in enumerate(targets):
            m = next((m for m in results if m.target == t and m.senders == n), None)
            if m is not None:
                xs.append(i + (j - (len(sender_counts) - 1) / 2) * width)
                ys.append(m.instances_per_s)
        bars = ax.bar(xs, ys, width, label=f"{n} sender{'s' if n != 1 else ''}")
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(targets)), [TARGETS[t] for t in targets], fontsize=8)
    ax.set_ylabel("instances / s")
    ax.set_title(f"Ingest of {instances} CT instances (512x512, 16 bit) over DICOM, storescu")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def median_runs(runs: Sequence[Measurement]) -> list[Measurement]:
    """One measurement per (target, senders): the median seconds of its rounds."""
    grouped: dict[tuple[str, int], list[Measurement]] = {}
    for m in runs:
        grouped.setdefault((m.target, m.senders), []).append(m)
    order = list(TARGETS)
    out = []
    for (target, senders), ms in sorted(grouped.items(),
                                        key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        seconds = statistics.median(m.seconds for m in ms)
        cpu = {who: statistics.median(m.cpu_s[who] for m in ms if who in m.cpu_s)
               for who in {k for m in ms for k in m.cpu_s}}
        out.append(Measurement(target, senders, ms[0].instances, ms[0].bytes, seconds, cpu))
    return out


def print_report(console: Console, results: Sequence[Measurement], found: Sequence[Ratio],
                 total_bytes: int, runs: Sequence[Measurement] = ()) -> None:
    instances = results[0].instances if results else 0
    rounds = len(runs) // max(1, len(results))
    table = Table(title=f"Ingest throughput ({instances} instances, "
                        f"{total_bytes / 1e6:.1f} MB per run; medians of {rounds} round(s))")
    for col in ("target", "senders", "seconds", "instances/s", "MB/s", "range inst/s"):
        table.add_column(col, justify="left" if col == "target" else "right", no_wrap=True)
    for m in results:
        each = [r.instances_per_s for r in runs if (r.target, r.senders) == (m.target,
                                                                             m.senders)]
        spread = f"{min(each):.0f}-{max(each):.0f}" if each else ""
        table.add_row(SHORT[m.target], str(m.senders), f"{m.seconds:.2f}",
                      f"{m.instances_per_s:.1f}", f"{m.mb_per_s:.1f}", spread)
    console.print(table)
    rt = Table(title="Ratios (instances/s)")
    for col in ("ratio", "senders", "value", "target", "verdict"):
        rt.add_column(col, justify="left" if col == "ratio" else "right")
    for r in found:
        rt.add_row(r.name, str(r.senders), ratio_text(r.value), target_text(r.target),
                   verdict(r.passed))
    console.print(rt)


@dataclass(frozen=True)
class CpuBudget:
    """The gateway's CPU per instance against Orthanc's, for one sender count.

    On a machine whose cores are all busy, throughput is the cores divided by the CPU
    every instance costs.  Orthanc direct costs ``orthanc_direct_ms``; through the
    gateway an instance costs the gateway's ``gateway_ms`` plus Orthanc's
    ``orthanc_behind_ms``.  ``ceiling`` is the (d)/(b) those figures allow (the
    senders' own CPU left out), and ``gateway_budget_ms`` what the gateway may spend
    for (d)/(b) to reach ``target``.
    """

    senders: int
    orthanc_direct_ms: float
    gateway_ms: float
    orthanc_behind_ms: float
    target: float
    #: DCMTK storescp's CPU per instance: what a compiled receiver costs that only
    #: writes the file (no fsync, no database, no upload).
    storescp_ms: float | None = None

    @property
    def ceiling(self) -> float:
        return self.orthanc_direct_ms / (self.gateway_ms + self.orthanc_behind_ms)

    @property
    def gateway_budget_ms(self) -> float:
        return self.orthanc_direct_ms / self.target - self.orthanc_behind_ms

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ceiling": round(self.ceiling, 3),
                "gateway_budget_ms": round(self.gateway_budget_ms, 2)}


def cpu_budgets(results: Sequence[Measurement]) -> list[CpuBudget]:
    by_key = {(m.target, m.senders): m for m in results}
    out = []
    for (target, n), m in sorted(by_key.items()):
        direct = by_key.get(("orthanc", n))
        if target != "gateway_stored" or direct is None:
            continue
        gw, behind = m.cpu_ms_per_instance("gateway"), m.cpu_ms_per_instance("orthanc")
        orthanc = direct.cpu_ms_per_instance("orthanc")
        if gw is None or behind is None or orthanc is None:
            continue
        goal = next((t for tn, _, ts, t in RATIO_TARGETS
                     if tn == "gateway_stored" and ts in (None, n)), 0.8)
        scp = by_key.get(("storescp", n))
        out.append(CpuBudget(n, orthanc, gw, behind, goal,
                             scp.cpu_ms_per_instance("storescp") if scp else None))
    return out


def print_cpu(console: Console, budgets: Sequence[CpuBudget]) -> None:
    table = Table(title="CPU per instance (ms, user + system, from /proc; medians)")
    for col in ("senders", "storescp", "Orthanc direct", "gateway", "Orthanc behind it",
                "(d)/(b) ceiling", "gateway budget"):
        table.add_column(col, justify="right")
    for b in budgets:
        scp = "" if b.storescp_ms is None else f"{b.storescp_ms:.2f}"
        table.add_row(str(b.senders), scp, f"{b.orthanc_direct_ms:.2f}", f"{b.gateway_ms:.2f}",
                      f"{b.orthanc_behind_ms:.2f}", ratio_text(b.ceiling),
                      f"{b.gateway_budget_ms:.2f} for {b.target:g}x")
    console.print(table)
    console.print("ceiling: the (d)/(b) these CPU costs allow on a CPU-bound machine; "
                  "budget: the gateway's CPU per instance that would reach the target "
                  "(negative: Orthanc's own extra cost behind the gateway already exceeds it)")


def report_profile(console: Console, collapsed: Path, instances: int, senders: int,
                   out: Path, spy_errors: str = "") -> dict[str, Any]:
    """Print and return the gateway's CPU per instance by stage (see gateway_profile)."""
    if not collapsed.exists() or not collapsed.stat().st_size:
        raise BenchError(f"py-spy wrote no profile to {collapsed}{spy_errors}")
    stacks = gateway_profile.read_collapsed(collapsed.read_text().splitlines())
    stages = gateway_profile.breakdown(stacks, instances)
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "ingest-gateway.collapsed.txt"
    shutil.copyfile(collapsed, kept)
    table = Table(title=f"Gateway time per instance by stage (py-spy, {senders} sender(s), "
                        f"{instances} instances)")
    for col in ("stage", "kind", "ms/instance", "share of kind"):
        table.add_column(col, justify="left" if col in ("stage", "kind") else "right")
    order = {gateway_profile.CPU: 0, gateway_profile.DISK: 1, gateway_profile.WAIT: 2}
    for st in sorted(stages, key=lambda x: (order[x.kind], -x.samples)):
        table.add_row(st.name, st.kind, f"{st.ms_per_instance:.2f}", f"{st.share:.0%}")
    cpu = sum(st.ms_per_instance for st in stages if st.kind == gateway_profile.CPU)
    table.add_row("[bold]CPU total[/bold]", "cpu", f"{cpu:.2f}", "100%")
    console.print(table)
    console.print(f"collapsed stacks (flamegraph.pl or speedscope input): {kept}")
    return {"senders": senders, "instances": instances, "rate_hz": gateway_profile.RATE_HZ,
            "cpu_ms_per_instance": round(cpu, 2), "collapsed": str(kept),
            "stages": [{"stage": st.name, "kind": st.kind, "samples": st.samples,
                        "ms_per_instance": round(st.ms_per_instance, 3),
                        "share_of_kind": round(st.share, 4)} for st in stages]}


# Entry point -----------------------------------------------------------------------------
def parse_senders(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from e
    if not counts or any(n < 1 or n > 64 for n in counts):
        raise argparse.ArgumentTypeError("sender counts must be between 1 and 64")
    return sorted(set(counts))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--instances", type=int, default=400,
                   help="instances in the CT series (512x512, 16 bit; default 400)")
    p.add_argument("--senders", type=parse_senders, default=[1, 4],
                   help="comma-separated concurrent sender counts (default 1,4)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for ingest.json and ingest.png (default {DEFAULT_OUT})")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary folders (series, homes, logs) and print where")
    p.add_argument("--gateway-processes", type=int, default=0,
                   help="gateway processes sharing the port (default: the center's default)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds allowed per send (default 120 + 0.5 s per instance)")
    p.add_argument("--repeat", type=int, default=3,
                   help="rounds of every scenario; figures are medians (default 3)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one more send with the largest sender count, "
                        "recorded with py-spy (left out of the figures); prints the "
                        "gateway's CPU per instance by stage")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.profile:
        try:
            gateway_profile.py_spy()
        except FileNotFoundError as e:
            p.error(str(e))
    if args.instances < 1:
        p.error("--instances must be at least 1")
    if args.instances < max(args.senders):
        p.error("--instances must be at least the largest sender count")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rdc-bench-ingest-"))
    results: list[Measurement] = []
    try:
        _isolate_environment(root / "rdc.toml", console)
        machine = machine_info(root)
        timeout = args.timeout or 120 + 0.5 * args.instances
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            files = generate(root / "series", args.instances, progress)
            bench = Bench(files, root, progress, args.keep, timeout, args.gateway_processes)
            profiled = max(args.senders)
            collapsed = root / "gateway.collapsed.txt"
            # Rounds of every scenario, so that a neighbour's load lands on all of them
            # alike; each figure is the median of its rounds.
            for _ in range(args.repeat):
                for n in args.senders:
                    results.append(bench.storescp(n))
                for n in args.senders:
                    results.append(bench.orthanc(n))
                for n in args.senders:
                    results.extend(bench.gateway(n))
            if args.profile:
                # A send of its own, left out of the figures: py-spy pauses the process
                # for every native sample, so a profiled send is slower.
                bench.profile_to = collapsed
                bench.gateway(profiled)
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        medians = median_runs(results)
        found = ratios(medians, args.senders)
        print_report(console, medians, found, bench.total_bytes, results)
        budgets = cpu_budgets(medians)
        print_cpu(console, budgets)
        profile = None
        if args.profile:
            profile = report_profile(console, collapsed, len(files), profiled, args.out,
                                     bench.spy_errors)
        return {
            "benchmark": "ingest",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.ingest",
                                 *sys.argv[1:]]),
            "machine": machine,
            "parameters": {
                "instances": args.instances, "rows": 512, "columns": 512, "bits_allocated": 16,
                "transfer_syntax": "1.2.840.10008.1.2.1 (explicit VR little endian)",
                "senders": args.senders, "bytes_per_run": bench.total_bytes,
                "mean_instance_bytes": round(bench.total_bytes / len(files)),
                "sender": "DCMTK storescu -nh -R, TCP_NODELAY=1, one association per sender",
                "mb": "10^6 bytes",
                "figures": f"median seconds of {args.repeat} round(s) per scenario",
            },
            "notes": [
                "(c) and (d) are two clocks on the same gateway send, both from the launch of "
                "the senders: (c) stops when the last storescu exits, (d) when every receipt "
                "is 'stored' in the gateway database (polled every 50 ms).",
                "every scenario uses a fresh home (Orthanc storage, index, SQLite), so every "
                "instance is really stored",
                "storescp does not fsync; Orthanc (SyncStorageArea) and the gateway (spool "
                "fsync, SQLite synchronous=FULL) do",
            ],
            "repeat": args.repeat,
            "results": [m.as_json() for m in medians],
            "runs": [m.as_json() for m in results],
            "ratios": [r.as_json() for r in found],
            "cpu_budgets": [b.as_json() for b in budgets],
            "gateway_profile": profile,
        }
    except BaseException:
        if results:
            console.print("[yellow]measured before the failure:[/yellow]")
            for m in results:
                console.print(f"  {TARGETS[m.target]}, {m.senders} sender(s): "
                              f"{m.instances_per_s:.1f} instances/s, {m.mb_per_s:.1f} MB/s")
        raise
    finally:
        if args.keep:
            console.print(f"kept the temporary folders under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Piped output (a log, the test) gets a width that fits the tables.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        data = run(args, console)
        out: Path = args.out
        write_json(out / "ingest.json", data)
        results = [Measurement(r["target"], r["senders"], r["instances"], r["bytes"],
                               r["seconds"]) for r in data["results"]]
        write_chart(out / "ingest.png", results, args.instances, args.senders)
        console.print(f"wrote {out / 'ingest.json'} and {out / 'ingest.png'}")
        return 0
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]; stopped every process the benchmark started")
        return 130
    except (BenchError, RDCError, OrthancError, OSError, subprocess.SubprocessError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
