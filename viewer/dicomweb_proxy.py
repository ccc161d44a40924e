"""DICOMweb (QIDO-RS, WADO-RS, rendered frames, thumbnails) through the web app.

Orthanc stays on loopback behind its own password; readers reach images only
here, after the app's authentication, a reading role, and a per-site check.

Every request is checked in four steps, each of which refuses with 404 so that
another site's objects are not even revealed to exist:

1. The *raw* request path is parsed against the DICOMweb grammar
   (:mod:`viewer.dicomweb_paths`); dot segments, backslashes and percent escapes
   never get past it.
2. The study UID must belong to a study of a site the user may see.
3. The series and instance must belong to that study in the center's own
   database: received instances (``instances``), the AI pre-reads' SR and SEG
   (``ai_results``) and the signed reports' SR and PDF (``report_versions``).
   Orthanc merges studies with the same UID from two sites, so its answer alone
   is not proof.
4. The upstream URL is rebuilt from the parsed UIDs, and the query from the
   parameters that resource takes; JSON answers at study and series level are
   filtered to what steps 2 and 3 allow.

Access is audited per user and study, aggregated over a window
(``RDC_DICOMWEB_AUDIT_WINDOW_S``) so that a 300-frame stack is one record.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_models.output_uids import result_uids
from core import audit
from core.db import get_database
from core.models import AIResult, Instance, Report, ReportVersion, Study
from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound
from core.settings import get_settings
from viewer.auth import Reader, UserContext
from viewer.dicomweb_paths import JSON_RESOURCES, BadPath, Resource, Target, parse

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
_PASS_HEADERS = ("content-type", "etag")
_NO_STORE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_STUDY_UID_TAG = "0020000D"
_SERIES_UID_TAG = "0020000E"
_SOP_UID_TAG = "00080018"
#: QIDO matching keys: a keyword, a tag, or a dotted sequence path of either.
_QIDO_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})"
                       r"(\.([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})){0,7}$")
#: What a query value may hold: sent on literally (see _encode), so nothing that ends a
#: parameter or the query, and no escapes.
_QUERY_VALUE = re.compile(r"^[A-Za-z0-9^*?.,_:/+()-]*$")
_RENDER_KEYS = frozenset({"viewport", "window", "quality"})
_SEARCHES = frozenset({Resource.SEARCH_STUDIES, Resource.SEARCH_SERIES,
                       Resource.SEARCH_INSTANCES, Resource.SEARCH_SERIES_INSTANCES})
_MAX_QUERY_VALUE = 256


def _not_found(detail: str = "not found") -> HTTPException:
    return HTTPException(404, detail)


@lru_cache(maxsize=4)
def _client(url: str) -> OrthancClient:
    """One pooled client per Orthanc for the process: a viewer fetching a stack asks for
    hundreds of frames, and a new connection for each would cost more than the frame."""
    return OrthancClient.from_settings(get_settings(), retries=1)


def target_of(request: Request) -> Target:
    """Parse the request's undecoded path; 404 with the reason for anything else."""
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        raise _not_found("the request path could not be read undecoded")
    path = raw.decode("latin-1")
    root = str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root):]
    try:
        return parse(path)
    except BadPath as e:
        raise _not_found(f"not found: {e}") from e


def _query(target: Target, request: Request, *, paging: bool) -> list[tuple[str, str]]:
    """The query parameters this resource takes, checked; 400 for any other."""
    pairs = parse_qsl(request.url.query, keep_blank_values=True)
    if target.resource is Resource.THUMBNAIL:
        return [("viewport", "128,128")]
    allowed: set[str] = set()
    if target.resource is Resource.RENDERED:
        allowed = set(_RENDER_KEYS)
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        if len(value) > _MAX_QUERY_VALUE:
            raise HTTPException(400, f"query parameter {key[:40]!r} is too long")
        if not _QUERY_VALUE.match(value):
            raise HTTPException(
                400, f"query parameter {key[:40]!r}: the image archive matches only letters, "
                     "digits and ^ * ? . , - _ : / + ( ) literally (no spaces or other "
                     "characters); use the * and ? wildcards instead")
        if key in allowed:
            out.append((key, value))
        elif target.resource in _SEARCHES and key in ("limit", "offset"):
            if not value.isdigit():
                raise HTTPException(400, f"{key} must be a non-negative integer")
            if paging:
                out.append((key, value))
        elif target.resource in _SEARCHES and (
                key in ("includefield", "fuzzymatching") or _QIDO_KEY.match(key)):
            out.append((key, value))
        else:
            raise HTTPException(400, f"query parameter {key[:40]!r} is not accepted here")
    return out


def _encode(pairs: list[tuple[str, str]]) -> str:
    # Orthanc's DICOMweb plugin matches the query values exactly as they arrive, without
    # percent-decoding them (``PatientName=DOE%5EJ`` finds nothing, ``viewport=128%2C128``
    # is refused), so the checked values go on literally.  _query has made sure they hold
    # nothing that would change the query's structure.
    return "&".join(f"{k}={v}" for k, v in pairs)


def _accept(target: Target, asked: str | None) -> str | None:
    """Orthanc's rendered endpoint takes only one concrete image type, not a browser's
    ``image/avif,image/webp,*/*`` list: pick PNG when asked for, else JPEG."""
    if target.resource in (Resource.RENDERED, Resource.THUMBNAIL):
        return "image/png" if asked and "image/png" in asked else "image/jpeg"
    if target.resource in JSON_RESOURCES:
        return "application/dicom+json"
    return asked


def _upstream(target: Target, request: Request, query: list[tuple[str, str]]) -> Response:
    accept = _accept(target, request.headers.get("accept"))
    encoded = _encode(query)
    try:
        upstream = _client(get_settings().orthanc_url).get(
            target.upstream_path() + (f"?{encoded}" if encoded else ""), accept=accept)
    except OrthancNotFound as e:
        raise _not_found() from e
    except OrthancError as e:
        raise HTTPException(502, f"the image archive did not answer: {e}") from e
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_HEADERS}
    headers.update(_NO_STORE)
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)


# Membership in the center's own database -----------------------------------------


@dataclass(frozen=True)
class StudyScope:
    """The user's view of one study UID: the center's study rows they may see, and
    whether rows of the same UID exist at sites they may not (Orthanc merges them)."""

    study_ids: tuple[int, ...]
    shared_with_hidden: bool


def study_scope(s: Session, user: UserContext, study_uid: str) -> StudyScope:
    rows = s.execute(select(Study.id, Study.site_id).where(Study.study_uid == study_uid)).all()
    mine = tuple(int(r[0]) for r in rows if user.can_see_site(str(r[1])))
    if not mine:
        raise _not_found()
    return StudyScope(mine, len(mine) < len(rows))


def visible_objects(s: Session, study_ids: tuple[int, ...], series_uid: str | None = None,
                    *, received: bool = True) -> dict[str, set[str]]:
    """Series UID → SOP Instance UIDs of everything in ``study_ids`` (one series if
    given): what the sites sent (unless ``received`` is false), the AI results and
    the signed report outputs."""
    found: dict[str, set[str]] = {}

    def add(series: str | None, sop: str | None) -> None:
        if series and sop and (series_uid is None or series == series_uid):
            found.setdefault(series, set()).add(sop)

    if received:
        q = select(Instance.series_uid, Instance.sop_instance_uid).where(
            Instance.study_id.in_(study_ids))
        if series_uid is not None:
            q = q.where(Instance.series_uid == series_uid)
        for series, sop in s.execute(q):
            add(series, sop)
    for name, version, source, seg in s.execute(
            select(AIResult.model_name, AIResult.model_version, AIResult.series_uid,
                   AIResult.seg_sop_uid).where(AIResult.study_id.in_(study_ids))):
        uids = result_uids(source, name, version)
        add(uids.sr_series, uids.sr)
        if seg is not None:
            add(uids.seg_series, uids.seg)
    for sr_series, sr, pdf_series, pdf in s.execute(
            select(ReportVersion.sr_series_uid, ReportVersion.sr_sop_uid,
                   ReportVersion.pdf_series_uid, ReportVersion.pdf_sop_uid)
            .join(Report, Report.id == ReportVersion.report_id)
            .where(Report.study_id.in_(study_ids))):
        add(sr_series, sr)
        add(pdf_series, pdf)
    return found


def instance_visible(s: Session, study_ids: tuple[int, ...], series_uid: str,
                     sop_uid: str) -> bool:
    """Whether one instance belongs to ``study_ids``: the per-frame check, kept to an
    indexed lookup instead of listing the series for each of hundreds of frames."""
    if s.scalar(select(Instance.id).where(
            Instance.sop_instance_uid == sop_uid, Instance.series_uid == series_uid,
            Instance.study_id.in_(study_ids)).limit(1)) is not None:
        return True
    objects = visible_objects(s, study_ids, series_uid, received=False)
    return sop_uid in objects.get(series_uid, set())


def _series_elsewhere(s: Session, study_ids: tuple[int, ...], series_uid: str) -> bool:
    """Whether instances of ``series_uid`` were received into any other study row."""
    return s.scalar(select(Instance.id).where(
        Instance.series_uid == series_uid, Instance.study_id.not_in(study_ids)).limit(1)
    ) is not None


def _first(item: dict[str, Any], tag: str) -> Any:
    value = item.get(tag, {}).get("Value") or [None]
    return value[0]


# Aggregated audit ----------------------------------------------------------------


class AccessAudit:
    """One audit record per (user, study) per window, with the requests it covers.

    The first request in a window is written at once (so access is never
    unrecorded); the requests that followed it in that window are counted and
    carried into the next record.  Per process: each web worker keeps its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], tuple[float, int]] = {}

    def should_write(self, actor: str, study_uid: str, window_s: float) -> int | None:
        """The number of earlier requests to report if a record is due now, else None."""
        now = time.monotonic()
        key = (actor, study_uid)
        with self._lock:
            started, count = self._open.get(key, (0.0, 0))
            if key in self._open and now - started < window_s:
                self._open[key] = (started, count + 1)
                return None
            self._open[key] = (now, 1)
            if len(self._open) > 10_000:  # forget the oldest windows; they were written
                for k in sorted(self._open, key=lambda k: self._open[k][0])[:5_000]:
                    del self._open[k]
            return count

    def reset(self) -> None:
        with self._lock:
            self._open.clear()


ACCESS_AUDIT = AccessAudit()


def _audit(s: Session, user: UserContext, target: Target, scope: StudyScope | None) -> None:
    """``dicomweb.access`` per (user, study), ``dicomweb.search`` per user, each once
    per window."""
    key = target.study or "search"
    earlier = ACCESS_AUDIT.should_write(user.username, key,
                                        get_settings().dicomweb_audit_window_s)
    if earlier is None:
        return
    detail: dict[str, Any] = {"resource": target.resource.value,
                              "earlier_requests_in_last_window": earlier}
    if target.study is None:
        audit.append(s, actor=user.username, action="dicomweb.search", object_type="query",
                     object_id="studies", detail=detail)
        return
    detail.update(series=target.series, study_ids=list(scope.study_ids) if scope else [])
    audit.append(s, actor=user.username, action="dicomweb.access", object_type="study",
                 object_id=target.study, detail=detail)


# Routes --------------------------------------------------------------------------


@router.get("/studies")
def search_studies(request: Request, user: Reader) -> Response:
    """QIDO-RS study search, filtered to the studies of the user's sites *before* paging.

    For a site-limited user Orthanc is asked without ``limit``/``offset`` and the
    page is cut after the site filter: paging first would return empty pages."""
    target = target_of(request)
    if user.all_sites:
        query = _query(target, request, paging=True)
        with get_database(get_settings().database_url).session() as s:
            _audit(s, user, target, None)
        return _upstream(target, request, query)
    pairs = parse_qsl(request.url.query)
    query = _query(target, request, paging=False)
    limit = next((int(v) for k, v in pairs if k == "limit"), None)
    offset = next((int(v) for k, v in pairs if k == "offset"), 0)
    response = _upstream(target, request, query)
    with get_database(get_settings().database_url).session() as s:
        mine = set(s.scalars(select(Study.study_uid).where(
            Study.site_id.in_(sorted(user.site_ids)))))
        _audit(s, user, target, None)
    found: list[dict[str, Any]] = json.loads(bytes(response.body) or b"[]")
    kept = [d for d in found if _first(d, _STUDY_UID_TAG) in mine]
    page = kept[offset:] if limit is None else kept[offset:offset + limit]
    return Response(json.dumps(page), media_type="application/dicom+json", headers=_NO_STORE)


@router.get("/studies/{_path:path}")
def study_resource(_path: str, request: Request, user: Reader) -> Response:
    """Everything under one study: the whole study, metadata, series and instance
    searches and retrieves, frames, rendered images and thumbnails (``.../thumbnail``,
    which Debian's DICOMweb plugin lacks, is a small rendered image).

    ``_path`` is only there for routing: the raw request path is what is parsed."""
    target = target_of(request)
    assert target.study is not None  # the grammar gives every resource here a study
    query = _query(target, request, paging=True)
    with get_database(get_settings().database_url).session() as s:
        scope = study_scope(s, user, target.study)
        objects: dict[str, set[str]] = {}
        if target.instance is not None:
            assert target.series is not None
            if not instance_visible(s, scope.study_ids, target.series, target.instance):
                raise _not_found()
        elif target.series is not None or target.resource in JSON_RESOURCES:
            objects = visible_objects(s, scope.study_ids, target.series)
            if target.series is not None and target.series not in objects:
                raise _not_found()
        # A whole study or series goes out as one multipart answer that cannot be
        # filtered: refuse it when part of it was received for a site the user may not see.
        if target.resource is Resource.STUDY and scope.shared_with_hidden:
            raise _not_found("this study UID is shared with another site; "
                             "retrieve its series one by one")
        if target.resource is Resource.SERIES and target.series is not None and (
                _series_elsewhere(s, scope.study_ids, target.series)):
            raise _not_found()
        _audit(s, user, target, scope)
    response = _upstream(target, request, query)
    if (target.resource not in JSON_RESOURCES or target.instance is not None
            or response.status_code != 200):
        return response
    found: list[dict[str, Any]] = json.loads(bytes(response.body) or b"[]")
    if target.series is None:
        kept = [d for d in found if _first(d, _SERIES_UID_TAG) in objects]
    else:
        sops = objects[target.series]
        kept = [d for d in found if _first(d, _SOP_UID_TAG) in sops]
    return Response(json.dumps(kept), media_type="application/dicom+json", headers=_NO_STORE)
