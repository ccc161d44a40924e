"""Reliable export of the audit chain to the hospital's audit repository (ATNA syslog).

Records are sent in order, in batches, as DICOM audit messages (:mod:`core.atna`).
The last record the repository confirmed is kept in ``$RDC_HOME/audit/atna.cursor``
(sequence number and hash, replaced atomically after each batch), so after a
repository outage, a restart or a crash the export resumes at the next record:
nothing is skipped, and nothing that was confirmed is sent again.  A batch that
was sent but not confirmed (the repository died while reading it) is sent again,
so a repository may see a record twice, never not at all.

One exporter runs at a time (a lock file): the gateway's background thread, or
``rdc audit export-atna`` catching up on demand.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sqlalchemy import select

from core import audit
from core.atna import Lookup, Source, audit_message, outcome_of
from core.atna_syslog import (
    SEVERITY_NOTICE,
    SEVERITY_WARNING,
    SyslogSender,
    frame_message,
    parse_url,
    rfc5424_timestamp,
    tls_context,
)
from core.db import Database
from core.errors import ConfigurationError
from core.models import AuditRecord
from core.settings import Settings

log = logging.getLogger(__name__)

CURSOR_NAME: Final = "atna.cursor"
LOCK_NAME: Final = "atna.lock"
APP_NAME: Final = "rdc"
#: MSGID of DICOM audit messages over syslog, as IHE ITI-20 and dcm4che write it.
MSGID: Final = "IHE+RFC-3881"


@dataclass(frozen=True)
class Cursor:
    """The last record the repository confirmed."""

    seq: int
    hash: str


def cursor_path(settings: Settings) -> Path:
    return settings.audit_dir / CURSOR_NAME


def read_cursor(settings: Settings) -> Cursor:
    path = cursor_path(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Cursor(0, audit.GENESIS)
    except ValueError as e:
        raise ConfigurationError(f"{path} is damaged ({e}); put back the last good copy, or "
                                 'write {"seq": N, "hash": "..."} for the last record the '
                                 "audit repository holds") from e
    if (not isinstance(data, dict) or not isinstance(data.get("seq"), int)
            or not isinstance(data.get("hash"), str)):
        raise ConfigurationError(f"{path} is not an export cursor")
    return Cursor(int(data["seq"]), str(data["hash"]))


def write_cursor(settings: Settings, cursor: Cursor) -> None:
    """Replace the cursor atomically and durably (temporary file, fsync, rename)."""
    path = cursor_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{CURSOR_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    body = json.dumps({"seq": cursor.seq, "hash": cursor.hash,
                       "at": datetime.now(UTC).isoformat(timespec="seconds")})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def export_lock(settings: Settings, *, wait: bool) -> Iterator[bool]:
    """Hold the exporter lock; yields False (without waiting) when ``wait`` is False
    and another exporter holds it."""
    settings.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(settings.audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def sender_from_settings(settings: Settings) -> SyslogSender | None:
    """The configured repository's sender, or None when the export is off."""
    if not settings.atna_syslog_url:
        return None
    target = parse_url(settings.atna_syslog_url)
    context = (tls_context(settings.atna_tls_ca_file, settings.atna_tls_cert_file,
                           settings.atna_tls_key_file) if target.scheme == "tls" else None)
    return SyslogSender(target, context=context)


def source_of(settings: Settings) -> Source:
    host = socket.gethostname()
    return Source(source_id=settings.atna_source_id or host,
                  enterprise_site=settings.center_name, ae_title=settings.gateway_ae,
                  hostname=host)


def _timestamp(at: str) -> str:
    try:
        return rfc5424_timestamp(datetime.fromisoformat(at))
    except ValueError:
        return rfc5424_timestamp(datetime.now(UTC))


@dataclass(frozen=True)
class ExportResult:
    sent: int
    cursor: int
    head: int

    @property
    def behind(self) -> int:
        return max(0, self.head - self.cursor)


class AtnaExporter:
    """Sends the records after the cursor; the caller holds :func:`export_lock`."""

    def __init__(self, settings: Settings, db: Database, sender: SyslogSender,
                 batch: int | None = None) -> None:
        self.settings = settings
        self.db = db
        self.sender = sender
        # UDP: small batches, since a refusal is only noticed after a batch.
        self.batch = batch or (50 if sender.target.scheme == "udp" else 200)
        self.source = source_of(settings)
        self._diverged_at: int | None = None

    def _messages(self, cursor: Cursor) -> tuple[list[bytes], Cursor | None, int]:
        with self.db.session() as s:
            head_seq, _ = audit.read_head(s)
            start = cursor.seq
            if cursor.seq > 0:
                stored = audit.hashes_at(s, [cursor.seq]).get(cursor.seq)
                if stored != cursor.hash and self._diverged_at != cursor.seq:
                    self._diverged_at = cursor.seq
                    log.error("atna.chain_diverged seq=%s exported_hash=%s stored_hash=%s: "
                              "the chain differs from what the repository received (a "
                              "rewrite, or a restore from an older backup)", cursor.seq,
                              cursor.hash[:16], (stored or "missing")[:16])
                start = min(cursor.seq, head_seq)
            records = list(s.scalars(select(AuditRecord).where(AuditRecord.seq > start)
                                     .order_by(AuditRecord.seq).limit(self.batch)))
            if not records:
                return [], None, head_seq
            lookup = Lookup(s, records)
            pid = str(os.getpid())
            messages = [frame_message(
                severity=SEVERITY_NOTICE if outcome_of(r.action, r.detail or {}) == 0
                else SEVERITY_WARNING, timestamp=_timestamp(r.at),
                hostname=self.source.hostname, app_name=APP_NAME, procid=pid, msgid=MSGID,
                msg=audit_message(r, self.source, lookup)) for r in records]
            last = records[-1]
            return messages, Cursor(int(last.seq), str(last.hash)), head_seq

    def export_batch(self) -> ExportResult:
        """Send the next batch; raises :class:`~core.atna_syslog.SyslogError` (and the
        cursor stays) when the repository does not take it."""
        cursor = read_cursor(self.settings)
        messages, after, head = self._messages(cursor)
        if after is None:
            return ExportResult(0, cursor.seq, head)
        self.sender.send(messages)
        write_cursor(self.settings, after)
        return ExportResult(len(messages), after.seq, head)

    def export_available(self, stop: threading.Event | None = None) -> ExportResult:
        """Batches until the cursor reaches the head (or ``stop`` is set)."""
        total = 0
        while True:
            result = self.export_batch()
            total += result.sent
            if result.sent < self.batch or (stop is not None and stop.is_set()):
                return ExportResult(total, result.cursor, result.head)
