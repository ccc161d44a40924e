"""Start, health-check and stop the project's own Orthanc."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from core.errors import ConfigurationError
from core.orthanc_client import OrthancClient, OrthancRejected
from core.orthanc_config import PLUGINS, write_config
from core.process import die_with_parent
from core.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: sudo apt-get install orthanc orthanc-dicomweb orthanc-wsi"


def check_installed(settings: Settings) -> str:
    """Path of the Orthanc binary, or a clear error saying what to install."""
    # Debian installs Orthanc in /usr/sbin, which is not on every user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    binary = shutil.which(settings.orthanc_binary, path=search)
    if binary is None:
        raise ConfigurationError(f"Orthanc is not installed ({settings.orthanc_binary!r} "
                                 f"not found); {INSTALL_HINT}")
    missing = [p for p in PLUGINS if not (settings.orthanc_plugins_dir / p).exists()]
    if missing:
        raise ConfigurationError(f"Orthanc plugins missing from {settings.orthanc_plugins_dir}: "
                                 f"{', '.join(missing)}; {INSTALL_HINT}")
    return binary


def start_orthanc(settings: Settings, wait_s: float = 60.0) -> subprocess.Popen[bytes]:
    """Launch Orthanc with the generated configuration and wait until it answers."""
    binary = check_installed(settings)
    config = write_config(settings)
    logfile = settings.log_dir / "orthanc.log"
    # Orthanc's DICOM server is DCMTK, which leaves Nagle's algorithm on unless
    # TCP_NODELAY is set: every C-STORE answer would wait for a delayed ACK.
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(
        [binary, f"--logfile={logfile}", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        preexec_fn=die_with_parent,
    )
    try:
        wait_healthy(settings, proc, wait_s, logfile)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def wait_healthy(settings: Settings, proc: subprocess.Popen[bytes] | None, wait_s: float,
                 logfile: Path | None = None) -> None:
    deadline = time.monotonic() + wait_s
    # This node's own Orthanc, not ``orthanc_endpoint`` (a balancer would answer
    # for another instance while this one is still starting).
    user, password = settings.orthanc_credentials()
    own = f"http://127.0.0.1:{settings.orthanc_http_port}"
    with OrthancClient(own, user, password, retries=0, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = _tail(logfile) if logfile else ""
                raise ConfigurationError(
                    f"Orthanc exited at start-up with code {proc.returncode}; is port "
                    f"{settings.orthanc_http_port} or {settings.orthanc_dicom_port} in use?"
                    f"\n{tail}")
            try:
                client.system()
                return
            except OrthancRejected as e:
                raise ConfigurationError(
                    f"something else answers on port {settings.orthanc_http_port}: {e}") from e
            except Exception:
                time.sleep(0.2)
    raise ConfigurationError(f"Orthanc did not answer on port {settings.orthanc_http_port} "
                             f"within {wait_s:.0f} s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
