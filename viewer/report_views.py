"""Reports as the web app shows them: who may read which, their schemas, the sealed PDF,
signing with the study's figures, AI finding review and delivery states.

The logic of reports themselves is in :mod:`reports.service`, of deliveries in
:mod:`delivery.service`; this module adds the web's visibility rules (a site's objects,
a county clerk's signed-only view) and builds :mod:`viewer.schemas` answers.  Every
read of a report is audited here; every change by the service it calls.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_models.report_prefill import review_finding as review_ai_finding
from core import audit
from core.db import Database
from core.models import AIFinding, Delivery, Report, ReportVersion, Study
from core.settings import Settings
from core.states import ReportState
from delivery import service as delivery
from reports import registry as report_registry
from reports import service
from reports.pdf import pdf_from_dataset
from viewer import studies
from viewer.archive import archived_file
from viewer.auth import UserContext, check_site
from viewer.schemas import DeliveryOut, ReportOut, ReviewOut, VersionOut
from viewer.worklist import READER_ROLES, get_visible_study

#: Report states a county clerk (``site_user`` without a reporting role) may read.
SIGNED_STATES = (ReportState.FINAL, ReportState.AMENDED)


def version_out(v: ReportVersion, full: bool) -> VersionOut:
    return VersionOut(number=v.number, kind=v.kind, state=v.state, fields=dict(v.fields),
                      author=v.author, signed_by=v.signed_by, signed_at=v.signed_at,
                      hash_algorithm=v.hash_algorithm, content_hash=v.content_hash,
                      sr_sop_uid=v.sr_sop_uid, pdf_sop_uid=v.pdf_sop_uid,
                      hl7_message=v.hl7_message if full else None,
                      fhir_report=v.fhir_report if full else None)


def report_out(session: Any, report: Report, full: bool = False) -> ReportOut:
    """The report with its versions; ``full`` adds each version's HL7 and FHIR outputs."""
    return ReportOut(id=report.id, study_id=report.study_id, site_id=report.site_id,
                     template=f"{report.template_id}@{report.template_version}",
                     state=report.state,
                     versions=[version_out(v, full) for v in service.versions(session, report)])


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(id=d.id, report_version_id=d.report_version_id, message_id=d.message_id,
                       site_id=d.site_id,
                       channel=d.channel, state=d.state, attempts=d.attempts,
                       last_error=d.last_error, next_attempt_at=d.next_attempt_at,
                       sent_at=d.sent_at, committed_at=d.committed_at)


def _clerk(user: UserContext) -> bool:
    """A caller who may read reports but not write them: sees signed reports only."""
    return not user.has_role(*READER_ROLES)


def list_reports(s: Session, user: UserContext, state: str | None,
                 site: str | None) -> list[ReportOut]:
    """Reports of the sites the caller may see, newest first (500 at most)."""
    q = select(Report).order_by(Report.id.desc())
    if state:
        q = q.where(Report.state == state)
    if site:
        q = q.where(Report.site_id == site)
    if not user.all_sites:
        q = q.where(Report.site_id.in_(sorted(user.site_ids)))
    if _clerk(user):
        q = q.where(Report.state.in_(list(SIGNED_STATES)))
    return [report_out(s, r) for r in s.scalars(q.limit(500))]


def visible_report(s: Any, user: UserContext, report_id: int) -> Report:
    """The report if the caller may see its site; 404 otherwise."""
    report = service.get_report(s, report_id)
    check_site(user, report.site_id)
    return report


def readable_report(s: Any, user: UserContext, report_id: int) -> Report:
    """The report if the caller may read it: its site, and for a clerk a signed one
    (a draft is the reader's work in progress: 404, as for another site's report)."""
    report = visible_report(s, user, report_id)
    if _clerk(user) and report.state not in SIGNED_STATES:
        raise HTTPException(404, "not found")
    return report


def study_report(s: Session, user: UserContext, study_id: int,
                 template: str | None) -> ReportOut:
    """The study's report; before its first save, the draft it would start from
    (``id`` null, nothing stored: opening a study leaves it unread)."""
    study = get_visible_study(s, user, study_id)
    report = service.study_report(s, study.id)
    if report is not None:
        return report_out(s, report)
    tpl, fields = service.preview_report(s, study.id, template)
    draft = VersionOut(number=1, kind="report", state=ReportState.DRAFT, fields=fields,
                       author=user.username, signed_by=None, signed_at=None,
                       hash_algorithm=None, content_hash=None, sr_sop_uid=None,
                       pdf_sop_uid=None)
    return ReportOut(id=None, study_id=study.id, site_id=study.site_id,
                     template=f"{tpl.id}@{tpl.version}", state=ReportState.DRAFT,
                     versions=[draft])


def create_report(s: Session, user: UserContext, study_id: int, template: str | None,
                  fields: dict[str, str] | None, state: str | None) -> ReportOut:
    """The study's first save (or, when it exists, a change of its current version)."""
    get_visible_study(s, user, study_id)
    report = service.create_report(s, study_id, user.username, template,
                                   fields=fields, state=state)
    return report_out(s, report)


def view_report(s: Session, user: UserContext, report_id: int) -> ReportOut:
    """One report with all its versions and outputs, audited as a view."""
    report = readable_report(s, user, report_id)
    audit.append(s, actor=user.username, action="report.view", object_type="report",
                 object_id=str(report.id))
    return report_out(s, report, full=True)


def _signed_pdf(sop_instance_uid: str) -> bytes:
    """The sealed PDF of a signed version, out of its Encapsulated PDF in Orthanc."""
    import pydicom

    data = archived_file(sop_instance_uid, "report's PDF")
    return pdf_from_dataset(pydicom.dcmread(BytesIO(data)))


def signed_pdf(db: Database, user: UserContext, report_id: int,
               version: int | None) -> tuple[int, bytes]:
    """(version number, the sealed PDF) of the newest signed version, or ``version``.

    Orthanc is asked with no transaction open; the view is audited once it is there."""
    with db.session() as s:
        report = readable_report(s, user, report_id)
        signed = [v for v in service.versions(s, report)
                  if v.state in SIGNED_STATES and v.pdf_sop_uid
                  and (version is None or v.number == version)]
        if not signed:
            raise HTTPException(404, "this report has no signed PDF"
                                + (f" of version {version}" if version else ""))
        number, sop_uid = signed[-1].number, str(signed[-1].pdf_sop_uid)
    pdf = _signed_pdf(sop_uid)
    with db.session() as s:
        audit.append(s, actor=user.username, action="report.view", object_type="report",
                     object_id=str(report_id), detail={"version": number, "format": "pdf"})
    return number, pdf


def update_draft(s: Session, user: UserContext, report_id: int, fields: dict[str, str],
                 state: str | None) -> ReportOut:
    visible_report(s, user, report_id)
    service.update_draft(s, report_id, fields, user.username, state)
    return report_out(s, service.get_report(s, report_id))


def sign(s: Session, settings: Settings, user: UserContext, report_id: int, *,
         passphrase: str, key_id: int | None, version: int | None) -> ReportOut:
    """Sign the current version with ``user``'s own key, with the study's figures in its
    PDF (ECG tracings, else a key image), and schedule its deliveries to the site."""
    report = visible_report(s, user, report_id)
    study = s.get(Study, report.study_id) if report.study_id else None
    # The domains' figures (reports.registry: the ECG's tracings), read from the archive
    # as the web answers it: 404 for a missing waveform, 502 for a silent archive.
    figures = report_registry.figures(s, study, archived_file) if study is not None else ()
    if not figures and study is not None:
        # An image study's PDF shows a key image, passed in as the ECG tracing is.
        figures = studies.key_image_figures(settings, study)
    signed = service.sign(s, settings, report_id, reader_id=user.username,
                          passphrase=passphrase, key_id=key_id, version_number=version,
                          actor=user.username, figures=figures)
    delivery.schedule_result_deliveries(s, signed)
    return report_out(s, service.get_report(s, report_id), full=True)


def add_addendum(s: Session, user: UserContext, report_id: int,
                 fields: dict[str, str]) -> ReportOut:
    visible_report(s, user, report_id)
    service.add_addendum(s, report_id, fields, user.username)
    return report_out(s, service.get_report(s, report_id))


def review_finding(s: Session, user: UserContext, finding_id: int,
                   decision: str) -> ReviewOut:
    """Accept or reject an AI finding of a study the caller may see."""
    finding = s.get(AIFinding, finding_id)
    if finding is None:
        raise HTTPException(404, "not found")
    get_visible_study(s, user, finding.study_id)
    f = review_ai_finding(s, finding_id, decision, user.username)
    return ReviewOut(id=f.id, label=f.label, review=f.review)


def list_deliveries(s: Session, user: UserContext, state: str | None,
                    report_id: int | None) -> list[DeliveryOut]:
    """Deliveries of the sites the caller may see; ``state=dead`` is the dead-letter list."""
    found = delivery.list_deliveries(s, state)
    if report_id is not None:
        versions = set(s.scalars(select(ReportVersion.id).where(
            ReportVersion.report_id == report_id)))
        found = [d for d in found if d.report_version_id in versions]
    return [delivery_out(d) for d in found if user.can_see_site(d.site_id)]


def resend(s: Session, user: UserContext, delivery_id: int, force: bool) -> DeliveryOut:
    return delivery_out(delivery.resend(s, delivery_id, user.username, force=force))
