"""Folders copied as they are (model registry files, audit checkpoints, spool) and
the encrypted secrets bundle.

The secrets bundle is a tar archive built in memory (the secrets are a few
kilobytes) and encrypted whole, so no plaintext copy of the CA key ever touches
the backup's disk.  Reading it back accepts regular files and folders only, with
plain relative names: a forged archive cannot write outside the new home.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rdc.backup import BackupCorrupt
from rdc.backup.manifest import Ledger, check_relpath

#: Name of the center's configuration file inside the secrets bundle (it may hold
#: the Orthanc password or a database URL with a password, so it is encrypted too).
CONFIG_MEMBER = "rdc.toml"
SECRETS_PREFIX = "secrets/"


def copy_tree(source: Path, ledger: Ledger, prefix: str,
              skip: tuple[str, ...] = ()) -> int:
    """Copy every regular file under ``source`` to ``prefix/`` in the backup.

    A file that vanishes while the copy runs (a spooled instance the uploader just
    archived, which is then in Orthanc's part of the backup) is skipped.  Returns the
    number of files copied.
    """
    if not source.is_dir():
        return 0
    count = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if rel.parts and rel.parts[0] in skip:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            ledger.copy_file(path, f"{prefix}/{rel.as_posix()}")
        except FileNotFoundError:
            continue
        count += 1
    return count


def restore_tree(backup: Path, files: dict[str, object], prefix: str, target: Path,
                 mode: int | None = None) -> int:
    """Copy the backup's files under ``prefix/`` to ``target`` (already verified)."""
    count = 0
    for rel in sorted(files):
        if not rel.startswith(prefix + "/"):
            continue
        inner = check_relpath(rel.removeprefix(prefix + "/"))
        dest = target.joinpath(*inner.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".restoring")
        shutil.copyfile(backup / check_relpath(rel), tmp)
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, dest)
        count += 1
    return count


def build_secrets_bundle(secrets_dir: Path, config: Path | None) -> tuple[bytes, list[str]]:
    """A tar of the secrets folder (and ``rdc.toml``), in memory; with the member names."""
    buf = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if secrets_dir.is_dir():
            for path in sorted(secrets_dir.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                name = SECRETS_PREFIX + path.relative_to(secrets_dir).as_posix()
                _add(tar, name, path.read_bytes())
                names.append(name)
        if config is not None and config.is_file():
            _add(tar, CONFIG_MEMBER, config.read_bytes())
            names.append(CONFIG_MEMBER)
    return buf.getvalue(), names


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class SecretsBundle:
    """The decrypted bundle: secret files by relative path, and ``rdc.toml`` if any."""

    secrets: dict[str, bytes]
    config: bytes | None


def read_secrets_bundle(data: bytes) -> SecretsBundle:
    secrets: dict[str, bytes] = {}
    config: bytes | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    raise BackupCorrupt(f"secrets bundle: {member.name!r} is not a plain file")
                check_relpath(member.name)
                handle = tar.extractfile(member)
                if handle is None:
                    raise BackupCorrupt(f"secrets bundle: {member.name!r} cannot be read")
                content = handle.read()
                if member.name == CONFIG_MEMBER:
                    config = content
                elif member.name.startswith(SECRETS_PREFIX):
                    secrets[member.name.removeprefix(SECRETS_PREFIX)] = content
                else:
                    raise BackupCorrupt(f"secrets bundle: unexpected member {member.name!r}")
    except tarfile.TarError as e:
        raise BackupCorrupt(f"secrets bundle is not a valid archive: {e}") from e
    return SecretsBundle(secrets, config)


def write_secrets(bundle: SecretsBundle, secrets_dir: Path) -> None:
    """Write the secret files owner-only (folder 0700, files 0600)."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secrets_dir.chmod(0o700)
    for rel, content in sorted(bundle.secrets.items()):
        dest = secrets_dir.joinpath(*PurePosixPath(rel).parts)
        for parent in reversed(dest.relative_to(secrets_dir).parents[:-1]):
            (secrets_dir / parent).mkdir(exist_ok=True, mode=0o700)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
