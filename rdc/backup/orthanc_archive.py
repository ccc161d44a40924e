"""Orthanc's archive in a backup: every instance's file as Orthanc holds it, with the
center's metadata on it, copied through Orthanc's REST API.

Why not copy Orthanc's index file and storage folder: Orthanc opens its SQLite index
with ``locking_mode=EXCLUSIVE``, so no other process can read it while Orthanc runs
(``sqlite3`` answers "database is locked"), and a PostgreSQL index would need a
second dump taken at the same instant.  Through the API, each instance is read
whole: Orthanc stores instances once and never changes them
(``OverwriteInstances: false``), so an instance copied is the instance archived,
whatever arrives meanwhile.  Each copy is checked against the MD5 Orthanc recorded
when it stored the file, so storage that rotted on disk fails the backup instead of
being copied silently.  An instance in the index whose file is gone from the storage
fails it too, naming the instance.

A restore posts each file to the new center's Orthanc, which gives it the same
Orthanc ID (a hash of its UIDs) and the same bytes, and puts the metadata back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.orthanc_client import (
    RECEIPT_METADATA,
    SOURCE_SITE_METADATA,
    OrthancClient,
    OrthancError,
    OrthancNotFound,
)
from rdc.backup import BackupCorrupt, BackupError
from rdc.backup.manifest import Ledger, check_relpath

LISTING = "orthanc/instances.json"
#: The center's own metadata on instances (declared in the generated Orthanc config).
USER_METADATA = (SOURCE_SITE_METADATA, RECEIPT_METADATA)
WORKERS = 4
PAGE = 500


@dataclass(frozen=True)
class ExportedInstance:
    id: str
    sop_instance_uid: str
    series: str
    file: str
    sha256: str
    size: int
    metadata: dict[str, str]


def _paged(client: OrthancClient, level: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = client.get(f"/{level}", params={"expand": "", "limit": str(PAGE),
                                                "since": str(since)}).json()
        if not isinstance(page, list):
            raise BackupError(f"Orthanc answered /{level} with {type(page).__name__}")
        out.extend(page)
        if len(page) < PAGE:
            return out
        since += len(page)


def _export_one(client: OrthancClient, root: Path, item: dict[str, Any],
                ) -> ExportedInstance | None:
    """Copy one instance; None if it was deleted from Orthanc while the backup ran."""
    inst_id = str(item["ID"])
    rel = f"orthanc/instances/{inst_id[:2]}/{inst_id}.dcm"
    try:
        expanded = client.get(f"/instances/{inst_id}/metadata", params={"expand": ""}).json()
        md5 = client.get(f"/instances/{inst_id}/attachments/dicom/md5").text.strip()
    except OrthancNotFound:
        return None
    target = root / check_relpath(rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    sha, check, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        with open(target, "wb") as f:
            for chunk in client.stream_instance_file(inst_id):
                sha.update(chunk)
                check.update(chunk)
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OrthancError as e:
        target.unlink(missing_ok=True)
        try:
            client.get(f"/instances/{inst_id}")
        except OrthancNotFound:
            return None  # deleted meanwhile: not part of the archive any more
        sop = item.get("MainDicomTags", {}).get("SOPInstanceUID")
        raise BackupError(
            f"instance {inst_id} (SOP {sop}) is in Orthanc's index but its file cannot be "
            f"read from Orthanc's storage (attachment {item.get('FileUuid')}): {e}; the "
            "archive is damaged, so no backup was written") from e
    if check.hexdigest() != md5:
        raise BackupError(f"instance {inst_id}: the file Orthanc serves has MD5 "
                          f"{check.hexdigest()} but Orthanc recorded {md5} when it stored it; "
                          "its storage is corrupted, so no backup was written")
    metadata = {k: str(v) for k, v in expanded.items() if k in USER_METADATA}
    return ExportedInstance(inst_id, str(item.get("MainDicomTags", {}).get("SOPInstanceUID", "")),
                            str(item.get("ParentSeries", "")), rel, sha.hexdigest(), size,
                            metadata)


def export_instances(client: OrthancClient, ledger: Ledger,
                     advance: Callable[[int], None], items: list[dict[str, Any]],
                     ) -> dict[str, Any]:
    """Copy ``items`` (from :func:`list_instances`) into the backup; returns the listing
    written to ``orthanc/instances.json``."""
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="backup-orthanc") as pool:
        results = []
        for exported in pool.map(lambda it: _export_one(client, ledger.root, it), items):
            if exported is not None:
                ledger.record(exported.file, exported.sha256, exported.size)
                results.append(exported)
            advance(1)
    series = {str(s["ID"]): str(s.get("ParentStudy", "")) for s in _paged(client, "series")}
    listing = {
        "instances": [{"id": e.id, "sop_instance_uid": e.sop_instance_uid, "series": e.series,
                       "study": series.get(e.series, ""), "file": e.file,
                       "metadata": e.metadata} for e in results],
        "deleted_during_backup": len(items) - len(results),
    }
    ledger.write_bytes(LISTING, json.dumps(listing, indent=1, sort_keys=True).encode())
    return listing


def list_instances(client: OrthancClient) -> list[dict[str, Any]]:
    return _paged(client, "instances")


def read_listing(root: Path) -> dict[str, Any]:
    try:
        listing = json.loads((root / LISTING).read_bytes())
    except (OSError, ValueError) as e:
        raise BackupCorrupt(f"{LISTING} cannot be read: {e}") from e
    if not isinstance(listing, dict) or not isinstance(listing.get("instances"), list):
        raise BackupCorrupt(f"{LISTING} lists no instances")
    return listing


def _import_one(client: OrthancClient, root: Path, entry: dict[str, Any]) -> int:
    data = (root / check_relpath(str(entry["file"]))).read_bytes()
    try:
        answer = client.upload_instance(data)
    except OrthancError as e:
        raise BackupError(f"Orthanc refused instance {entry['id']} from {entry['file']}: "
                          f"{e}") from e
    if answer.get("ID") != entry["id"] or answer.get("Status") != "Success":
        raise BackupError(f"Orthanc stored {entry['file']} as {answer.get('ID')} "
                          f"({answer.get('Status')}), expected a new {entry['id']}")
    for name, value in dict(entry.get("metadata") or {}).items():
        if name in USER_METADATA:
            client.set_metadata("instances", str(entry["id"]), name, str(value))
    return len(data)


def import_instances(client: OrthancClient, root: Path, listing: dict[str, Any],
                     advance: Callable[[int], None]) -> int:
    """Post every backed-up instance to an empty Orthanc; returns how many."""
    held = int(client.statistics().get("CountInstances", 0))
    if held:
        raise BackupError(f"the new center's Orthanc already holds {held} instances; a "
                          "restore needs an empty archive (a fresh home, and a fresh "
                          "RDC_ORTHANC_INDEX_URL database if the index is in PostgreSQL)")
    entries = list(listing["instances"])
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="restore-orthanc") as pool:
        for _ in pool.map(lambda e: _import_one(client, root, e), entries):
            advance(1)
    return len(entries)
