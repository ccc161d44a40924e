"""Group commit: one writer thread turns many small write transactions into few.

Every acknowledged C-STORE needs a committed receipt, and every upload a
committed state change.  Done one transaction per instance from many threads,
SQLite serialises them through its sleeping busy handler and each commit pays
its own fsync.  Callers here hand their work to one thread and wait; it runs
whatever is waiting in a single transaction, so N concurrent callers cost one
commit.  A caller still returns only after its own work is durable.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from core.db import Database

log = logging.getLogger(__name__)
T = TypeVar("T")
_Work = tuple[Callable[[Session], Any], "Future[Any]"]


class GroupCommitter:
    def __init__(self, db: Database, *, max_batch: int = 64, name: str = "group-commit") -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.Queue[_Work] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Session], T]) -> Future[T]:
        if self._stop.is_set():
            raise RuntimeError("group committer is stopped")
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        return fut

    def run(self, fn: Callable[[Session], T], timeout: float = 120.0) -> T:
        """Run ``fn`` in a shared transaction; return once that transaction committed."""
        return self.submit(fn).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[_Work]) -> None:
        try:
            with self.db.session() as s:
                results = [fn(s) for fn, _ in batch]
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            # One item spoiled the shared transaction: run each alone so that
            # only its own caller hears the error.
            for item in batch:
                self._commit([item])
            return
        for (_, fut), result in zip(batch, results, strict=True):
            fut.set_result(result)
