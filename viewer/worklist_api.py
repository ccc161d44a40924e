"""HTTP routes of the reading worklist, study views, cloud film links and the
turnaround dashboard.  Thin: authentication and schemas here, logic in
:mod:`viewer.worklist`, :mod:`viewer.studies`, :mod:`viewer.share`,
:mod:`viewer.dashboard`."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from core import audit
from core.db import Database, get_database
from core.errors import NotFound, RDCError
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import get_settings
from viewer import dashboard, share, studies, worklist
from viewer.auth import CurrentUser, Reader, UserContext, require_roles
from viewer.worklist import READER_ROLES

router = APIRouter(tags=["worklist"])
#: The turnaround dashboard: durations per site and modality, no patient data.
Manager = Annotated[UserContext, Depends(require_roles("admin", *READER_ROLES))]
#: Claiming: the roles that read and report (not the county clerk, not admin).
Reporter = Annotated[UserContext, Depends(require_roles(*READER_ROLES))]
#: Releasing: a reporter gives a study back; an admin frees one a reader left held.
Releaser = Annotated[UserContext, Depends(require_roles("admin", *READER_ROLES))]


def _db() -> Database:
    return get_database(get_settings().database_url)


@router.get("/api/worklist")
def get_worklist(user: Reader, site: str | None = None, modality: str | None = None,
                 status: str = "open", mine: bool = False,
                 page: Annotated[int, Query(ge=1)] = 1,
                 page_size: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """The prioritised worklist, one page: STAT, AI-critical, then time left."""
    with _db().session() as s:
        total, items = worklist.query_worklist(s, user, site=site, modality=modality,
                                               status=status, mine=mine, page=page,
                                               page_size=page_size)
        return {"total": total, "page": page, "page_size": page_size,
                "items": [i.as_dict() for i in items]}


@router.get("/api/sites")
def get_sites(user: CurrentUser) -> dict[str, Any]:
    """The sites the caller may see, ``[{id, name, enabled}]`` by name (the site filter)."""
    with _db().session() as s:
        return {"sites": worklist.visible_sites(s, user)}


@router.post("/api/studies/{study_id}/claim")
def claim(study_id: int, user: Reporter) -> dict[str, Any]:
    """Take a study to read; 409 when another reader holds it."""
    with _db().session() as s:
        return worklist.claim(s, user, study_id).as_dict()


@router.post("/api/studies/{study_id}/release")
def release(study_id: int, user: Releaser) -> dict[str, Any]:
    """Give a study back to the worklist."""
    with _db().session() as s:
        return worklist.release(s, user, study_id).as_dict()


@router.get("/api/studies/{study_id}")
def open_study(study_id: int, user: Reader) -> dict[str, Any]:
    """Series, AI findings and priors of a study (audited as a view)."""
    with _db().session() as s:
        return studies.open_study(s, get_settings(), user, study_id)


class ShareIn(BaseModel):
    hours: float = Field(default=72, gt=0, le=24 * 90)


@router.post("/api/reports/{report_id}/share", status_code=201, tags=["cloud film"])
def create_share(report_id: int, body: ShareIn, request: Request,
                 user: Reader) -> dict[str, Any]:
    """A cloud film link for the signed report (expiring, revocable)."""
    with _db().session() as s:
        link = share.create_link(s, user, report_id, body.hours)
    return {"id": link.id, "url": str(request.url_for("open_share", token=link.token)),
            "expires_at": link.expires_at}


@router.delete("/api/share/{link_id}", status_code=204, tags=["cloud film"])
def revoke_share(link_id: int, user: Reader) -> Response:
    """Revoke a cloud film link at once."""
    with _db().session() as s:
        share.revoke_link(s, user, link_id)
    return Response(status_code=204)


def _opened(token: str, request: Request) -> share.SharedReport:
    client = f"{request.client.host if request.client else ''} " \
             f"{request.headers.get('user-agent', '')}"
    try:
        with _db().session() as s:
            return share.open_link(s, token, client)
    except share.LinkGone:
        with _db().session() as s:  # the refusal is audited too
            audit.append(s, actor="share:anonymous", action="share.refused",
                         object_type="share_link", object_id=token[:8] + "…")
        raise


def _key_images(shared: share.SharedReport) -> list[str]:
    """Orthanc IDs of a few key images: the middle instance of each image series."""
    with OrthancClient.from_settings(get_settings(), retries=1) as client:
        series = studies.series_of(client, shared.study)
        picks = [sr["instances"][len(sr["instances"]) // 2] for sr in series
                 if sr["kind"] == "image" and sr["instances"]][:4]
        return [oid for uid in picks if (oid := client.find_instance(uid))]


@router.get("/share/{token}", response_class=HTMLResponse, tags=["cloud film"],
            name="open_share")
def open_share(token: str, request: Request) -> HTMLResponse:
    """The public cloud film page (no login: the token is the credential)."""
    try:
        shared = _opened(token, request)
    except RDCError as e:
        return HTMLResponse(f"<!doctype html><meta name=viewport content='width=device-width'>"
                            f"<p>{html.escape(str(e))}</p>", status_code=e.http_status)
    images = [f"/share/{token}/images/{i}" for i, _ in enumerate(_key_images(shared))]
    page = share.render_page(shared, images, get_settings().center_name)
    return HTMLResponse(page, headers={"Cache-Control": "no-store",
                                       "Referrer-Policy": "no-referrer",
                                       "Content-Security-Policy": "default-src 'self'; "
                                       "style-src 'unsafe-inline'; frame-ancestors 'none'"})


@router.get("/share/{token}/images/{index}", tags=["cloud film"])
def share_image(token: str, index: int, request: Request) -> Response:
    """One key image of a shared report, rendered by Orthanc."""
    shared = _opened(token, request)
    ids = _key_images(shared)
    if not 0 <= index < len(ids):
        raise NotFound("no such image")
    try:
        with OrthancClient.from_settings(get_settings(), retries=1) as client:
            png = client.get(f"/instances/{ids[index]}/preview", accept="image/png").content
    except OrthancError as e:
        raise NotFound("the image is not available") from e
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/api/dashboard/turnaround", tags=["dashboard"])
def turnaround(user: Manager, days: Annotated[int, Query(ge=1, le=365)] = 30,
               ) -> dict[str, Any]:
    """Percentiles of each stage's duration per site and modality."""
    with _db().session() as s:
        return dashboard.turnaround(s, user, days)


@router.get("/api/dashboard/turnaround.png", tags=["dashboard"])
def turnaround_png(user: Manager, days: Annotated[int, Query(ge=1, le=365)] = 30,
                   ) -> Response:
    """The same as a chart."""
    with _db().session() as s:
        data = dashboard.turnaround(s, user, days)
    return Response(dashboard.chart_png(data), media_type="image/png")
