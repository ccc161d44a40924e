"""HTTP routes of the lab center (held results, review and signing, QC charts, critical
values, specimen and box timelines, labels, FHIR orders and reports, the dashboard).

Thin: roles here, everything else in :mod:`viewer.lab_views` (sites, objects, audit).
Lab reviewers see, review and sign the held results of their sites; a county account
(``site_user``) sees its site's released results, specimens, boxes and critical values,
acknowledges the critical values with read-back and orders over FHIR; an administrator
sees the dashboard.  Another site's ids answer 404.  State-changing routes need the
session's CSRF header (:func:`viewer.auth.session_user`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response

from viewer import lab_views as views
from viewer.auth import UserContext, require_roles
from viewer.deps import DatabaseDep, SessionDep, SettingsDep
from viewer.lab_schemas import (
    AckIn,
    BoxOut,
    DashboardOut,
    HeldOut,
    LabSignIn,
    NoticeOut,
    NoticesOut,
    OrderCreatedOut,
    QcChartOut,
    ResultOut,
    ReviewIn,
    SignedOut,
    TimelineOut,
)

router = APIRouter(prefix="/api/lab", tags=["lab"])

#: Reviews, releases, reruns, rejects and signs held results; reads QC.
Reviewer = Annotated[UserContext, Depends(require_roles("lab_reviewer"))]
#: Looks at results, specimens, boxes and critical values of the account's sites.
LabViewer = Annotated[UserContext, Depends(require_roles("lab_reviewer", "site_user"))]
#: Places orders for its site (a county account, or the operator token for scripts).
Orderer = Annotated[UserContext, Depends(require_roles("site_user"))]
#: The critical-value dashboard (times and counts, no patient data).
Overseer = Annotated[UserContext, Depends(require_roles("lab_reviewer", "admin"))]

#: Private to the browser that asked and kept out of its cache (patient data).
_PRIVATE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_PDF: dict[int | str, dict[str, Any]] = {200: {"content": {"application/pdf": {}}}}
_PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}
#: FHIR's own media type: the answer's shape is the standard's (DiagnosticReport, R4).
_FHIR: dict[int | str, dict[str, Any]] = {200: {"content": {"application/fhir+json": {}}}}
ChartAnalyzer = Annotated[str, Query(min_length=1, max_length=32)]
ChartTest = Annotated[str, Query(min_length=1, max_length=16)]
ChartLevel = Annotated[int, Query(ge=1, le=9)]
Ident = Annotated[str, Query(min_length=1, max_length=64)]


# Review and signing -------------------------------------------------------------------


@router.get("/held", response_model=HeldOut)
def held(s: SessionDep, user: Reviewer) -> object:
    """Held results of the caller's sites: critical first, then oldest; each with its
    delta history, QC status (and Westgard rule), HIL and every rule that fired."""
    return views.held(s, user)


@router.get("/results/{result_id}", response_model=ResultOut)
def result(result_id: int, s: SessionDep, user: LabViewer) -> object:
    """One result (a county account: released results of its site only)."""
    return views.result_detail(s, user, result_id)


@router.post("/results/{result_id}/review", response_model=ResultOut)
def review(result_id: int, body: ReviewIn, s: SessionDep, user: Reviewer) -> object:
    """Rerun, reject, or release a QC hold, with a reason (audited)."""
    return views.review_result(s, user, result_id, body.action, body.reason)


@router.post("/sign", response_model=SignedOut)
def sign(body: LabSignIn, s: SessionDep, settings: SettingsDep, user: Reviewer) -> object:
    """Sign several results with the reviewer's own key, each its own signature; all or
    none.  The signed results go back to their sites."""
    return views.sign(s, settings, user, body.result_ids, passphrase=body.passphrase,
                      key_id=body.key_id)


# QC ---------------------------------------------------------------------------------------


@router.get("/qc/chart", response_model=QcChartOut)
def qc_chart(s: SessionDep, user: Reviewer, analyzer: ChartAnalyzer, test: ChartTest,
             level: ChartLevel) -> object:
    """The Levey-Jennings chart's points (z per run) and the rules that fired."""
    return views.qc_chart(s, analyzer, test, level)


@router.get("/qc/chart.png", response_class=Response, responses=_PNG)
def qc_chart_png(s: SessionDep, user: Reviewer, analyzer: ChartAnalyzer, test: ChartTest,
                 level: ChartLevel) -> Response:
    return Response(views.qc_chart_png(s, analyzer, test, level), media_type="image/png",
                    headers=_PRIVATE)


# Critical values ----------------------------------------------------------------------------


@router.get("/critical", response_model=NoticesOut)
def critical(s: SessionDep, user: LabViewer, open_only: bool = False) -> object:
    """Critical-value notices of the caller's sites (open ones first)."""
    return views.notices(s, user, open_only)


@router.post("/critical/{notice_id}/ack", response_model=NoticeOut)
def acknowledge(notice_id: int, body: AckIn, s: SessionDep, user: LabViewer) -> object:
    """Who took the value, and the value read back (409 when it does not match, or the
    notice was acknowledged already)."""
    return views.acknowledge(s, user, notice_id, name=body.name, readback=body.readback)


@router.get("/dashboard", response_model=DashboardOut)
def dashboard(s: SessionDep, user: Overseer,
              days: Annotated[int, Query(ge=1, le=366)] = views.DASHBOARD_DAYS) -> object:
    """Per site: critical values, median result → notification → acknowledgement."""
    return views.dashboard(s, user, days)


# Specimens, boxes, labels ---------------------------------------------------------------------


@router.get("/specimens/{accession}/timeline", response_model=TimelineOut)
def specimen_timeline(accession: str, s: SessionDep, user: LabViewer) -> object:
    """The specimen's chain of custody across institutions, oldest first."""
    return views.specimen_timeline(s, user, accession)


@router.get("/specimens/{accession}/label.pdf", response_class=Response, responses=_PDF)
def label(accession: str, s: SessionDep, user: LabViewer) -> Response:
    """The specimen's Code 128 label, one page sized for a label printer."""
    return Response(views.label(s, user, accession), media_type="application/pdf",
                    headers=_PRIVATE)


@router.get("/boxes/{box_code}", response_model=BoxOut)
def box(box_code: str, s: SessionDep, user: LabViewer) -> object:
    """A shipment box: its scans, temperature log and specimens."""
    return views.box(s, user, box_code)


# Orders and reports ---------------------------------------------------------------------------


@router.post("/orders/fhir", response_model=OrderCreatedOut, status_code=201)
def order_fhir(db: DatabaseDep, user: Orderer,
               bundle: Annotated[dict[str, Any], Body()],
               site: Annotated[str | None, Query(max_length=64)] = None) -> object:
    """A FHIR R4 Bundle of ServiceRequests (+ Patient, Specimen) as an order of the
    site (the account's own, or ``?site=``); 422 naming the bad element, 409 for a
    duplicate order, nothing stored then."""
    return views.order_fhir(db, user, bundle, site)


@router.get("/orders/{order_id}/fhir", response_class=Response, responses=_FHIR)
def order_report(order_id: int, s: SessionDep, user: LabViewer) -> Response:
    """The order's FHIR DiagnosticReport with its Observations (R4, validated)."""
    return Response(views.order_fhir_report(s, user, order_id),
                    media_type="application/fhir+json", headers=_PRIVATE)


@router.get("/visits/report.pdf", response_class=Response, responses=_PDF)
def visit_report(s: SessionDep, user: LabViewer, site: Ident, patient: Ident,
                 visit: Ident) -> Response:
    """The cumulative report of one patient visit (PDF)."""
    return Response(views.visit_report(s, user, site=site, patient=patient, visit=visit),
                    media_type="application/pdf", headers=_PRIVATE)
