"""HTTP routes of the pathology center (cases, slides, tiles, annotations, consults).

Thin: roles here, everything else in :mod:`viewer.pathology_views` (sites, consults,
audit) and :mod:`viewer.pathology_tiles` (Orthanc's WSI plugin).  Pathologists read,
claim, annotate, consult and sign; a county account (``site_user``) looks at its own
site's cases read-only; an administrator looks at every site.  Another site's ids
answer 404.  State-changing routes need the session's CSRF header
(:func:`viewer.auth.session_user`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response

from viewer import pathology_views as views
from viewer.auth import UserContext, require_roles
from viewer.deps import DatabaseDep, SessionDep, SettingsDep
from viewer.pathology_schemas import (
    AiOverlayOut,
    AnnotationsIn,
    AnnotationsOut,
    AnnotationsSavedOut,
    AnswerIn,
    CallIn,
    CallOut,
    CaseDetail,
    CaseItem,
    CaseListOut,
    CaseSignedOut,
    ConsultantsOut,
    ConsultIn,
    ConsultOut,
    ConsultsOut,
    DashboardOut,
    GradeIn,
    PagesOut,
    PyramidOut,
    QcOverlayOut,
    ReportCreatedOut,
)
from viewer.schemas import DraftIn, SignIn

router = APIRouter(prefix="/api/pathology", tags=["pathology"])

#: Looks at cases, slides and annotations (of the sites the account may see).
Viewer = Annotated[UserContext, Depends(require_roles("pathologist", "admin", "site_user"))]
#: A viewer asking for tiles (the same roles, its authentication remembered briefly).
TileViewer = Annotated[UserContext, Depends(views.tile_viewer)]
#: Reads, claims, annotates, consults and signs.
Pathologist = Annotated[UserContext, Depends(require_roles("pathologist"))]
#: The frozen-section and concordance dashboard (durations and counts).
Overseer = Annotated[UserContext, Depends(require_roles("pathologist", "admin"))]

_JPEG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "A JPEG image."},
    404: {"description": "Not found (or another site's slide)."}}
#: Private to the browser that asked, and (the app's rule for patient data on shared
#: workstations, viewer.headers) not kept in its cache either.
_TILE_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_IMAGE_HEADERS = _TILE_HEADERS
NonNegative = Annotated[int, Path(ge=0, le=1_000_000)]


def _jpeg(data: bytes, headers: dict[str, str], media_type: str = "image/jpeg") -> Response:
    return Response(content=data, media_type=media_type, headers=headers)


# Cases ------------------------------------------------------------------------------


@router.get("/cases", response_model=CaseListOut)
def list_cases(s: SessionDep, user: Viewer, site: str | None = None,
               stain: str | None = None, organ: str | None = None, mine: bool = False,
               status: str = "open") -> object:
    """The case worklist: frozen, STAT, then by due time and age (a county account sees
    its site's cases that failed the quality gate first)."""
    return views.list_cases(s, user, site=site, stain=stain, organ=organ, mine=mine,
                            status=status)


@router.post("/cases/{case_id}/claim", response_model=CaseItem)
def claim(case_id: int, s: SessionDep, user: Pathologist) -> object:
    """Take the case (409 naming the holder when another pathologist has it)."""
    return views.claim(s, user, case_id)


@router.post("/cases/{case_id}/release", response_model=CaseItem)
def release(case_id: int, s: SessionDep, user: Pathologist) -> object:
    return views.release(s, user, case_id)


@router.get("/cases/{case_id}", response_model=CaseDetail)
def open_case(case_id: int, db: DatabaseDep, user: Viewer) -> object:
    """The case with its slides, timeline, consults and report (audited as a view)."""
    return views.open_case(db, user, case_id)


@router.post("/cases/{case_id}/call", response_model=CallOut)
def call(case_id: int, body: CallIn, s: SessionDep, user: Pathologist) -> object:
    """The frozen section's intra-operative call (what the surgeon was told)."""
    return views.record_call(s, user, case_id, body.text)


@router.post("/cases/{case_id}/consults", response_model=ConsultOut, status_code=201)
def request_consult(case_id: int, body: ConsultIn, s: SessionDep,
                    user: Pathologist) -> object:
    """Ask another pathologist (any site) about the case or chosen slides."""
    return views.request_consult(s, user, case_id, body.model_dump())


@router.post("/cases/{case_id}/report", response_model=ReportCreatedOut, status_code=201)
def create_report(case_id: int, s: SessionDep, user: Pathologist) -> object:
    """The case's synoptic report (prefilled draft), created or the one it has; edit it
    with ``PUT /api/reports/{id}/draft``."""
    return views.create_report(s, user, case_id)


@router.post("/cases/{case_id}/sign", response_model=CaseSignedOut)
def sign(case_id: int, body: SignIn, s: SessionDep, settings: SettingsDep,
         user: Pathologist) -> object:
    """Sign the case's report with the pathologist's own key; it goes back to the site."""
    return views.sign(s, settings, user, case_id, passphrase=body.passphrase,
                      key_id=body.key_id, version=body.version)


@router.post("/cases/{case_id}/amend", response_model=CaseSignedOut)
def amend(case_id: int, body: DraftIn, s: SessionDep, user: Pathologist) -> object:
    """Start an addendum to the signed report (sign it with the sign route)."""
    return views.amend(s, user, case_id, body.fields)


# Slides -------------------------------------------------------------------------------


@router.get("/slides/{slide_id}/pyramid", response_model=PyramidOut)
def pyramid(slide_id: int, db: DatabaseDep, user: Viewer) -> object:
    """The slide's levels (level 0 = full resolution) and tile size."""
    return views.pyramid(db, user, slide_id)


@router.get("/slides/{slide_id}/tiles/{level}/{col}/{row}", response_class=Response,
            responses=_JPEG)
async def tile(slide_id: int, level: NonNegative, col: NonNegative, row: NonNegative,
               user: TileViewer) -> Response:
    """One tile from Orthanc's WSI plugin, bytes as stored (404 outside the pyramid).
    Asynchronous: the viewer's hundreds of tiles wait on Orthanc, not on threads."""
    data, media_type = await views.tile_async(user, slide_id, level, col, row)
    return _jpeg(data, _TILE_HEADERS, media_type)


@router.get("/slides/{slide_id}/thumbnail", response_class=Response, responses=_JPEG)
def thumbnail(slide_id: int, db: DatabaseDep, user: Viewer) -> Response:
    """The whole slide at its lowest level."""
    return _jpeg(views.thumbnail(db, user, slide_id), _IMAGE_HEADERS)


@router.get("/slides/{slide_id}/label", response_class=Response, responses=_JPEG)
def label(slide_id: int, db: DatabaseDep, user: Viewer) -> Response:
    """The slide's label image; 404 when the scanner sent none."""
    return _jpeg(views.label(db, user, slide_id), _IMAGE_HEADERS)


@router.get("/slides/{slide_id}/overlays/qc", response_model=QcOverlayOut)
def qc_overlay(slide_id: int, s: SessionDep, user: Viewer) -> object:
    """Where the quality gate found blur, pen marks and missing tiles (level-0 boxes)."""
    return views.qc_overlay(s, user, slide_id)


@router.get("/slides/{slide_id}/overlays/ai", response_model=AiOverlayOut,
            responses={404: {"description": "no AI heat map"}})
def ai_overlay(slide_id: int, s: SessionDep, user: Viewer) -> object:
    """The tile model's heat map (a demonstration, never a diagnosis)."""
    return views.ai_overlay(s, user, slide_id)


@router.get("/slides/{slide_id}/annotations", response_model=AnnotationsOut)
def slide_annotations(slide_id: int, db: DatabaseDep, user: Viewer) -> object:
    """Every annotation stored on the slide (DICOM ANN instances in its study)."""
    return views.slide_annotations(db, user, slide_id)


@router.post("/slides/{slide_id}/annotations", response_model=AnnotationsSavedOut,
             status_code=201)
def save_annotations(slide_id: int, body: AnnotationsIn, db: DatabaseDep,
                     user: Pathologist) -> object:
    """Store new annotations as one DICOM Microscopy Bulk Simple Annotations instance;
    422 naming the annotation when one is outside the slide, of an unknown kind or
    without points (nothing is stored then)."""
    return views.save_annotations(db, user, slide_id,
                                  [a.model_dump() for a in body.annotations])


# Consults, pages, dashboard ---------------------------------------------------------------


@router.get("/consultants", response_model=ConsultantsOut)
def consultants(s: SessionDep, user: Pathologist) -> object:
    """Pathologists (any site) who can be asked for a second opinion."""
    return views.consultants(s, user)


@router.get("/consults", response_model=ConsultsOut)
def my_consults(s: SessionDep, user: Pathologist) -> object:
    """Consults sent to me and asked by me, newest first."""
    return views.my_consults(s, user)


@router.post("/consults/{consult_id}/answer", response_model=ConsultOut)
def answer_consult(consult_id: int, body: AnswerIn, s: SessionDep,
                   user: Pathologist) -> object:
    return views.answer_consult(s, user, consult_id, body.answer)


@router.post("/consults/{consult_id}/grade", response_model=ConsultOut)
def grade_consult(consult_id: int, body: GradeIn, s: SessionDep,
                  user: Pathologist) -> object:
    return views.grade_consult(s, user, consult_id, body.concordance)


@router.get("/pages", response_model=PagesOut)
def pages(s: SessionDep, user: Overseer) -> object:
    """Frozen-section pages waiting for me (and, for admins, ones nobody could get)."""
    return views.pages(s, user)


@router.get("/dashboard", response_model=DashboardOut)
def dashboard(s: SessionDep, user: Overseer) -> object:
    """Frozen-section step times per site and consult concordance."""
    return views.dashboard_view(s, user)
