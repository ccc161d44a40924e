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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.models import AuditHead, AuditRecord

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


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in order; report the first record that does not fit."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last_seq)
            .order_by(AuditRecord.seq).limit(batch)
        ).all()
        if not rows:
            break
        for r in rows:
            if r.seq != expected_seq:
                return VerifyResult(False, checked, expected_seq,
                                    f"record {expected_seq} is missing (next is {r.seq})")
            if r.prev_hash != prev_hash:
                return VerifyResult(False, checked, r.seq,
                                    "previous-hash link does not match the record before it")
            digest = _digest(r.seq, r.at, r.actor, r.action, r.object_type, r.object_id,
                             r.detail, r.prev_hash)
            if digest != r.hash:
                return VerifyResult(False, checked, r.seq, "content does not match its hash")
            prev_hash, expected_seq, checked = r.hash, expected_seq + 1, checked + 1
            last_seq = r.seq
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != checked or head.last_hash != prev_hash):
        return VerifyResult(False, checked, checked + 1,
                            f"chain ends at record {checked} but the head says {head.seq}: "
                            "records were removed from the end")
    return VerifyResult(True, checked)
