"""``rdc restore SRC``: rebuild a center from a backup in a fresh ``RDC_HOME``.

Nothing is written before everything is checked: the passphrase (a key-check value),
the manifest's seal, every file's size and SHA-256, the encrypted secrets, an empty
home and an empty target database.  Then the secrets, the configuration, the
database, the model files, the audit checkpoints, the spool and the routing rules
are put in place, Orthanc is started in the new home and every instance is posted
back (same Orthanc IDs, same bytes, same metadata), and the restore is audited in the
restored chain.

While it runs, the home holds a ``RESTORE-INCOMPLETE`` file; a restore that fails
leaves it there, so a half-restored home is never mistaken for a center.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    TomlConfigSettingsSource,
)
from rich.console import Console
from sqlalchemy import select, update

from core import audit
from core.db import get_database
from core.errors import ConfigurationError
from core.models import AIModel, Instance, WebSession
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import Settings
from core.states import InstanceState
from rdc.backup import BackupCorrupt, BackupError, database, files, manifest, orthanc_archive
from rdc.backup.create import ROUTING_FILE, SECRETS_FILE, secrets_aad
from rdc.backup.progress import step
from rdc.backup.sealing import BackupKeys, KdfParams

MARKER = "RESTORE-INCOMPLETE"


@dataclass
class RestoreSummary:
    home: Path
    instances: int
    database: str
    schema_revision: str
    backup_created_at: str
    center_name: str
    reconciled: int = 0
    sessions_ended: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _check_home(home: Path) -> None:
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        hint = (" (it holds a RESTORE-INCOMPLETE marker: an earlier restore failed; remove "
                "the folder, and empty the target database, before trying again)"
                if (home / MARKER).exists() else "")
        raise BackupError(f"RDC_HOME {home} is not empty{hint}; a restore rebuilds a center "
                          "only in a fresh home, never over an existing one")


def _settings_with_config(config: Path) -> Settings:
    """The settings the restored center will run with: the environment, then the
    backed-up ``rdc.toml`` (which will be the new home's)."""

    class _Restored(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings,
                    TomlConfigSettingsSource(settings_cls, toml_file=config))

    try:
        return _Restored()
    except ValidationError as e:
        raise ConfigurationError(f"the backed-up rdc.toml with this environment is not a "
                                 f"valid configuration: {e}") from e


def _target_settings(settings: Settings, config: bytes | None) -> Settings:
    if config is None or os.environ.get("RDC_CONFIG"):
        return settings
    with tempfile.TemporaryDirectory(prefix="rdc-restore-") as tmp:
        path = Path(tmp) / "rdc.toml"
        path.write_bytes(config)
        target = _settings_with_config(path)
    if target.home != settings.home:
        raise ConfigurationError(f"the backed-up rdc.toml sets home {target.home}, but the "
                                 f"restore goes to RDC_HOME {settings.home}; remove 'home' "
                                 "from it (the home comes from the environment only)")
    return target


def _check_database_target(manifest_db: dict[str, Any], target: Settings) -> str:
    backed_up = str(manifest_db.get("kind"))
    wanted = database.kind(target.database_url)
    if backed_up != wanted:
        hint = ("set RDC_DATABASE_URL to an empty PostgreSQL database"
                if backed_up == "postgresql" else "leave RDC_DATABASE_URL unset (SQLite)")
        raise BackupError(f"this backup holds a {backed_up} database but the restore "
                          f"target is {wanted}: {hint}")
    problem = (database.sqlite_target_problem(target.database_url) if wanted == "sqlite"
               else database.postgres_target_problem(target.database_url))
    if problem:
        raise BackupError(f"{problem}: a restore writes only into an empty database")
    return wanted


def restore_backup(settings: Settings, src: Path, passphrase: str,
                   console: Console) -> RestoreSummary:
    started = time.monotonic()
    src = src.expanduser().absolute()
    _check_home(settings.home)
    info, data, seal = manifest.read(src)
    keys = BackupKeys.derive(passphrase, KdfParams.from_json(info.get("kdf")))
    keys.check(str(info.get("key_check", "")))
    keys.check_manifest(data, seal)
    listed: dict[str, Any] = info["files"]
    total = sum(int(e.get("size", 0)) for e in listed.values() if isinstance(e, dict))
    with step(console, "verifying the backup", total, "bytes") as progress:
        manifest.verify_files(src, listed, progress.advance)
    console.print(f"backup verified: {len(listed)} files, every SHA-256 matches")
    bundle = files.read_secrets_bundle(keys.decrypt(
        (src / SECRETS_FILE).read_bytes(), secrets_aad(str(info["backup_id"])), SECRETS_FILE))
    listing = orthanc_archive.read_listing(src)
    expected = int(dict(info.get("orthanc") or {}).get("instances", -1))
    if len(listing["instances"]) != expected:
        raise BackupCorrupt(f"{orthanc_archive.LISTING} lists {len(listing['instances'])} "
                            f"instances but the manifest counts {expected}")
    target = _target_settings(settings, bundle.config)
    db_info = dict(info.get("database") or {})
    db_kind = _check_database_target(db_info, target)
    from core.orthanc_process import check_installed

    check_installed(target)

    home = target.home
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text(f"restore of {src} started; not a usable center until this "
                               "file is gone\n")
    summary = RestoreSummary(home, 0, db_kind, str(info.get("schema_revision", "")),
                             str(info.get("created_at", "")), str(info.get("center_name", "")))
    files.write_secrets(bundle, target.secrets_dir)
    if bundle.config is not None:
        if os.environ.get("RDC_CONFIG"):
            (home / "rdc.toml.from-backup").write_bytes(bundle.config)
            summary.warnings.append(f"RDC_CONFIG is set, so the backed-up configuration was "
                                    f"kept aside as {home / 'rdc.toml.from-backup'}")
        else:
            fd = os.open(home / "rdc.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(bundle.config)
    target.ensure_dirs()

    db_file = src / manifest.check_relpath(str(db_info.get("file")))
    if db_kind == "sqlite":
        database.restore_sqlite(db_file, target.database_url)
    else:
        database.restore_postgres(db_file, target.database_url)
    console.print(f"database restored ({db_kind}, schema revision {summary.schema_revision})")

    files.restore_tree(src, listed, "models", target.models_dir)
    files.restore_tree(src, listed, "audit", target.audit_dir)
    spooled = files.restore_tree(src, listed, "spool", target.spool_dir)
    _restore_routing_rules(src, listed, target, summary)

    _restore_orthanc(target, src, listing, console, summary)
    if spooled:
        console.print(f"spool: {spooled} acknowledged instances put back; the gateway "
                      "archives them when it starts")

    _fix_up_database(target, info, listing, summary)
    (home / MARKER).unlink()
    summary.seconds = time.monotonic() - started
    return summary


def _restore_routing_rules(src: Path, listed: dict[str, Any], target: Settings,
                           summary: RestoreSummary) -> None:
    if ROUTING_FILE not in listed:
        return
    rules = (src / ROUTING_FILE).read_bytes()
    effective = target.routing_rules_path()
    if effective.is_file() and effective.read_bytes() == rules:
        return
    copy = target.home / "routing_rules.toml"
    copy.write_bytes(rules)
    summary.warnings.append(
        f"the backed-up routing rules differ from the ones this center would use "
        f"({effective}); they were restored to {copy}: set RDC_ROUTING_RULES={copy} (or "
        "routing_rules in rdc.toml) to route as before")


def _restore_orthanc(target: Settings, src: Path, listing: dict[str, Any], console: Console,
                     summary: RestoreSummary) -> None:
    from core.orthanc_process import start_orthanc, stop_process

    console.print("starting Orthanc in the new home to load the archive")
    proc = start_orthanc(target)
    try:
        with OrthancClient.from_settings(target, retries=2) as client, \
                step(console, "Orthanc instances", len(listing["instances"]),
                     "instances") as progress:
            summary.instances = orthanc_archive.import_instances(client, src, listing,
                                                                 progress.advance)
    except OrthancError as e:
        raise BackupError(f"Orthanc failed while the archive was restored: {e}") from e
    finally:
        stop_process(proc)
    console.print(f"Orthanc: {summary.instances} instances restored")


def _fix_up_database(target: Settings, info: dict[str, Any], listing: dict[str, Any],
                     summary: RestoreSummary) -> None:
    """What the new home changes in the restored database, and the restore's audit record.

    Model folders are recorded by absolute path: those under the old home move to the
    new one, the shipped ones to this installation's package.  A receipt the copied
    database calls spooled, whose file was archived between the database snapshot and
    the spool copy, is marked stored (it is in the restored Orthanc) instead of waiting
    forever for a file that is not coming.  Web sessions recorded in the backup are
    ended.
    """
    from ai_models.manifest import load_manifest, verify_weights
    from ai_models.registry import SHIPPED_DIR
    from pacs_gateway.receipts import mark_stored

    source = dict(info.get("source") or {})
    old_home = Path(str(source.get("home", "")))
    old_shipped = Path(str(source.get("shipped_models_dir", "")))
    by_sop = {str(e["sop_instance_uid"]): e for e in listing["instances"]}
    moved: list[str] = []
    with get_database(target.database_url).session() as s:
        for row in s.scalars(select(AIModel).order_by(AIModel.id)):
            path = Path(row.path)
            if path.is_relative_to(old_home):
                new = target.home / path.relative_to(old_home)
            elif path.is_relative_to(old_shipped):
                new = SHIPPED_DIR / path.relative_to(old_shipped)
            else:
                new = path
            if new != path:
                row.path = str(new)
                moved.append(f"{row.name}@{row.version}")
            try:
                verify_weights(new, load_manifest(new))
            except Exception as e:
                summary.warnings.append(f"model {row.name}@{row.version}: {e}")
        for inst in s.scalars(select(Instance).where(Instance.state == InstanceState.SPOOLED)):
            if (target.spool_dir / "ready" / f"{inst.id}.dcm").exists():
                continue
            entry = by_sop.get(inst.sop_instance_uid)
            if entry is not None and mark_stored(
                    s, inst.id, str(entry["id"]), inst.study_id, str(entry["study"]) or None,
                    note="restored from backup: archived while the backup was taken"):
                summary.reconciled += 1
        # Sessions from before the backup end: whoever signed out or was disabled since
        # must not be let back in by the restore.  Everyone signs in again.
        ended = s.execute(update(WebSession).where(WebSession.revoked_at.is_(None))
                          .values(revoked_at=datetime.now(UTC)))
        summary.sessions_ended = int(getattr(ended, "rowcount", 0) or 0)
        audit.append(s, actor="cli", action="backup.restore", object_type="backup",
                     object_id=str(info.get("backup_id")),
                     detail={"created_at": summary.backup_created_at,
                             "center_name": summary.center_name,
                             "source_home": str(old_home), "home": str(target.home),
                             "rdc_version": info.get("rdc_version"),
                             "schema_revision": summary.schema_revision,
                             "instances": summary.instances, "models_moved": moved,
                             "receipts_reconciled": summary.reconciled,
                             "web_sessions_ended": summary.sessions_ended,
                             "warnings": summary.warnings})
