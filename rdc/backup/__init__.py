"""Backup and restore of a whole center: ``rdc backup DEST`` and ``rdc restore SRC``.

A backup is a folder with a manifest (SHA-256 and size of every file, sealed with a
key derived from the backup passphrase), the database (SQLite online backup or a
``pg_dump`` archive), every Orthanc instance as Orthanc holds it, the center's
secrets encrypted under the passphrase, the routing rules, the model registry's
files, the audit checkpoints and the spool's acknowledged instances.

The modules: :mod:`.sealing` (passphrase, keys, encryption, the manifest's seal),
:mod:`.manifest` (what the folder holds and its verification), :mod:`.database`
(SQLite and PostgreSQL), :mod:`.orthanc_archive` (Orthanc's instances over its REST
API), :mod:`.files` (copied folders and the secrets bundle), :mod:`.create` and
:mod:`.restore` (the two procedures).
"""

from __future__ import annotations

from core.errors import RDCError

#: Written into every manifest; a restore refuses any other format.
FORMAT = "rdc-backup/1"


class BackupError(RDCError):
    """A backup could not be taken, or a backup cannot be restored as it is."""

    exit_code = 1


class BackupCorrupt(BackupError):
    """A file of the backup is missing or differs from the manifest."""

    exit_code = 5


class WrongPassphrase(BackupError):
    """The passphrase does not open this backup."""

    exit_code = 6
