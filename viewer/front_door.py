"""What the DICOM front door acknowledged but did not archive, for administrators.

An instance Orthanc refuses after the gateway acknowledged it (receipt ``failed``) is
the one loss the sender cannot see: it was told 0x0000.  ``rdc status`` lists them on
the gateway's machine; :func:`front_door` shows them in the web app (the "Front door"
screen of the admin area, ``GET /api/admin/front-door``), with the spool folders an
operator acts on: ``ready`` (waiting for Orthanc), ``failed`` (refused by Orthanc, kept
for a human) and ``unacknowledged`` (found after a crash with no receipt, never
acknowledged).

Administrators read no patient data, so the answer names instances by site, receipt and
UIDs only, never by patient.  Every view is audited.  The spool counts are those of
this machine's ``RDC_HOME``: the web app must run beside the gateway for them to mean
anything (``rdc up`` does so); the receipts come from the shared database either way.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.models import Instance
from core.settings import Settings
from core.states import InstanceState
from core.stats import failed_instances, site_status, spool_counts
from viewer.schemas import FailedInstanceOut, FrontDoorOut, SiteCountsOut, SpoolFileOut

#: Listed files of ``spool/unacknowledged`` at most (the count is always complete).
MAX_FILES = 200


def _spool_files(settings: Settings, folder: str, limit: int) -> list[SpoolFileOut]:
    d = settings.spool_dir / folder
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


def front_door(s: Session, settings: Settings, actor: str, limit: int) -> FrontDoorOut:
    """Instances acknowledged to a sender but refused by Orthanc (newest first, ``limit``
    of them), the spool folders, and per-site counts; audited as a view by ``actor``."""
    failed_dir = settings.spool_dir / "failed"
    spool = spool_counts(settings.spool_dir)
    total = int(s.scalar(select(func.count()).select_from(Instance)
                         .where(Instance.state == InstanceState.FAILED)) or 0)
    failed = [FailedInstanceOut(receipt_id=f.receipt_id, site_id=f.site_id,
                                study_uid=f.study_uid, sop_instance_uid=f.sop_instance_uid,
                                received_at=f.received_at, error=f.error,
                                file_kept=(failed_dir / f"{f.receipt_id}.dcm").is_file())
              for f in failed_instances(s, limit)]
    sites = [SiteCountsOut.model_validate(r) for r in site_status(s)]
    audit.append(s, actor=actor, action="admin.front_door_viewed",
                 object_type="front_door", object_id="gateway",
                 detail={"failed_total": total, "spool": spool})
    return FrontDoorOut(failed_total=total, failed=failed, spool=spool,
                        unacknowledged_files=_spool_files(settings, "unacknowledged",
                                                          MAX_FILES),
                        sites=sites, checked_at=datetime.now(UTC))
