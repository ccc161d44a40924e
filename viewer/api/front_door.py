"""``GET /api/admin/front-door``: what the DICOM front door acknowledged but did not
archive (:mod:`viewer.front_door`), for administrators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from viewer import front_door as service
from viewer.deps import Admin, SessionDep, SettingsDep
from viewer.schemas import FrontDoorOut

router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.get("/front-door")
def front_door(s: SessionDep, settings: SettingsDep, actor: Admin, response: Response,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FrontDoorOut:
    """Instances acknowledged to a sender but refused by Orthanc (newest first), the
    spool folders, and per-site counts.  Failed instances never count towards a study's
    completeness; this is where somebody sees them."""
    out = service.front_door(s, settings, actor.username, limit)
    response.headers["Cache-Control"] = "no-store"
    return out
