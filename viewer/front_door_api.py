"""``GET /api/admin/front-door``: what the DICOM front door acknowledged but did not archive.

An instance Orthanc refuses after the gateway acknowledged it (receipt ``failed``) is
the one loss the sender cannot see: it was told 0x0000.  ``rdc status`` lists them on
the gateway's machine; this route shows them to administrators in the web app (the
"Front door" screen of the admin area), with the spool folders an operator acts on:
``ready`` (waiting for Orthanc), ``failed`` (refused by Orthanc, kept for a human) and
``unacknowledged`` (found after a crash with no receipt, never acknowledged).

Administrators read no patient data, so the answer names instances by site, receipt and
UIDs only, never by patient.  Every view is audited.  The spool counts are those of
this machine's ``RDC_HOME``: the web app must run beside the gateway for them to mean
anything (``rdc up`` does so); the receipts come from the shared database either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from sqlalchemy import func, select

from core import audit
from core.db import get_database
from core.models import Instance
from core.settings import get_settings
from core.states import InstanceState
from core.stats import failed_instances, site_status, spool_counts
from viewer.auth import UserContext, require_roles

router = APIRouter(prefix="/api/admin", tags=["admin"])
Admin = Annotated[UserContext, Depends(require_roles("admin"))]
#: Listed files of ``spool/unacknowledged`` at most (the count is always complete).
MAX_FILES = 200


class FailedInstanceOut(BaseModel):
    receipt_id: str
    site_id: str
    study_uid: str
    sop_instance_uid: str
    received_at: datetime
    error: str
    #: The refused file is still in ``spool/failed`` for someone to look at.
    file_kept: bool


class SiteCountsOut(BaseModel):
    site_id: str
    name: str
    enabled: bool
    received: int
    spooled: int
    stored: int
    failed: int


class SpoolFileOut(BaseModel):
    name: str
    size_bytes: int
    modified_at: datetime


class FrontDoorOut(BaseModel):
    failed_total: int
    failed: list[FailedInstanceOut]
    spool: dict[str, int]
    unacknowledged_files: list[SpoolFileOut]
    sites: list[SiteCountsOut]
    checked_at: datetime


def _spool_files(folder: str, limit: int) -> list[SpoolFileOut]:
    d = get_settings().spool_dir / folder
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:
            continue  # moved away meanwhile
        if p.is_file():
            out.append(SpoolFileOut(name=p.name, size_bytes=st.st_size,
                                    modified_at=datetime.fromtimestamp(st.st_mtime, UTC)))
    out.sort(key=lambda f: f.modified_at, reverse=True)
    return out[:limit]


@router.get("/front-door")
def front_door(actor: Admin, response: Response,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FrontDoorOut:
    """Instances acknowledged to a sender but refused by Orthanc (newest first), the
    spool folders, and per-site counts.  Failed instances never count towards a study's
    completeness; this is where somebody sees them."""
    settings = get_settings()
    failed_dir = settings.spool_dir / "failed"
    spool = spool_counts(settings.spool_dir)
    with get_database(settings.database_url).session() as s:
        total = int(s.scalar(select(func.count()).select_from(Instance)
                             .where(Instance.state == InstanceState.FAILED)) or 0)
        failed = [FailedInstanceOut(receipt_id=f.receipt_id, site_id=f.site_id,
                                    study_uid=f.study_uid, sop_instance_uid=f.sop_instance_uid,
                                    received_at=f.received_at, error=f.error,
                                    file_kept=(failed_dir / f"{f.receipt_id}.dcm").is_file())
                  for f in failed_instances(s, limit)]
        sites = [SiteCountsOut(site_id=r.site_id, name=r.name, enabled=r.enabled,
                               received=r.received, spooled=r.spooled, stored=r.stored,
                               failed=r.failed) for r in site_status(s)]
        audit.append(s, actor=actor.username, action="admin.front_door_viewed",
                     object_type="front_door", object_id="gateway",
                     detail={"failed_total": total, "spool": spool})
    response.headers["Cache-Control"] = "no-store"
    return FrontDoorOut(failed_total=total, failed=failed, spool=spool,
                        unacknowledged_files=_spool_files("unacknowledged", MAX_FILES),
                        sites=sites, checked_at=datetime.now(UTC))
