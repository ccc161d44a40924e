"""What a backup folder holds, and the check that it still holds exactly that.

``manifest.json`` lists every file with its SHA-256 and size, and says what the
backup is (center, schema revision, time, rdc version, database kind, key
derivation).  ``manifest.seal`` is an HMAC of the manifest's bytes under a key from
the passphrase (see :mod:`rdc.backup.sealing`).  The manifest is written last, so a
folder without one is an unfinished backup, never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rdc.backup import FORMAT, BackupCorrupt
from rdc.backup.sealing import BackupKeys

MANIFEST = "manifest.json"
SEAL = "manifest.seal"
CHUNK = 1024 * 1024


def check_relpath(rel: str) -> PurePosixPath:
    """A manifest path must stay inside the backup folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise BackupCorrupt(f"manifest names an unsafe path {rel!r}")
    return p


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Ledger:
    """The files written into a backup so far, with their checksums."""

    root: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        return self.root / check_relpath(rel)

    def record(self, rel: str, sha256: str, size: int) -> None:
        check_relpath(rel)
        self.files[rel] = {"sha256": sha256, "size": size}

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small file whole (fsynced) and record it."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.record(rel, hashlib.sha256(data).hexdigest(), len(data))

    def copy_file(self, source: Path, rel: str) -> int:
        """Copy ``source`` into the backup, hashing while it is read once; returns its size."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        self.record(rel, digest.hexdigest(), size)
        return size

    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())


def write(ledger: Ledger, info: dict[str, Any], keys: BackupKeys) -> bytes:
    """Write the manifest and its seal (last, fsynced); returns the manifest's bytes."""
    manifest = {"format": FORMAT, **info, "files": dict(sorted(ledger.files.items()))}
    data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    for name, content in ((MANIFEST, data), (SEAL, keys.seal_manifest(data).encode() + b"\n")):
        with open(ledger.root / name, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(ledger.root)
    return data


def read(root: Path) -> tuple[dict[str, Any], bytes, str]:
    """The manifest (parsed and as bytes) and its seal; refuses anything that is not one."""
    if not root.is_dir():
        raise BackupCorrupt(f"{root} is not a backup folder (it does not exist or is a file)")
    path, seal = root / MANIFEST, root / SEAL
    if not path.is_file() or not seal.is_file():
        raise BackupCorrupt(f"{root} has no {MANIFEST} and {SEAL}: it is not a complete "
                            "backup (an interrupted one leaves no manifest)")
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise BackupCorrupt(f"{path} is not valid JSON: {e}") from e
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or found != FORMAT:
        raise BackupCorrupt(f"{path} is not an {FORMAT} manifest (format {found!r})")
    if not isinstance(manifest.get("files"), dict):
        raise BackupCorrupt(f"{path} lists no files")
    return manifest, data, seal.read_text(encoding="ascii", errors="replace")


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verify_files(root: Path, files: dict[str, Any],
                 advance: Callable[[int], None] = lambda _n: None) -> None:
    """Every listed file is present, of its size, with its SHA-256; the first that is not
    is named in the error."""
    for rel, entry in sorted(files.items()):
        path = root / check_relpath(rel)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("size"), int):
            raise BackupCorrupt(f"manifest entry for {rel} is malformed")
        if not path.is_file():
            raise BackupCorrupt(f"backup file {rel} is missing")
        actual_size = path.stat().st_size
        if actual_size != entry["size"]:
            raise BackupCorrupt(f"backup file {rel} is {actual_size} bytes, the manifest says "
                                f"{entry['size']}: it is corrupted or truncated")
        sha, _ = sha256_file(path)
        if sha != entry["sha256"]:
            raise BackupCorrupt(f"backup file {rel} is corrupted: SHA-256 {sha} differs from "
                                f"the manifest's {entry['sha256']}")
        advance(actual_size)
