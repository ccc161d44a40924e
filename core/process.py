"""Child processes that must not outlive their parent."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: the kernel kills the child when its parent dies.

    Without it a ``kill -9`` of a center process leaves its Orthanc or gateway
    listener running, still holding the port.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
