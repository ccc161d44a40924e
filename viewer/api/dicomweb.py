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
   database (:mod:`viewer.dicomweb_access`, which also audits the access).
4. The upstream URL is rebuilt from the parsed UIDs, and the query from the
   parameters that resource takes; JSON answers at study and series level are
   filtered to what steps 2 and 3 allow.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response

from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound
from core.settings import get_settings
from viewer import dicomweb_access as access
from viewer.deps import DatabaseDep, Reader
from viewer.dicomweb_paths import JSON_RESOURCES, BadPath, Resource, Target, parse

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
#: DICOMweb answers pass through as Orthanc gives them (after the checks): documented
#: as their media types, since their shapes are the DICOM standard's, not ours.
_SEARCH_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "QIDO-RS matches (DICOM JSON).",
          "content": {"application/dicom+json": {}}}}
_STUDY_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON, multipart DICOM or frames, or a rendered image.",
          "content": {"application/dicom+json": {}, "multipart/related": {},
                      "image/jpeg": {}, "image/png": {}}}}
_PASS_HEADERS = ("content-type", "etag")
_NO_STORE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_STUDY_UID_TAG = "0020000D"
_SERIES_UID_TAG = "0020000E"
_SOP_UID_TAG = "00080018"
#: QIDO matching keys: a keyword, a tag, or a dotted sequence path of either.
_QIDO_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})"
                       r"(\.([A-Za-z][A-Za-z0-9]{0,63}|[0-9A-Fa-f]{8})){0,7}\Z")
#: What a query value may hold: sent on literally (see _encode), so nothing that ends a
#: parameter or the query, and no escapes.
_QUERY_VALUE = re.compile(r"^[A-Za-z0-9^*?.,_:/+()-]*\Z")
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


def _first(item: dict[str, Any], tag: str) -> Any:
    value = item.get(tag, {}).get("Value") or [None]
    return value[0]


# Routes --------------------------------------------------------------------------


@router.get("/studies", response_class=Response, responses=_SEARCH_ANSWER)
def search_studies(request: Request, db: DatabaseDep, user: Reader) -> Response:
    """QIDO-RS study search, filtered to the studies of the user's sites *before* paging.

    For a site-limited user Orthanc is asked without ``limit``/``offset`` and the
    page is cut after the site filter: paging first would return empty pages."""
    target = target_of(request)
    if user.all_sites:
        query = _query(target, request, paging=True)
        access.audit_search(db, user, target)
        return _upstream(target, request, query)
    pairs = parse_qsl(request.url.query)
    query = _query(target, request, paging=False)
    limit = next((int(v) for k, v in pairs if k == "limit"), None)
    offset = next((int(v) for k, v in pairs if k == "offset"), 0)
    response = _upstream(target, request, query)
    mine = access.visible_study_uids(db, user, target)
    found: list[dict[str, Any]] = json.loads(bytes(response.body) or b"[]")
    kept = [d for d in found if _first(d, _STUDY_UID_TAG) in mine]
    page = kept[offset:] if limit is None else kept[offset:offset + limit]
    return Response(json.dumps(page), media_type="application/dicom+json", headers=_NO_STORE)


@router.get("/studies/{_path:path}", response_class=Response, responses=_STUDY_ANSWER)
def study_resource(_path: str, request: Request, db: DatabaseDep, user: Reader) -> Response:
    """Everything under one study: the whole study, metadata, series and instance
    searches and retrieves, frames, rendered images and thumbnails (``.../thumbnail``,
    which Debian's DICOMweb plugin lacks, is a small rendered image).

    ``_path`` is only there for routing: the raw request path is what is parsed."""
    target = target_of(request)
    assert target.study is not None  # the grammar gives every resource here a study
    query = _query(target, request, paging=True)
    objects = access.check_access(db, user, target)
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
