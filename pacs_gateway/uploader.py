"""Uploader: moves spooled instances into Orthanc, tagged with their source site.

A spool file is deleted only after Orthanc confirmed it and the receipt says
"stored".  While Orthanc is down the uploader backs off and keeps the files;
on restart everything left in the spool is resumed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from sqlalchemy import select

from core import metrics
from core.db import Database
from core.group_commit import GroupCommitter
from core.log_context import log_context
from core.models import Instance
from core.orthanc_client import (
    SOURCE_SITE_METADATA,
    OrthancClient,
    OrthancError,
    OrthancRejected,
    OrthancUnavailable,
)
from core.states import InstanceState
from pacs_gateway.receipts import mark_attempt_failed, mark_stored
from pacs_gateway.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    """What the uploader needs of a receipt, handed over by the SCP that just wrote it.

    The SCP has these in hand when it acknowledges; reading them back cost the
    uploader a transaction per instance, and on SQLite every transaction takes the
    write lock (``core.db._sqlite_begin``), so the read also queued behind the receipts
    of the senders.  A receipt resumed after a restart has none and is read.
    """

    site_id: str
    study_id: int
    sop_instance_uid: str


class Uploader:
    def __init__(self, db: Database, spool: Spool, orthanc: OrthancClient,
                 committer: GroupCommitter, *, workers: int = 4,
                 retry_max_s: float = 30.0) -> None:
        self.db = db
        self.committer = committer
        self.spool = spool
        self.orthanc = orthanc
        self.workers = workers
        self.retry_max_s = retry_max_s
        self._queue: queue.Queue[str] = queue.Queue()
        self._inflight: set[str] = set()
        #: Receipts handed over by the SCP (see :class:`Receipt`), until uploaded.
        self._known: dict[str, Receipt] = {}
        #: Studies whose Orthanc ID is already recorded: the stored mark skips them.
        self._study_noted: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self.orthanc_up = True

    # Producer side --------------------------------------------------------
    def submit(self, receipt_id: str, receipt: Receipt | None = None) -> None:
        with self._lock:
            if receipt is not None:
                self._known[receipt_id] = receipt
            if receipt_id in self._inflight:
                return
            self._inflight.add(receipt_id)
        self._queue.put(receipt_id)

    def recover(self) -> dict[str, int]:
        """Resume the spool after a restart.  Returns what was found, for the log."""
        dropped = self.spool.drop_partial()
        resumed = cleaned = orphaned = 0
        pending = self.spool.pending()
        known: dict[str, str] = {}
        with self.db.session() as s:
            for chunk_start in range(0, len(pending), 500):
                chunk = pending[chunk_start:chunk_start + 500]
                rows = s.execute(select(Instance.id, Instance.state).where(Instance.id.in_(chunk)))
                known.update({rid: state for rid, state in rows})
        for rid in pending:
            state = known.get(rid)
            if state is None:
                # Written but never recorded, so never acknowledged: keep it aside.
                self._quarantine(rid)
                orphaned += 1
            elif state == InstanceState.STORED:
                self.spool.remove(rid)
                cleaned += 1
            else:
                self.submit(rid)
                resumed += 1
        counts = {"resumed": resumed, "already_stored": cleaned, "unacknowledged": orphaned,
                  "partial_dropped": dropped}
        log.info("uploader.recovered %s", " ".join(f"{k}={v}" for k, v in counts.items()))
        return counts

    def _quarantine(self, receipt_id: str) -> None:
        target = self.spool.root / "unacknowledged"
        target.mkdir(exist_ok=True)
        src: Path = self.spool.path(receipt_id)
        src.replace(target / src.name)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._inflight)

    # Workers ----------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"uploader-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rid = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            delay = self._backoff_until - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                if self._stop.is_set():
                    return
            done = self._upload_one(rid)
            if done:
                self._finished(rid)
            elif done is not None:
                self._queue.put(rid)

    def _finished(self, rid: str) -> None:
        with self._lock:
            self._inflight.discard(rid)
            self._known.pop(rid, None)

    def _note_down(self, error: Exception) -> None:
        with self._lock:
            self._backoff_s = min(self.retry_max_s, max(0.5, self._backoff_s * 2))
            self._backoff_until = time.monotonic() + self._backoff_s
            if self.orthanc_up:
                log.error("uploader.orthanc_down retry_in=%.1fs error=%s", self._backoff_s, error)
            self.orthanc_up = False

    def _note_up(self) -> None:
        if not self.orthanc_up or self._backoff_s:
            with self._lock:
                if not self.orthanc_up:
                    log.info("uploader.orthanc_back")
                self.orthanc_up = True
                self._backoff_s = 0.0
                self._backoff_until = 0.0

    def _receipt(self, rid: str) -> Receipt | None:
        """The receipt's fields: as handed over, or read (None: gone or already stored)."""
        with self._lock:
            known = self._known.get(rid)
        if known is not None:
            return known
        with self.db.session() as s:
            inst = s.get(Instance, rid)
            if inst is None:
                log.error("uploader.no_receipt receipt=%s", rid)
                return None
            if inst.state == InstanceState.STORED:
                self.spool.remove(rid)
                return None
            return Receipt(inst.site_id, inst.study_id, inst.sop_instance_uid)

    def _upload_one(self, rid: str) -> bool | None:
        """Try once.

        True when the receipt reached a final state (stored or failed), False to try
        again later, None when the stored mark is being committed (:meth:`_stored`
        finishes the receipt, or queues it again if the commit fails).
        """
        receipt = self._receipt(rid)
        if receipt is None:
            return True
        with log_context(site_id=receipt.site_id, study_id=receipt.study_id):
            return self._send(rid, receipt)

    def _send(self, rid: str, receipt: Receipt) -> bool | None:
        """The upload of :meth:`_upload_one`, once the receipt is known."""
        site_id, sop_uid, study_id = receipt.site_id, receipt.sop_instance_uid, receipt.study_id
        try:
            path = self.spool.path(rid)
            spooled_at = path.stat().st_mtime  # written as it arrived: the receipt's time
            # Streamed from the spool file: an instance of any size costs a chunk of memory.
            answer = self.orthanc.upload_instance_file(path)
            self.orthanc.set_metadata("instances", answer["ID"], SOURCE_SITE_METADATA, site_id)
        except FileNotFoundError:
            # Gone (a no-op for a receipt that another process stored meanwhile).
            metrics.GATEWAY_UPLOADS.labels(outcome="missing").inc()
            with self.db.session() as s:
                mark_attempt_failed(s, rid, "spool file missing", final=True)
            return True
        except OrthancRejected as e:
            metrics.GATEWAY_UPLOADS.labels(outcome="rejected").inc()
            log.error("uploader.rejected receipt=%s sop=%s error=%s", rid, sop_uid, e)
            self.committer.run(partial(mark_attempt_failed, receipt_id=rid,
                                       error=f"Orthanc refused the instance: {e}", final=True))
            failed_dir = self.spool.root / "failed"
            failed_dir.mkdir(exist_ok=True)
            path.replace(failed_dir / f"{rid}.dcm")
            return True
        except (OrthancUnavailable, OrthancError) as e:
            metrics.GATEWAY_UPLOADS.labels(outcome="retry").inc()
            self._note_down(e)
            try:
                self.committer.run(partial(mark_attempt_failed, receipt_id=rid, error=str(e),
                                           final=False))
            except Exception:
                log.exception("uploader.note_failed receipt=%s", rid)
            return False
        metrics.GATEWAY_UPLOADS.labels(outcome="stored").inc()
        metrics.GATEWAY_UPLOAD_SECONDS.labels(site=site_id).observe(
            max(0.0, time.time() - spooled_at))
        self._note_up()
        note = None
        if answer.get("Status") == "AlreadyStored":
            # Orthanc keeps the first object with a SOP Instance UID; a resend is
            # harmless, a different object under a reused UID needs a human look.
            note = "Orthanc already held an instance with this SOP Instance UID; kept its copy"
            log.warning("uploader.already_stored receipt=%s sop=%s", rid, sop_uid)
        orthanc_study = None if study_id in self._study_noted else answer.get("ParentStudy")
        # Not waited for: the thread goes on with the next upload while the group
        # committer gathers this mark with others into one transaction.  The spool
        # file is deleted only once the mark is committed (:meth:`_stored`).
        marked = self.committer.submit(partial(
            mark_stored, receipt_id=rid, orthanc_id=str(answer["ID"]), study_id=study_id,
            orthanc_study=orthanc_study, note=note))
        marked.add_done_callback(partial(self._stored, rid, study_id, orthanc_study))
        log.debug("uploader.stored receipt=%s sop=%s orthanc=%s status=%s", rid, sop_uid,
                  answer["ID"], answer.get("Status"))
        return None

    def _stored(self, rid: str, study_id: int, orthanc_study: str | None,
                marked: Future[bool]) -> None:
        """Runs in the committer's thread once the stored mark is committed (or not)."""
        error = marked.exception()
        if error is not None:
            # The file stays and the receipt says spooled: upload again (Orthanc answers
            # AlreadyStored) and mark again.
            log.error("uploader.mark_failed receipt=%s error=%s", rid, error)
            self._queue.put(rid)
            return
        if orthanc_study:
            self._study_noted.add(study_id)
        try:
            self.spool.remove(rid)
        finally:
            self._finished(rid)

    def resubmit_spooled(self, older_than: datetime | None = None) -> int:
        """Queue receipts still spooled but not in flight here (a dead listener's)."""
        query = select(Instance.id).where(Instance.state == InstanceState.SPOOLED)
        if older_than is not None:
            query = query.where(Instance.received_at < older_than)
        with self.db.session() as s:
            ids = list(s.scalars(query.limit(10000)))
        n = 0
        for rid in ids:
            with self._lock:
                if rid in self._inflight:
                    continue
            if self.spool.exists(rid):
                self.submit(rid)
                n += 1
        return n
