"""Vendor whole-slide files (SVS, NDPI, MRXS, generic tiled TIFF...) to DICOM WSI.

The conversion is Debian's ``OrthancWSIDicomizer`` run as a subprocess (see
benchmarks/RESULTS.md, "Pathology: DICOM WSI converter", for why it and not a
Python converter): it copies the JPEG tiles of a tiled TIFF without decoding
them, and reads every other vendor format through OpenSlide (the library the
openslide-bin wheel ships), re-encoding only then.  It writes into a fresh
temporary folder of ours, never into a path derived from the file's content,
and is killed after a time limit; on failure its log is kept for the error.

After it: `to_tiled_full` puts the frames of a complete tile grid into the
row-major order DICOM's TILED_FULL organisation means (moving the encoded
frames, never re-encoding them), so that every viewer and the Orthanc WSI
plugin can address a tile without the per-frame position table.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import logging
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import openslide
import tifffile
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from core.errors import ConfigurationError
from pathology.errors import WSIConversionError

log = logging.getLogger(__name__)

DICOMIZER = "OrthancWSIDicomizer"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: OpenSlide's name for tiled TIFFs the Dicomizer reads itself, copying tiles as they are.
NATIVE_FORMATS = frozenset({"generic-tiff"})
JPEG_COMPRESSION = 7  # TIFF Compression tag value of (new-style) JPEG


def dicomizer_path() -> str:
    """The Dicomizer executable (Debian package ``orthanc-wsi``)."""
    found = shutil.which(DICOMIZER) or (f"/usr/bin/{DICOMIZER}"
                                        if Path(f"/usr/bin/{DICOMIZER}").exists() else None)
    if found is None:
        raise ConfigurationError(
            f"{DICOMIZER} is not installed: sudo apt-get install orthanc-wsi")
    return found


def openslide_library() -> Path:
    """The libopenslide the Dicomizer loads for vendor formats.

    The openslide-bin wheel (the one openslide-python uses here) ships it in its
    package folder; a system libopenslide is the fallback.
    """
    spec = importlib.util.find_spec("openslide_bin")
    if spec is not None and spec.origin:
        for candidate in sorted(Path(spec.origin).parent.glob("libopenslide*.so*")):
            return candidate
    name = ctypes.util.find_library("openslide")
    if name:
        for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"):
            if (Path(folder) / name).exists():
                return Path(folder) / name
    raise ConfigurationError("libopenslide not found: install openslide-bin (pip) or libopenslide0")


@dataclass(frozen=True)
class SlideInfo:
    """What OpenSlide says about a vendor file."""

    vendor: str
    width: int
    height: int
    level_count: int
    mpp_x: float | None
    mpp_y: float | None


def inspect_slide(path: Path) -> SlideInfo:
    """Open ``path`` with OpenSlide (raises openslide's errors for a non-slide)."""
    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor is None:
        raise openslide.OpenSlideUnsupportedFormatError(f"{path.name}: unsupported format")
    with openslide.OpenSlide(path) as slide:
        width, height = slide.dimensions
        props = slide.properties

        def mpp(key: str) -> float | None:
            try:
                value = float(props[key])
            except (KeyError, ValueError):
                return None
            return value if math.isfinite(value) and value > 0 else None

        return SlideInfo(vendor=vendor, width=width, height=height,
                         level_count=slide.level_count,
                         mpp_x=mpp(openslide.PROPERTY_NAME_MPP_X),
                         mpp_y=mpp(openslide.PROPERTY_NAME_MPP_Y))


@dataclass(frozen=True)
class Conversion:
    """The instances of one converted slide, largest level first, and how long it took."""

    files: list[Path]
    seconds: float
    megapixels: float
    native: bool  # tiles copied as they were (no decode/re-encode)

    @property
    def megapixels_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("inf")


def convert_slide(src: Path, out_dir: Path, *, info: SlideInfo | None = None,
                  quality: int = 90, threads: int | None = None,
                  timeout_s: float = 1800.0) -> Conversion:
    """Convert ``src`` into DICOM WSI instances in the empty folder ``out_dir``.

    One instance per pyramid level (no size split).  A single-level file gets a
    pyramid built by the Dicomizer.  The imaged volume is computed from the
    slide's MPP, so that the instances' Pixel Spacing is the scanner's.
    Raises WSIConversionError (with the Dicomizer's log) on failure or timeout.
    """
    info = info or inspect_slide(src)
    if info.mpp_x is None or info.mpp_y is None:
        raise WSIConversionError(src, "the slide does not record its pixel size (MPP)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise WSIConversionError(src, f"output folder {out_dir} is not empty")
    native = info.vendor in NATIVE_FORMATS and info.level_count > 1 and _jpeg_tiles(src)
    args = [
        dicomizer_path(),
        f"--folder={out_dir}", "--folder-pattern=wsi-%06d.dcm", "--max-size=0",
        f"--threads={threads or os.cpu_count() or 1}",
        # The Dicomizer lays image rows along the slide's X axis (Image Orientation
        # (Slide) 0\\-1\\0\\-1\\0\\0): its imaged "width" is the image's height.
        f"--imaged-width={info.height * info.mpp_y / 1000:.6f}",
        f"--imaged-height={info.width * info.mpp_x / 1000:.6f}",
    ]
    if not native:
        # vendor formats are decoded by OpenSlide and re-encoded as JPEG tiles, in the
        # source's tile size (the Dicomizer resamples only to divisors of it)
        args += [f"--openslide={openslide_library()}", "--compression=jpeg",
                 f"--jpeg-quality={quality}"]
    if info.level_count == 1:
        args += ["--pyramid=1", "--smooth=1"]
    args.append(str(src))
    started = time.monotonic()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise WSIConversionError(src, f"the DICOM converter ran over {timeout_s:.0f} s",
                                 _text(e.stderr)) from e
    seconds = time.monotonic() - started
    files = sorted(out_dir.glob("wsi-*.dcm"))
    if proc.returncode != 0 or not files:
        tail = _last_lines(proc.stderr)
        raise WSIConversionError(
            src, f"the DICOM converter failed (exit {proc.returncode}): {tail}", proc.stderr)
    mp = info.width * info.height / 1e6
    log.info("wsi_convert file=%s vendor=%s levels_in=%d instances=%d seconds=%.2f mpx_s=%.1f",
             src.name, info.vendor, info.level_count, len(files), seconds, mp / max(seconds, 1e-9))
    return Conversion(files=files, seconds=seconds, megapixels=mp, native=native)


def _jpeg_tiles(path: Path) -> bool:
    """Whether every page of a TIFF is JPEG-tiled (what the Dicomizer copies as is);
    otherwise (LZW, Deflate, JPEG 2000...) the file goes through OpenSlide."""
    try:
        with tifffile.TiffFile(path) as tif:
            return all(isinstance(page, tifffile.TiffPage) and page.is_tiled
                       and int(page.compression) == JPEG_COMPRESSION for page in tif.pages)
    except Exception:  # not parsable as TIFF here: let OpenSlide read it
        return False


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _last_lines(stderr: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()
             if ln.strip() and not ln.lstrip().startswith("W")]  # W...: warnings/progress
    return " | ".join(lines[-n:]) or "no message"


# ---------------------------------------------------------------- tiling


def frame_positions(ds: Dataset) -> list[tuple[int, int]]:
    """(column, row) of every frame's top-left in the total pixel matrix (1-based)."""
    out = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        pos = item.PlanePositionSlideSequence[0]
        out.append((int(pos.ColumnPositionInTotalImagePixelMatrix),
                    int(pos.RowPositionInTotalImagePixelMatrix)))
    return out


def tile_grid(ds: Dataset) -> tuple[int, int]:
    """(tiles across, tiles down) of one instance."""
    return (math.ceil(int(ds.TotalPixelMatrixColumns) / int(ds.Columns)),
            math.ceil(int(ds.TotalPixelMatrixRows) / int(ds.Rows)))


def to_tiled_full(ds: Dataset) -> bool:
    """Reorder a complete tile grid row-major and mark it TILED_FULL (in place).

    Returns False, and marks the instance TILED_SPARSE keeping its per-frame
    positions, when tiles are missing or duplicated.  Frames are moved as
    encoded bytes; the pixels are never decoded.
    """
    if "PerFrameFunctionalGroupsSequence" not in ds:
        ds.DimensionOrganizationType = "TILED_FULL"
        return True
    cols, rows = tile_grid(ds)
    positions = frame_positions(ds)
    tw, th = int(ds.Columns), int(ds.Rows)
    keys = [((r - 1) // th, (c - 1) // tw) for c, r in positions]
    complete = sorted(keys) == [(y, x) for y in range(rows) for x in range(cols)]
    if not complete:
        ds.DimensionOrganizationType = "TILED_SPARSE"
        return False
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    order = sorted(range(n), key=lambda i: keys[i])
    if order != list(range(n)):
        ds.PixelData = encapsulate([frames[i] for i in order], has_bot=True)
        ds["PixelData"].is_undefined_length = True
    del ds.PerFrameFunctionalGroupsSequence
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    return True
