"""Append-only, hash-chained audit log.

Each record's hash covers its content and the previous record's hash, so a
changed, inserted or deleted record breaks the chain at that point.  Appends
from several processes are serialised by updating the single ``audit_head``
row first: that write takes the row (PostgreSQL) or database (SQLite) lock
before the previous hash is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import AuditHead, AuditRecord

if TYPE_CHECKING:
    from core.db import Database

GENESIS = "0" * 64


def _digest(
    seq: int, at: str, actor: str, action: str, object_type: str, object_id: str,
    detail: dict[str, Any], prev_hash: str,
) -> str:
    canonical = json.dumps(
        [seq, at, actor, action, object_type, object_id, detail, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def append(
    session: Session, *, actor: str, action: str, object_type: str, object_id: str,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one record inside the caller's transaction (it commits with the change)."""
    detail = json.loads(json.dumps(detail or {}, default=str))
    head_seq = session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1)
        .returning(AuditHead.seq, AuditHead.last_hash)
    ).one()
    seq, prev_hash = int(head_seq[0]), str(head_seq[1])
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    digest = _digest(seq, at, actor, action, object_type, object_id, detail, prev_hash)
    record = AuditRecord(
        seq=seq, at=at, actor=actor, action=action, object_type=object_type,
        object_id=object_id, detail=detail, prev_hash=prev_hash, hash=digest,
    )
    session.add(record)
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=digest))
    session.flush()
    return record


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str = ""
    #: Sequence number and hash of the last record checked (the head when ``ok``).
    last_seq: int = 0
    last_hash: str = GENESIS


def record_digest(
    seq: int, at: str, actor: str, action: str, object_type: str, object_id: str,
    detail: dict[str, Any], prev_hash: str,
) -> str:
    """The hash a record with these fields must carry (what :func:`append` computes)."""
    return _digest(seq, at, actor, action, object_type, object_id, detail, prev_hash)


def read_head(session: Session) -> tuple[int, str]:
    """``(seq, last_hash)`` of the chain's head row; ``(0, GENESIS)`` before any record."""
    head = session.get(AuditHead, 1)
    if head is None:
        return 0, GENESIS
    return int(head.seq), str(head.last_hash)


def hashes_at(session: Session, seqs: Iterable[int], chunk: int = 500) -> dict[int, str]:
    """The stored hash of each record in ``seqs`` that exists (absent ones are left out)."""
    wanted = sorted(set(seqs))
    found: dict[int, str] = {}
    for i in range(0, len(wanted), chunk):
        for seq, digest in session.execute(
                select(AuditRecord.seq, AuditRecord.hash)
                .where(AuditRecord.seq.in_(wanted[i:i + chunk]))):
            found[int(seq)] = str(digest)
    return found


_COLUMNS = (AuditRecord.seq, AuditRecord.at, AuditRecord.actor, AuditRecord.action,
            AuditRecord.object_type, AuditRecord.object_id, AuditRecord.detail,
            AuditRecord.prev_hash, AuditRecord.hash)


@dataclass
class _Walk:
    """Where a walk along the chain stands: the next expected record and its link."""

    prev_hash: str
    expected_seq: int
    checked: int = 0

    def broken(self, seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, self.checked, seq, reason, self.expected_seq - 1,
                            self.prev_hash)

    def step(self, row: Sequence[Any]) -> VerifyResult | None:
        """Check one record (a row of ``_COLUMNS``); a result only when it does not fit."""
        seq, at, actor, action, object_type, object_id, detail, prev_hash, digest = row
        if seq != self.expected_seq:
            return self.broken(self.expected_seq,
                               f"record {self.expected_seq} is missing (next is {seq})")
        if prev_hash != self.prev_hash:
            return self.broken(seq, "previous-hash link does not match the record before it")
        if _digest(seq, at, actor, action, object_type, object_id, detail,
                   prev_hash) != digest:
            return self.broken(seq, "content does not match its hash")
        self.prev_hash, self.expected_seq, self.checked = digest, seq + 1, self.checked + 1
        return None


def _rows(session: Session, after: int, upto: int | None, batch: int) -> Sequence[Any]:
    q = select(*_COLUMNS).where(AuditRecord.seq > after)
    if upto is not None:
        q = q.where(AuditRecord.seq <= upto)
    return session.execute(q.order_by(AuditRecord.seq).limit(batch)).all()


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in order; report the first record that does not fit."""
    walk = _Walk(GENESIS, 1)
    while True:
        rows = _rows(session, walk.expected_seq - 1, None, batch)
        if not rows:
            break
        for row in rows:
            broken = walk.step(row)
            if broken is not None:
                return broken
    checked, prev_hash = walk.checked, walk.prev_hash
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != checked or head.last_hash != prev_hash):
        return walk.broken(checked + 1,
                           f"chain ends at record {checked} but the head says {head.seq}: "
                           "records were removed from the end")
    return VerifyResult(True, checked, last_seq=checked, last_hash=prev_hash)


def verify_database(db: Database, *, after_seq: int = 0, after_hash: str = GENESIS,
                    batch: int = 5000) -> VerifyResult:
    """Walk the chain from ``after_seq`` (whose hash is ``after_hash``) to the head.

    Unlike :func:`verify` every batch is read in its own short transaction: on SQLite
    a transaction holds the write lock, and a walk over millions of records in one
    would stall the gateway's acknowledgements.  Records never change once
    committed, so the batches fit together; the walk stops at the head read first,
    and records appended meanwhile are left for the next walk.  ``after_seq`` lets a
    checkpoint check only what was appended since the previous one.
    """
    with db.session() as s:
        head_seq, head_hash = read_head(s)
    walk = _Walk(after_hash, after_seq + 1)
    if head_seq < after_seq:
        return walk.broken(head_seq + 1, f"the head says {head_seq} records but record "
                           f"{after_seq} was seen before: records were removed from the end")
    while walk.expected_seq <= head_seq:
        with db.session() as s:
            rows = _rows(s, walk.expected_seq - 1, head_seq, batch)
        if not rows:
            return walk.broken(walk.expected_seq,
                               f"chain ends at record {walk.expected_seq - 1} but the head "
                               f"says {head_seq}: records were removed from the end")
        for row in rows:
            broken = walk.step(row)
            if broken is not None:
                return broken
    if walk.prev_hash != head_hash:
        return walk.broken(head_seq, f"record {head_seq} does not carry the head's hash: "
                           "the head or the last record was changed")
    return VerifyResult(True, walk.checked, last_seq=head_seq, last_hash=head_hash)
