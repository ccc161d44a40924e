"""Where the gateway's CPU goes per instance: py-spy samples, summed by stage.

``benchmarks/ingest.py --profile`` records the gateway's process tree with
``py-spy record --native --format raw`` (collapsed stacks, C frames included so that an
``fsync`` shows as one, one line per distinct stack and its
sample count) during one gateway send.  :func:`breakdown` puts every sample in the
first stage whose marker is on its stack, in the order of :data:`STAGES` (an fsync
inside the spool write counts as fsync, a pydicom parse inside inspection counts as
inspection), and turns counts into milliseconds of CPU per instance.

With native stacks py-spy also samples threads that wait (in a lock, a condition,
select, a sleep, or for the GIL); those samples go to wait stages, and the CPU per
instance is the sum of the CPU stages only.  Native stacks need py-spy to pause the
process for each sample, so a profiled send is slower than an unprofiled one: the
shares are what to read, not the speed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Kinds of stage: CPU the gateway spends, the disk it waits on, and threads that wait.
CPU, DISK, WAIT = "cpu", "disk", "wait"
#: (stage, markers, kind): a sample is the first stage any of whose markers is on its
#: stack.  Waits come first: py-spy's native stacks include threads blocked in a lock,
#: a condition, select or sleep, which cost no CPU.
STAGES: list[tuple[str, tuple[str, ...], str]] = [
    ("waiting for the GIL", ("take_gil",), WAIT),
    ("idle threads (locks, queues, select, sleeps)",
     ("PyThread_acquire_lock_timed", "pthread_cond_timedwait", "pthread_cond_wait",
      "select (libc", "poll (libc", "epoll_wait", "nanosleep", "sem_wait", "sem_timedwait",
      "accept (libc"), WAIT),
    ("fsync (spool file, directory, SQLite WAL)", ("fsync", "fdatasync"), DISK),
    ("receipt commit (SQLite)", ("receipts.py", "sqlalchemy", "sqlite3"), CPU),
    ("spool write", ("spool.py",), CPU),
    ("inspection (pydicom parse, checks)", ("inspect.py",), CPU),
    ("admission and refusal audit", ("admission.py", "refusal_audit.py",
                                     "receive_limits.py"), CPU),
    ("upload to Orthanc", ("uploader.py", "httpx", "httpcore"), CPU),
    ("pynetdicom: DIMSE messages", ("pynetdicom/dimse",), CPU),
    ("pynetdicom: PDU reads and state machine", ("pynetdicom/dul.py", "pynetdicom/pdu",
                                                 "pynetdicom/fsm.py", "pynetdicom/transport"),
     CPU),
    ("pynetdicom: association reactor", ("pynetdicom/association.py",), CPU),
    ("logging", ("logging/__init__",), CPU),
]
OTHER = "other (interpreter, garbage collection, threads)"
RATE_HZ = 250


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    samples: int
    ms_per_instance: float
    #: Share of the samples of its kind (CPU stages: of the CPU samples).
    share: float


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when not on PATH
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy "
                                "(needed for --profile only)")
    return found


def start_recording(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its children until it is stopped (SIGINT) or they exit."""
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--subprocesses",
                             "--native", "--rate", str(RATE_HZ), "--format", "raw",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_collapsed(lines: Iterable[str]) -> list[tuple[str, int]]:
    out = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            out.append((stack, int(count)))
    return out


def breakdown(stacks: Iterable[tuple[str, int]], instances: int,
              rate_hz: int = RATE_HZ) -> list[Stage]:
    counts: dict[str, int] = {name: 0 for name, _, _ in STAGES}
    kinds = {name: kind for name, _, kind in STAGES}
    counts[OTHER], kinds[OTHER] = 0, CPU
    for stack, n in stacks:
        stage = next((name for name, markers, _ in STAGES
                      if any(m in stack for m in markers)), OTHER)
        counts[stage] += n
    per = 1000.0 / rate_hz / max(1, instances)
    by_kind: dict[str, int] = {}
    for name, c in counts.items():
        by_kind[kinds[name]] = by_kind.get(kinds[name], 0) + c
    return [Stage(name, kinds[name], c, c * per, c / (by_kind[kinds[name]] or 1))
            for name, c in counts.items()]
