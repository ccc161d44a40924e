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
from datetime import datetime
from functools import partial
from pathlib import Path

from sqlalchemy import select

from core.db import Database
from core.group_commit import GroupCommitter
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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self.orthanc_up = True

    # Producer side --------------------------------------------------------
    def submit(self, receipt_id: str) -> None:
        with self._lock:
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
                with self._lock:
                    self._inflight.discard(rid)
            else:
                self._queue.put(rid)

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

    def _upload_one(self, rid: str) -> bool:
        """Try once.  True when the receipt reached a final state (stored or failed)."""
        with self.db.session() as s:
            inst = s.get(Instance, rid)
            if inst is None:
                log.error("uploader.no_receipt receipt=%s", rid)
                return True
            site_id, sop_uid, state = inst.site_id, inst.sop_instance_uid, inst.state
            study_id = inst.study_id
        if state == InstanceState.STORED:
            self.spool.remove(rid)
            return True
        try:
            # Streamed from the spool file: an instance of any size costs a chunk of memory.
            answer = self.orthanc.upload_instance_file(self.spool.path(rid))
            self.orthanc.set_metadata("instances", answer["ID"], SOURCE_SITE_METADATA, site_id)
        except FileNotFoundError:
            # Gone (a no-op for a receipt that another process stored meanwhile).
            with self.db.session() as s:
                mark_attempt_failed(s, rid, "spool file missing", final=True)
            return True
        except OrthancRejected as e:
            log.error("uploader.rejected receipt=%s sop=%s error=%s", rid, sop_uid, e)
            self.committer.run(partial(mark_attempt_failed, receipt_id=rid,
                                       error=f"Orthanc refused the instance: {e}", final=True))
            failed_dir = self.spool.root / "failed"
            failed_dir.mkdir(exist_ok=True)
            self.spool.path(rid).replace(failed_dir / f"{rid}.dcm")
            return True
        except (OrthancUnavailable, OrthancError) as e:
            self._note_down(e)
            try:
                self.committer.run(partial(mark_attempt_failed, receipt_id=rid, error=str(e),
                                           final=False))
            except Exception:
                log.exception("uploader.note_failed receipt=%s", rid)
            return False
        self._note_up()
        note = None
        if answer.get("Status") == "AlreadyStored":
            # Orthanc keeps the first object with a SOP Instance UID; a resend is
            # harmless, a different object under a reused UID needs a human look.
            note = "Orthanc already held an instance with this SOP Instance UID; kept its copy"
            log.warning("uploader.already_stored receipt=%s sop=%s", rid, sop_uid)
        self.committer.run(partial(mark_stored, receipt_id=rid, orthanc_id=str(answer["ID"]),
                                   study_id=study_id, orthanc_study=answer.get("ParentStudy"),
                                   note=note))
        self.spool.remove(rid)
        log.debug("uploader.stored receipt=%s sop=%s orthanc=%s status=%s", rid, sop_uid,
                  answer["ID"], answer.get("Status"))
        return True

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
