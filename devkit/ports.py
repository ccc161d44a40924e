"""Loopback ports for the centers and peers that the tests and benchmarks start, and the
waits for them to listen.

Ports are chosen *below* the kernel's ephemeral range: a port the kernel handed out
with ``bind(0)`` is also what it hands to this machine's outbound connections (to
PostgreSQL, Redis, Orthanc...), so one could take it between the choice and the
server's bind (Orthanc once failed to start that way on a busy CI machine).
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

LOOPBACK = "127.0.0.1"

#: Ports below the ephemeral range that other services of a test machine commonly use.
_TAKEN = {11211, 15672, 25672, 27017}

T = TypeVar("T")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(taken: set[int] | None = None) -> int:
    """A loopback port that is free now, for a center or peer started next, chosen at
    random below the ephemeral range (see the module's docstring).

    ``taken``: ports already handed to servers that may not have bound them yet; the
    port chosen is not one of them, and joins them.
    """
    low, _high = ephemeral_range()
    top = max(low - 1, 20000)
    for _ in range(500):
        port = random.randint(10000, top)
        if port in _TAKEN or (taken is not None and port in taken):
            continue
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_port(port: int, timeout: float = 30.0,
              proc: subprocess.Popen[bytes] | None = None, what: str = "process") -> None:
    """Return once something listens on ``port``; RuntimeError if ``proc`` exits first,
    TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on "
                               f"{port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_until(pred: Callable[[], T], timeout: float, what: str,
               interval: float = 0.2) -> T:
    """``pred()``'s first truthy value, polled every ``interval`` seconds; AssertionError
    naming ``what`` (and the last value) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
