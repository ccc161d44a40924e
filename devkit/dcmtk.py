"""Drive DCMTK's ``storescu`` and ``storescp``: real DICOM peers for demo, tests, benchmarks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigurationError

_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigurationError(f"DCMTK's {tool} is not installed; "
                                 "install it with: sudo apt-get install dcmtk")
    return path


def nodelay_env() -> dict[str, str]:
    """DCMTK reads TCP_NODELAY from the environment; without it Nagle dominates."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class SendResult:
    returncode: int
    #: file -> DIMSE status text as storescu printed it ("Success", "Failure: ...", ...)
    statuses: dict[Path, str] = field(default_factory=dict)
    output: str = ""
    rejected: bool = False

    @property
    def succeeded(self) -> list[Path]:
        return [p for p, s in self.statuses.items() if s.startswith("Success")]

    @property
    def failed(self) -> list[Path]:
        return [p for p, s in self.statuses.items() if not s.startswith("Success")]


#: storescu's option that proposes a file's own transfer syntax (plus uncompressed ones).
_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",        # implicit VR little endian (only)
    "1.2.840.10008.1.2.1": "-xe",      # explicit VR little endian first
    "1.2.840.10008.1.2.2": "-xb",      # explicit VR big endian first
    "1.2.840.10008.1.2.4.50": "-xy",   # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",   # JPEG extended 12 bit
    "1.2.840.10008.1.2.4.70": "-xs",   # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",   # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",   # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",      # RLE lossless
    "1.2.840.10008.1.2.1.99": "-xd",   # deflated explicit VR little endian
}


def _transfer_syntax(path: Path) -> str:
    from pydicom import dcmread

    try:
        return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return ""


def storescu(
    files: Sequence[Path], *, host: str, port: int, calling_ae: str, called_ae: str,
    timeout: float = 600, extra: Sequence[str] = (), as_encoded: bool = True,
) -> SendResult:
    """Send ``files``; report each file's status.

    storescu proposes uncompressed transfer syntaxes unless told otherwise and
    cannot convert most compressed files, so with ``as_encoded`` the files are
    grouped by transfer syntax and each group is sent in its own association
    proposing its own syntax: every object travels exactly as encoded.
    """
    if not as_encoded:
        return _storescu_once(files, host, port, calling_ae, called_ae, timeout, extra)
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_PROPOSE.get(_transfer_syntax(f), ""), []).append(f)
    total = SendResult(0)
    for option, group in groups.items():
        part = _storescu_once(group, host, port, calling_ae, called_ae, timeout,
                              [*extra, option] if option else extra)
        total.returncode = total.returncode or part.returncode
        total.statuses.update(part.statuses)
        total.output += part.output
        total.rejected = total.rejected or part.rejected
    return total


def _storescu_once(
    files: Sequence[Path], host: str, port: int, calling_ae: str, called_ae: str,
    timeout: float, extra: Sequence[str],
) -> SendResult:
    cmd = [require("storescu"), "-v", "-nh", "-R", "-aet", calling_ae, "-aec", called_ae,
           "-to", "30", "-ta", "30", "-td", "120", *extra, host, str(port),
           *[str(f) for f in files]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=nodelay_env(), check=False)
    out = proc.stdout + proc.stderr
    result = SendResult(proc.returncode, output=out,
                        rejected="Association Rejected" in out)
    current: Path | None = None
    for line in out.splitlines():
        m = _SENDING.search(line)
        if m:
            current = Path(m.group(1).strip())
            continue
        m = _RESPONSE.search(line)
        if m and current is not None:
            result.statuses[current] = m.group(1)
            current = None
    return result


def echoscu(*, host: str, port: int, calling_ae: str, called_ae: str) -> tuple[int, str]:
    proc = subprocess.run([require("echoscu"), "-v", "-aet", calling_ae, "-aec", called_ae,
                           "-to", "10", host, str(port)], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def start_storescp(out_dir: Path, port: int, ae_title: str = "STORESCP") -> subprocess.Popen[bytes]:
    """A DCMTK storage SCP writing every received object to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        # --fork: one process per association, so concurrent senders are served at once.
        [require("storescp"), "--fork", "-aet", ae_title, "-od", str(out_dir), "+xa",
         "-pdu", "131072", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=nodelay_env())
