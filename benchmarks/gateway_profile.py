"""Where the gateway's CPU goes per instance: py-spy samples, summed by stage.

``benchmarks/ingest.py --profile`` records the gateway's process tree with
``py-spy record --native --format raw`` (collapsed stacks, C frames included so that an
``fsync`` shows as one, one line per distinct stack and its
sample count) during one gateway send.  :func:`breakdown` puts every sample in the
first stage whose marker is on its stack, in the order of :data:`STAGES` (an fsync
inside the spool write counts as fsync, a pydicom parse inside inspection counts as
inspection), and turns counts into milliseconds of CPU per instance.

py-spy samples running threads only (no ``--idle``), so the sums are CPU time, not
latency; the 1 ms polling sleeps of pynetdicom's reactors do not show, their wake-ups
do.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: (stage, markers): a sample is the first stage any of whose markers is in its stack.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("fsync (spool file, directory, WAL)", ("fsync", "fdatasync")),
    ("receipt commit (SQLite)", ("receipts.py", "sqlalchemy", "sqlite3")),
    ("spool write", ("spool.py",)),
    ("inspection (pydicom parse, checks)", ("inspect.py",)),
    ("admission and refusal audit", ("admission.py", "refusal_audit.py",
                                     "receive_limits.py")),
    ("upload to Orthanc", ("uploader.py", "httpx", "httpcore")),
    ("pynetdicom: DIMSE messages", ("pynetdicom/dimse",)),
    ("pynetdicom: PDU reads and state machine", ("pynetdicom/dul.py", "pynetdicom/pdu",
                                                 "pynetdicom/fsm.py", "pynetdicom/transport")),
    ("pynetdicom: association reactor", ("pynetdicom/association.py",)),
    ("logging", ("logging/__init__",)),
]
OTHER = "other (interpreter, threads, imports)"
RATE_HZ = 250


@dataclass(frozen=True)
class Stage:
    name: str
    samples: int
    ms_per_instance: float
    share: float


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy "
                                "(needed for --profile only)")
    return found


def start_recording(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` and its children until it is stopped (SIGINT) or they exit."""
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--subprocesses",
                             "--native", "--rate", str(RATE_HZ), "--format", "raw",
                             "--output", str(out), "--nonblocking"],
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
    counts: dict[str, int] = {name: 0 for name, _ in STAGES}
    counts[OTHER] = 0
    for stack, n in stacks:
        stage = next((name for name, markers in STAGES
                      if any(m in stack for m in markers)), OTHER)
        counts[stage] += n
    total = sum(counts.values()) or 1
    per = 1000.0 / rate_hz / max(1, instances)
    return [Stage(name, c, c * per, c / total) for name, c in counts.items()]
