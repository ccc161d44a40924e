"""The audit chain anchored outside the database: signed checkpoints against an insider.

An insider with database access edits a record, recomputes every later hash with the
chain's own digest function and updates ``audit_head``: the chain alone then
verifies.  These tests do exactly that on a real database and run the real ``rdc``
command against the center's home, which must name the rewrite from the signed
checkpoints in ``$RDC_HOME/audit/checkpoints.jsonl``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from conftest import Center, _make_center, wait_until
from core import audit, crypto
from core.audit_checkpoints import SIGNING_CONTEXT, line_hash
from core.models import AuditHead, AuditRecord


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Center]:
    """A center (nothing started) on SQLite or PostgreSQL, the embedded broker."""
    pg = request.getfixturevalue("pg_admin") if request.param == "postgres" else None
    yield from _make_center(tmp_path, request.param, "", pg)


@pytest.fixture
def center_home(tmp_path: Path) -> Iterator[Center]:
    yield from _make_center(tmp_path, "sqlite", "", None)


# Helpers ---------------------------------------------------------------------------------
def fill(c: Center, n: int, what: str = "thing.do") -> None:
    with c.db.session() as s:
        for i in range(n):
            audit.append(s, actor="tester", action=what, object_type="thing",
                         object_id=str(i), detail={"i": i, "text": "检查 ok"})


def head(c: Center) -> tuple[int, str]:
    with c.db.session() as s:
        return audit.read_head(s)


def insider_rewrite(c: Center, seq: int, detail: dict[str, object]) -> None:
    """What someone with write access to the database can do: change one record, then
    recompute every later hash with the chain's own digest and move the head."""
    with c.db.session() as s:
        rows = list(s.scalars(select(AuditRecord).where(AuditRecord.seq >= seq)
                              .order_by(AuditRecord.seq)))
        prev = rows[0].prev_hash
        for r in rows:
            new_detail = detail if r.seq == seq else r.detail
            digest = audit.record_digest(r.seq, r.at, r.actor, r.action, r.object_type,
                                         r.object_id, new_detail, prev)
            s.execute(update(AuditRecord).where(AuditRecord.seq == r.seq)
                      .values(detail=new_detail, prev_hash=prev, hash=digest))
            prev = digest
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=prev))


def insider_cut(c: Center, keep: int) -> None:
    """Delete every record after ``keep`` and move the head back to it."""
    with c.db.session() as s:
        last_hash = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == keep))
        s.execute(delete(AuditRecord).where(AuditRecord.seq > keep))
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=keep,
                                                                    last_hash=last_hash))


def chain_alone_verifies(c: Center) -> bool:
    with c.db.session() as s:
        return audit.verify(s).ok


def checkpoint(c: Center) -> str:
    r = c.rdc("audit", "checkpoint")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def lines(c: Center) -> list[bytes]:
    return (c.home / "audit" / "checkpoints.jsonl").read_bytes().splitlines()


def write_lines(c: Center, raw: list[bytes]) -> None:
    (c.home / "audit" / "checkpoints.jsonl").write_bytes(b"".join(x + b"\n" for x in raw))


# A valid chain -------------------------------------------------------------------------
def test_valid_chain_with_checkpoints_passes_and_says_what_is_anchored(
        center_home: Center) -> None:
    c = center_home
    fill(c, 20)
    assert "checkpoint line 1: record 20" in checkpoint(c)
    first = lines(c)[0]
    fill(c, 10)
    assert "checkpoint line 2: record 30" in checkpoint(c)
    assert "nothing to sign" in checkpoint(c)
    fill(c, 5)

    # Append-only: the first line is untouched, the second links to it.
    raw = lines(c)
    assert len(raw) == 2 and raw[0] == first
    second = json.loads(raw[1])
    assert second["prev"] == line_hash(first) and second["n"] == 2
    assert second["seq"] == 30 and second["alg"] == "ed25519"

    v = c.rdc("audit", "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    assert "audit log intact: 35 records verified" in v.stdout
    assert "2 valid; 30 records anchored" in v.stdout, v.stdout
    assert "5 after the last checkpoint (unanchored)" in v.stdout, v.stdout
    assert "--all-signatures" not in v.stderr and not v.stderr.strip(), v.stderr


def test_no_checkpoints_yet_is_a_warning_not_a_failure(center_home: Center) -> None:
    c = center_home
    fill(c, 3)
    v = c.rdc("audit", "verify")
    assert v.returncode == 0, v.stderr
    assert "0 records anchored" in v.stdout and "3 after the last checkpoint" in v.stdout
    assert "no checkpoints yet" in v.stderr


# The insider -----------------------------------------------------------------------------
def test_insider_rewrite_is_named_with_its_range(any_db: Center) -> None:
    c = any_db
    fill(c, 20)
    checkpoint(c)  # line 1: record 20
    fill(c, 20)
    checkpoint(c)  # line 2: record 40
    fill(c, 10)
    fill(c, 5)
    checkpoint(c)  # line 3: record 55

    insider_rewrite(c, 25, {"i": 4, "text": "the insider's version"})

    # The chain alone is consistent again: that is the attack.
    assert chain_alone_verifies(c), "the rewrite should fool the chain alone"
    assert head(c)[0] == 55

    v = c.rdc("audit", "verify")
    assert v.returncode != 0, v.stdout
    assert "audit log intact: 55 records verified" in v.stdout  # the chain itself fits
    assert "rewritten" in v.stderr, v.stderr
    assert "checkpoint line 2" in v.stderr and "records 21..40" in v.stderr, v.stderr
    assert "1 later checkpoints disagree too" in v.stderr, v.stderr
    assert "20 records anchored" in v.stdout, v.stdout  # only line 1 still agrees

    # And no new checkpoint blesses the rewritten chain.
    fill(c, 1)
    r = c.rdc("audit", "checkpoint")
    assert r.returncode == 8, r.stdout + r.stderr
    assert "does not extend checkpoint line 3" in r.stderr, r.stderr
    assert len(lines(c)) == 3


def test_a_rewrite_of_the_first_records_names_range_from_one(center_home: Center) -> None:
    c = center_home
    fill(c, 12)
    checkpoint(c)
    insider_rewrite(c, 3, {"i": 999})
    assert chain_alone_verifies(c)
    v = c.rdc("audit", "verify")
    assert v.returncode == 1 and "records 1..12" in v.stderr, v.stderr
    assert "0 records anchored" in v.stdout


def test_cut_below_a_checkpoint_is_detected(any_db: Center) -> None:
    c = any_db
    fill(c, 30)
    checkpoint(c)  # record 30
    insider_cut(c, 22)
    assert chain_alone_verifies(c), "a cut with the head moved back fools the chain alone"

    v = c.rdc("audit", "verify")
    assert v.returncode != 0
    assert "cut" in v.stderr and "records 23..30 were removed" in v.stderr, v.stderr

    # New records after the cut do not hide it: the checkpoint's record now differs.
    fill(c, 15)
    assert chain_alone_verifies(c)
    v = c.rdc("audit", "verify")
    assert v.returncode != 0 and "rewritten" in v.stderr and "records 1..30" in v.stderr, \
        v.stderr


# The checkpoint file itself --------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ed25519", "sm2"])
def test_edited_removed_or_forged_checkpoint_lines_are_reported(center_home: Center,
                                                                alg: str) -> None:
    c = center_home
    c.extra_env["RDC_SIGNING_ALGORITHM"] = alg
    for n in (5, 5, 5):
        fill(c, n)
        checkpoint(c)
    good = lines(c)
    assert [json.loads(x)["seq"] for x in good] == [5, 10, 15]
    assert c.rdc("audit", "verify").returncode == 0

    # An edited line: line 2 made to anchor record 9 with record 9's real hash.
    with c.db.session() as s:
        hash9 = s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == 9))
    edited = json.loads(good[1])
    edited.update(seq=9, hash=hash9)
    write_lines(c, [good[0], json.dumps(edited, sort_keys=True,
                                        separators=(",", ":")).encode(), good[2]])
    v = c.rdc("audit", "verify")
    assert v.returncode != 0
    assert "checkpoint line 2 (record 9): the signature does not verify" in v.stderr, v.stderr
    assert "checkpoint line 3 does not follow the line before it" in v.stderr, v.stderr

    # A removed line.
    write_lines(c, [good[0], good[2]])
    v = c.rdc("audit", "verify")
    assert v.returncode != 0 and "checkpoint line 2 does not follow" in v.stderr, v.stderr

    # A line that is no longer JSON.
    write_lines(c, [good[0], good[1][:40], good[2]])
    v = c.rdc("audit", "verify")
    assert v.returncode != 0 and "checkpoint line 2 is not valid JSON" in v.stderr, v.stderr

    # A forged line, linked and numbered correctly, signed with someone else's key.
    fill(c, 3)
    forger = crypto.generate_private_key(alg)
    last = json.loads(good[2])
    with c.db.session() as s:
        seq, digest = audit.read_head(s)
    fields = {**{k: v for k, v in last.items() if k != "sig"}, "n": 4, "seq": seq,
              "hash": digest, "prev": line_hash(good[2])}
    signed = SIGNING_CONTEXT + json.dumps(fields, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=True).encode()
    fields["sig"] = base64.b64encode(crypto.sign(alg, forger, signed)).decode()
    write_lines(c, [*good, json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()])
    v = c.rdc("audit", "verify")
    assert v.returncode != 0
    assert "checkpoint line 4 (record 18): the signature does not verify" in v.stderr, v.stderr

    # Put back as it was: it verifies again.
    write_lines(c, good)
    v = c.rdc("audit", "verify")
    assert v.returncode == 0, v.stderr
    assert "15 records anchored" in v.stdout and "3 after the last checkpoint" in v.stdout


def test_verify_against_a_ca_certificate_kept_elsewhere(center_home: Center,
                                                       tmp_path: Path) -> None:
    """An insider who can write the file AND replaces the CA on disk is caught by a copy
    of the CA certificate the auditor kept away from the center."""
    c = center_home
    fill(c, 4)
    checkpoint(c)
    kept = tmp_path / "ca-kept.pem"
    kept.write_bytes((c.home / "secrets" / "ca" / "ca-cert.pem").read_bytes())
    assert c.rdc("audit", "verify", "--ca-cert", str(kept)).returncode == 0

    # A new CA on disk and the file re-signed with it: consistent on the machine ...
    (c.home / "audit" / "checkpoints.jsonl").unlink()
    for name in ("ca-cert.pem", "ca-key.pem"):
        (c.home / "secrets" / "ca" / name).unlink()
    insider_rewrite(c, 2, {"i": 77})
    checkpoint(c)
    assert c.rdc("audit", "verify").returncode == 0
    # ... but not against the kept certificate.
    v = c.rdc("audit", "verify", "--ca-cert", str(kept))
    assert v.returncode != 0 and "signed by another CA" in v.stderr, v.stderr


# The timer in the gateway ------------------------------------------------------------------
def test_gateway_checkpoints_periodically_and_alerts_on_a_rewrite(center_home: Center) -> None:
    c = center_home
    c.extra_env["RDC_AUDIT_CHECKPOINT_S"] = "1"
    c.add_site()
    c.start_gateway()

    def anchored_head() -> bool:
        path = c.home / "audit" / "checkpoints.jsonl"
        return path.exists() and bool(lines(c)) and json.loads(lines(c)[-1])["seq"] == head(c)[0]

    wait_until(anchored_head, 30, "a checkpoint of the head from the gateway")
    fill(c, 7)
    wait_until(anchored_head, 30, "a checkpoint of the 7 new records")
    v = c.rdc("audit", "verify")
    assert v.returncode == 0 and " 0 after the last checkpoint" in v.stdout, v.stdout

    # An insider rewrite while the gateway runs: it refuses to sign and raises an alert
    # in the chain itself (which the ATNA export carries off the machine).
    n_lines = len(lines(c))
    insider_rewrite(c, 2, {"i": 1234})

    def alert() -> bool:
        with c.db.session() as s:
            return bool(s.scalar(select(AuditRecord.seq).where(
                AuditRecord.action == "audit.anchor_mismatch")))

    wait_until(alert, 30, "the gateway's audit.anchor_mismatch record")
    time.sleep(2.5)
    assert len(lines(c)) == n_lines, "the gateway signed a rewritten chain"
    assert "audit.anchor_mismatch" in c.logs()
    c.stop_gateway()


# A large chain ---------------------------------------------------------------------------
def test_verify_is_fast_on_a_large_chain(center_home: Center) -> None:
    c = center_home
    n = 60_000
    fill(c, 1)
    with c.db.session() as s:
        seq, prev = audit.read_head(s)
        at = "2024-01-01T00:00:00.000000+00:00"
        rows = []
        for i in range(seq + 1, seq + n + 1):
            detail = {"i": i, "study": "1.2.840.99999.1"}
            digest = audit.record_digest(i, at, "bulk", "study.view", "study", str(i % 97),
                                         detail, prev)
            rows.append({"seq": i, "at": at, "actor": "bulk", "action": "study.view",
                         "object_type": "study", "object_id": str(i % 97), "detail": detail,
                         "prev_hash": prev, "hash": digest})
            prev = digest
        s.execute(insert(AuditRecord), rows)
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=seq + n,
                                                                    last_hash=prev))
    started = time.monotonic()
    checkpoint(c)
    fill(c, 3)
    checkpoint(c)
    v = c.rdc("audit", "verify")
    took = time.monotonic() - started
    assert v.returncode == 0, v.stderr
    assert f"{n + 4} records verified" in v.stdout and f"{n + 4} records anchored" in v.stdout
    # Generous on a shared 2-core machine: about 10 s here for 60 000 records and two
    # checkpoints, each walk in 5 000-record batches.
    assert took < 120, f"checkpoint + verify of {n} records took {took:.1f} s"
