"""DICOMweb (QIDO-RS, WADO-RS, rendered frames, thumbnails) through the web app.

Orthanc stays on loopback behind its own password; readers reach images only
here, after the app's authentication and a per-site check on the study.  The
study UID in the path decides: it must belong to a study of a site the user
may see (the same UID from two sites is visible if either is).  Orthanc checks
that the series and instance in the path belong to that study.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select

from core.db import get_database
from core.models import Study
from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound
from core.settings import get_settings
from viewer.auth import CurrentUser, UserContext

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
_UID = re.compile(r"^[0-9.]{1,64}$")
_PASS_HEADERS = ("content-type", "content-length", "cache-control", "etag")
_STUDY_UID_TAG = "0020000D"


def _check_uid(*uids: str) -> None:
    for uid in uids:
        if not _UID.match(uid):
            raise HTTPException(400, f"not a DICOM UID: {uid[:70]!r}")


def _check_study(user: UserContext, study_uid: str) -> None:
    with get_database(get_settings().database_url).session() as s:
        sites = set(s.scalars(select(Study.site_id).where(Study.study_uid == study_uid)))
    if not any(user.can_see_site(site) for site in sites):
        raise HTTPException(404, "not found")


@lru_cache(maxsize=4)
def _client(url: str) -> OrthancClient:
    """One pooled client per Orthanc for the process: a viewer fetching a stack asks for
    hundreds of frames, and a new connection for each would cost more than the frame."""
    return OrthancClient.from_settings(get_settings(), retries=1)


def _accept(path: str, asked: str | None) -> str | None:
    """Orthanc's rendered endpoint takes only one concrete image type, not a browser's
    ``image/avif,image/webp,*/*`` list: pick PNG when asked for, else JPEG."""
    if path.endswith("/rendered"):
        return "image/png" if asked and "image/png" in asked else "image/jpeg"
    return asked


def _forward(path: str, request: Request, accept_default: str | None = None,
             query: str | None = None) -> Response:
    # The query goes on as the client wrote it: Orthanc's DICOMweb plugin does not
    # decode an escaped comma (viewport=128%2C128), which a re-encoded dict would send.
    query = request.url.query if query is None else query
    accept = _accept(path, request.headers.get("accept") or accept_default)
    try:
        upstream = _client(get_settings().orthanc_url).get(
            f"/dicom-web{path}" + (f"?{query}" if query else ""), accept=accept)
    except OrthancNotFound as e:
        raise HTTPException(404, "not found") from e
    except OrthancError as e:
        raise HTTPException(502, f"the image archive did not answer: {e}") from e
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_HEADERS
               and k.lower() != "content-length"}
    headers["Cache-Control"] = "private, max-age=300"
    return Response(upstream.content, status_code=upstream.status_code, headers=headers)


@router.get("/studies")
def search_studies(request: Request, user: CurrentUser) -> Response:
    """QIDO-RS study search, filtered to the studies of the user's sites."""
    response = _forward("/studies", request, "application/dicom+json")
    if user.all_sites:
        return response
    with get_database(get_settings().database_url).session() as s:
        mine = set(s.scalars(select(Study.study_uid).where(
            Study.site_id.in_(sorted(user.site_ids)))))
    found: list[dict[str, Any]] = json.loads(bytes(response.body) or b"[]")
    kept = [d for d in found
            if d.get(_STUDY_UID_TAG, {}).get("Value", [None])[0] in mine]
    return Response(json.dumps(kept), media_type="application/dicom+json",
                    headers={"Cache-Control": "private, no-store"})


@router.get("/studies/{study}/{rest:path}")
def study_resource(study: str, rest: str, request: Request, user: CurrentUser) -> Response:
    """Everything under one study: series/instance search, metadata, frames, rendered.
    ``.../thumbnail`` (which Debian's DICOMweb plugin lacks) is a small rendered image."""
    _check_uid(study, *[p for p in rest.split("/") if p and p[0].isdigit()])
    _check_study(user, study)
    if rest.endswith("/thumbnail"):
        rest = rest.removesuffix("/thumbnail") + "/rendered"
        return _forward(f"/studies/{study}/{rest}", request, query="viewport=128,128")
    return _forward(f"/studies/{study}/{rest}", request)


@router.get("/studies/{study}")
def study_whole(study: str, request: Request, user: CurrentUser) -> Response:
    """WADO-RS retrieve of a whole study (multipart)."""
    _check_uid(study)
    _check_study(user, study)
    return _forward(f"/studies/{study}", request)
