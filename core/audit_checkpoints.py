"""Signed checkpoints of the audit chain's head, kept outside the database.

The hash chain in the database names every naive edit, deletion and cut, but
someone with write access to the database can edit a record, recompute every
later hash and update ``audit_head``: the chain is then consistent again.  A
checkpoint records the head (sequence number and hash) at a moment, signed with
the center CA's key, in ``$RDC_HOME/audit/checkpoints.jsonl``, a file the database
cannot reach.  Whoever rewrites records that a checkpoint covers changes the hash
at the checkpoint's sequence number, and :func:`verify_anchored` names the first
checkpoint that disagrees and the range of records the change lies in.

The file is append-only (opened ``O_APPEND``, fsynced, one JSON line each).  Each
line also carries the SHA-256 of the line before it and a line number, so an
edited, removed or inserted line breaks that link; and since each signature covers
the link, the last line's signature vouches for the whole file.  That lets SM2
centers (about 20 ms per SM2 verification in pure Python) check a year of
checkpoints by verifying one signature, and every signature only when something
does not fit.

Not covered: someone who can also write this file and read the CA's key can sign
checkpoints of their own, and removing the last lines of the file is not visible
here.  Copies outside the machine cover that: each checkpoint also goes to the
audit syslog when ``RDC_ATNA_SYSLOG_URL`` is set, and the ATNA export carries every
record's hash to the hospital's audit repository.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import func, select

from core import audit, crypto, pki
from core.db import Database
from core.errors import ConfigurationError, RDCError
from core.models import AuditRecord
from core.settings import Settings

log = logging.getLogger(__name__)

FORMAT: Final = "rdc-audit-checkpoint-1"
FILE_NAME: Final = "checkpoints.jsonl"
LOCK_NAME: Final = "checkpoints.lock"
#: Signed bytes start with this, so that a checkpoint signature can never pass for a
#: signature over anything else the CA key signs (certificates are DER, never this).
SIGNING_CONTEXT: Final = b"rdc audit checkpoint v1\n"
_FIELDS: Final = ("format", "n", "seq", "hash", "record_at", "made_at", "prev", "alg",
                  "ca", "center")


class AnchorMismatch(RDCError):
    """The chain in the database no longer extends the last signed checkpoint."""

    exit_code = 8


def checkpoints_path(settings: Settings) -> Path:
    return settings.audit_dir / FILE_NAME


@contextmanager
def checkpoint_lock(settings: Settings) -> Iterator[None]:
    """Exclusive lock for appending checkpoints.

    A backup that copies ``audit/`` and the database holds it over both, so that no
    checkpoint newer than the database copy ends up in the backup (which would read
    as a cut chain after a restore).
    """
    settings.audit_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(settings.audit_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class Checkpoint:
    """One line of the checkpoint file."""

    n: int
    seq: int
    hash: str
    record_at: str
    made_at: str
    prev: str
    alg: str
    ca: str
    center: str
    sig: bytes = field(repr=False)
    #: The line as stored, without its newline: what the next line's ``prev`` hashes.
    raw: bytes = field(repr=False)

    def signed_bytes(self) -> bytes:
        return _signing_bytes({"format": FORMAT, "n": self.n, "seq": self.seq,
                               "hash": self.hash, "record_at": self.record_at,
                               "made_at": self.made_at, "prev": self.prev, "alg": self.alg,
                               "ca": self.ca, "center": self.center})


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _signing_bytes(fields: dict[str, Any]) -> bytes:
    return SIGNING_CONTEXT + _canonical(fields)


def line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class _BadLine(ValueError):
    pass


def parse_line(raw: bytes) -> Checkpoint:
    """A checkpoint from one line; :class:`ValueError` says what is wrong with it."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise _BadLine(f"is not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _BadLine(f"is not an {FORMAT} checkpoint")
    missing = [k for k in (*_FIELDS, "sig") if k not in data]
    if missing:
        raise _BadLine(f"lacks {', '.join(missing)}")
    ints = {k: data[k] for k in ("n", "seq")}
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in ints.values()):
        raise _BadLine("has a non-integer line number or sequence number")
    texts = [data[k] for k in _FIELDS if k not in ("n", "seq")] + [data["sig"]]
    if not all(isinstance(v, str) for v in texts):
        raise _BadLine("has a field of the wrong type")
    try:
        sig = base64.b64decode(data["sig"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise _BadLine("has a signature that is not base64") from e
    return Checkpoint(n=data["n"], seq=data["seq"], hash=data["hash"],
                      record_at=data["record_at"], made_at=data["made_at"], prev=data["prev"],
                      alg=data["alg"], ca=data["ca"], center=data["center"], sig=sig, raw=raw)


def _last_line(path: Path) -> bytes | None:
    """The file's last non-empty line, read from the end (the file grows for years)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            chunk, data = 8192, b""
            pos = end
            while pos > 0:
                step = min(chunk, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                stripped = data.rstrip(b"\n")
                if b"\n" in stripped:
                    return stripped.rsplit(b"\n", 1)[1]
            stripped = data.rstrip(b"\n")
            return stripped or None
    except FileNotFoundError:
        return None


def _append_line(path: Path, line: bytes) -> None:
    """Append one line durably: O_APPEND (never overwrites), fsync, and on the first
    line an fsync of the folder so the file itself survives a crash."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def make_checkpoint(settings: Settings, db: Database) -> Checkpoint | None:
    """Sign the chain's current head and append it; None when nothing was appended
    since the last checkpoint.

    Only a chain that extends the last checkpoint is signed: the records appended
    since are walked from it (a few hundred per interval), so a rewrite is refused
    here with :class:`AnchorMismatch` instead of being blessed by a new signature.
    """
    from core.pki import center_ca

    path = checkpoints_path(settings)
    with checkpoint_lock(settings):
        last_raw = _last_line(path)
        last: Checkpoint | None = None
        if last_raw is not None:
            try:
                last = parse_line(last_raw)
            except ValueError as e:
                raise AnchorMismatch(f"the last line of {path} {e}; not extending a damaged "
                                     "checkpoint file (run `rdc audit verify`)") from e
        after_seq, after_hash = (last.seq, last.hash) if last else (0, audit.GENESIS)
        walked = audit.verify_database(db, after_seq=after_seq, after_hash=after_hash)
        if not walked.ok:
            since = (f"checkpoint line {last.n} (record {last.seq}, {last.made_at})" if last
                     else "the first record")
            raise AnchorMismatch(
                f"the audit chain does not extend {since}: record {walked.first_broken_seq}: "
                f"{walked.reason}; not signing it (run `rdc audit verify`)")
        if last is not None and walked.last_seq == last.seq:
            return None
        if walked.last_seq == 0:
            return None  # an empty chain: nothing to anchor yet
        with db.session() as s:
            record_at = s.scalar(select(AuditRecord.at).where(
                AuditRecord.seq == walked.last_seq)) or ""
        ca = center_ca(settings)
        fields: dict[str, Any] = {
            "format": FORMAT, "n": (last.n + 1) if last else 1, "seq": walked.last_seq,
            "hash": walked.last_hash, "record_at": record_at, "made_at": _now(),
            "prev": line_hash(last_raw) if last_raw is not None else audit.GENESIS,
            "alg": ca.alg, "ca": ca.fingerprint, "center": settings.center_name}
        signature = crypto.sign(ca.alg, ca.private_key(), _signing_bytes(fields))
        line = _canonical({**fields, "sig": base64.b64encode(signature).decode("ascii")})
        _append_line(path, line)
    checkpoint = parse_line(line)
    log.info("audit.checkpoint n=%s seq=%s hash=%s", checkpoint.n, checkpoint.seq,
             checkpoint.hash[:16])
    _to_syslog(settings, line)
    return checkpoint


def _to_syslog(settings: Settings, line: bytes) -> None:
    """A copy of the checkpoint for the audit syslog, off the machine (best effort:
    the file holds it either way)."""
    if not settings.atna_syslog_url:
        return
    from core.atna_syslog import (
        SEVERITY_NOTICE,
        SyslogError,
        SyslogSender,
        frame_message,
        parse_url,
        rfc5424_timestamp,
        tls_context,
    )
    try:
        target = parse_url(settings.atna_syslog_url)
        context = (tls_context(settings.atna_tls_ca_file, settings.atna_tls_cert_file,
                               settings.atna_tls_key_file) if target.scheme == "tls" else None)
        message = frame_message(
            severity=SEVERITY_NOTICE, timestamp=rfc5424_timestamp(datetime.now(UTC)),
            hostname=settings.atna_source_id or socket.gethostname(), app_name="rdc",
            procid=str(os.getpid()), msgid="RDC-CHECKPOINT", msg=line)
        SyslogSender(target, context=context).send([message])
    except (SyslogError, ConfigurationError) as e:
        log.warning("audit.checkpoint_syslog_failed error=%s", e)


# --- verification -------------------------------------------------------------------

ProblemKind = Literal["checkpoint", "rewritten", "cut", "chain"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    message: str
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass
class AnchorReport:
    """What ``rdc audit verify`` found: the chain, the checkpoints and how they agree."""

    chain: audit.VerifyResult
    head_seq: int
    checkpoints: int = 0
    #: Records up to this sequence number are covered by a checkpoint that agrees.
    anchored: int = 0
    last_checkpoint: Checkpoint | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems

    @property
    def unanchored(self) -> int:
        return max(0, self.head_seq - self.anchored)


@dataclass(frozen=True)
class Line:
    """One line of the checkpoint file: its position, bytes, and the checkpoint in it
    (None when it cannot be read as one)."""

    position: int
    raw: bytes
    checkpoint: Checkpoint | None


def read_checkpoints(path: Path) -> tuple[list[Line], list[Problem]]:
    """Every line of the file, and a problem for each line that cannot be read."""
    if not path.exists():
        return [], []
    entries: list[Line] = []
    problems: list[Problem] = []
    with open(path, "rb") as f:
        for position, line in enumerate(f, start=1):
            raw = line.rstrip(b"\n")
            try:
                entries.append(Line(position, raw, parse_line(raw)))
            except ValueError as e:
                entries.append(Line(position, raw, None))
                problems.append(Problem("checkpoint", f"checkpoint line {position} {e}: it "
                                        "was edited or damaged"))
    return entries, problems


def _ca_key(ca_cert: bytes) -> tuple[str, str, crypto.PublicKey]:
    info = pki.read_certificate(ca_cert)
    return info.alg, info.fingerprint, info.public_key


def check_file(entries: list[Line], ca_cert: bytes | None, *,
               all_signatures: bool = False) -> tuple[list[Problem], set[int]]:
    """Links, line numbers and signatures; the problems and the bad lines' positions.

    Signatures: every line for Ed25519 and P-256 (fractions of a millisecond each);
    for SM2 the last line, whose signature covers the links back to the first line,
    and every line only when the last one or a link does not fit.
    """
    problems: list[Problem] = []
    bad: set[int] = {e.position for e in entries if e.checkpoint is None}
    prev_raw: bytes | None = None
    prev_seq = 0
    readable: list[tuple[int, Checkpoint]] = []
    for entry in entries:
        cp, position = entry.checkpoint, entry.position
        expected = line_hash(prev_raw) if prev_raw is not None else audit.GENESIS
        prev_raw = entry.raw
        if cp is None:
            continue
        readable.append((position, cp))
        if cp.prev != expected:
            problems.append(Problem("checkpoint", f"checkpoint line {position} does not "
                                    "follow the line before it: that line was edited, or "
                                    "lines were removed or inserted before it"))
            bad.add(position)
        elif cp.n != position:
            problems.append(Problem("checkpoint", f"checkpoint line {position} says it is "
                                    f"line {cp.n}: lines were removed or inserted"))
            bad.add(position)
        if cp.seq < prev_seq:
            problems.append(Problem("checkpoint", f"checkpoint line {position} anchors "
                                    f"record {cp.seq}, before record {prev_seq} of an "
                                    "earlier line"))
            bad.add(position)
        prev_seq = max(prev_seq, cp.seq)
    if not readable:
        return problems, bad
    if ca_cert is None:
        problems.append(Problem("checkpoint", "the center CA's certificate is missing: the "
                                "checkpoints' signatures cannot be checked"))
        return problems, bad | {position for position, _ in readable}
    alg, fingerprint, public = _ca_key(ca_cert)

    def verify_one(position: int, cp: Checkpoint) -> bool:
        if cp.ca != fingerprint or cp.alg != alg:
            problems.append(Problem("checkpoint", f"checkpoint line {position} was signed by "
                                    f"another CA ({cp.ca[:16]}, not {fingerprint[:16]})"))
            return False
        if not crypto.verify_signature(alg, public, cp.sig, cp.signed_bytes()):
            problems.append(Problem("checkpoint", f"checkpoint line {position} (record "
                                    f"{cp.seq}): the signature does not verify: the line "
                                    "was edited or forged"))
            return False
        return True

    every = all_signatures or alg != crypto.SM2 or bool(bad)
    if not every:
        before = len(problems)
        if verify_one(*readable[-1]):
            return problems, bad
        del problems[before:]  # reported again below, with every other line that fails
    for position, cp in readable:
        if not verify_one(position, cp):
            bad.add(position)
    return problems, bad


def _age_s(at: str) -> float | None:
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return (datetime.now(UTC) - moment).total_seconds()


def verify_anchored(settings: Settings, db: Database, *, ca_cert: bytes | None = None,
                    all_signatures: bool = False) -> AnchorReport:
    """Check the chain, the checkpoint file, and the chain against every checkpoint.

    ``ca_cert`` (PEM or DER) defaults to the center's CA certificate on disk; an
    auditor passes a copy kept elsewhere, so that a replaced CA is noticed too.
    """
    chain = audit.verify_database(db)
    with db.session() as s:
        top = int(s.scalar(select(func.max(AuditRecord.seq))) or 0)
        head_seq, _ = audit.read_head(s)
    report = AnchorReport(chain=chain, head_seq=max(top, head_seq))
    entries, problems = read_checkpoints(checkpoints_path(settings))
    report.problems.extend(problems)
    if ca_cert is None:
        cert_path = settings.ca_dir / pki.CA_CERT_FILE
        ca_cert = cert_path.read_bytes() if cert_path.is_file() else None
    file_problems, bad = check_file(entries, ca_cert, all_signatures=all_signatures)
    report.problems.extend(file_problems)
    good = [e.checkpoint for e in entries
            if e.checkpoint is not None and e.position not in bad]
    report.checkpoints = len(good)
    report.last_checkpoint = good[-1] if good else None
    _compare(report, good, db, top)
    if not chain.ok and chain.first_broken_seq is not None:
        report.anchored = min(report.anchored, chain.first_broken_seq - 1)
    _warn_if_stale(report, settings, db, bool(entries))
    return report


def _compare(report: AnchorReport, good: list[Checkpoint], db: Database, top: int) -> None:
    """The chain against each good checkpoint: anchored, rewritten, cut."""
    with db.session() as s:
        stored = audit.hashes_at(s, [cp.seq for cp in good if cp.seq <= top])
    agreed: Checkpoint | None = None
    for index, cp in enumerate(good):
        if cp.seq > top:
            break  # reported as a cut below
        digest = stored.get(cp.seq)
        if digest is None:
            report.problems.append(Problem(
                "rewritten", f"checkpoint line {cp.n} anchors record {cp.seq}, which is "
                "missing from the chain", cp.seq, cp.seq))
            return
        if digest != cp.hash:
            first = agreed.seq + 1 if agreed else 1
            later = sum(1 for c in good[index + 1:] if c.seq <= top
                        and stored.get(c.seq) != c.hash)
            report.problems.append(Problem(
                "rewritten",
                f"rewritten: record {cp.seq} no longer has the hash that checkpoint line "
                f"{cp.n} (made {cp.made_at}) signed, so records {first}..{cp.seq} were "
                f"changed after they were anchored (the change lies in that range; every "
                f"hash from it to the head, record {report.head_seq}, was recomputed"
                f"{f'; {later} later checkpoints disagree too' if later else ''})",
                first, cp.seq))
            return
        agreed = cp
        report.anchored = cp.seq
    if good and good[-1].seq > top:
        highest = max(good, key=lambda c: c.seq)
        report.problems.append(Problem(
            "cut", f"cut: the chain ends at record {top} but checkpoint line {highest.n} "
            f"(made {highest.made_at}) anchors record {highest.seq}: records "
            f"{top + 1}..{highest.seq} were removed", top + 1, highest.seq))


def _warn_if_stale(report: AnchorReport, settings: Settings, db: Database,
                   any_lines: bool) -> None:
    if report.head_seq == 0 or report.unanchored == 0:
        return
    if not any_lines:
        report.warnings.append(
            "no checkpoints yet: nothing outside the database anchors the chain (the "
            "gateway writes one every RDC_AUDIT_CHECKPOINT_S; `rdc audit checkpoint` writes "
            "one now)")
        return
    with db.session() as s:
        oldest = s.scalar(select(AuditRecord.at).where(AuditRecord.seq == report.anchored + 1))
    age = _age_s(oldest) if oldest else None
    interval = settings.audit_checkpoint_s
    if age is not None and interval > 0 and age > 2 * interval + 60:
        report.warnings.append(
            f"the oldest record after the last checkpoint is {age / 60:.0f} min old while "
            f"checkpoints are due every {interval:.0f} s: the checkpoint timer (in the "
            "gateway) is not running, or the last checkpoints were removed from the file")
