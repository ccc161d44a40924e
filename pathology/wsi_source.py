"""A whole-slide image as Orthanc holds it: its pyramid, tiles, one level as an array,
and what its DICOM headers say (specimen, stain, pixel spacing, missing tiles).

Tiles come from Orthanc's WSI plugin (``/wsi/pyramids/{series}``,
``/wsi/tiles/{series}/{level}/{x}/{y}``, level 0 = full resolution), which decodes the
DICOM frames and re-encodes them as JPEG or PNG, so the center never holds a slide file.
Headers come from DICOMweb's series metadata (no pixel data), read into pydicom
datasets, so a slide of gigabytes is described from kilobytes.  Everything goes through
:class:`core.orthanc_client.OrthancClient`, with its typed errors and retries.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from core.orthanc_client import OrthancClient, OrthancNotFound

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: Tile requests in flight while a level is read.
TILE_FETCHERS = 4
#: Stain names as a lab writes them, from the substances of the Specimen module.
_STAIN_ABBREVIATIONS = {frozenset({"hematoxylin", "eosin"}): "H&E"}


class WSIUnreadable(Exception):
    """The series is not a whole-slide image Orthanc can serve: the message says why."""


class NoVolume(WSIUnreadable):
    """The SM series holds no pyramid level (only a label or overview image, which
    some scanners send as a series of its own): no slide to grade."""


@dataclass(frozen=True)
class Level:
    """One pyramid level; level 0 is the full resolution (as in Orthanc's WSI plugin)."""

    level: int
    width: int
    height: int
    downsample: float
    tiles_x: int
    tiles_y: int
    tile_width: int
    tile_height: int


@dataclass(frozen=True)
class Pyramid:
    series_id: str
    width: int
    height: int
    levels: tuple[Level, ...]

    @property
    def tile_width(self) -> int:
        return self.levels[0].tile_width

    @property
    def tile_height(self) -> int:
        return self.levels[0].tile_height

    def as_dict(self, mpp: float = 0.0) -> dict[str, Any]:
        """The shape of ``GET /api/pathology/slides/{id}/pyramid``."""
        return {"width": self.width, "height": self.height, "tile_width": self.tile_width,
                "tile_height": self.tile_height, "mpp": mpp,
                "levels": [{"level": lv.level, "width": lv.width, "height": lv.height,
                            "downsample": lv.downsample, "tiles_x": lv.tiles_x,
                            "tiles_y": lv.tiles_y} for lv in self.levels]}


def read_pyramid(client: OrthancClient, series_id: str) -> Pyramid:
    """The series' pyramid as the WSI plugin sees it.

    Raises :class:`WSIUnreadable` when the plugin cannot make a pyramid of it (not a
    WSI series, inconsistent levels), ``OrthancNotFound`` when the series is not there.
    """
    if not series_id:
        raise WSIUnreadable("no Orthanc series id")
    try:
        raw = client.get(f"/wsi/pyramids/{series_id}").json()
    except OrthancNotFound:
        raise
    except ValueError as e:
        raise WSIUnreadable(f"series {series_id}: the WSI plugin's pyramid is not JSON") from e
    try:
        sizes = raw["Sizes"]
        counts = raw["TilesCount"]
        tile_sizes = raw["TilesSizes"]
        resolutions = raw["Resolutions"]
        levels = tuple(
            Level(level=i, width=int(sizes[i][0]), height=int(sizes[i][1]),
                  downsample=float(resolutions[i]), tiles_x=int(counts[i][0]),
                  tiles_y=int(counts[i][1]), tile_width=int(tile_sizes[i][0]),
                  tile_height=int(tile_sizes[i][1]))
            for i in range(len(sizes)))
        width, height = int(raw["TotalWidth"]), int(raw["TotalHeight"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise WSIUnreadable(f"series {series_id}: unexpected pyramid from the WSI plugin "
                            f"({e!r})") from e
    if not levels or width <= 0 or height <= 0:
        raise WSIUnreadable(f"series {series_id}: the pyramid has no level")
    return Pyramid(series_id=series_id, width=width, height=height, levels=levels)


def read_tile(client: OrthancClient, series_id: str, level: int, x: int, y: int) -> bytes:
    """One tile's encoded image (JPEG or PNG, as the plugin answers); a tile a sparse
    slide lacks raises ``OrthancNotFound``."""
    return client.get(f"/wsi/tiles/{series_id}/{int(level)}/{int(x)}/{int(y)}").content


def decode_tile(data: bytes) -> NDArray[np.uint8]:
    """An encoded tile as an RGB array (H, W, 3)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise WSIUnreadable(f"a tile is not a decodable image ({e})") from e


@dataclass(frozen=True)
class LevelImage:
    """A level stitched from its tiles, shrunk by ``shrink`` (an integer factor).

    ``downsample`` is relative to level 0 (the level's own times ``shrink``);
    ``missing`` lists the tiles (x, y) the plugin did not have, drawn as white glass."""

    image: NDArray[np.uint8]
    downsample: float
    missing: list[tuple[int, int]]


def _shrink(tile: NDArray[np.uint8], k: int) -> NDArray[np.uint8]:
    if k == 1:
        return tile
    h, w = tile.shape[0] // k * k, tile.shape[1] // k * k
    if h == 0 or w == 0:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    small: NDArray[np.uint8] = tile[:h, :w].reshape(h // k, k, w // k, k, 3).mean(
        axis=(1, 3)).astype(np.uint8)
    return small


def read_level(client: OrthancClient, pyramid: Pyramid, level: int, *,
               shrink: int = 1) -> LevelImage:
    """The whole level as one RGB array, tile by tile (each shrunk by averaging
    ``shrink`` x ``shrink`` blocks first, so memory follows the result's size)."""
    lv = pyramid.levels[level]
    k = max(1, int(shrink))
    out = np.full((math.ceil(lv.height / k), math.ceil(lv.width / k), 3), 255, dtype=np.uint8)
    missing: list[tuple[int, int]] = []
    tw, th = lv.tile_width // k, lv.tile_height // k

    def fetch(pos: tuple[int, int]) -> tuple[tuple[int, int], NDArray[np.uint8] | None]:
        try:
            data = read_tile(client, pyramid.series_id, level, pos[0], pos[1])
        except OrthancNotFound:
            return pos, None
        return pos, _shrink(decode_tile(data), k)

    positions = [(tx, ty) for ty in range(lv.tiles_y) for tx in range(lv.tiles_x)]
    # Orthanc's WSI plugin decodes and re-encodes each tile: a few requests in flight
    # keep its threads busy while this one decodes (results arrive in order).
    with ThreadPoolExecutor(max_workers=TILE_FETCHERS) as pool:
        for (tx, ty), small in pool.map(fetch, positions):
            if small is None:
                missing.append((tx, ty))
                continue
            y0, x0 = ty * th, tx * tw
            h = min(small.shape[0], out.shape[0] - y0)
            w = min(small.shape[1], out.shape[1] - x0)
            if h > 0 and w > 0:
                out[y0:y0 + h, x0:x0 + w] = small[:h, :w]
    return LevelImage(image=out, downsample=lv.downsample * k, missing=missing)


# Headers -------------------------------------------------------------------------
@dataclass(frozen=True)
class SlideHeaders:
    """What the DICOM headers of one WSI series say about the slide."""

    series_uid: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    #: µm per pixel at full resolution (0 when the headers do not say).
    mpp: float
    #: Volume (pyramid) instances, one per level, as (width, height, frames).
    volumes: list[tuple[int, int, int]]
    #: Tiles the full-resolution matrix needs, and how many of them have no frame.
    total_tiles: int
    missing_tiles: int
    #: Level-0 boxes [x, y, w, h] of the missing tiles (TILED_SPARSE).
    missing_boxes: list[list[int]]
    stain: str = ""
    specimen_id: str = ""
    part: str = ""
    block: str = ""
    organ: str = ""
    label: str = ""
    has_label_image: bool = False
    #: Free text a frozen section shows itself by (study, procedure, specimen).
    texts: list[str] = field(default_factory=list)


def series_metadata(client: OrthancClient, study_uid: str,
                    series_uid: str) -> list[pydicom.Dataset]:
    """Every instance's header of the series (DICOMweb metadata, no pixel data)."""
    raw = client.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
                     accept="application/dicom+json").json()
    return [pydicom.Dataset.from_json(_inline_only(item)) for item in raw]


def _inline_only(item: dict[str, Any]) -> dict[str, Any]:
    """The DICOM JSON without bulk data (pixels, ICC profile): referenced by URI, never
    needed to describe the slide, and fetched by nothing here."""
    out: dict[str, Any] = {}
    for tag, element in item.items():
        if not isinstance(element, dict) or "BulkDataURI" in element or "InlineBinary" in element:
            continue
        if element.get("vr") == "SQ":
            element = {**element, "Value": [_inline_only(v) for v in element.get("Value", [])
                                            if isinstance(v, dict)]}
        out[tag] = element
    return out


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "") if ds is not None else ""
    return str(value).strip() if value is not None else ""


def _meanings(item: Any) -> list[str]:
    """Code meanings and text values of a content item, lower-case."""
    out = []
    for seq in ("ConceptCodeSequence",):
        for code in item.get(seq, []) or []:
            out.append(_text(code, "CodeMeaning"))
    for kw in ("TextValue", "UID"):
        if kw in item:
            out.append(_text(item, kw))
    return [o for o in out if o]


def _concept(item: Any) -> str:
    names = item.get("ConceptNameCodeSequence", []) or []
    return _text(names[0], "CodeMeaning").lower() if names else ""


def _specimen(ds: pydicom.Dataset) -> dict[str, Any]:
    """Stain, specimen id, part, block, organ and free texts of the Specimen module."""
    found: dict[str, Any] = {"stain": "", "specimen_id": "", "part": "", "block": "",
                             "organ": "", "texts": []}
    descs = ds.get("SpecimenDescriptionSequence", []) or []
    if not descs:
        return found
    desc = descs[0]
    found["specimen_id"] = _text(desc, "SpecimenIdentifier")
    for kw in ("SpecimenShortDescription", "SpecimenDetailedDescription"):
        if _text(desc, kw):
            found["texts"].append(_text(desc, kw))
    substances: list[str] = []
    for step in desc.get("SpecimenPreparationSequence", []) or []:
        items = step.get("SpecimenPreparationStepContentItemSequence", []) or []
        parent_id, parent_type = "", ""
        for item in items:
            concept = _concept(item)
            values = _meanings(item)
            found["texts"].extend(values)
            if concept.startswith("using substance"):  # "(attribute)" in SNOMED's name
                substances.extend(values)
            elif concept == "parent specimen identifier":
                parent_id = values[0] if values else ""
            elif concept == "parent specimen type":
                parent_type = " ".join(values).lower()
        if parent_id:
            if "block" in parent_type:
                found["block"] = found["block"] or parent_id
            else:
                found["part"] = found["part"] or parent_id
    for region in desc.get("PrimaryAnatomicStructureSequence", []) or []:
        found["organ"] = found["organ"] or _text(region, "CodeMeaning")
    found["stain"] = _stain(substances)
    return found


def _stain(substances: list[str]) -> str:
    names = [s.lower().replace(" stain", "").replace("water soluble ", "").strip()
             for s in substances]
    names = [n for n in names if n]
    if not names:
        return ""
    for parts, short in _STAIN_ABBREVIATIONS.items():
        if parts == frozenset(names):
            return short
    return " + ".join(dict.fromkeys(names))


def _mpp(ds: pydicom.Dataset) -> float:
    """Pixel spacing (mm) of the shared functional groups, as µm per pixel."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        return float(spacing[1]) * 1000.0
    except (AttributeError, IndexError, TypeError, ValueError):
        return 0.0


def _frame_positions(ds: pydicom.Dataset) -> set[tuple[int, int]]:
    """(column, row) 1-based positions of the frames of a TILED_SPARSE instance."""
    out = set()
    for fg in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        for pos in fg.get("PlanePositionSlideSequence", []) or []:
            out.add((int(pos.ColumnPositionInTotalImagePixelMatrix),
                     int(pos.RowPositionInTotalImagePixelMatrix)))
    return out


def _image_flavour(ds: pydicom.Dataset) -> str:
    kinds = [str(v).upper() for v in (ds.get("ImageType", []) or [])]
    return kinds[2] if len(kinds) > 2 else "VOLUME"


def read_headers(client: OrthancClient, study_uid: str, series_uid: str) -> SlideHeaders:
    """The slide's description from its instances' headers.

    Missing tiles are counted on the full-resolution instance: TILED_FULL has every
    tile by definition of the organization (frames = tiles x focal planes x optical
    paths); TILED_SPARSE lists each frame's position, and each tile position of the
    matrix with no frame is a missing tile."""
    datasets = series_metadata(client, study_uid, series_uid)
    volumes = [d for d in datasets
               if str(d.get("SOPClassUID", "")) == WSI_SOP_CLASS
               and _image_flavour(d) == "VOLUME" and "TotalPixelMatrixColumns" in d]
    if not volumes:
        raise NoVolume(f"series {series_uid} has no whole-slide image volume instance")
    volumes.sort(key=lambda d: -int(d.TotalPixelMatrixColumns))
    base = volumes[0]
    width, height = int(base.TotalPixelMatrixColumns), int(base.TotalPixelMatrixRows)
    tw, th = int(base.Columns), int(base.Rows)
    if tw <= 0 or th <= 0:
        raise WSIUnreadable(f"series {series_uid}: tiles of {tw}x{th} pixels")
    tiles_x, tiles_y = math.ceil(width / tw), math.ceil(height / th)
    total = tiles_x * tiles_y
    missing_boxes: list[list[int]] = []
    if _text(base, "DimensionOrganizationType").upper() == "TILED_SPARSE":
        have = _frame_positions(base)
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                if (tx * tw + 1, ty * th + 1) not in have:
                    missing_boxes.append([tx * tw, ty * th, min(tw, width - tx * tw),
                                          min(th, height - ty * th)])
    else:
        planes = int(base.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        paths = int(base.get("NumberOfOpticalPaths", 1) or 1)
        frames = int(base.get("NumberOfFrames", 1) or 1)
        if frames < total * planes * paths:
            raise WSIUnreadable(f"series {series_uid}: TILED_FULL with {frames} frames for "
                                f"{total} tiles")
    spec = _specimen(base)
    texts = [t for t in (_text(base, "StudyDescription"), _text(base, "SeriesDescription"),
                         *(_text(item, "RequestedProcedureDescription") for item in
                           base.get("RequestAttributesSequence", []) or []))
             if t] + list(spec["texts"])
    label_text = _text(base, "LabelText") or _text(base, "ContainerIdentifier")
    return SlideHeaders(
        series_uid=series_uid, width=width, height=height, tile_width=tw, tile_height=th,
        mpp=_mpp(base),
        volumes=[(int(d.TotalPixelMatrixColumns), int(d.TotalPixelMatrixRows),
                  int(d.get("NumberOfFrames", 1) or 1)) for d in volumes],
        total_tiles=total, missing_tiles=len(missing_boxes), missing_boxes=missing_boxes,
        stain=spec["stain"], specimen_id=spec["specimen_id"], part=spec["part"],
        block=spec["block"], organ=spec["organ"], label=label_text,
        has_label_image=any(_image_flavour(d) == "LABEL" for d in datasets), texts=texts)


def wsi_series(client: OrthancClient, study_orthanc_id: str) -> list[dict[str, Any]]:
    """The study's series of modality SM (slides), as Orthanc lists them."""
    return [s for s in client.study_series(study_orthanc_id)
            if str((s.get("MainDicomTags") or {}).get("Modality", "")).upper() == "SM"]
