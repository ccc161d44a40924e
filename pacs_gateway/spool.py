"""Durable spool: an acknowledged instance is on disk before the sender hears "success".

File names come from UUIDs generated here, never from DICOM content.  A write
goes to ``tmp/``, is fsynced, renamed into ``ready/`` and the directory is
fsynced, so after a crash a file in ``ready/`` is whole and one in ``tmp/``
was never acknowledged and can be dropped.

A dataset received as a stream is written into ``tmp/`` while it arrives
(:mod:`pacs_gateway.receive_limits`) and taken whole by :meth:`Spool.adopt`: the
same fsync, rename and directory fsync, with no copy and nothing held in memory.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import uuid
from pathlib import Path


class SpoolFull(Exception):
    """Free disk space is below the watermark; the gateway answers 0xA700."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checked_id(receipt_id: str) -> str:
    # Only a canonical UUID may become part of a path.
    return str(uuid.UUID(receipt_id))


class Spool:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.ready = root / "ready"
        self.min_free_bytes = min_free_bytes
        self._free_lock = threading.Lock()
        self._free = 0
        self._free_at = -1e9
        self._written_since = 0
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ready.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self, size: int, *, on_disk: bool = False) -> bool:
        """Free space minus ``size`` stays above the watermark.

        statvfs per instance is costly on some file systems, so the figure is
        re-read every half second or 64 MiB, and our own writes are subtracted
        in between: the estimate only errs on the safe side for our writes.
        ``on_disk``: the ``size`` bytes are written already (a streamed receive),
        so free space is read afresh when they are many.
        """
        now = time.monotonic()
        with self._free_lock:
            if on_disk and size > 64 * 2**20:
                self._free_at = -1e9
            if now - self._free_at > 0.5 or self._written_since > 64 * 2**20:
                self._free = self.free_bytes()
                self._free_at, self._written_since = now, 0
            self._written_since += size
            return self._free - self._written_since >= self.min_free_bytes

    def write(self, data: bytes) -> str:
        """Make ``data`` durable and return its new receipt ID (a UUID)."""
        if not self.has_room(len(data)):
            raise SpoolFull(f"less than {self.min_free_bytes // 2**20} MiB free in the spool")
        receipt_id = str(uuid.uuid4())
        tmp_path = self.tmp / f"{receipt_id}.part"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp_path, self.path(receipt_id))
        _fsync_dir(self.ready)
        return receipt_id

    def take(self, source: Path | bytes) -> str:
        """:meth:`adopt` a received file, :meth:`write` received bytes."""
        return self.adopt(source) if isinstance(source, Path) else self.write(source)

    def adopt(self, src: Path) -> str:
        """Make the complete file ``src`` (written under ``tmp/``) durable as a new
        spooled instance and return its receipt ID.  ``src`` is gone afterwards.

        The file is fsynced, then renamed into ``ready/`` (a copy, fsynced, if it is
        on another file system) and the directory fsynced: a file in ``ready/`` is
        always whole.  Raises SpoolFull (and leaves ``src``) below the watermark.
        """
        size = src.stat().st_size
        if not self.has_room(size, on_disk=True):
            raise SpoolFull(f"less than {self.min_free_bytes // 2**20} MiB free in the spool")
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        receipt_id = str(uuid.uuid4())
        try:
            os.replace(src, self.path(receipt_id))
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy_in(src, receipt_id)
            src.unlink()
        _fsync_dir(self.ready)
        return receipt_id

    def _copy_in(self, src: Path, receipt_id: str) -> None:
        tmp_path = self.tmp / f"{receipt_id}.part"
        try:
            with open(src, "rb") as fin, open(tmp_path, "xb") as fout:
                shutil.copyfileobj(fin, fout, 2**20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp_path, self.path(receipt_id))
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise

    def path(self, receipt_id: str) -> Path:
        return self.ready / f"{_checked_id(receipt_id)}.dcm"

    def read(self, receipt_id: str) -> bytes:
        return self.path(receipt_id).read_bytes()

    def exists(self, receipt_id: str) -> bool:
        return self.path(receipt_id).exists()

    def remove(self, receipt_id: str) -> None:
        self.path(receipt_id).unlink(missing_ok=True)

    def pending(self) -> list[str]:
        """Receipt IDs of every whole file waiting for upload, oldest first."""
        entries = []
        for p in self.ready.glob("*.dcm"):
            try:
                entries.append((p.stat().st_mtime, _checked_id(p.stem)))
            except (ValueError, FileNotFoundError):
                continue
        return [rid for _, rid in sorted(entries)]

    def depth(self) -> tuple[int, float | None]:
        """(whole files waiting for upload, modification time of the oldest or None), for
        the metrics; one directory scan, no sorting."""
        count, oldest = 0, None
        with os.scandir(self.ready) as entries:
            for entry in entries:
                if not entry.name.endswith(".dcm"):
                    continue
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:  # uploaded meanwhile
                    continue
                count += 1
                oldest = mtime if oldest is None else min(oldest, mtime)
        return count, oldest

    def drop_partial(self) -> int:
        """Remove half-written files left by a crash; none was ever acknowledged."""
        n = 0
        for p in self.tmp.glob("*.part"):
            p.unlink(missing_ok=True)
            n += 1
        return n
