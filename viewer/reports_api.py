"""HTTP API of reports, AI finding review and deliveries (screens come with the viewer).

Thin endpoints: authentication and schemas here, the logic in
:mod:`reports.service` and :mod:`delivery.service`.  Every read of a
report is audited; every change is audited by the service it calls.
"""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, Field, computed_field
from sqlalchemy import select

from ai_models.report_prefill import review_finding as review_ai_finding
from core import audit
from core.db import get_database
from core.errors import RDCError
from core.models import AIFinding, Delivery, Report, ReportVersion, Study
from reports import service
from reports.pdf import pdf_from_dataset
from reports.templates import get_template
from core.settings import get_settings
from core.states import ReportState
from delivery import service as delivery
from viewer import studies
from viewer.archive import archived_file
from viewer.auth import READING_ROLES, UserContext, check_site, require_roles
from viewer.auth import Reader as PatientDataReader
from viewer.ecg_api import report_figures
from viewer.worklist import READER_ROLES, get_visible_study

router = APIRouter(prefix="/api", tags=["reports"])
Reader = Annotated[UserContext, Depends(require_roles(*READER_ROLES))]
Admin = Annotated[UserContext, Depends(require_roles("admin"))]
#: Delivery states (no patient data): admins resend them, readers follow their results.
DeliveryWatcher = Annotated[UserContext, Depends(require_roles("admin", *READING_ROLES))]


def _signer(user: Reader) -> UserContext:
    """Signing is a person's act: the operator token never signs."""
    if not user.is_person:
        raise HTTPException(403, "signing needs a signed-in reader, not the operator token")
    return user


Signer = Annotated[UserContext, Depends(_signer)]


class VersionOut(BaseModel):
    number: int
    kind: str
    state: str
    fields: dict[str, str]
    author: str
    signed_by: str | None
    signed_at: datetime | None
    hash_algorithm: str | None
    content_hash: str | None
    sr_sop_uid: str | None
    pdf_sop_uid: str | None
    hl7_message: str | None = None
    fhir_report: dict[str, Any] | None = None


class ReportOut(BaseModel):
    id: int | None = Field(description="None: not stored yet (a study's report before its "
                                       "first save).")
    study_id: int | None
    site_id: str
    template: str
    state: str
    versions: list[VersionOut]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def required_fields(self) -> list[str]:
        """The template's fields that must be filled (without a ``{{placeholder}}``)
        before signing, so that the sign dialog names them before it is used."""
        template_id, _, version = self.template.partition("@")
        try:
            template = get_template(template_id, version or None)
        except RDCError:
            return []
        return [f.key for f in template.fields if f.required]


class DeliveryOut(BaseModel):
    id: int
    report_version_id: int
    site_id: str
    channel: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    committed_at: datetime | None


class DraftIn(BaseModel):
    fields: dict[str, str] = Field(default_factory=dict,
                                   description="Template field key → text.")
    state: Literal["draft", "preliminary"] | None = None


class SignIn(BaseModel):
    passphrase: str = Field(min_length=1, repr=False,
                            description="Unlocks the reader's private key; never stored.")
    key_id: int | None = Field(default=None, description="A specific key of the signer.")
    version: int | None = Field(default=None, description="Refuse unless this is current.")


class ReviewIn(BaseModel):
    decision: Literal["accepted", "rejected"]


def _version_out(v: ReportVersion, full: bool) -> VersionOut:
    return VersionOut(number=v.number, kind=v.kind, state=v.state, fields=dict(v.fields),
                      author=v.author, signed_by=v.signed_by, signed_at=v.signed_at,
                      hash_algorithm=v.hash_algorithm, content_hash=v.content_hash,
                      sr_sop_uid=v.sr_sop_uid, pdf_sop_uid=v.pdf_sop_uid,
                      hl7_message=v.hl7_message if full else None,
                      fhir_report=v.fhir_report if full else None)


def _report_out(session: Any, report: Report, full: bool = False) -> ReportOut:
    return ReportOut(id=report.id, study_id=report.study_id, site_id=report.site_id,
                     template=f"{report.template_id}@{report.template_version}",
                     state=report.state,
                     versions=[_version_out(v, full) for v in service.versions(session, report)])


def _delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(id=d.id, report_version_id=d.report_version_id, site_id=d.site_id,
                       channel=d.channel, state=d.state, attempts=d.attempts,
                       last_error=d.last_error, next_attempt_at=d.next_attempt_at,
                       sent_at=d.sent_at, committed_at=d.committed_at)


def _db() -> Any:
    return get_database(get_settings().database_url)


@router.get("/reports")
def list_reports(user: PatientDataReader, state: str | None = None,
                 site: str | None = None) -> list[ReportOut]:
    """Reports of the sites the caller may see, newest first, by state or site."""
    with _db().session() as s:
        q = select(Report).order_by(Report.id.desc())
        if state:
            q = q.where(Report.state == state)
        if site:
            q = q.where(Report.site_id == site)
        if not user.all_sites:
            q = q.where(Report.site_id.in_(sorted(user.site_ids)))
        if _clerk(user):
            q = q.where(Report.state.in_(list(SIGNED_STATES)))
        return [_report_out(s, r) for r in s.scalars(q.limit(500))]


def _visible_report(s: Any, user: UserContext, report_id: int) -> Report:
    report = service.get_report(s, report_id)
    check_site(user, report.site_id)
    return report


#: Report states a county clerk (``site_user`` without a reporting role) may read.
SIGNED_STATES = (ReportState.FINAL, ReportState.AMENDED)


def _clerk(user: UserContext) -> bool:
    """A caller who may read reports but not write them: sees signed reports only."""
    return not user.has_role(*READER_ROLES)


def _readable_report(s: Any, user: UserContext, report_id: int) -> Report:
    """The report if the caller may read it: its site, and for a clerk a signed one
    (a draft is the reader's work in progress: 404, as for another site's report)."""
    report = _visible_report(s, user, report_id)
    if _clerk(user) and report.state not in SIGNED_STATES:
        raise HTTPException(404, "not found")
    return report


def _signed_pdf(sop_instance_uid: str) -> bytes:
    """The sealed PDF of a signed version, out of its Encapsulated PDF in Orthanc."""
    import pydicom

    data = archived_file(sop_instance_uid, "report's PDF")
    return pdf_from_dataset(pydicom.dcmread(BytesIO(data)))


@router.get("/studies/{study_id}/report")
def study_report(study_id: int, user: Reader,
                 template: Annotated[str | None, Query()] = None) -> ReportOut:
    """The study's report; before its first save, the draft it would start from
    (``id`` null, nothing stored: opening a study leaves it unread)."""
    with _db().session() as s:
        study = get_visible_study(s, user, study_id)
        report = service.study_report(s, study.id)
        if report is not None:
            return _report_out(s, report)
        tpl, fields = service.preview_report(s, study.id, template)
        draft = VersionOut(number=1, kind="report", state=ReportState.DRAFT, fields=fields,
                           author=user.username, signed_by=None, signed_at=None,
                           hash_algorithm=None, content_hash=None, sr_sop_uid=None,
                           pdf_sop_uid=None)
        return ReportOut(id=None, study_id=study.id, site_id=study.site_id,
                         template=f"{tpl.id}@{tpl.version}", state=ReportState.DRAFT,
                         versions=[draft])


@router.post("/studies/{study_id}/report", status_code=201)
def create_report(study_id: int, user: Reader,
                  template: Annotated[str | None, Query()] = None,
                  body: DraftIn | None = None) -> ReportOut:
    """Start the study's report (its first save): a draft from the template, with the
    ``fields`` and ``state`` given over it.  When it exists already, the fields given
    change its current version, as ``PUT /api/reports/{id}/draft`` does."""
    with _db().session() as s:
        get_visible_study(s, user, study_id)
        report = service.create_report(s, study_id, user.username, template,
                                       fields=body.fields if body else None,
                                       state=body.state if body else None)
        return _report_out(s, report)


@router.get("/reports/{report_id}")
def get_report(report_id: int, user: PatientDataReader) -> ReportOut:
    """One report with all its versions, HL7 and FHIR outputs included (audited).
    A county clerk reads its own site's signed reports only."""
    with _db().session() as s:
        report = _readable_report(s, user, report_id)
        audit.append(s, actor=user.username, action="report.view", object_type="report",
                     object_id=str(report.id))
        return _report_out(s, report, full=True)


@router.get("/reports/{report_id}/pdf", response_class=Response,
            responses={200: {"content": {"application/pdf": {}},
                             "description": "The sealed PDF, as delivered to the site."}})
def report_pdf(report_id: int, user: PatientDataReader,
               version: Annotated[int | None, Query(ge=1)] = None) -> Response:
    """The signed report's PDF (the newest signed version, or ``version``), exactly as
    it went to the site: ``rdc reports verify`` checks it.  Another site's report is
    404; a county clerk gets its own site's signed reports only; audited as a view."""
    with _db().session() as s:
        report = _readable_report(s, user, report_id)
        signed = [v for v in service.versions(s, report)
                  if v.state in SIGNED_STATES and v.pdf_sop_uid
                  and (version is None or v.number == version)]
        if not signed:
            raise HTTPException(404, "this report has no signed PDF"
                                + (f" of version {version}" if version else ""))
        number, sop_uid = signed[-1].number, str(signed[-1].pdf_sop_uid)
    # Orthanc is asked with no transaction open; the view is audited once it is there.
    pdf = _signed_pdf(sop_uid)
    with _db().session() as s:
        audit.append(s, actor=user.username, action="report.view", object_type="report",
                     object_id=str(report_id), detail={"version": number, "format": "pdf"})
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="report-{report_id}-v{number}.pdf"',
        "Cache-Control": "no-store"})


@router.put("/reports/{report_id}/draft")
def update_draft(report_id: int, body: DraftIn, user: Reader) -> ReportOut:
    """Change the current unsigned version; a signed version answers 409."""
    with _db().session() as s:
        _visible_report(s, user, report_id)
        service.update_draft(s, report_id, body.fields, user.username, body.state)
        return _report_out(s, service.get_report(s, report_id))


@router.post("/reports/{report_id}/sign")
def sign_report(report_id: int, body: SignIn, user: Signer) -> ReportOut:
    """Sign the current version with the signed-in reader's own key; its outputs go
    back to the originating site."""
    settings = get_settings()
    with _db().session() as s:
        report = _visible_report(s, user, report_id)
        figures = report_figures(s, report.study_id) if report.study_id else ()
        study = s.get(Study, report.study_id) if report.study_id else None
        if not figures and study is not None:
            # An image study's PDF shows a key image, passed in as the ECG tracing is.
            figures = studies.key_image_figures(settings, study)
        version = service.sign(s, settings, report_id, reader_id=user.username,
                               passphrase=body.passphrase, key_id=body.key_id,
                               version_number=body.version, actor=user.username,
                               figures=figures)
        delivery.schedule_result_deliveries(s, version)
        return _report_out(s, service.get_report(s, report_id), full=True)


@router.post("/reports/{report_id}/addenda", status_code=201)
def add_addendum(report_id: int, body: DraftIn, user: Reader) -> ReportOut:
    """Start an addendum to a signed report (a new draft version to sign)."""
    with _db().session() as s:
        _visible_report(s, user, report_id)
        service.add_addendum(s, report_id, body.fields, user.username)
        return _report_out(s, service.get_report(s, report_id))


@router.post("/ai-findings/{finding_id}/review")
def review_finding(finding_id: int, body: ReviewIn, user: Reader) -> dict[str, Any]:
    """Accept or reject an AI finding; accepted ones prefill new reports."""
    with _db().session() as s:
        finding = s.get(AIFinding, finding_id)
        if finding is None:
            raise HTTPException(404, "not found")
        get_visible_study(s, user, finding.study_id)
        f = review_ai_finding(s, finding_id, body.decision, user.username)
        return {"id": f.id, "label": f.label, "review": f.review}


@router.get("/deliveries", tags=["deliveries"])
def list_deliveries(user: DeliveryWatcher, state: str | None = None,
                    report_id: int | None = None) -> list[DeliveryOut]:
    """Deliveries of signed results; ``state=dead`` is the dead-letter list."""
    with _db().session() as s:
        found = delivery.list_deliveries(s, state)
        if report_id is not None:
            versions = set(s.scalars(select(ReportVersion.id).where(
                ReportVersion.report_id == report_id)))
            found = [d for d in found if d.report_version_id in versions]
        return [_delivery_out(d) for d in found if user.can_see_site(d.site_id)]


@router.post("/deliveries/{delivery_id}/resend", tags=["deliveries"])
def resend(delivery_id: int, user: Admin, force: bool = False) -> DeliveryOut:
    """Put a failed or dead-lettered delivery back in line (``force`` resends a sent one)."""
    with _db().session() as s:
        return _delivery_out(delivery.resend(s, delivery_id, user.username, force=force))
