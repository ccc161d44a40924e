"""The Orthanc configuration the center generates for itself.

Orthanc 1.10 (Debian bookworm) cannot bind to one address, so "loopback
only" is enforced by Orthanc's own switches: HTTP refuses non-local clients
(``RemoteAccessAllowed: false``) and requires a password, and the DICOM port
refuses every peer except the gateway's registered AE on 127.0.0.1.  Sites on
other hosts must firewall the Orthanc ports; only the gateway port is public.

The gateway hands instances to Orthanc over its REST API, so over DICOM it needs no
more than C-ECHO and C-STORE (a fallback and a health check); nothing in the center
queries or retrieves from Orthanc over DICOM.  The gateway modality therefore gets
exactly those two: a local process that presents the gateway's AE title cannot
C-FIND, C-MOVE, C-GET or ask for worklists or storage commitment.  Orthanc enables
every ``Allow*`` option that is not given, so each one is spelt out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.orthanc_client import (
    RECEIPT_METADATA,
    RECEIPT_METADATA_INDEX,
    SOURCE_SITE_METADATA,
    SOURCE_SITE_METADATA_INDEX,
)
from core.settings import Settings

PLUGINS = ("libOrthancDicomWeb.so", "libOrthancWSI.so")
POSTGRES_INDEX_PLUGIN = "libOrthancPostgreSQLIndex.so"


def build_config(settings: Settings) -> dict[str, Any]:
    user, password = settings.orthanc_credentials()
    storage = settings.orthanc_storage_dir or settings.orthanc_dir / "storage"
    plugins = [str(settings.orthanc_plugins_dir / p) for p in PLUGINS]
    cfg: dict[str, Any] = {
        "Name": f"{settings.center_name} archive",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(settings.orthanc_dir / "index"),
        "TemporaryDirectory": str(settings.orthanc_dir / "tmp"),
        "StorageCompression": False,
        "SyncStorageArea": True,
        "OverwriteInstances": False,
        "Plugins": plugins,
        "HttpServerEnabled": True,
        "HttpPort": settings.orthanc_http_port,
        "RemoteAccessAllowed": settings.orthanc_remote_access,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "HttpDescribeErrors": True,
        "HttpThreadsCount": 50,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "OrthancExplorerEnabled": True,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": settings.orthanc_aet,
        "DicomPort": settings.orthanc_dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "UnknownSopClassAccepted": False,
        "DicomThreadsCount": 4,
        "DicomModalities": {
            "gateway": {
                "AET": settings.gateway_ae,
                "Host": "127.0.0.1",
                "Port": settings.gateway_port,
                "AllowEcho": True,
                "AllowStore": True,
                "AllowFind": False,
                "AllowFindWorklist": False,
                "AllowMove": False,
                "AllowGet": False,
                "AllowStorageCommitment": False,
                "AllowTranscoding": False,
            }
        },
        "DicomModalitiesInDatabase": False,
        "UserMetadata": {
            SOURCE_SITE_METADATA: SOURCE_SITE_METADATA_INDEX,
            RECEIPT_METADATA: RECEIPT_METADATA_INDEX,
        },
        "MetricsEnabled": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                     "WadoRoot": "/wado", "Ssl": False},
    }
    if settings.orthanc_index_url:
        # Several Orthanc instances share one PostgreSQL index; storage stays per home
        # unless it is a shared volume.
        plugins.append(str(settings.orthanc_plugins_dir / POSTGRES_INDEX_PLUGIN))
        cfg["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "ConnectionUri": settings.orthanc_index_url,
            "Lock": False,
        }
    return cfg


def write_config(settings: Settings) -> Path:
    """Write the configuration (owner-only, it holds a password) and return its path."""
    settings.ensure_dirs()
    for sub in ("storage", "index", "tmp"):
        (settings.orthanc_dir / sub).mkdir(parents=True, exist_ok=True)
    if settings.orthanc_storage_dir is not None:
        settings.orthanc_storage_dir.mkdir(parents=True, exist_ok=True)
    path = settings.orthanc_dir / "orthanc.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(build_config(settings), indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
