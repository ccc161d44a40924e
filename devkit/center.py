"""One throw-away center for a test or a benchmark: its own home, ports, database and
broker, and its processes (Orthanc, the gateway, a worker) started and stopped on demand.

The gateway and the worker run as ``python -m rdc`` processes, as an operator's would;
devkit never imports ``rdc`` or the web app.  Nothing is started on construction.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.db import Database, get_database
from core.orthanc_client import OrthancClient
from core.orthanc_process import start_orthanc, stop_process
from core.settings import Settings
from core.sites import SiteSpec, add_site
from devkit.ports import free_port, wait_port

#: The repository root: the working directory of the ``rdc`` processes.
REPO = Path(__file__).resolve().parent.parent

#: The calling AE title of the county site that ``Center.add_site`` registers by default.
SENDER_AE = "COUNTY_A"

#: Short timers and a small spool reserve, so that a test does not wait for the center's
#: production timings (two minutes of study inactivity...).  A benchmark measures with the
#: center's defaults instead (``Center(quick_timers=False)``).
QUICK_TIMERS: dict[str, str] = {
    "RDC_STUDY_INACTIVITY_S": "3",
    "RDC_MONITOR_INTERVAL_S": "0.5",
    "RDC_UPLOAD_RETRY_MAX_S": "2",
    "RDC_SPOOL_MIN_FREE_MB": "64",
}


@dataclass
class Center:
    """One center with its own home, ports, database and broker.

    The defaults are the tests'.  A benchmark adds what it needs: ``config`` (an
    ``rdc.toml`` passed as ``RDC_CONFIG``, so that no user's file is read),
    ``extra_settings`` (setting name -> value, passed as ``RDC_<NAME>``),
    ``extra_env`` (anything else, e.g. DCMTK's ``TCP_NODELAY``), ``taken_ports`` (ports
    already handed to other servers of the run, which the center's ports avoid and
    join) and ``quick_timers=False``.
    """

    home: Path
    db_url: str
    broker_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    #: 0: a free port (``devkit.ports.free_port``), chosen on construction.
    gateway_port: int = 0
    orthanc_http_port: int = 0
    orthanc_dicom_port: int = 0
    web_port: int = 0
    #: The lab listener's MLLP and ASTM ports (``rdc up`` starts it beside the gateway).
    lab_mllp_port: int = 0
    lab_astm_port: int = 0
    orthanc_proc: subprocess.Popen[bytes] | None = None
    gateway_proc: subprocess.Popen[bytes] | None = None
    worker_proc: subprocess.Popen[bytes] | None = None
    gateway_ae: str = "RDC_CENTER"
    config: Path | None = None
    extra_settings: dict[str, str] = field(default_factory=dict)
    taken_ports: set[int] | None = None
    quick_timers: bool = True

    def __post_init__(self) -> None:
        self.gateway_port = self.gateway_port or free_port(self.taken_ports)
        self.orthanc_http_port = self.orthanc_http_port or free_port(self.taken_ports)
        self.orthanc_dicom_port = self.orthanc_dicom_port or free_port(self.taken_ports)
        self.web_port = self.web_port or free_port(self.taken_ports)
        self.lab_mllp_port = self.lab_mllp_port or free_port(self.taken_ports)
        self.lab_astm_port = self.lab_astm_port or free_port(self.taken_ports)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDC_")}
        env.update({
            "RDC_HOME": str(self.home),
            "RDC_GATEWAY_AE": self.gateway_ae,
            "RDC_GATEWAY_PORT": str(self.gateway_port),
            "RDC_ORTHANC_HTTP_PORT": str(self.orthanc_http_port),
            "RDC_ORTHANC_DICOM_PORT": str(self.orthanc_dicom_port),
            "RDC_WEB_PORT": str(self.web_port),
            "RDC_LAB_MLLP_PORT": str(self.lab_mllp_port),
            "RDC_LAB_ASTM_PORT": str(self.lab_astm_port),
            "RDC_DATABASE_URL": self.db_url,
            "RDC_BROKER_URL": self.broker_url,
            **(QUICK_TIMERS if self.quick_timers else {}),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        })
        if self.config is not None:
            env["RDC_CONFIG"] = str(self.config)
        env.update({f"RDC_{k.upper()}": v for k, v in self.extra_settings.items()})
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        keys: dict[str, Any] = {k.removeprefix("RDC_").lower(): v
                                for k, v in self.env.items() if k.startswith("RDC_")}
        return Settings(**keys)

    @property
    def db(self) -> Database:
        return get_database(self.settings.database_url)

    def orthanc(self) -> OrthancClient:
        return OrthancClient.from_settings(self.settings, retries=1)

    # Processes ----------------------------------------------------------------
    def start_orthanc(self) -> None:
        self.orthanc_proc = start_orthanc(self.settings)

    def stop_orthanc(self) -> None:
        if self.orthanc_proc is not None:
            stop_process(self.orthanc_proc)
            self.orthanc_proc = None

    def log_path(self, name: str) -> Path:
        """Where a process started by this center (``gateway``, ``worker``) writes its
        output."""
        return self.home / f"{name}.test.log"

    def _rdc(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        self.home.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path(log), "ab")
        return subprocess.Popen([sys.executable, "-m", "rdc", *args], env=self.env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)

    def start_gateway(self) -> None:
        self.gateway_proc = self._rdc("gateway", log="gateway")
        wait_port(self.gateway_port, 60, self.gateway_proc)

    def stop_gateway(self) -> None:
        if self.gateway_proc is not None and self.gateway_proc.poll() is None:
            self.gateway_proc.send_signal(signal.SIGTERM)
            self.gateway_proc.wait(30)
        self.gateway_proc = None

    def kill_gateway(self) -> None:
        assert self.gateway_proc is not None
        self.gateway_proc.kill()
        self.gateway_proc.wait(10)
        self.gateway_proc = None

    def start_worker(self) -> None:
        self.worker_proc = self._rdc("worker", "--concurrency", "1", log="worker")

    def stop_worker(self) -> None:
        if self.worker_proc is not None and self.worker_proc.poll() is None:
            self.worker_proc.send_signal(signal.SIGTERM)
            try:
                self.worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                self.worker_proc.kill()
        self.worker_proc = None

    def rdc(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rdc", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def add_site(self, site_id: str = "county-a", ae_title: str = SENDER_AE,
                 allowed: tuple[str, ...] = ("127.0.0.1/32", "::1"), actor: str = "test",
                 **kw: Any) -> None:
        spec = SiteSpec(id=site_id, name=kw.pop("name", f"{site_id} hospital"),
                        ae_title=ae_title, host="127.0.0.1", port=kw.pop("port", 11199),
                        allowed_addresses=allowed, **kw)
        with self.db.session() as s:
            add_site(s, spec, actor=actor)

    def spool_files(self, sub: str = "ready") -> list[Path]:
        """Files in one spool folder (``ready``, ``tmp``, ``unacknowledged``, ``failed``)."""
        d = self.home / "spool" / sub
        return sorted(d.iterdir()) if d.exists() else []

    def logs(self) -> str:
        parts = []
        for p in sorted(self.home.glob("*.test.log")) + sorted((self.home / "logs").glob("*.log")):
            parts.append(f"--- {p.name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def shutdown(self) -> None:
        self.stop_worker()
        self.stop_gateway()
        self.stop_orthanc()
