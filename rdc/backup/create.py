"""``rdc backup DEST``: a consistent snapshot of a running (or stopped) center.

The order is what makes the parts agree with each other:

1. the audit checkpoints, first: a checkpoint names a head of the audit chain, and
   one copied after the database could name a head the copied database never
   reached, which ``rdc audit verify`` would then call a cut-off chain;
2. the database (one consistent snapshot);
3. the spool's acknowledged instances: every instance the copied database calls
   spooled is either still in the spool now, or was archived since and is then
   copied in step 4;
4. Orthanc's instances, after the database, so that every instance the database
   calls stored is in the backup;
5. the secrets (encrypted), the routing rules and the model registry's files.

Everything is written into a hidden ``.DEST.partial-*`` folder beside DEST and
renamed to DEST only once the sealed manifest is on disk, so a backup that fails
half way leaves nothing that looks complete (and removes what it wrote).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from core import audit
from core.db import get_database
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import Settings, _config_file
from rdc.backup import BackupError, database, files, orthanc_archive
from rdc.backup.manifest import Ledger, fsync_dir, sha256_file, write
from rdc.backup.progress import step
from rdc.backup.sealing import BackupKeys, KdfParams, check_strength

SECRETS_FILE = "secrets.enc"
ROUTING_FILE = "config/routing_rules.toml"
#: Spool folders worth keeping: ``tmp`` holds only unacknowledged partial writes.
#: Not copied from the spool: partial receptions (never acknowledged), and the running
#: gateway's claim on it (pacs_gateway/spool_owner.py): a restore is a node taking over
#: this spool, and its gateway claims the restored spool as its own.
SPOOL_SKIP = ("tmp", "LOCK", "NODE")


def rdc_version() -> str:
    try:
        return metadata.version("regional-diagnostic-center")
    except metadata.PackageNotFoundError:
        return "unknown"


def secrets_aad(backup_id: str) -> bytes:
    """Binds the encrypted secrets to their backup: no swapping in another backup's."""
    return f"rdc-backup secrets {backup_id}".encode()


@dataclass(frozen=True)
class BackupSummary:
    dest: Path
    instances: int
    files: int
    bytes: int
    database: str
    schema_revision: str
    seconds: float


def _check_dest(settings: Settings, dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} already exists and is not an empty folder; a backup is "
                          "written only into a new (or empty) folder, never over another")
    if dest.resolve().is_relative_to(settings.home):
        raise BackupError(f"{dest} is inside the center's home {settings.home}: keep "
                          "backups on another disk, where a lost home does not take them too")


def _orthanc_client(settings: Settings) -> OrthancClient:
    return OrthancClient.from_settings(settings, retries=2)


def create_backup(settings: Settings, dest: Path, passphrase: str,
                  console: Console) -> BackupSummary:
    """Take the backup (see the module's docstring); audited in the center, success or not."""
    check_strength(passphrase)
    dest = dest.expanduser().absolute()
    _check_dest(settings, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    started = time.monotonic()
    db = get_database(settings.database_url)
    try:
        summary, manifest_sha = _write_backup(settings, work, dest, passphrase, console,
                                              started)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(work, dest)
        fsync_dir(dest.parent)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        try:
            with db.session() as s:
                audit.append(s, actor="cli", action="backup.failed", object_type="backup",
                             object_id=str(dest), detail={"error": str(e)[:500]})
        except Exception:  # the failure itself is what the operator must see
            console.print("[yellow]the failed backup could not be audited[/yellow]")
        raise
    with db.session() as s:
        audit.append(s, actor="cli", action="backup.create", object_type="backup",
                     object_id=str(dest),
                     detail={"manifest_sha256": manifest_sha, "instances": summary.instances,
                             "files": summary.files, "bytes": summary.bytes,
                             "schema_revision": summary.schema_revision,
                             "database": summary.database})
    return summary


def _write_backup(settings: Settings, work: Path, dest: Path, passphrase: str,
                  console: Console, started: float) -> tuple[BackupSummary, str]:
    import hashlib

    from ai_models.registry import SHIPPED_DIR

    ledger = Ledger(work)
    kdf = KdfParams.new()
    keys = BackupKeys.derive(passphrase, kdf)
    backup_id = str(uuid.uuid4())
    created_at = datetime.now(UTC).isoformat(timespec="seconds")

    audit_files = files.copy_tree(settings.audit_dir, ledger, "audit")
    console.print(f"audit checkpoints: {audit_files} files")

    db_kind = database.kind(settings.database_url)
    if db_kind == "sqlite":
        db_file = database.SQLITE_FILE
        revision = database.backup_sqlite(settings.database_url, ledger.path(db_file))
    else:
        db_file = database.PG_FILE
        revision = database.backup_postgres(settings.database_url, ledger.path(db_file))
    ledger.record(db_file, *sha256_file(ledger.path(db_file)))
    console.print(f"database ({db_kind}, schema revision {revision}): "
                  f"{ledger.files[db_file]['size']} bytes")

    spooled = files.copy_tree(settings.spool_dir, ledger, "spool", skip=SPOOL_SKIP)
    console.print(f"spool: {spooled} acknowledged instances not yet archived or refused")

    temporary = None
    client = _orthanc_client(settings)
    try:
        if not client.is_alive():
            from core.orthanc_process import start_orthanc

            console.print("Orthanc is not running: starting it for the backup")
            temporary = start_orthanc(settings)
        items = orthanc_archive.list_instances(client)
        with step(console, "Orthanc instances", len(items), "instances") as progress:
            listing = orthanc_archive.export_instances(client, ledger, progress.advance, items)
    except OrthancError as e:
        raise BackupError(f"Orthanc failed during the backup: {e}") from e
    finally:
        client.close()
        if temporary is not None:
            from core.orthanc_process import stop_process

            stop_process(temporary)
    instances = len(listing["instances"])

    config = _config_file()
    bundle, members = files.build_secrets_bundle(settings.secrets_dir, config)
    ledger.write_bytes(SECRETS_FILE, keys.encrypt(bundle, secrets_aad(backup_id)))
    console.print(f"secrets: {len(members)} files, encrypted")

    rules = settings.routing_rules_path()
    if rules.is_file():
        ledger.copy_file(rules, ROUTING_FILE)
    models = files.copy_tree(settings.models_dir, ledger, "models")

    info: dict[str, Any] = {
        "backup_id": backup_id,
        "created_at": created_at,
        "center_name": settings.center_name,
        "rdc_version": rdc_version(),
        "schema_revision": revision,
        "database": {"kind": db_kind, "file": db_file},
        "source": {"home": str(settings.home), "gateway_ae": settings.gateway_ae,
                   "shipped_models_dir": str(SHIPPED_DIR),
                   "config_file": str(config) if config else None,
                   "routing_rules": str(rules) if rules.is_file() else None},
        "orthanc": {"listing": orthanc_archive.LISTING, "instances": instances,
                    "deleted_during_backup": listing["deleted_during_backup"]},
        "secrets": {"file": SECRETS_FILE, "cipher": "aes-256-gcm", "members": members},
        "kdf": kdf.to_json(),
        "key_check": keys.key_check(),
        "counts": {"audit_files": audit_files, "spool_files": spooled, "model_files": models},
    }
    data = write(ledger, info, keys)
    summary = BackupSummary(dest, instances, len(ledger.files), ledger.total_bytes(), db_kind,
                            revision, time.monotonic() - started)
    return summary, hashlib.sha256(data).hexdigest()
