"""``rdc backup`` and ``rdc restore``: the commands over :mod:`rdc.backup`.

The passphrase comes from ``--passphrase-file``, ``RDC_BACKUP_PASSPHRASE`` or a
prompt, never from an option value, which every local user could read in ``ps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.errors import RDCError
from rdc.console import console, fail
from rdc.console import load_settings as _settings

PassFile = Annotated[Path | None, typer.Option(
    "--passphrase-file", dir_okay=False,
    help="File holding the backup passphrase (else RDC_BACKUP_PASSPHRASE, else asked).")]


def backup(
    dest: Annotated[Path, typer.Argument(
        help="New (or empty) folder for the backup, on another disk than RDC_HOME.")],
    passphrase_file: PassFile = None,
) -> None:
    """Back up the center (a consistent snapshot; it may keep running).

    Database, Orthanc's archive, the CA and other secrets (encrypted with a
    passphrase), routing rules, model registry files and audit checkpoints."""
    from rdc.backup.create import create_backup
    from rdc.backup.sealing import read_passphrase

    s = _settings()
    try:
        passphrase = read_passphrase(passphrase_file, confirm=True)
        summary = create_backup(s, dest, passphrase, console)
    except RDCError as e:
        raise fail(e) from e
    console.print(f"backup written to {summary.dest}: {summary.instances} instances, "
                  f"{summary.files} files, {summary.bytes / 1e6:.1f} MB, database "
                  f"{summary.database} at schema revision {summary.schema_revision}, in "
                  f"{summary.seconds:.1f} s")


def restore(
    src: Annotated[Path, typer.Argument(help="A folder written by `rdc backup`.")],
    passphrase_file: PassFile = None,
) -> None:
    """Rebuild a center from a backup in a fresh RDC_HOME.

    For PostgreSQL, into the empty database RDC_DATABASE_URL names.  Every file is
    verified against the sealed manifest before anything is written."""
    from rdc.backup.restore import restore_backup
    from rdc.backup.sealing import read_passphrase

    s = _settings()
    try:
        passphrase = read_passphrase(passphrase_file, confirm=False)
        summary = restore_backup(s, src, passphrase, console)
    except RDCError as e:
        raise fail(e) from e
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"restored {summary.center_name!r} (backup of {summary.backup_created_at}) "
                  f"into {summary.home}: {summary.instances} instances, database "
                  f"{summary.database} at schema revision {summary.schema_revision}"
                  f"{f', {summary.reconciled} receipts reconciled' if summary.reconciled else ''}"
                  f", in {summary.seconds:.1f} s.  Next: `rdc audit verify`, then `rdc up`.")
