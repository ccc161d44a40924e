"""Synthetic DICOM whole-slide images (VL Whole Slide Microscopy Image Storage).

Made the way the center makes them from a vendor file, so the samples test the
same path: a synthetic H&E slide (devkit.synthetic_slide) written as a tiled
TIFF, converted by the Dicomizer (pathology.wsi_convert), identity and Specimen
module applied (pathology.specimen).  Then, on request, the faults the QC gate
must catch: missing tiles (the level-0 instance becomes TILED_SPARSE, listing
the frames it has) and dropped pyramid levels.  One instance per pyramid level,
plus a LABEL image in a series of its own (same study): ready to C-STORE with storescu.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from devkit.synthetic_slide import write_synthetic_slide
from pathology.specimen import SlideIdentity, finalise_instances
from pathology.wsi_convert import convert_slide, frame_positions

LABEL_SIZE = (512, 256)  # columns, rows


def _uid(*parts: object) -> str:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def synthetic_wsi_dicom(out_dir: Path, *, width: int = 8192, height: int = 6144, seed: int = 0,
                        accession: str = "PATH-1", patient_id: str = "PAT-PATH-1",
                        patient_name: str = "SYNTHETIC^SLIDE", stain: str = "H&E",
                        frozen: bool = False, drop_levels: int = 0, missing_tiles: int = 0,
                        blur: bool = True, pen: bool = True, part: str = "A", block: str = "1",
                        organ: str = "", slide_number: int = 1, study_uid: str | None = None,
                        label: bool = True, tile: int = 512, mpp: float = 0.25) -> list[Path]:
    """Write one synthetic slide as DICOM WSI files into ``out_dir``; returns them,
    the pyramid levels largest first, then the label image.

    ``drop_levels`` removes that many of the smallest pyramid levels (level 0 is
    always kept); ``missing_tiles`` removes that many level-0 tiles that hold tissue
    (TILED_SPARSE).  The study UID is derived from the accession unless given, so
    that slides of one accession made separately land in one study.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study = study_uid or _uid("study", accession, patient_id)
    ident = SlideIdentity(
        patient_id=patient_id, patient_name=patient_name, accession=accession,
        study_uid=study, series_uid=_uid("series", study, seed, slide_number, part, block),
        specimen_id=f"{accession}-{part}{block}", stain=stain, part=part, block=block,
        organ=organ, frozen=frozen, slide_number=slide_number,
        study_description="Synthetic pathology slides (not a patient)")
    with tempfile.TemporaryDirectory(prefix="wsi-sample-") as tmp:
        work = Path(tmp)
        tiff = work / "slide.tiff"
        truth = write_synthetic_slide(tiff, width=width, height=height, seed=seed, tile=tile,
                                      mpp=mpp, blur=blur, pen=pen)
        conv = convert_slide(tiff, work / "dicom", threads=2)
        files = sorted(conv.files, key=_width, reverse=True)
        if missing_tiles:
            _drop_tiles(files[0], missing_tiles, seed, truth.tissue_mask(tile))
        files = finalise_instances(files, ident)
        if drop_levels:
            keep = max(1, len(files) - drop_levels)
            files = files[:keep]
        out: list[Path] = []
        stem = f"{accession}-{part}{block}-{slide_number}".replace("/", "_")
        for level, src in enumerate(files):
            dst = out_dir / f"{stem}-level{level}.dcm"
            dst.write_bytes(src.read_bytes())
            out.append(dst)
        if label:
            dst = out_dir / f"{stem}-label.dcm"
            label_instance(files[-1], ident.container, accession).save_as(
                dst, enforce_file_format=True)
            out.append(dst)
    return out


def _width(path: Path) -> int:
    return int(dcmread(path, stop_before_pixels=True).TotalPixelMatrixColumns)


def _drop_tiles(path: Path, count: int, seed: int, tissue_tiles: np.ndarray) -> None:
    """Remove ``count`` tissue tiles' frames from a level (per-frame positions kept)."""
    ds = dcmread(path)
    tw, th = int(ds.Columns), int(ds.Rows)
    positions = frame_positions(ds)
    candidates = [i for i, (c, r) in enumerate(positions)
                  if tissue_tiles[(r - 1) // th, (c - 1) // tw]]
    rng = np.random.default_rng([seed, 0xD20F])
    drop = set(int(i) for i in rng.choice(candidates, size=min(count, len(candidates)),
                                          replace=False))
    n = int(ds.NumberOfFrames)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    keep = [i for i in range(n) if i not in drop]
    ds.PixelData = encapsulate([frames[i] for i in keep], has_bot=True)
    ds["PixelData"].is_undefined_length = True
    items = list(ds.PerFrameFunctionalGroupsSequence)
    ds.PerFrameFunctionalGroupsSequence = [items[i] for i in keep]
    ds.NumberOfFrames = len(keep)
    ds.save_as(path, enforce_file_format=True)


def label_instance(template: Path, container: str, accession: str) -> Dataset:
    """A LABEL image (the slide's paper label, photographed) in a series of its own.

    Its own series, beside the slide's in the same study: Orthanc's WSI plugin
    (1.1) refuses to build the pyramid of a series that also holds a LABEL
    instance ("Incompatible size of the images").  ContainerIdentifier links the
    label to its slide.
    """
    ds = dcmread(template)
    ds.SeriesInstanceUID = _uid("label", ds.SeriesInstanceUID)
    ds.SeriesNumber = int(ds.get("SeriesNumber", 1) or 1) + 1000
    ds.SeriesDescription = f"Label {container}"[:64]
    cols, rows = LABEL_SIZE
    img = Image.new("RGB", (cols, rows), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.text((16, 16), container, fill=(0, 0, 0))
    draw.text((16, 40), accession, fill=(0, 0, 0))
    draw.text((16, 64), "SYNTHETIC - NOT A PATIENT", fill=(160, 0, 0))
    for i, bit in enumerate(hashlib.sha256(container.encode()).digest()[:24]):
        x = 16 + i * 20
        draw.rectangle((x, 120, x + 4 + bit % 12, 230), fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, subsampling=1)  # 4:2:2 = YBR_FULL_422
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    ds.Rows, ds.Columns = rows, cols
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
    ds.NumberOfFrames = 1
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([buf.getvalue()], has_bot=True)
    ds["PixelData"].is_undefined_length = True
    if "PerFrameFunctionalGroupsSequence" in ds:
        del ds.PerFrameFunctionalGroupsSequence
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.InstanceNumber = 100
    ds.SpecimenLabelInImage = "YES"
    ds.BurnedInAnnotation = "YES"
    return ds
