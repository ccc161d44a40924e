"""The DICOMweb path grammar the proxy accepts, and nothing else.

The proxy used to forward whatever followed ``/dicom-web/studies/{uid}/`` to
Orthanc.  Starlette decodes ``%2F`` inside a path parameter and httpx removes
dot segments, so ``{own uid}/..%2F{other uid}/metadata`` reached another site's
study and ``../../..`` reached Orthanc's REST root with the center's own
credentials.  Here the *raw* request path is parsed against the WADO-RS/QIDO-RS
resources a viewer uses; anything else (dot segments, backslashes, any percent
escape, empty segments, a UID that is not a UID) is refused, and the upstream
URL is rebuilt from the parsed UIDs, never from the string the client sent.

Accepted, relative to ``/dicom-web``::

    studies
    studies/{study}
    studies/{study}/metadata
    studies/{study}/series
    studies/{study}/instances
    studies/{study}/series/{series}
    studies/{study}/series/{series}/metadata
    studies/{study}/series/{series}/instances
    studies/{study}/series/{series}/instances/{sop}
    studies/{study}/series/{series}/instances/{sop}/metadata
    studies/{study}/series/{series}/instances/{sop}/frames/{n[,n]*}
    studies/{study}/series/{series}/instances/{sop}/rendered
    studies/{study}/series/{series}/instances/{sop}/thumbnail
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# PS3.5 9.1: components of digits separated by dots, no leading zero in a
# multi-digit component, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")
_FRAMES = re.compile(r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8}){0,4095}\Z")
_PREFIX = "/dicom-web/"


class Resource(StrEnum):
    """What a parsed path asks for; decides the query keys allowed and the Accept."""

    SEARCH_STUDIES = "search-studies"
    STUDY = "study"
    STUDY_METADATA = "study-metadata"
    SEARCH_SERIES = "search-series"
    SEARCH_INSTANCES = "search-instances"
    SERIES = "series"
    SERIES_METADATA = "series-metadata"
    SEARCH_SERIES_INSTANCES = "search-series-instances"
    INSTANCE = "instance"
    INSTANCE_METADATA = "instance-metadata"
    FRAMES = "frames"
    RENDERED = "rendered"
    THUMBNAIL = "thumbnail"


#: Resources answered with DICOM JSON (a list of datasets).
JSON_RESOURCES = frozenset({
    Resource.SEARCH_STUDIES, Resource.STUDY_METADATA, Resource.SEARCH_SERIES,
    Resource.SEARCH_INSTANCES, Resource.SERIES_METADATA, Resource.SEARCH_SERIES_INSTANCES,
    Resource.INSTANCE_METADATA,
})


class BadPath(ValueError):
    """The path is not one of the accepted DICOMweb resources."""


@dataclass(frozen=True)
class Target:
    """One parsed DICOMweb request path."""

    resource: Resource
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    frames: tuple[int, ...] = ()

    def upstream_path(self) -> str:
        """Orthanc's DICOMweb path for this target, built only from checked parts.

        A thumbnail is Orthanc's ``/rendered`` (Debian's plugin has no thumbnail)."""
        parts = ["/dicom-web/studies"]
        if self.study is not None:
            parts.append(self.study)
        tail = {
            Resource.STUDY_METADATA: "metadata", Resource.SEARCH_SERIES: "series",
            Resource.SEARCH_INSTANCES: "instances",
        }
        if self.resource in tail:
            parts.append(tail[self.resource])
        if self.series is not None:
            parts += ["series", self.series]
            if self.resource is Resource.SERIES_METADATA:
                parts.append("metadata")
            elif self.resource is Resource.SEARCH_SERIES_INSTANCES:
                parts.append("instances")
        if self.instance is not None:
            parts += ["instances", self.instance]
            if self.resource is Resource.INSTANCE_METADATA:
                parts.append("metadata")
            elif self.resource is Resource.FRAMES:
                parts += ["frames", ",".join(str(n) for n in self.frames)]
            elif self.resource in (Resource.RENDERED, Resource.THUMBNAIL):
                parts.append("rendered")
        return "/".join(parts)


def is_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))


def _uid(value: str) -> str:
    if not is_uid(value):
        raise BadPath(f"not a DICOM UID: {value[:70]!r}")
    return value


def parse(raw_path: str) -> Target:
    """Parse the raw (undecoded) request path, e.g. ``/dicom-web/studies/1.2/metadata``.

    Raises :class:`BadPath` for anything outside the grammar in the module docstring.
    """
    if not raw_path.startswith(_PREFIX):
        raise BadPath("not under /dicom-web/")
    rest = raw_path[len(_PREFIX):]
    # No escapes at all: a UID, a keyword and a frame list never need one, and an
    # escape is how a separator or a dot segment gets past a router.
    for bad in ("%", "\\", "?", "#", ";"):
        if bad in rest:
            raise BadPath(f"{bad!r} is not allowed in a DICOMweb path")
    segs = rest.split("/")
    if any(s in ("", ".", "..") for s in segs):
        raise BadPath("empty or dot segments are not allowed")
    if segs[0] != "studies":
        raise BadPath("only /dicom-web/studies is served")
    n = len(segs)
    if n == 1:
        return Target(Resource.SEARCH_STUDIES)
    study = _uid(segs[1])
    if n == 2:
        return Target(Resource.STUDY, study)
    if n == 3:
        kind = {"metadata": Resource.STUDY_METADATA, "series": Resource.SEARCH_SERIES,
                "instances": Resource.SEARCH_INSTANCES}.get(segs[2])
        if kind is None:
            raise BadPath(f"unknown study resource {segs[2][:40]!r}")
        return Target(kind, study)
    if segs[2] != "series":
        raise BadPath(f"unknown study resource {segs[2][:40]!r}")
    series = _uid(segs[3])
    if n == 4:
        return Target(Resource.SERIES, study, series)
    if n == 5:
        kind = {"metadata": Resource.SERIES_METADATA,
                "instances": Resource.SEARCH_SERIES_INSTANCES}.get(segs[4])
        if kind is None:
            raise BadPath(f"unknown series resource {segs[4][:40]!r}")
        return Target(kind, study, series)
    if segs[4] != "instances":
        raise BadPath(f"unknown series resource {segs[4][:40]!r}")
    instance = _uid(segs[5])
    if n == 6:
        return Target(Resource.INSTANCE, study, series, instance)
    if n == 7:
        kind = {"metadata": Resource.INSTANCE_METADATA, "rendered": Resource.RENDERED,
                "thumbnail": Resource.THUMBNAIL}.get(segs[6])
        if kind is None:
            raise BadPath(f"unknown instance resource {segs[6][:40]!r}")
        return Target(kind, study, series, instance)
    if n == 8 and segs[6] == "frames":
        if not _FRAMES.match(segs[7]):
            raise BadPath("frames must be a comma-separated list of frame numbers from 1")
        return Target(Resource.FRAMES, study, series, instance,
                      tuple(int(f) for f in segs[7].split(",")))
    raise BadPath("not a DICOMweb resource")
