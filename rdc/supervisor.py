"""``rdc up``: run every process of the center in the foreground, stop them together.

Children run in their own sessions so that Ctrl-C reaches only this process;
it then stops them in dependency order (web, worker, gateway, Orthanc last so
the gateway's uploader can finish what it has in hand).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from rich.console import Console

from core.process import die_with_parent
from core.settings import Settings
from rdc.orthanc_runner import check_installed, wait_healthy


@dataclass
class Child:
    name: str
    where: str
    proc: subprocess.Popen[bytes]


def _spawn(name: str, settings: Settings) -> subprocess.Popen[bytes]:
    log = open(settings.log_dir / f"{name}.out", "ab")
    return subprocess.Popen([sys.executable, "-m", "rdc", name], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ.copy(), preexec_fn=die_with_parent)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def run_all(settings: Settings, console: Console) -> int:
    check_installed(settings)
    settings.ensure_dirs()
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    code = 0
    try:
        orthanc = _spawn("orthanc", settings)
        children.append(Child("orthanc", f"http://127.0.0.1:{settings.orthanc_http_port} "
                              f"(loopback, authenticated), DICOM {settings.orthanc_aet}@"
                              f"127.0.0.1:{settings.orthanc_dicom_port}", orthanc))
        wait_healthy(settings, orthanc, 60)
        gw = _spawn("gateway", settings)
        children.append(Child("gateway", f"DICOM AE {settings.gateway_ae} on "
                              f"{settings.gateway_host}:{settings.gateway_port}", gw))
        if not _wait_port(settings.gateway_port, gw, 60):
            console.print("[red]the gateway did not start[/red]; see "
                          f"{settings.log_dir / 'gateway.out'}")
            return 1
        children.append(Child("worker", f"queues routing,inference,delivery on "
                              f"{settings.public_summary()['broker_url']}",
                              _spawn("worker", settings)))
        web = _spawn("web", settings)
        children.append(Child("web", f"http://{settings.web_host}:{settings.web_port}", web))
        if not _wait_port(settings.web_port, web, 60):
            console.print("[red]the web app did not start[/red]; see "
                          f"{settings.log_dir / 'web.out'}")
            return 1
        console.print(f"[bold]{settings.center_name}[/bold] is up (home {settings.home})")
        for c in children:
            console.print(f"  {c.name:8} {c.where}")
        console.print(f"logs in {settings.log_dir}; press Ctrl-C to stop")
        while not stopping:
            for c in children:
                if c.proc.poll() is not None:
                    console.print(f"[red]{c.name} exited with code {c.proc.returncode}[/red]; "
                                  f"see {settings.log_dir / (c.name + '.out')}; stopping")
                    return 1
            time.sleep(0.5)
        console.print("stopping...")
        return code
    finally:
        for c in reversed(children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
                try:
                    c.proc.wait(30)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
            console.print(f"  {c.name:8} stopped")
