"""Cloud film: a signed, expiring, revocable link to one final report and its key images.

The link's token is random; only its SHA-256 is stored, so a database reader
cannot open links.  Every open is audited; a revoked or expired link answers
410 with a message a patient can understand.
"""

from __future__ import annotations

import hashlib
import html
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from core import audit
from core.db import Database
from core.errors import Conflict, InvalidInput, NotFound, RDCError
from core.models import Report, ReportVersion, ShareLink, Study
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import Settings
from core.states import ReportState
from reports import service
from reports.pdf import display_date, display_person_name
from viewer import studies
from viewer.auth import UserContext


class LinkGone(RDCError):
    http_status = 410
    exit_code = 3


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class NewLink:
    id: int
    token: str
    expires_at: datetime


def create_link(session: Session, user: UserContext, report_id: int, hours: float) -> NewLink:
    """A link to the report's newest signed version, valid for ``hours``."""
    if not 0 < hours <= 24 * 90:
        raise InvalidInput("a share link lasts between a minute and 90 days")
    report = service.get_report(session, report_id)
    if not user.can_see_site(report.site_id):
        raise NotFound(f"no report {report_id}")
    version = service.current_version(session, report)
    if version.state != ReportState.FINAL:
        raise Conflict("only a signed (final) report can be shared")
    token = secrets.token_urlsafe(32)
    link = ShareLink(token_hash=_hash(token), report_version_id=version.id,
                     created_by=user.user_id,
                     expires_at=datetime.now(UTC) + timedelta(hours=hours))
    session.add(link)
    session.flush()
    audit.append(session, actor=user.username, action="share.create", object_type="share_link",
                 object_id=str(link.id), detail={"report_id": report.id,
                                                 "version": version.number, "hours": hours})
    return NewLink(link.id, token, link.expires_at)


def revoke_link(session: Session, user: UserContext, link_id: int) -> ShareLink:
    link = session.get(ShareLink, link_id)
    version = session.get(ReportVersion, link.report_version_id) if link else None
    report = session.get(Report, version.report_id) if version else None
    if link is None or report is None or not user.can_see_site(report.site_id):
        raise NotFound(f"no share link {link_id}")
    if link.revoked_at is None:
        link.revoked_at = datetime.now(UTC)
        audit.append(session, actor=user.username, action="share.revoke",
                     object_type="share_link", object_id=str(link.id))
    return link


@dataclass(frozen=True)
class SharedReport:
    link: ShareLink
    version: ReportVersion
    study: Study


def open_link(session: Session, token: str, client: str) -> SharedReport:
    """The report behind a token; every open (and every refused one) is audited."""
    link = session.query(ShareLink).filter_by(token_hash=_hash(token)).one_or_none()
    if link is None:
        raise NotFound("this link does not exist")
    now = datetime.now(UTC)
    if link.revoked_at is not None or link.expires_at <= now:
        why = "revoked" if link.revoked_at is not None else "expired"
        # Recorded in a separate transaction by the caller: this one is rolled back.
        raise LinkGone(f"this link was {why}; ask the hospital for a new one")
    version = session.get(ReportVersion, link.report_version_id)
    report = session.get(Report, version.report_id) if version else None
    study = session.get(Study, report.study_id) if report and report.study_id else None
    if version is None or study is None:
        raise NotFound("this link does not exist")
    link.opens += 1
    audit.append(session, actor=f"share:{link.id}", action="share.open",
                 object_type="share_link", object_id=str(link.id),
                 detail={"client": client[:200], "report_version_id": version.id})
    return SharedReport(link, version, study)


def _signed_at(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else ""


def render_page(shared: SharedReport, image_urls: list[str], center_name: str) -> str:
    """A phone-sized page: key images and the signed report, every value escaped.

    It fits a 375 px wide phone: dates read as dates, names as names, and long
    words (hashes, UIDs, a pasted URL in the report) wrap instead of widening it."""
    v, st = shared.version, shared.study
    e = html.escape
    sections = "".join(
        f"<h2>{e(str(key).replace('_', ' ').capitalize())}</h2><p>{e(str(text))}</p>"
        for key, text in v.fields.items() if str(text).strip())
    images = "".join(f'<img alt="key image" src="{e(url)}">' for url in image_urls)
    patient = display_person_name(st.patient_name, natural=True) or st.patient_id
    study = " · ".join(p for p in (display_date(st.study_date),
                                   st.description or "/".join(st.modalities)) if p)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(center_name)}: report</title>
<style>*{{box-sizing:border-box}}
html{{-webkit-text-size-adjust:100%}}
body{{font-family:sans-serif;margin:0 auto;max-width:480px;padding:12px;line-height:1.45;
overflow-wrap:anywhere;word-break:break-word}}
img{{display:block;max-width:100%;width:100%;height:auto;margin:6px 0;background:#000}}
h1{{font-size:1.2em;margin:.2em 0 .4em}}h2{{font-size:1em;margin:1em 0 .2em}}
p{{white-space:pre-wrap;margin:.2em 0}}.meta{{color:#555;font-size:.9em}}
.hash{{font-family:monospace;font-size:.85em;word-break:break-all}}</style></head><body>
<h1>{e(center_name)}</h1>
<p class="meta">Patient {e(patient)} · {e(study)}</p>{images}{sections}
<p class="meta">Signed by {e(v.signed_by or '')} on {e(_signed_at(v.signed_at))}</p>
<p class="meta">Signed report hash ({e(v.hash_algorithm or '')})
<span class="hash">{e(v.content_hash or '')}</span></p></body></html>"""


def open_shared(db: Database, token: str, client: str) -> SharedReport:
    """:func:`open_link` in its own transaction; a refusal is audited in another one,
    since the first is rolled back."""
    try:
        with db.session() as s:
            return open_link(s, token, client)
    except LinkGone:
        with db.session() as s:  # the refusal is audited too
            audit.append(s, actor="share:anonymous", action="share.refused",
                         object_type="share_link", object_id=token[:8] + "…")
        raise


def key_images(settings: Settings, shared: SharedReport) -> list[str]:
    """Orthanc IDs of a few key images: the middle instance of each image series."""
    with OrthancClient.from_settings(settings, retries=1) as client:
        series = studies.series_of(client, shared.study)
        picks = [sr["instances"][len(sr["instances"]) // 2] for sr in series
                 if sr["kind"] == "image" and sr["instances"]][:4]
        return [oid for uid in picks if (oid := client.find_instance(uid))]


def key_image_png(settings: Settings, shared: SharedReport, index: int) -> bytes:
    """Key image ``index`` of a shared report, rendered by Orthanc; 404 if there is none."""
    ids = key_images(settings, shared)
    if not 0 <= index < len(ids):
        raise NotFound("no such image")
    try:
        with OrthancClient.from_settings(settings, retries=1) as client:
            return client.get(f"/instances/{ids[index]}/preview", accept="image/png").content
    except OrthancError as e:
        raise NotFound("the image is not available") from e
