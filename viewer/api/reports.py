"""HTTP API of reports, AI finding review and deliveries (screens come with the viewer).

Thin endpoints: authentication and schemas here, the logic in
:mod:`viewer.report_views` (which calls :mod:`reports.service` and
:mod:`delivery.service`).  Every read of a report is audited; every change is audited
by the service it calls.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from viewer import report_views
from viewer.deps import (
    Admin,
    DatabaseDep,
    DeliveryWatcher,
    Reporter,
    SessionDep,
    SettingsDep,
    Signer,
)
from viewer.deps import Reader as PatientDataReader
from viewer.schemas import DeliveryOut, DraftIn, ReportOut, ReviewIn, ReviewOut, SignIn

router = APIRouter(prefix="/api", tags=["reports"])


@router.get("/reports")
def list_reports(s: SessionDep, user: PatientDataReader, state: str | None = None,
                 site: str | None = None) -> list[ReportOut]:
    """Reports of the sites the caller may see, newest first, by state or site."""
    return report_views.list_reports(s, user, state, site)


@router.get("/studies/{study_id}/report")
def study_report(study_id: int, s: SessionDep, user: Reporter,
                 template: Annotated[str | None, Query()] = None) -> ReportOut:
    """The study's report; before its first save, the draft it would start from
    (``id`` null, nothing stored: opening a study leaves it unread)."""
    return report_views.study_report(s, user, study_id, template)


@router.post("/studies/{study_id}/report", status_code=201)
def create_report(study_id: int, s: SessionDep, user: Reporter,
                  template: Annotated[str | None, Query()] = None,
                  body: DraftIn | None = None) -> ReportOut:
    """Start the study's report (its first save): a draft from the template, with the
    ``fields`` and ``state`` given over it.  When it exists already, the fields given
    change its current version, as ``PUT /api/reports/{id}/draft`` does."""
    return report_views.create_report(s, user, study_id, template,
                                      fields=body.fields if body else None,
                                      state=body.state if body else None)


@router.get("/reports/{report_id}")
def get_report(report_id: int, s: SessionDep, user: PatientDataReader) -> ReportOut:
    """One report with all its versions, HL7 and FHIR outputs included (audited).
    A county clerk reads its own site's signed reports only."""
    return report_views.view_report(s, user, report_id)


@router.get("/reports/{report_id}/pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}},
                             "description": "The sealed PDF, as delivered to the site."}})
def report_pdf(report_id: int, db: DatabaseDep, user: PatientDataReader,
               version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """The signed report's PDF (the newest signed version, or ``version``), exactly as
    it went to the site: ``rdc reports verify`` checks it.  Another site's report is
    404; a county clerk gets its own site's signed reports only; audited as a view."""
    number, pdf = report_views.signed_pdf(db, user, report_id, version)
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="report-{report_id}-v{number}.pdf"',
        "Cache-Control": "no-store"})


@router.put("/reports/{report_id}/draft")
def update_draft(report_id: int, body: DraftIn, s: SessionDep, user: Reporter) -> ReportOut:
    """Change the current unsigned version; a signed version answers 409."""
    return report_views.update_draft(s, user, report_id, body.fields, body.state)


@router.post("/reports/{report_id}/sign")
def sign_report(report_id: int, body: SignIn, s: SessionDep, settings: SettingsDep,
                user: Signer) -> ReportOut:
    """Sign the current version with the signed-in reader's own key; its outputs go
    back to the originating site."""
    return report_views.sign(s, settings, user, report_id, passphrase=body.passphrase,
                             key_id=body.key_id, version=body.version)


@router.post("/reports/{report_id}/addenda", status_code=201)
def add_addendum(report_id: int, body: DraftIn, s: SessionDep, user: Reporter) -> ReportOut:
    """Start an addendum to a signed report (a new draft version to sign)."""
    return report_views.add_addendum(s, user, report_id, body.fields)


@router.post("/ai-findings/{finding_id}/review")
def review_finding(finding_id: int, body: ReviewIn, s: SessionDep,
                   user: Reporter) -> ReviewOut:
    """Accept or reject an AI finding; accepted ones prefill new reports."""
    return report_views.review_finding(s, user, finding_id, body.decision)


@router.get("/deliveries", tags=["deliveries"])
def list_deliveries(s: SessionDep, user: DeliveryWatcher, state: str | None = None,
                    report_id: int | None = None) -> list[DeliveryOut]:
    """Deliveries of signed results; ``state=dead`` is the dead-letter list."""
    return report_views.list_deliveries(s, user, state, report_id)


@router.post("/deliveries/{delivery_id}/resend", tags=["deliveries"])
def resend(delivery_id: int, s: SessionDep, user: Admin, force: bool = False) -> DeliveryOut:
    """Put a failed or dead-lettered delivery back in line (``force`` resends a sent one)."""
    return report_views.resend(s, user, delivery_id, force)
