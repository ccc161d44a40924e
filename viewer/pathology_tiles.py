"""Whole-slide images out of Orthanc's WSI plugin, for the slide viewer.

A slide viewer asks for hundreds of tiles a minute, and the pathologist waits for each,
so the tile path does as little as it can: the slide's identity and pyramid come from
small in-process caches (a slide's pyramid does not change once stored), the tile is
one request to Orthanc on a pooled connection, and its JPEG bytes go back as Orthanc
gave them (never decoded or re-encoded).  Level, column and row are checked against the
pyramid first, so nothing outside it is ever asked of Orthanc.

Who may see which slide is decided by :mod:`viewer.pathology_views` before anything
here is called; this module only talks to Orthanc.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import aiohttp
import pydicom
from fastapi import HTTPException
from PIL import Image

from core.errors import NotFound
from core.orthanc_client import OrthancClient, OrthancError, OrthancNotFound, OrthancRejected
from core.settings import get_settings

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A small thread-safe map whose entries expire (bounded: the oldest go first)."""

    def __init__(self, ttl_s: float, max_items: int = 4096) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if time.monotonic() - found[0] > self.ttl_s:
                del self._items[key]
                return None
            return found[1]

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value

    def get_or(self, key: K, make: Callable[[], V]) -> V:
        found = self.get(key)
        return found if found is not None else self.put(key, make())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


@dataclass(frozen=True)
class SlideRef:
    """What the tile path needs to know of a slide (from the database, cached)."""

    id: int
    case_id: int
    site_id: str
    study_id: int
    study_uid: str
    series_uid: str
    orthanc_series_id: str
    width: int
    height: int
    mpp: float


@dataclass(frozen=True)
class Level:
    level: int
    width: int
    height: int
    downsample: float
    tiles_x: int
    tiles_y: int


@dataclass(frozen=True)
class Pyramid:
    width: int
    height: int
    tile_width: int
    tile_height: int
    levels: tuple[Level, ...]

    def as_json(self, mpp: float) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "tile_width": self.tile_width,
                "tile_height": self.tile_height, "mpp": mpp,
                "levels": [lv.__dict__ for lv in self.levels]}


@lru_cache(maxsize=4)
def _client(url: str) -> OrthancClient:
    """One pooled client per Orthanc for the process (keep-alive connections)."""
    return OrthancClient.from_settings(get_settings(), retries=1)


def orthanc() -> OrthancClient:
    return _client(get_settings().orthanc_url)


def _archive_error(e: OrthancError) -> HTTPException:
    return HTTPException(502, f"the archive did not answer: {e}")


# Keyed by the Orthanc's URL too: one process may talk to several (test) archives.
_SERIES_IDS: TTLCache[tuple[str, str], str] = TTLCache(3600)
_PYRAMIDS: TTLCache[tuple[str, str], Pyramid] = TTLCache(300)
_THUMBNAILS: TTLCache[tuple[str, str], bytes] = TTLCache(300, max_items=256)
#: series uid → the label image's instance id ("" when there is none, rechecked soon).
_LABELS: TTLCache[tuple[str, str], str] = TTLCache(60)


def _at(key: str) -> tuple[str, str]:
    return (get_settings().orthanc_url, key)


def series_id(ref: SlideRef) -> str:
    """The slide's Orthanc series id (stored at intake; looked up when it was not)."""
    if ref.orthanc_series_id:
        return ref.orthanc_series_id

    def find() -> str:
        try:
            found = orthanc().find_series(ref.series_uid)
        except OrthancError as e:
            raise _archive_error(e) from e
        if found is None:
            raise NotFound(f"slide {ref.id} is not in the archive")
        return found
    return _SERIES_IDS.get_or(_at(ref.series_uid), find)


def pyramid(ref: SlideRef) -> Pyramid:
    """The slide's levels as Orthanc's WSI plugin cuts them (level 0 = full resolution)."""
    sid = series_id(ref)

    def read() -> Pyramid:
        try:
            js = orthanc().get(f"/wsi/pyramids/{sid}").json()
        except OrthancNotFound as e:
            raise NotFound(f"slide {ref.id} has no pyramid in the archive") from e
        except OrthancError as e:
            raise _archive_error(e) from e
        tiles = js.get("TilesSizes") or [[js["TileWidth"], js["TileHeight"]]] * len(js["Sizes"])
        levels = tuple(
            Level(i, int(size[0]), int(size[1]), float(js["Resolutions"][i]),
                  int(js["TilesCount"][i][0]), int(js["TilesCount"][i][1]))
            for i, size in enumerate(js["Sizes"]))
        return Pyramid(int(js["TotalWidth"]), int(js["TotalHeight"]), int(tiles[0][0]),
                       int(tiles[0][1]), levels)
    return _PYRAMIDS.get_or(_at(sid), read)


def check_tile(pyr: Pyramid, ref: SlideRef, level: int, col: int, row: int) -> None:
    """NotFound unless (level, col, row) is a tile of the pyramid."""
    if not 0 <= level < len(pyr.levels):
        raise NotFound(f"slide {ref.id} has levels 0..{len(pyr.levels) - 1}, not {level}")
    lv = pyr.levels[level]
    if not (0 <= col < lv.tiles_x and 0 <= row < lv.tiles_y):
        raise NotFound(f"level {level} of slide {ref.id} has {lv.tiles_x} x {lv.tiles_y} "
                       f"tiles; ({col}, {row}) is outside")


def cached_pyramid(ref: SlideRef) -> Pyramid | None:
    """The slide's pyramid if this process knows it already (no I/O)."""
    sid = ref.orthanc_series_id or _SERIES_IDS.get(_at(ref.series_uid))
    return _PYRAMIDS.get(_at(sid)) if sid else None


def tile(ref: SlideRef, level: int, col: int, row: int) -> tuple[bytes, str]:
    """One tile's bytes and media type, as Orthanc's WSI plugin serves it; NotFound
    outside the pyramid (nothing is asked of Orthanc then)."""
    check_tile(pyramid(ref), ref, level, col, row)
    try:
        r = orthanc().get(f"/wsi/tiles/{series_id(ref)}/{level}/{col}/{row}")
    except OrthancNotFound as e:
        raise NotFound(f"tile {level}/{col}/{row} of slide {ref.id} is not in the "
                       "archive") from e
    except OrthancRejected as e:
        # A sparse slide's missing tile: Orthanc cannot read what the scanner never sent.
        raise NotFound(f"tile {level}/{col}/{row} of slide {ref.id} is missing "
                       f"(the scanner did not send it): {e}") from e
    except OrthancError as e:
        raise _archive_error(e) from e
    return r.content, r.headers.get("content-type", "image/jpeg")


#: One asynchronous session per event loop (each uvicorn worker runs one; a test client
#: makes its own), so that the tile route waits on Orthanc without holding a thread.
#: aiohttp rather than httpx here: its C HTTP parser costs a fraction of httpx's
#: pure-Python stack per request, and on the tile path that per-request cost, not Orthanc,
#: was most of what the web app spent (profiled; benchmarks/RESULTS.md, "Pathology: tile
#: proxy throughput").  The rest of the module keeps the synchronous OrthancClient.
_ASYNC_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                           aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def _async_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _ASYNC_SESSIONS.get(loop)
    if session is None or session.closed:
        settings = get_settings()
        user, password = settings.orthanc_credentials()
        session = aiohttp.ClientSession(
            base_url=settings.orthanc_url.rstrip("/") + "/",
            auth=aiohttp.BasicAuth(user, password),
            # A JPEG does not shrink under gzip: asking Orthanc not to try spares its CPU
            # and ours (it compresses for clients that accept gzip).
            headers={"Accept-Encoding": "identity"}, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=settings.orthanc_timeout_s, connect=5.0),
            # Orthanc drops a keep-alive connection after 1 s idle (its KeepAliveTimeout
            # default); ours are let go first, so that few are reused as it closes them.
            connector=aiohttp.TCPConnector(limit=64, limit_per_host=64,
                                           keepalive_timeout=0.8),
            skip_auto_headers=("User-Agent",), raise_for_status=False)
        _ASYNC_SESSIONS[loop] = session
        # Nothing awaits a close when the loop ends (a test client's loop, or the
        # worker's at exit), so the connections are dropped with it instead of aiohttp
        # warning about an unclosed session from its finalizer.
        weakref.finalize(loop, _drop_connections, session.connector)
    return session


def _drop_connections(connector: aiohttp.BaseConnector | None) -> None:
    close = getattr(connector, "_close", None)  # synchronous; the loop may be gone
    if close is not None:
        try:
            close()
        except Exception:  # at exit or after the loop: nothing is left to tell
            log.debug("closing the tile connections at loop end failed", exc_info=True)


async def tile_async(ref: SlideRef, level: int, col: int, row: int) -> tuple[bytes, str]:
    """:func:`tile` on the event loop: one keep-alive request to Orthanc, the JPEG bytes
    as they came.  The pyramid must be cached already (:func:`cached_pyramid`)."""
    pyr = cached_pyramid(ref)
    if pyr is None:
        raise RuntimeError("tile_async needs the slide's pyramid cached first")
    check_tile(pyr, ref, level, col, row)
    sid = ref.orthanc_series_id or _SERIES_IDS.get(_at(ref.series_uid))
    path = f"/wsi/tiles/{sid}/{level}/{col}/{row}"
    OrthancClient.check_path(path)
    for attempt in (1, 2):
        try:
            async with _async_session().get(path.lstrip("/")) as r:
                status = r.status
                data = await r.read()
                media_type = r.headers.get("Content-Type", "image/jpeg")
            break
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            # A kept-alive connection Orthanc closed just as it was reused: a GET is
            # safe to ask again once, on a new connection.
            if attempt == 2:
                raise HTTPException(502, f"the archive did not answer: {e!r}") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise HTTPException(502, f"the archive did not answer: {e!r}") from e
    if status == 404:
        raise NotFound(f"tile {level}/{col}/{row} of slide {ref.id} is not in the archive")
    if 400 <= status < 500:
        raise NotFound(f"tile {level}/{col}/{row} of slide {ref.id} is missing (the scanner "
                       f"did not send it): HTTP {status}")
    if status >= 500:
        raise HTTPException(502, f"the archive did not answer: HTTP {status}")
    return data, media_type


#: A thumbnail is made of at most this many tiles of the smallest level that fits.
_THUMB_MAX_TILES = 16


def thumbnail(ref: SlideRef) -> bytes:
    """The whole slide at its lowest level, as one JPEG (tiles joined, padding cut)."""
    def make() -> bytes:
        pyr = pyramid(ref)
        lv = pyr.levels[-1]
        for candidate in reversed(pyr.levels):
            if candidate.tiles_x * candidate.tiles_y <= _THUMB_MAX_TILES:
                lv = candidate
                break
        canvas = Image.new("RGB", (lv.width, lv.height), (255, 255, 255))
        for r in range(lv.tiles_y):
            for c in range(lv.tiles_x):
                try:
                    data, _ = tile(ref, lv.level, c, r)
                except NotFound:
                    continue  # a missing tile stays white, as the viewer shows it
                with Image.open(io.BytesIO(data)) as im:
                    canvas.paste(im.convert("RGB"), (c * pyr.tile_width, r * pyr.tile_height))
        out = io.BytesIO()
        canvas.save(out, "JPEG", quality=85)
        return out.getvalue()
    return _THUMBNAILS.get_or(_at(ref.series_uid), make)


# Label image and source headers ---------------------------------------------------------


def _study_orthanc_id(study_uid: str) -> str:
    for item in orthanc().lookup(study_uid):
        if item.get("Type") == "Study":
            return str(item["ID"])
    raise NotFound("the slide's study is not in the archive")


def _tag(instance_id: str, tag: str) -> str:
    try:
        return orthanc().get(f"/instances/{instance_id}/content/{tag}").text.strip("\x00 ")
    except OrthancNotFound:
        return ""


def label_instance(ref: SlideRef) -> str:
    """The Orthanc id of the slide's label image ("" when there is none): an SM image
    with LABEL in its Image Type, in the slide's series or with the same container
    (slide) identifier in its study."""
    def find() -> str:
        sid = series_id(ref)
        study = _study_orthanc_id(ref.study_uid)
        own_container = ""
        candidates: list[tuple[str, str]] = []
        for inst in orthanc().study_instances(study):
            iid, parent = str(inst["ID"]), str(inst.get("ParentSeries", ""))
            image_type = _tag(iid, "0008-0008")
            if "LABEL" in image_type.upper().split("\\"):
                if parent == sid:
                    return iid
                candidates.append((iid, _tag(iid, "0040-0512")))
            elif parent == sid and not own_container:
                own_container = _tag(iid, "0040-0512")
        for iid, container in candidates:
            if own_container and container == own_container:
                return iid
        return ""
    try:
        return _LABELS.get_or(_at(ref.series_uid), find)
    except OrthancError as e:
        raise _archive_error(e) from e


def has_label_image(ref: SlideRef) -> bool:
    """Whether the slide has a label image; False (logged) when the archive is silent,
    so that a case still opens."""
    try:
        return bool(label_instance(ref))
    except (HTTPException, NotFound) as e:
        log.warning("label image of slide %s: %s", ref.id, e)
        return False


def label_image(ref: SlideRef) -> bytes:
    """The label image as JPEG (rendered by Orthanc); NotFound when there is none."""
    iid = label_instance(ref)
    if not iid:
        raise NotFound(f"slide {ref.id} has no label image")
    try:
        return orthanc().get(f"/instances/{iid}/frames/0/rendered", accept="image/jpeg").content
    except OrthancError as e:
        raise _archive_error(e) from e


def source_headers(ref: SlideRef) -> pydicom.Dataset:
    """The level-0 instance's headers (no pixel data), out of Orthanc's DICOMweb
    metadata: what an annotation instance copies its patient, study and references from."""
    try:
        meta = orthanc().get(f"/dicom-web/studies/{ref.study_uid}/series/{ref.series_uid}"
                             "/metadata", accept="application/dicom+json").json()
    except OrthancNotFound as e:
        raise NotFound(f"slide {ref.id} is not in the archive") from e
    except OrthancError as e:
        raise _archive_error(e) from e
    best: pydicom.Dataset | None = None
    for item in meta:
        ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
        if "PixelData" in ds:
            del ds.PixelData
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        if "LABEL" in image_type or "OVERVIEW" in image_type:
            continue
        if best is None or int(ds.get("TotalPixelMatrixColumns", 0)) > \
                int(best.get("TotalPixelMatrixColumns", 0)):
            best = ds
    if best is None:
        raise NotFound(f"slide {ref.id} has no image in the archive")
    return best


def annotation_datasets(ref: SlideRef) -> list[pydicom.Dataset]:
    """Every ANN instance of the slide's study (the caller keeps those that reference
    the slide), oldest first."""
    try:
        study = _study_orthanc_id(ref.study_uid)
        found: list[tuple[str, pydicom.Dataset]] = []
        for series in orthanc().study_series(study):
            if series.get("MainDicomTags", {}).get("Modality") != "ANN":
                continue
            for iid in orthanc().series_instances(str(series["ID"])):
                ds = pydicom.dcmread(io.BytesIO(orthanc().instance_file(iid)))
                found.append((f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}", ds))
    except OrthancError as e:
        raise _archive_error(e) from e
    return [ds for _, ds in sorted(found, key=lambda x: x[0])]


def store(ds: pydicom.Dataset) -> str:
    """Upload one new instance to Orthanc; its SOP Instance UID."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    try:
        orthanc().upload_instance(out.getvalue())
    except OrthancError as e:
        raise _archive_error(e) from e
    return str(ds.SOPInstanceUID)


def reset_caches() -> None:
    """Forget what was cached (tests start a new Orthanc with the same ids)."""
    for cache in (_SERIES_IDS, _PYRAMIDS, _THUMBNAILS, _LABELS):
        cache.clear()
