"""The gateway process: SCP + spool + uploader + completeness monitor.

pynetdicom handles each association in a thread, so one process is bound by
the GIL.  The gateway therefore runs as one *primary* process and a few
*listener* processes that share the DICOM port (SO_REUSEPORT): every process
receives, spools and uploads what it received; only the primary recovers the
spool at start-up and watches study completeness.  Re-queueing stale jobs and due
deliveries is not the gateway's: the center's scheduler (``core.scheduler``, ``rdc
scheduler``) does it, so that a stopped gateway stops neither.
Listeners die with the primary (PR_SET_PDEATHSIG), so a killed gateway never
leaves a process behind that still answers on its port.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from core import metrics
from core.audit_background import AuditBackground
from core.db import Database, get_database
from core.errors import ConfigurationError
from core.group_commit import GroupCommitter
from core.orthanc_client import OrthancClient
from core.process import die_with_parent
from core.settings import Settings
from pacs_gateway.completeness import complete_ready_studies
from pacs_gateway.scp import GatewaySCP, port_is_free
from pacs_gateway.spool import Spool
from pacs_gateway.spool_owner import SpoolClaim, claim_spool
from pacs_gateway.tls import TLSAcceptor, aggregated_refusals
from pacs_gateway.uploader import Uploader

log = logging.getLogger(__name__)

class Gateway:
    def __init__(self, settings: Settings, db: Database | None = None,
                 primary: bool = True) -> None:
        settings.ensure_dirs()
        self.settings = settings
        self.primary = primary
        self.db = db or get_database(settings.database_url)
        self.spool = Spool(settings.spool_dir, settings.spool_min_free_mb * 2**20)
        self.orthanc = OrthancClient.from_settings(settings, retries=2)
        self.committer = GroupCommitter(self.db, name="gateway-commit")
        self.uploader = Uploader(self.db, self.spool, self.orthanc, self.committer,
                                 workers=settings.upload_workers,
                                 retry_max_s=settings.upload_retry_max_s)
        self.scp = GatewaySCP(settings, self.db, self.spool, self.committer,
                              on_spooled=self.uploader.submit)
        #: The second, mutual-TLS-only listener (RDC_GATEWAY_TLS_PORT), when on.
        self.tls_scp: GatewaySCP | None = None
        if settings.gateway_tls_listen_port is not None:
            self.tls_scp = GatewaySCP(settings, self.db, self.spool, self.committer,
                                      on_spooled=self.uploader.submit)
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._listeners: list[subprocess.Popen[bytes]] = []
        #: The primary's lock on its spool (pacs_gateway/spool_owner.py).
        self._claim: SpoolClaim | None = None
        #: Signed audit checkpoints and the ATNA export: primary only (one per center).
        self.audit_background = AuditBackground(settings, self.db) if primary else None
        #: The gateway role's metrics exporter: the primary's, when metrics are on.
        self.exporter: metrics.Exporter | None = None

    def start(self) -> None:
        processes = self.settings.gateway_process_count
        if self.primary:
            # First: the listeners it starts inherit the metrics directory.
            self.exporter = metrics.serve_role("gateway", self.settings, collectors=[
                metrics.SpoolCollector(self.spool.depth)])
            self._claim = claim_spool(self.settings.spool_dir, self.settings.node)
            if not port_is_free(self.settings.gateway_host, self.settings.gateway_port):
                raise ConfigurationError(
                    f"port {self.settings.gateway_port} is already in use (another gateway?)")
            tls_port = self.settings.gateway_tls_listen_port
            if tls_port is not None and not port_is_free(self.settings.gateway_host, tls_port):
                raise ConfigurationError(
                    f"the TLS port {tls_port} (RDC_GATEWAY_TLS_PORT) is already in use")
            self.uploader.recover()
        self.uploader.start()
        self.scp.start(reuse_port=processes > 1)
        if self.tls_scp is not None:
            # Failed handshakes go through the TLS port's refusal audit: aggregated per
            # peer and window, like every other refusal at the door.
            acceptor = TLSAcceptor(self.settings, self.db, refuse=aggregated_refusals(
                self.tls_scp.front_door.auditor))
            self.tls_scp.start(reuse_port=processes > 1, port=acceptor.port, tls=acceptor)
        if self.primary:
            for _ in range(processes - 1):
                self._listeners.append(self._spawn_listener())
            self._monitor = threading.Thread(target=self._monitor_loop, name="gateway-monitor",
                                             daemon=True)
            self._monitor.start()
            if self.audit_background is not None:
                self.audit_background.start()
        log.info("gateway.started role=%s processes=%s", "primary" if self.primary
                 else "listener", processes)

    def _spawn_listener(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "rdc", "gateway", "--listener"],
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def stop(self) -> None:
        self._stop.set()
        for proc in self._listeners:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        self.scp.stop()
        if self.tls_scp is not None:
            self.tls_scp.stop()
        for proc in self._listeners:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.uploader.stop()
        if self._monitor is not None:
            self._monitor.join(10)
        if self.audit_background is not None:
            self.audit_background.stop()
        self.committer.stop()
        self.orthanc.close()
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def monitor_once(self) -> list[int]:
        with self.db.session() as s:
            return complete_ready_studies(s, self.settings.study_inactivity_s)

    def _check_listeners(self) -> None:
        for i, proc in enumerate(self._listeners):
            if proc.poll() is not None and not self._stop.is_set():
                log.error("gateway.listener_died code=%s; restarting", proc.returncode)
                metrics.process_exited(proc.pid)
                self._listeners[i] = self._spawn_listener()

    def _monitor_loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stop.wait(self.settings.monitor_interval_s):
            try:
                self._check_listeners()
                self.monitor_once()
                if time.monotonic() - last_sweep > 30:
                    # Receipts a dead listener left behind: old enough that no live
                    # process is still uploading them.
                    cutoff = datetime.now(UTC) - timedelta(seconds=60)
                    self.uploader.resubmit_spooled(older_than=cutoff)
                    last_sweep = time.monotonic()
            except Exception:
                log.exception("gateway.monitor_failed")
