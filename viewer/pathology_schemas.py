"""Request and response bodies of the pathology API (``/api/pathology``).

The shapes are issue 13's shared spec, which the front end (``pages/pathology*.js``,
``pages/slide*.js``) reads; change them together.  Pure data: the services in
:mod:`viewer.pathology_views` and :mod:`viewer.pathology_tiles` build them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from pathology.annotations import KINDS, MAX_ANNOTATIONS, MAX_POINTS, MAX_TEXT

# Cases ---------------------------------------------------------------------------


class CaseItem(BaseModel):
    """One row of the case worklist (pathology.cases.CaseSummary) and whether the
    caller holds it."""

    id: int
    site_id: str
    accession_number: str
    patient_id: str
    patient_name: str
    organ: str
    urgency: str
    state: str
    assigned_to: int | None
    assigned_name: str | None
    due_at: datetime | None
    received_at: datetime
    slide_count: int
    stains: list[str]
    qc: str
    qc_failed_slides: int
    consult_open: bool
    mine: bool


class CaseListOut(BaseModel):
    cases: list[CaseItem]


class SlideOut(BaseModel):
    id: int
    series_uid: str
    part: str
    block: str
    stain: str
    label: str
    width: int
    height: int
    levels: int
    mpp: float
    qc_grade: str
    qc_reasons: list[str]
    qc_metrics: dict[str, Any]
    has_label_image: bool
    has_heatmap: bool


class TimelineStep(BaseModel):
    step: str
    at: datetime
    actor: str


class ConsultOut(BaseModel):
    id: int
    case_id: int
    requested_by: int
    requester_name: str
    consultant_id: int
    consultant_name: str
    question: str
    slide_ids: list[int]
    blinded: bool
    first_diagnosis: str = Field(description="'' to a blinded consultant.")
    state: str
    answer: str
    concordance: str | None
    requested_at: datetime
    answered_at: datetime | None


class ReportRef(BaseModel):
    id: int
    state: str


class CaseDetail(CaseItem):
    slides: list[SlideOut]
    timeline: list[TimelineStep]
    consults: list[ConsultOut]
    report: ReportRef | None
    study_id: int | None


class CallIn(BaseModel):
    text: str = Field(min_length=1, max_length=4000,
                      description="What the surgeon was told (the intra-operative call).")


class CallOut(BaseModel):
    case_id: int
    step: str
    at: datetime
    actor: str


class ReportCreatedOut(BaseModel):
    report_id: int


class CaseSignedOut(BaseModel):
    """The case after its report was signed or amended, with the report's state."""

    case: CaseItem
    report: ReportRef


# Slides ----------------------------------------------------------------------------


class PyramidLevel(BaseModel):
    level: int = Field(description="0 = full resolution, as Orthanc's WSI plugin counts.")
    width: int
    height: int
    downsample: float
    tiles_x: int
    tiles_y: int


class PyramidOut(BaseModel):
    width: int
    height: int
    tile_width: int
    tile_height: int
    mpp: float
    levels: list[PyramidLevel]


class QcOverlayOut(BaseModel):
    grade: str
    reasons: list[str]
    blur_tiles: list[list[float]] = Field(description="[x, y, w, h] in level-0 pixels.")
    pen_boxes: list[list[float]]
    missing: list[list[float]]


class AiOverlayOut(BaseModel):
    rows: int
    cols: int
    cell_px: float = Field(description="Level-0 pixels per heat-map cell.")
    labels: list[str]
    values: list[Any] = Field(description="rows x cols scores (per label when several).")
    model: str
    version: str
    demonstration: bool = True


# Annotations -----------------------------------------------------------------------


class AnnotationIn(BaseModel):
    kind: str = Field(description=f"One of {', '.join(KINDS)} (checked by the service, "
                                  "which names the annotation's index when refusing).")
    coords: list[list[float]] = Field(max_length=MAX_POINTS,
                                      description="[[x, y], ...] level-0 pixels.")
    text: str = Field(default="", max_length=MAX_TEXT)


class AnnotationOut(BaseModel):
    kind: str
    coords: list[list[float]]
    text: str
    author: str
    created_at: datetime | None


class AnnotationsIn(BaseModel):
    annotations: list[AnnotationIn] = Field(max_length=MAX_ANNOTATIONS)


class AnnotationsOut(BaseModel):
    annotations: list[AnnotationOut]


class AnnotationsSavedOut(AnnotationsOut):
    sop_instance_uid: str


# Consults, pages, dashboard ------------------------------------------------------------


class ConsultIn(BaseModel):
    consultant_id: int
    question: str = Field(min_length=1, max_length=4000)
    slide_ids: list[int] = Field(default_factory=list, max_length=200)
    blinded: bool = False
    first_diagnosis: str = Field(default="", max_length=4000)


class CaseLite(BaseModel):
    id: int
    site_id: str
    accession_number: str
    patient_name: str
    organ: str
    urgency: str
    state: str


class ConsultWithCase(ConsultOut):
    case: CaseLite


class ConsultsOut(BaseModel):
    consults: list[ConsultWithCase]


class AnswerIn(BaseModel):
    answer: str = Field(min_length=1, max_length=8000)


class GradeIn(BaseModel):
    concordance: Literal["concordant", "minor", "major"]


class ConsultantOut(BaseModel):
    id: int
    display_name: str
    sites: list[str] = Field(description="Site ids; ['*'] for center staff.")


class ConsultantsOut(BaseModel):
    consultants: list[ConsultantOut]


class PageOut(BaseModel):
    case_id: int
    accession_number: str
    reason: str
    at: datetime
    kind: str = "page"


class PagesOut(BaseModel):
    pages: list[PageOut]


class DashboardOut(BaseModel):
    frozen: dict[str, dict[str, dict[str, Any]]] = Field(
        description="site → step pair → {n, p50_s, p90_s}.")
    concordance: dict[str, list[dict[str, Any]]] = Field(
        description="{pairs: [...], organs: [...]} with concordant/minor/major/n counts.")
