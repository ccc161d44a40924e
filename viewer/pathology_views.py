"""The pathology center as the web app shows it: who may see which case, slide, tile and
annotation, and the pathologist's acts (claim, call, consult, report, sign).

Visibility: a county account (``site_user``) sees its own site's cases, read-only; a
pathologist sees the sites their account is given, plus the cases they were asked about
in a consult (that case only); an administrator sees every site.  Another site's case,
slide or consult is answered 404, exactly as a missing one, so that its existence is not
revealed.  Roles are checked by the routes (:mod:`viewer.api.pathology`); sites and
consults here, on every object.

The domain's rules are in :mod:`pathology.cases`, :mod:`pathology.consults`,
:mod:`pathology.frozen`; reports are written and signed through
:mod:`viewer.report_views` as every report is.  Every view of a case and every change
is audited.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core import audit
from core.db import Database, get_database
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import (
    AIResult,
    PathologyCase,
    PathologyConsult,
    PathologyEvent,
    PathologySlide,
    Study,
)
from core.settings import Settings, get_settings
from pathology import annotations as ann
from pathology import cases, consults, dashboard, frozen, paging
from reports import service as report_service
from viewer import pathology_tiles as tiles
from viewer import report_views
from viewer.auth import SESSION_COOKIE, Bearer, UserContext, current_user

#: The synoptic report's template (pathology/report_templates/pathology-synoptic.toml).
TEMPLATE = "pathology-synoptic"
SIGNED_STATES = ("final", "amended")


def _now() -> datetime:
    return datetime.now(UTC)


# Who sees what ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """The sites a caller sees (None: all) and the cases they were consulted on."""

    sites: frozenset[str] | None
    consult_cases: frozenset[int]

    def sees(self, site_id: str, case_id: int) -> bool:
        return self.sites is None or site_id in self.sites or case_id in self.consult_cases

    def sees_site(self, site_id: str) -> bool:
        return self.sites is None or site_id in self.sites


def _pathologist(user: UserContext) -> bool:
    return user.user_id is not None and "pathologist" in user.roles


#: A consultant's consult cases, per user, for a few seconds: the tile path asks for
#: them on every tile of another site's slide.
_CONSULT_CASES: tiles.TTLCache[tuple[str, int], frozenset[int]] = tiles.TTLCache(10)


def scope(s: Session, user: UserContext) -> Scope:
    """Sites from the account's all-sites grant, as for studies
    (:meth:`UserContext.can_see_site`; the admin role is not such a grant)."""
    sites = None if user.all_sites else frozenset(user.site_ids)
    consulted: frozenset[int] = frozenset()
    if _pathologist(user) and user.user_id is not None:
        consulted = frozenset(consults.consultant_case_ids(s, user.user_id))
    return Scope(sites, consulted)


def visible_case(s: Session, user: UserContext, case_id: int) -> PathologyCase:
    """The case if the caller may see it; NotFound (404) otherwise."""
    row = s.get(PathologyCase, case_id)
    if row is None or not scope(s, user).sees(row.site_id, row.id):
        raise NotFound(f"pathology case {case_id} not found")
    return row


def _own_site_case(s: Session, user: UserContext, case_id: int) -> PathologyCase:
    """A case the caller may act on: of a site they read for (a consultant from another
    site reads the case, but does not claim, call or sign it)."""
    row = visible_case(s, user, case_id)
    if not user.can_see_site(row.site_id):
        raise Forbidden(f"case {case_id} is at another site: a consultant answers the "
                        "consult, the site's pathologists read and sign the case")
    return row


def _person(user: UserContext) -> int:
    if user.user_id is None:
        raise Forbidden("this needs a signed-in pathologist, not the operator token")
    return user.user_id


def _iso(dt: datetime | None) -> datetime | None:
    return dt if dt is None or dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def case_item(s: Session, user: UserContext, case_id: int) -> dict[str, Any]:
    summary = asdict(cases.summary(s, case_id))
    return {**summary, "mine": user.user_id is not None
            and summary["assigned_to"] == user.user_id}


def list_cases(s: Session, user: UserContext, *, site: str | None, stain: str | None,
               organ: str | None, mine: bool, status: str) -> dict[str, Any]:
    """The case worklist of the caller's sites (QC failures first for a county account)."""
    sc = scope(s, user)
    technician = "site_user" in user.roles and not _pathologist(user)
    found = cases.worklist(s, visible_sites=None if sc.sites is None else set(sc.sites),
                           user_id=user.user_id, site=site, stain=stain, organ=organ,
                           mine=mine, status=status, technician=technician)
    return {"cases": [{**asdict(c), "mine": user.user_id is not None
                       and c.assigned_to == user.user_id} for c in found]}


# Claim, open ----------------------------------------------------------------------------


def claim(s: Session, user: UserContext, case_id: int) -> dict[str, Any]:
    _own_site_case(s, user, case_id)
    cases.claim(s, case_id, _person(user), user.username, _now())
    return case_item(s, user, case_id)


def release(s: Session, user: UserContext, case_id: int) -> dict[str, Any]:
    _own_site_case(s, user, case_id)
    cases.release(s, case_id, _person(user), user.username, _now())
    return case_item(s, user, case_id)


def _slide_ref(slide: PathologySlide, case: PathologyCase, study_uid: str) -> tiles.SlideRef:
    return tiles.SlideRef(id=slide.id, case_id=case.id, site_id=case.site_id,
                          study_id=slide.study_id, study_uid=study_uid,
                          series_uid=slide.series_uid,
                          orthanc_series_id=slide.orthanc_series_id or "",
                          width=slide.width, height=slide.height, mpp=slide.mpp)


def _slide_out(slide: PathologySlide, has_heatmap: bool) -> dict[str, Any]:
    return {"id": slide.id, "series_uid": slide.series_uid, "part": slide.part,
            "block": slide.block, "stain": slide.stain, "label": slide.label,
            "width": slide.width, "height": slide.height, "levels": slide.levels,
            "mpp": slide.mpp, "qc_grade": slide.qc_grade,
            "qc_reasons": list(slide.qc_reasons or []),
            "qc_metrics": dict(slide.qc_metrics or {}),
            "has_label_image": False, "has_heatmap": has_heatmap}


def _report_of(s: Session, user: UserContext, case: PathologyCase) -> dict[str, Any] | None:
    if case.primary_study_id is None:
        return None
    report = report_service.study_report(s, case.primary_study_id)
    if report is None:
        return None
    if not _pathologist(user) and not user.is_operator and report.state not in SIGNED_STATES:
        return None  # a draft is the pathologist's work in progress
    return {"id": report.id, "state": report.state}


def open_case(db: Database, user: UserContext, case_id: int) -> dict[str, Any]:
    """The case with its slides, timeline, consults and report (audited as a view).
    Its holder opening it starts the review.  The archive (label images) is asked
    with no transaction open."""
    refs: list[tuple[int, tiles.SlideRef]] = []
    with db.session() as s:
        case = visible_case(s, user, case_id)
        if _pathologist(user) and case.assigned_to == user.user_id:
            cases.start_review(s, case, _person(user), _now())
        slides = list(s.scalars(select(PathologySlide).where(PathologySlide.case_id == case.id)
                                .order_by(PathologySlide.part, PathologySlide.block,
                                          PathologySlide.id)))
        with_heatmap = set(s.scalars(select(AIResult.series_uid).where(
            AIResult.series_uid.in_([sl.series_uid for sl in slides]),
            AIResult.heatmap.is_not(None))))
        study_uids = dict(s.execute(select(Study.id, Study.study_uid).where(
            Study.id.in_({sl.study_id for sl in slides}))).all())
        slide_out = [_slide_out(sl, sl.series_uid in with_heatmap) for sl in slides]
        refs = [(i, _slide_ref(sl, case, study_uids.get(sl.study_id, "")))
                for i, sl in enumerate(slides)]
        timeline = [{"step": e.step, "at": _iso(e.at), "actor": e.actor}
                    for e in s.scalars(select(PathologyEvent)
                                       .where(PathologyEvent.case_id == case.id)
                                       .order_by(PathologyEvent.at, PathologyEvent.id))]
        consult_rows: list[PathologyConsult] = []
        if _pathologist(user) or user.is_operator or "admin" in user.roles:
            consult_rows = consults.consults_of_case(s, case.id)
            if not scope(s, user).sees_site(case.site_id):
                # A consultant from another site sees their own consults only.
                consult_rows = [c for c in consult_rows if c.consultant_id == user.user_id]
        out = {**case_item(s, user, case.id), "slides": slide_out, "timeline": timeline,
               "consults": [consults.consult_out(s, c, user.user_id) for c in consult_rows],
               "report": _report_of(s, user, case), "study_id": case.primary_study_id}
        audit.append(s, actor=user.username, action="pathology.case_view",
                     object_type="pathology_case", object_id=str(case.id),
                     detail={"slides": len(slides)})
    for i, ref in refs:
        if ref.study_uid:
            slide_out[i]["has_label_image"] = tiles.has_label_image(ref)
    return out


# Slides -------------------------------------------------------------------------------

#: slide id → what the tile path needs; a slide's site and series never change.
#: Keyed by the database too: one process may serve (test) centers whose ids overlap.
_SLIDES: tiles.TTLCache[tuple[str, int], tiles.SlideRef] = tiles.TTLCache(60)
#: (database, user id, case id) whose first tile is recorded already (in this process).
_FIRST_TILE_SEEN: set[tuple[str, int, int]] = set()
_FIRST_TILE_LOCK = threading.Lock()


def _load_ref(db: Database, slide_id: int) -> tiles.SlideRef:
    with db.session() as s:
        row = s.execute(select(PathologySlide, PathologyCase, Study.study_uid)
                        .join(PathologyCase, PathologyCase.id == PathologySlide.case_id)
                        .join(Study, Study.id == PathologySlide.study_id)
                        .where(PathologySlide.id == slide_id)).first()
        if row is None:
            raise NotFound(f"slide {slide_id} not found")
        return _slide_ref(row[0], row[1], str(row[2]))


def slide_ref(db: Database, user: UserContext, slide_id: int) -> tiles.SlideRef:
    """The slide if the caller may see its case; NotFound (404) otherwise.  Cached, so a
    tile costs no query when the caller reads for the slide's site."""
    key = (db.url, slide_id)
    ref = _SLIDES.get(key) or _SLIDES.put(key, _load_ref(db, slide_id))
    if user.can_see_site(ref.site_id):
        return ref
    if _pathologist(user) and user.user_id is not None:
        # Only a grant is cached: a consult asked a moment ago must open at once.
        consulted = _CONSULT_CASES.get((db.url, user.user_id))
        if consulted is None or ref.case_id not in consulted:
            with db.session() as s:
                consulted = scope(s, user).consult_cases
            _CONSULT_CASES.put((db.url, user.user_id), consulted)
        if ref.case_id in consulted:
            return ref
    raise NotFound(f"slide {slide_id} not found")


def pyramid(db: Database, user: UserContext, slide_id: int) -> dict[str, Any]:
    ref = slide_ref(db, user, slide_id)
    return tiles.pyramid(ref).as_json(ref.mpp)


def _record_first_tile(db: Database, user: UserContext, ref: tiles.SlideRef) -> None:
    seen = (db.url, user.user_id or 0, ref.case_id)
    with db.session() as s:
        cases.record_event(s, ref.case_id, "first_tile", user.username, _now(),
                           {"slide_id": ref.id}, first_only=True)
    with _FIRST_TILE_LOCK:
        if len(_FIRST_TILE_SEEN) > 100_000:
            _FIRST_TILE_SEEN.clear()
        _FIRST_TILE_SEEN.add(seen)


async def tile_async(user: UserContext, slide_id: int, level: int, col: int,
                     row: int) -> tuple[bytes, str]:
    """One tile.  A pathologist's first tile of a case records its "first_tile" step
    (checked once per user and case in this process, so tiles cost no write).  When the
    slide, its pyramid and that first tile are known to this process (every tile but
    the first few), no thread and no database are involved, only one request to
    Orthanc.  The caches are per process: several web workers each learn them once."""
    db = get_database(get_settings().database_url)
    ref = _SLIDES.get((db.url, slide_id))
    if ref is None or not user.can_see_site(ref.site_id):
        ref = await run_in_threadpool(slide_ref, db, user, slide_id)
    if tiles.cached_pyramid(ref) is None:
        await run_in_threadpool(tiles.pyramid, ref)
    data = await tiles.tile_async(ref, level, col, row)
    if _pathologist(user) and user.user_id is not None \
            and (db.url, user.user_id, ref.case_id) not in _FIRST_TILE_SEEN:
        await run_in_threadpool(_record_first_tile, db, user, ref)
    return data


#: Who is behind a session cookie or bearer token, for a few seconds: a viewer asks for
#: tiles by the hundred, and each would otherwise cost the session's queries.  A
#: signed-out or disabled account keeps reading tiles (only) for at most this long.
TILE_AUTH_TTL_S = 5.0
_VIEWERS: tiles.TTLCache[tuple[str, str], UserContext] = tiles.TTLCache(TILE_AUTH_TTL_S,
                                                                        max_items=4096)
VIEW_ROLES = ("pathologist", "admin", "site_user")


async def tile_viewer(request: Request, creds: Bearer) -> UserContext:
    """The caller of a tile request (a viewing role), remembered briefly (see
    :data:`TILE_AUTH_TTL_S`); on a miss, exactly the app's own authentication."""
    raw = creds.credentials if creds is not None else request.cookies.get(SESSION_COOKIE, "")
    key = (get_settings().database_url,
           ("bearer:" if creds is not None else "cookie:")
           + hashlib.sha256(raw.encode()).hexdigest())
    user = _VIEWERS.get(key) if raw else None
    if user is None:
        user = await run_in_threadpool(current_user, request, creds)
        if not user.has_role(*VIEW_ROLES):
            raise HTTPException(403, f"requires role {' or '.join(VIEW_ROLES)}")
        _VIEWERS.put(key, user)
    return user


def thumbnail(db: Database, user: UserContext, slide_id: int) -> bytes:
    return tiles.thumbnail(slide_ref(db, user, slide_id))


def label(db: Database, user: UserContext, slide_id: int) -> bytes:
    return tiles.label_image(slide_ref(db, user, slide_id))


def _visible_slide(s: Session, user: UserContext, slide_id: int) -> PathologySlide:
    slide = s.get(PathologySlide, slide_id)
    case = s.get(PathologyCase, slide.case_id) if slide is not None else None
    if slide is None or case is None or not scope(s, user).sees(case.site_id, case.id):
        raise NotFound(f"slide {slide_id} not found")
    return slide


def qc_overlay(s: Session, user: UserContext, slide_id: int) -> dict[str, Any]:
    slide = _visible_slide(s, user, slide_id)
    m = slide.qc_metrics or {}
    return {"grade": slide.qc_grade, "reasons": list(slide.qc_reasons or []),
            "blur_tiles": list(m.get("blur_tiles", [])), "pen_boxes": list(m.get("pen_boxes", [])),
            "missing": list(m.get("missing", []))}


def ai_overlay(s: Session, user: UserContext, slide_id: int) -> dict[str, Any]:
    """The newest tile model's heat map over the slide (a demonstration, unverified)."""
    slide = _visible_slide(s, user, slide_id)
    found = s.scalar(select(AIResult).where(AIResult.series_uid == slide.series_uid,
                                            AIResult.heatmap.is_not(None))
                     .order_by(AIResult.created_at.desc(), AIResult.id.desc()).limit(1))
    if found is None or not found.heatmap:
        raise NotFound("no AI heat map")
    h = found.heatmap
    return {"rows": int(h.get("rows", 0)), "cols": int(h.get("cols", 0)),
            "cell_px": float(h.get("cell_px", 0)), "labels": list(h.get("labels", [])),
            "values": list(h.get("values", [])), "model": found.model_name,
            "version": found.model_version, "demonstration": True}


# Annotations ------------------------------------------------------------------------------


def _annotations_of(ref: tiles.SlideRef) -> list[ann.Annotation]:
    out: list[ann.Annotation] = []
    for ds in tiles.annotation_datasets(ref):
        if ann.references_series(ds, ref.series_uid):
            out.extend(ann.read_annotations(ds))
    return out


def slide_annotations(db: Database, user: UserContext, slide_id: int) -> dict[str, Any]:
    ref = slide_ref(db, user, slide_id)
    return {"annotations": [a.as_dict() for a in _annotations_of(ref)]}


def save_annotations(db: Database, user: UserContext, slide_id: int,
                     items: list[dict[str, Any]]) -> dict[str, Any]:
    """Store ``items`` as one new ANN instance in the slide's study (after checking every
    one against the slide's extent: nothing is stored when one is refused)."""
    ref = slide_ref(db, user, slide_id)
    with db.session() as s:
        case = s.get(PathologyCase, ref.case_id)
        if case is None:
            raise NotFound(f"slide {slide_id} not found")
        if not user.can_see_site(case.site_id) \
                and ref.case_id not in scope(s, user).consult_cases:
            raise NotFound(f"slide {slide_id} not found")
    now = _now()
    new = [ann.Annotation(kind=str(i["kind"]), coords=[list(p) for p in i["coords"]],
                          text=str(i.get("text", "")), author=user.username, created_at=now)
           for i in items]
    ann.validate(new, ref.width, ref.height)
    existing = tiles.annotation_datasets(ref)
    ds = ann.build_annotation_dataset(tiles.source_headers(ref), new, user.username,
                                      instance_number=len(existing) + 1, now=now)
    sop = tiles.store(ds)
    with db.session() as s:
        audit.append(s, actor=user.username, action="pathology.annotation_save",
                     object_type="pathology_slide", object_id=str(slide_id),
                     detail={"case_id": ref.case_id, "sop_instance_uid": sop,
                             "count": len(new), "kinds": sorted({a.kind for a in new})})
    return {"annotations": [a.as_dict() for a in _annotations_of(ref)],
            "sop_instance_uid": sop}


# Frozen call, consults ----------------------------------------------------------------------


def record_call(s: Session, user: UserContext, case_id: int, text: str) -> dict[str, Any]:
    case = _own_site_case(s, user, case_id)
    event = frozen.record_call(s, case, user.username, text, _now())
    if event is None:
        raise Conflict(f"case {case_id}: the call was not recorded")
    audit.append(s, actor=user.username, action="pathology.call",
                 object_type="pathology_case", object_id=str(case_id),
                 detail={"step": event.step})
    return {"case_id": case_id, "step": event.step, "at": _iso(event.at),
            "actor": event.actor}


def request_consult(s: Session, user: UserContext, case_id: int,
                    body: dict[str, Any]) -> dict[str, Any]:
    case = _own_site_case(s, user, case_id)
    known = set(s.scalars(select(PathologySlide.id).where(PathologySlide.case_id == case.id)))
    unknown = sorted(set(body["slide_ids"]) - known)
    if unknown:
        raise InvalidInput(f"slides {unknown} are not slides of case {case_id}")
    consult = consults.request_consult(
        s, case, _person(user), body["consultant_id"], body["question"],
        list(body["slide_ids"]), bool(body["blinded"]), body["first_diagnosis"], _now())
    return consults.consult_out(s, consult, user.user_id)


def _lite(case: PathologyCase) -> dict[str, Any]:
    return {"id": case.id, "site_id": case.site_id, "accession_number": case.accession_number,
            "patient_name": case.patient_name, "organ": case.organ, "urgency": case.urgency,
            "state": case.state}


def my_consults(s: Session, user: UserContext) -> dict[str, Any]:
    """Consults sent to the caller and asked by the caller, newest first."""
    out = []
    for c in consults.consults_for(s, _person(user)):
        case = s.get(PathologyCase, c.case_id)
        if case is not None:
            out.append({**consults.consult_out(s, c, user.user_id), "case": _lite(case)})
    return {"consults": out}


def _my_consult(s: Session, user: UserContext, consult_id: int) -> PathologyConsult:
    row = s.get(PathologyConsult, consult_id)
    if row is None or user.user_id not in (row.consultant_id, row.requested_by):
        raise NotFound(f"consult {consult_id} not found")
    return row


def answer_consult(s: Session, user: UserContext, consult_id: int,
                   answer: str) -> dict[str, Any]:
    row = _my_consult(s, user, consult_id)
    consults.answer_consult(s, row, _person(user), answer, _now())
    return consults.consult_out(s, row, user.user_id)


def grade_consult(s: Session, user: UserContext, consult_id: int,
                  concordance: str) -> dict[str, Any]:
    row = _my_consult(s, user, consult_id)
    consults.grade_consult(s, row, _person(user), concordance)
    return consults.consult_out(s, row, user.user_id)


def consultants(s: Session, user: UserContext) -> dict[str, Any]:
    return {"consultants": consults.consultants(s, exclude_user_id=user.user_id)}


def pages(s: Session, user: UserContext) -> dict[str, Any]:
    if user.user_id is None:
        return {"pages": []}
    found = paging.open_pages(s, user.user_id, admin="admin" in user.roles)
    return {"pages": [p.as_json() for p in found]}


def dashboard_view(s: Session, user: UserContext) -> dict[str, Any]:
    sites = None if user.all_sites else set(user.site_ids)
    return {"frozen": dashboard.frozen_step_stats(s, sites),
            "concordance": dashboard.concordance_table(s, sites)}


# Report, sign, amend -----------------------------------------------------------------------


def _held_by_caller(s: Session, user: UserContext, case_id: int) -> PathologyCase:
    case = _own_site_case(s, user, case_id)
    if case.assigned_to is not None and case.assigned_to != user.user_id:
        raise Conflict(f"case {case_id} is being read by "
                       f"{cases.summary(s, case_id).assigned_name or 'another pathologist'}")
    if case.primary_study_id is None:
        raise Conflict(f"case {case_id} has no study to file its report under yet")
    return case


def create_report(s: Session, user: UserContext, case_id: int) -> dict[str, Any]:
    """The case's synoptic report: created prefilled, or the one it has."""
    case = _held_by_caller(s, user, case_id)
    assert case.primary_study_id is not None
    report = report_service.create_report(s, case.primary_study_id, user.username,
                                          TEMPLATE)
    return {"report_id": report.id}


def _case_report_id(s: Session, case: PathologyCase) -> int:
    report = report_service.study_report(s, case.primary_study_id) \
        if case.primary_study_id is not None else None
    if report is None:
        raise Conflict(f"case {case.id} has no report yet: start it first "
                       f"(POST /api/pathology/cases/{case.id}/report)")
    return report.id


def sign(s: Session, settings: Settings, user: UserContext, case_id: int, *,
         passphrase: str, key_id: int | None, version: int | None) -> dict[str, Any]:
    """Sign the case's report (delivery to the site follows, as for every report) and
    move the case to signed; signing an addendum of a signed case amends it."""
    case = _held_by_caller(s, user, case_id)
    report_id = _case_report_id(s, case)
    already_signed = case.state in ("signed", "amended")
    out = report_views.sign(s, settings, user, report_id, passphrase=passphrase,
                            key_id=key_id, version=version)
    if already_signed:
        cases.mark_amended(s, case, user.username, _now())
    else:
        cases.mark_signed(s, case, user.username, _now())
    audit.append(s, actor=user.username, action="pathology.case_sign",
                 object_type="pathology_case", object_id=str(case_id),
                 detail={"report_id": report_id, "state": case.state})
    return {"case": case_item(s, user, case_id), "report": {"id": out.id, "state": out.state}}


def amend(s: Session, user: UserContext, case_id: int,
          fields: dict[str, str]) -> dict[str, Any]:
    """Start an addendum to the signed report (signed with the sign route) and mark the
    case amended."""
    case = _held_by_caller(s, user, case_id)
    if case.state not in ("signed", "amended"):
        raise Conflict(f"case {case_id} is {case.state}: only a signed case is amended")
    report_id = _case_report_id(s, case)
    out = report_views.add_addendum(s, user, report_id, fields)
    cases.mark_amended(s, case, user.username, _now())
    audit.append(s, actor=user.username, action="pathology.case_amend",
                 object_type="pathology_case", object_id=str(case_id),
                 detail={"report_id": report_id})
    return {"case": case_item(s, user, case_id), "report": {"id": out.id, "state": out.state}}


def reset_caches() -> None:
    """Forget cached slides and first tiles (tests reuse ids across centers)."""
    _SLIDES.clear()
    _CONSULT_CASES.clear()
    _VIEWERS.clear()
    with _FIRST_TILE_LOCK:
        _FIRST_TILE_SEEN.clear()
    tiles.reset_caches()
