"""The audit chain's two background duties: signed checkpoints and the ATNA export.

They run as two daemon threads in the gateway's *primary* process.  That process
is the one every deployment of the center runs all the time (it is the DICOM
front door, under ``rdc up`` or its own service unit, and restarted when it
crashes), there is exactly one of it (listener processes never start these
threads), and it already carries the other periodic duties (completeness,
stale jobs, delivery retries).  The web app may run as several workers and the
Celery worker may scale out, so neither suits a single timer.

Two threads, not one, so that an export catching up on a year of records, or
waiting on a slow repository, never delays a checkpoint.  Both keep going after
errors: a failed checkpoint is logged (and a chain that no longer extends the
last checkpoint is audited once as ``audit.anchor_mismatch``, which the export
carries to the repository as a Security Alert); a failed export backs off and
resumes from its cursor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core import audit
from core.atna_export import AtnaExporter, export_lock, sender_from_settings
from core.audit_checkpoints import AnchorMismatch, make_checkpoint
from core.db import Database
from core.errors import RDCError
from core.settings import Settings

log = logging.getLogger(__name__)

#: Longest wait between export attempts while the repository is unreachable.
EXPORT_BACKOFF_MAX_S = 60.0


class AuditBackground:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._alerted: set[str] = set()

    def start(self) -> None:
        if self.settings.audit_checkpoint_s > 0:
            self._spawn(self._checkpoint_loop, "audit-checkpoint")
        if self.settings.atna_syslog_url:
            self._spawn(self._export_loop, "audit-atna-export")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads, and anchor what was appended since the last checkpoint."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        if self.settings.audit_checkpoint_s > 0:
            self.checkpoint_once()

    # Checkpoints ------------------------------------------------------------------
    def checkpoint_once(self) -> None:
        try:
            make_checkpoint(self.settings, self.db)
        except AnchorMismatch as e:
            log.error("audit.anchor_mismatch %s", e)
            self._alert(str(e))
        except Exception:
            log.exception("audit.checkpoint_failed")

    def _alert(self, reason: str) -> None:
        if reason in self._alerted:
            return
        self._alerted.add(reason)
        try:
            with self.db.session() as s:
                audit.append(s, actor="system", action="audit.anchor_mismatch",
                             object_type="audit_log", object_id="checkpoints",
                             detail={"reason": reason})
        except Exception:
            log.exception("audit.alert_failed")

    def _checkpoint_loop(self) -> None:
        self.checkpoint_once()  # what was appended while the gateway was down
        while not self._stop.wait(self.settings.audit_checkpoint_s):
            self.checkpoint_once()

    # Export -------------------------------------------------------------------------
    def _export_loop(self) -> None:
        try:
            sender = sender_from_settings(self.settings)
        except RDCError as e:
            log.error("atna.disabled %s", e)
            return
        if sender is None:
            return
        exporter = AtnaExporter(self.settings, self.db, sender)
        delay, failing = 0.0, False
        while not self._stop.wait(delay):
            try:
                with export_lock(self.settings, wait=False) as mine:
                    if mine:
                        result = exporter.export_available(self._stop)
                        if result.sent:
                            log.info("atna.exported sent=%s cursor=%s head=%s", result.sent,
                                     result.cursor, result.head)
                if failing:
                    log.warning("atna.repository_back target=%s", sender.target)
                delay, failing = self.settings.atna_poll_s, False
            except Exception as e:
                # Logged once per outage, then quietly retried with a growing delay.
                if not failing:
                    log.error("atna.export_failed target=%s error=%s; retrying",
                              sender.target, e)
                delay = min(EXPORT_BACKOFF_MAX_S, max(1.0, delay * 2))
                failing = True
