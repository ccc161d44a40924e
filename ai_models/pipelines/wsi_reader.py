"""Read a whole-slide image series from Orthanc: headers, pyramid, and one level's pixels.

A slide's level 0 is gigapixels, so the tile pipeline never downloads the series'
instance files (``fetch_series`` does that for radiographs).  It reads:

* the instances' headers without pixel data, from Orthanc's DICOMweb metadata (the
  SR and the parametric map need the slide's patient, study, series, frame of
  reference and geometry);
* the pyramid, from the WSI plugin (``/wsi/pyramids/{series}``: level sizes and
  downsamples, level 0 first);
* the tiles of the one level the network reads, from the WSI plugin
  (``/wsi/tiles/{series}/{level}/{x}/{y}``: JPEG, or PNG for lossless slides), pasted
  into one RGB image.  A tile the plugin does not have (a TILED_SPARSE slide's missing
  tile) is read as glass, which the model calls background.

This module lives with the pipelines, not in pathology (which has its own reader for
the viewer and QC), because reading domains do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset

from core.orthanc_client import OrthancClient, OrthancNotFound

#: Glass: what a missing tile is read as (the synthetic slides' background).
GLASS = (243, 243, 243)
#: Largest level image the pipeline will hold (pixels): 12k x 12k RGB is ~430 MB.
MAX_LEVEL_PIXELS = 144_000_000


#: Patient and study attributes the derived objects copy from the slide and must carry
#: (type 2: present, possibly empty).  DICOMweb metadata leaves out an attribute that is
#: empty in the file, so it is put back empty here rather than refused by highdicom.
TYPE_2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                 "AccessionNumber")


class SlideUnreadable(Exception):
    """The series is not a slide this reader can read (no pyramid, bad tiles...)."""


@dataclass(frozen=True)
class Pyramid:
    """The WSI plugin's view of a series: level 0 first."""

    series_id: str
    width: int
    height: int
    tile_sizes: list[tuple[int, int]]  # per level: this plugin version answers TilesSizes
    sizes: list[tuple[int, int]]
    downsamples: list[float]
    tiles: list[tuple[int, int]]

    @classmethod
    def from_json(cls, series_id: str, data: dict[str, Any]) -> Pyramid:
        try:
            sizes = data["Sizes"]
            if "TilesSizes" in data:  # the WSI plugin 1.1+ (tiles may differ per level)
                tile_sizes = [(int(w), int(h)) for w, h in data["TilesSizes"]]
            else:  # older plugins: one tile size for every level
                tile_sizes = [(int(data["TileWidth"]), int(data["TileHeight"]))] * len(sizes)
            return cls(series_id=series_id, width=int(data["TotalWidth"]),
                       height=int(data["TotalHeight"]), tile_sizes=tile_sizes,
                       sizes=[(int(w), int(h)) for w, h in sizes],
                       downsamples=[float(r) for r in data["Resolutions"]],
                       tiles=[(int(x), int(y)) for x, y in data["TilesCount"]])
        except (KeyError, TypeError, ValueError) as e:
            raise SlideUnreadable(f"the WSI plugin's pyramid of series {series_id} is not "
                                  f"understood: {e!r}") from e

    def level_for(self, downsample: float) -> int:
        """The coarsest level that is at least as fine as ``downsample`` (level 0 if none
        is): the pipeline then only ever shrinks, never enlarges."""
        best = 0
        for level, ds in enumerate(self.downsamples):
            if ds <= downsample * 1.01 and ds >= self.downsamples[best]:
                best = level
        return best


def series_headers(client: OrthancClient, series_orthanc_id: str) -> list[Dataset]:
    """The series' instances as pydicom datasets without bulk data (DICOMweb metadata)."""
    series = client.get(f"/series/{series_orthanc_id}").json()
    study = client.get(f"/studies/{series['ParentStudy']}").json()
    study_uid = study["MainDicomTags"]["StudyInstanceUID"]
    series_uid = series["MainDicomTags"]["SeriesInstanceUID"]
    metadata = client.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
                          accept="application/dicom+json").json()
    if not isinstance(metadata, list):
        raise SlideUnreadable(f"DICOMweb metadata of series {series_uid} is not a list")
    datasets = [Dataset.from_json(item, bulk_data_uri_handler=_no_bulk) for item in metadata]
    for ds in datasets:
        for keyword in TYPE_2_COPIED:
            if keyword not in ds:
                ds.setdefault(keyword, None)
    return datasets


def _no_bulk(tag: str, vr: str, uri: str) -> bytes:
    """Bulk data (pixels) is not fetched: headers are all the outputs need."""
    return b""


def read_pyramid(client: OrthancClient, series_orthanc_id: str) -> Pyramid:
    try:
        data = client.get(f"/wsi/pyramids/{series_orthanc_id}").json()
    except OrthancNotFound as e:
        raise SlideUnreadable(f"the WSI plugin has no pyramid for series "
                              f"{series_orthanc_id}: {e}") from e
    return Pyramid.from_json(series_orthanc_id, data)


def decode_tile(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SlideUnreadable(f"tile {where} cannot be decoded: {e}") from e


def read_level(client: OrthancClient, pyramid: Pyramid, level: int,
               scale: float = 1.0) -> np.ndarray:
    """One level of the pyramid as an (h, w, 3) uint8 image, tile by tile, each tile
    shrunk by ``scale`` (<= 1, area averaging) as it arrives.

    Shrinking per tile keeps memory at the size of the result: a slide that lacks its
    coarse levels (a scanner that wrote level 0 only) is read from level 0 without ever
    holding level 0.  Tile edges are rounded to whole output pixels.
    """
    width, height = pyramid.sizes[level]
    if not 0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], not {scale}")
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if out_w * out_h > MAX_LEVEL_PIXELS:
        raise SlideUnreadable(f"level {level} of series {pyramid.series_id} at scale "
                              f"{scale:g} is {out_w}x{out_h} px; the tile model reads at "
                              f"most {MAX_LEVEL_PIXELS} px at once")
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    out[:] = GLASS
    tw, th = pyramid.tile_sizes[level]
    cols, rows = pyramid.tiles[level]
    for row in range(rows):
        for col in range(cols):
            where = f"{level}/{col}/{row} of series {pyramid.series_id}"
            try:
                data = client.get(f"/wsi/tiles/{pyramid.series_id}/{level}/{col}/{row}").content
            except OrthancNotFound:
                continue  # a sparse slide's missing tile: glass
            tile = decode_tile(data, where)
            x, y = col * tw, row * th
            h = min(tile.shape[0], height - y)
            w = min(tile.shape[1], width - x)
            if h <= 0 or w <= 0:
                continue
            x0, x1 = round(x * scale), min(out_w, round((x + w) * scale))
            y0, y1 = round(y * scale), min(out_h, round((y + h) * scale))
            if x1 <= x0 or y1 <= y0:
                continue
            part = tile[:h, :w]
            if (x1 - x0, y1 - y0) != (w, h):
                part = np.asarray(Image.fromarray(np.ascontiguousarray(part)).resize(
                    (x1 - x0, y1 - y0), Image.Resampling.BOX))
            out[y0:y1, x0:x1] = part
    return out
