"""One gateway node per spool: refuse a spool another gateway node already uses.

A gateway acknowledges an instance once it is in its spool, and on restart resumes
exactly what its spool holds.  Two gateway nodes on one spool directory (a shared
volume mounted at the same path, or one copied ``rdc.toml``) would each resume,
upload and delete the other's files mid-upload, and each would quarantine the
other's files that its own database rows do not explain.  So the spool names its
node (``NODE``, written at first start) and the running gateway holds an exclusive
lock on it (``LOCK``; ``flock``, which Linux NFS clients map onto NFS locks):

* a spool that names another node is refused at start: that node's acknowledged
  instances are in it, and only that node may resume them;
* a spool locked by a running gateway is refused too (two nodes configured with
  one name).

The gateway's own listener processes share the primary's spool; only the primary
takes the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from core.errors import ConfigurationError

NODE_FILE = "NODE"
LOCK_FILE = "LOCK"


class SpoolClaim:
    """The lock this gateway holds on its spool while it runs."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


def claim_spool(root: Path, node: str) -> SpoolClaim:
    """Claim ``root`` for gateway node ``node``, or raise ConfigurationError."""
    root.mkdir(parents=True, exist_ok=True)
    owner_path = root / NODE_FILE
    try:
        owner = owner_path.read_text().strip()
    except FileNotFoundError:
        owner = ""
    if owner and owner != node:
        raise ConfigurationError(
            f"the spool {root} belongs to gateway node {owner!r}, not {node!r}: each gateway "
            "node needs a spool of its own on its own disk (a shared volume would let two "
            "gateways resume each other's acknowledged instances).  Give this node its own "
            "RDC_HOME, or, if it really replaces that node, set RDC_NODE_NAME to its name")
    handle = open(root / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigurationError(
            f"the spool {root} is in use by another running gateway (node {owner or node!r}); "
            "two gateway nodes must never share a spool") from None
    if not owner:
        tmp = owner_path.with_suffix(".tmp")
        tmp.write_text(node + "\n")
        os.replace(tmp, owner_path)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{node} pid {os.getpid()}\n")
    handle.flush()
    return SpoolClaim(handle)
