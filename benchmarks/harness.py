"""What every benchmark script shares: its error, ports and waits for the processes it
starts (``devkit.ports``, as the tests use them), log tails, timing loops, medians and
percentiles, ratio and verdict cells, and the JSON it writes.

Each script keeps its own scenarios, measurements and report; the center it starts is
built from ``core`` (settings, ``core.orthanc_process``) and ``devkit``, never ``rdc``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from devkit import ports

T = TypeVar("T")

LOOPBACK = ports.LOOPBACK


class BenchError(Exception):
    """A scenario could not be measured; the message says why."""


# Processes --------------------------------------------------------------------------------
def free_port(taken: set[int] | None = None) -> int:
    """A free loopback port below the ephemeral range, distinct from ``taken`` (which it
    joins): ``devkit.ports.free_port``."""
    try:
        return ports.free_port(taken)
    except RuntimeError as e:
        raise BenchError(str(e)) from e


def tail_text(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` of a log, to append to an error message ("" if unreadable)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path}:\n" + "\n".join(text)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              what: str = "server", log: Path | None = None) -> None:
    """Return once something listens on ``port``; a :class:`BenchError` with the tail of
    ``log`` if ``proc`` exits first or nothing listens within ``timeout`` seconds."""
    try:
        ports.wait_port(port, timeout, proc, what=what)
    except RuntimeError as e:
        raise BenchError(f"{e}{tail_text(log)}") from e
    except TimeoutError as e:
        raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s"
                         f"{tail_text(log)}") from e


# Timing -----------------------------------------------------------------------------------
def time_calls(fn: Callable[[], object], *, min_calls: int, max_calls: int, min_s: float,
               cap_s: float) -> tuple[list[float], float]:
    """Latencies (s) of the timed calls of ``fn`` (after one warm-up call), and the
    warm-up's: at least ``min_calls`` and ``min_s`` seconds, at most ``max_calls``; a
    call so slow that ``min_calls`` would exceed ``cap_s`` is timed fewer times."""
    started = time.perf_counter()
    fn()
    warm = time.perf_counter() - started
    if warm * min_calls > cap_s:  # a heavy configuration: cap the time it takes
        min_calls = max_calls = max(1, int(cap_s // warm))
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < max_calls:
        t = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t)
        if len(latencies) >= min_calls and time.perf_counter() - started >= min_s:
            break
    return latencies, warm


def interleaved_calls(fns: dict[str, Callable[[], object]], *, rounds: int, min_calls: int,
                      max_calls: int, min_s: float, cap_s: float
                      ) -> dict[str, tuple[list[float], float, list[float]]]:
    """:func:`time_calls` of several functions in alternating rounds (A B, B A, A B...).

    Two configurations timed one after the other see different machines when a
    neighbour's load comes and goes; alternating them in short rounds gives both the
    same share of it, so their ratio is stable even where their absolute times are
    not.  Per function: every latency (s), the first warm-up, and each round's median.
    """
    out: dict[str, tuple[list[float], float, list[float]]] = {
        name: ([], 0.0, []) for name in fns}
    names = list(fns)
    for r in range(max(1, rounds)):
        for name in (names if r % 2 == 0 else names[::-1]):
            lat, warm = time_calls(fns[name], min_calls=max(1, min_calls // rounds),
                                   max_calls=max(1, max_calls // rounds),
                                   min_s=min_s / rounds, cap_s=cap_s / rounds)
            everything, first_warm, medians = out[name]
            everything += lat
            medians.append(sorted(lat)[len(lat) // 2])
            out[name] = (everything, first_warm if r else warm, medians)
    return out


def repeat_timed(fn: Callable[[], T], repeat: int) -> tuple[list[float], T]:
    """``repeat`` timings of ``fn`` in milliseconds after one untimed warm-up call (caches,
    connection pools), and the last call's result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, linear interpolation) of latencies in seconds, in ms."""
    return float(np.percentile(latencies_s, q) * 1000)


def nearest_rank(values: Sequence[float], share: float) -> float:
    """The value at ``share`` (0-1) of the sorted values, rounded down to a sample."""
    return sorted(values)[int(share * (len(values) - 1))]


# Reports ----------------------------------------------------------------------------------
def ratio_text(value: float) -> str:
    return f"{value:.2f}x"


def target_text(target: float | None) -> str:
    return "-" if target is None else f">= {target:.1f}x"


def verdict(passed: bool | None, not_judged: str = "-") -> str:
    """A PASS/FAIL cell in rich markup; ``not_judged`` when the target does not apply."""
    if passed is None:
        return not_judged
    return "[green]PASS[/green]" if passed else "[red]FAIL[/red]"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def tree_cpu_s(pid: int, *, children_done: bool = False) -> float:
    """User plus system CPU seconds of ``pid`` and its live descendants, from /proc.

    The gateway's listener processes are children of the one started; all live for
    the whole send, so the difference of two readings is the CPU the send cost.
    ``children_done`` adds what ended children that ``pid`` waited for spent
    (cutime, cstime): storescp forks a child per association.
    """
    tick = os.sysconf("SC_CLK_TCK")
    spent_by: dict[int, float] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text.rsplit(")", 1)[1].split()
        # After the command's ")": state, ppid, ... utime (14th field), stime (15th).
        spent = int(fields[11]) + int(fields[12])
        if children_done and int(entry) == pid:
            spent += int(fields[13]) + int(fields[14])
        spent_by[int(entry)] = spent / tick
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += spent_by.get(current, 0.0)
        todo.extend(children.get(current, ()))
    return total
