"""HTTP routes of the reading worklist, study views, cloud film links and the
turnaround dashboard.  Thin: authentication and schemas here, logic in
:mod:`viewer.worklist`, :mod:`viewer.studies`, :mod:`viewer.share`,
:mod:`viewer.dashboard`."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from core.errors import RDCError
from viewer import dashboard, share, studies, worklist
from viewer.deps import (
    CurrentUser,
    DatabaseDep,
    Manager,
    Reader,
    Releaser,
    Reporter,
    SessionDep,
    SettingsDep,
)
from viewer.schemas import (
    ShareIn,
    ShareOut,
    SitesOut,
    StudyOut,
    TurnaroundOut,
    WorkItemOut,
    WorklistOut,
)

router = APIRouter(tags=["worklist"])


@router.get("/api/worklist", response_model=WorklistOut,
            responses={400: {"description": "a malformed, altered or foreign cursor"}})
def get_worklist(s: SessionDep, user: Reader, settings: SettingsDep, site: str | None = None,
                 modality: str | None = None, status: str = "open", mine: bool = False,
                 page: Annotated[int, Query(ge=1)] = 1,
                 page_size: Annotated[int, Query(ge=1, le=200)] = 50,
                 cursor: str | None = None) -> object:
    """The prioritised worklist, one page: STAT, AI-critical, then time left.
    ``status`` is one of open (not signed), all, unread, claimed, reported, signed.

    Paging: ``page`` (offset), or ``cursor``: the ``next_cursor`` of the previous answer
    with the same filters, for the rows after it (keyset: as fast at any depth; ``page``
    is then only echoed).  A cursor that was altered or made for other filters is 400."""
    result = worklist.worklist_page(s, user, site=site, modality=modality, status=status,
                                    mine=mine, page=page, page_size=page_size,
                                    cursor=cursor or None,
                                    secret=worklist.cursor_secret(settings))
    return {"total": result.total, "page": page, "page_size": page_size,
            "items": [i.as_dict() for i in result.items], "next_cursor": result.next_cursor}


@router.get("/api/sites", response_model=SitesOut)
def get_sites(s: SessionDep, user: CurrentUser) -> object:
    """The sites the caller may see, ``[{id, name, enabled}]`` by name (the site filter)."""
    return {"sites": worklist.visible_sites(s, user)}


@router.post("/api/studies/{study_id}/claim", response_model=WorkItemOut)
def claim(study_id: int, s: SessionDep, user: Reporter) -> object:
    """Take a study to read; 409 when another reader holds it."""
    return worklist.claim(s, user, study_id).as_dict()


@router.post("/api/studies/{study_id}/release", response_model=WorkItemOut)
def release(study_id: int, s: SessionDep, user: Releaser) -> object:
    """Give a study back to the worklist."""
    return worklist.release(s, user, study_id).as_dict()


@router.get("/api/studies/{study_id}", response_model=StudyOut)
def open_study(study_id: int, s: SessionDep, settings: SettingsDep, user: Reader) -> object:
    """Series, AI findings and priors of a study (audited as a view)."""
    return studies.open_study(s, settings, user, study_id)


@router.post("/api/reports/{report_id}/share", status_code=201, tags=["cloud film"])
def create_share(report_id: int, body: ShareIn, request: Request, s: SessionDep,
                 user: Reader) -> ShareOut:
    """A cloud film link for the signed report (expiring, revocable)."""
    link = share.create_link(s, user, report_id, body.hours)
    return ShareOut(id=link.id, url=str(request.url_for("open_share", token=link.token)),
                    expires_at=link.expires_at)


@router.delete("/api/share/{link_id}", status_code=204, tags=["cloud film"],
               response_class=Response)
def revoke_share(link_id: int, s: SessionDep, user: Reader) -> Response:
    """Revoke a cloud film link at once."""
    share.revoke_link(s, user, link_id)
    return Response(status_code=204)


def _client(request: Request) -> str:
    return f"{request.client.host if request.client else ''} " \
           f"{request.headers.get('user-agent', '')}"


@router.get("/share/{token}", response_class=HTMLResponse, tags=["cloud film"],
            name="open_share")
def open_share(token: str, request: Request, db: DatabaseDep,
               settings: SettingsDep) -> HTMLResponse:
    """The public cloud film page (no login: the token is the credential)."""
    try:
        shared = share.open_shared(db, token, _client(request))
    except RDCError as e:
        return HTMLResponse(f"<!doctype html><meta name=viewport content='width=device-width'>"
                            f"<p>{html.escape(str(e))}</p>", status_code=e.http_status)
    images = [f"/share/{token}/images/{i}"
              for i, _ in enumerate(share.key_images(settings, shared))]
    page = share.render_page(shared, images, settings.center_name)
    return HTMLResponse(page, headers={"Cache-Control": "no-store",
                                       "Referrer-Policy": "no-referrer",
                                       "Content-Security-Policy": "default-src 'self'; "
                                       "style-src 'unsafe-inline'; frame-ancestors 'none'"})


@router.get("/share/{token}/images/{index}", tags=["cloud film"], response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def share_image(token: str, index: int, request: Request, db: DatabaseDep,
                settings: SettingsDep) -> Response:
    """One key image of a shared report, rendered by Orthanc."""
    shared = share.open_shared(db, token, _client(request))
    png = share.key_image_png(settings, shared, index)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/api/dashboard/turnaround", tags=["dashboard"], response_model=TurnaroundOut)
def turnaround(s: SessionDep, user: Manager,
               days: Annotated[int, Query(ge=1, le=365)] = 30) -> object:
    """Percentiles of each stage's duration per site and modality."""
    return dashboard.turnaround(s, user, days)


@router.get("/api/dashboard/turnaround.png", tags=["dashboard"], response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def turnaround_png(s: SessionDep, user: Manager,
                   days: Annotated[int, Query(ge=1, le=365)] = 30) -> Response:
    """The same as a chart."""
    data = dashboard.turnaround(s, user, days)
    s.commit()  # drawn with no transaction (and so no SQLite write lock) held
    return Response(dashboard.chart_png(data), media_type="image/png")
