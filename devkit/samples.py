"""Sample DICOM data for the demo, the tests and the benchmarks.

Two sources, both local (nothing is downloaded): pydicom's own test files,
and synthetic studies generated here from a seed (a chest radiograph and a
multi-slice CT phantom) that later pipelines apply to.  Synthetic images are
phantoms, not patients, and say so in their descriptions.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def pydicom_test_files() -> list[Path]:
    """Every file shipped in pydicom's test data, valid or not."""
    return sorted(Path(p) for p in get_testdata_files())


def _valid_uid(value: object) -> bool:
    text = str(value)
    return 0 < len(text) <= 64 and all(part.isdigit() for part in text.split("."))


def storage_sample_files() -> list[Path]:
    """pydicom test files that are well-formed Part 10 storage objects a sender can send.

    Well-formed means: readable without ``force``, a transfer syntax in the file
    meta, a storage SOP class, and valid UIDs.  Several test files share a SOP
    Instance UID; only the first of each is kept, since a receiver keeps one
    object per UID.
    """
    from pynetdicom.presentation import AllStoragePresentationContexts

    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    seen: set[str] = set()
    out: list[Path] = []
    for path in pydicom_test_files():
        try:
            with warnings.catch_warnings():
                # pydicom reads a file whose encoding contradicts its transfer
                # syntax with only a warning; such a file is not a valid sample.
                warnings.filterwarnings("error", message="Expected explicit VR")
                ds = dcmread(path, stop_before_pixels=True)
            ts = ds.file_meta.TransferSyntaxUID
            keys = [ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID,
                    ds.SeriesInstanceUID]
        except Exception:  # noqa: S112 - unreadable files are simply not samples
            continue
        if not ts or str(keys[0]) not in storage or not all(_valid_uid(k) for k in keys):
            continue
        if str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")) not in ("", str(keys[1])):
            continue
        if str(keys[1]) in seen:
            continue
        seen.add(str(keys[1]))
        out.append(path)
    return out


@dataclass(frozen=True)
class Patient:
    id: str = "DEMO-0001"
    issuer: str = "DEMO-COUNTY"
    name: str = "Phantom^Demo"
    birth_date: str = "19600101"
    sex: str = "O"


def _uid(seed: str, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=[seed, *map(str, parts)]))


def _base(sop_class: str, sop_uid: str, patient: Patient, study_uid: str, series_uid: str,
          modality: str, description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = date.today().strftime("%Y%m%d")
    ds.StudyTime = "080000"
    ds.AccessionNumber = hashlib.sha1(study_uid.encode()).hexdigest()[:12].upper()  # noqa: S324
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "RDC synthetic phantom"
    ds.StudyDescription = f"{description} (synthetic phantom, not a patient)"
    ds.SeriesDescription = description
    ds.BodyPartExamined = "CHEST"
    return ds


def _pixels(ds: Dataset, image: np.ndarray) -> None:
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = image.astype("<u2").tobytes()


def ct_phantom_slice(z: float, size: int, rng: np.random.Generator,
                     lesion: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """One axial slice of a chest phantom in stored values (HU + 1024).

    ``z`` runs 0..1 head to feet; ``lesion`` is (x, y, z, radius) in unit
    coordinates for a planted nodule.
    """
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    hu = np.full((size, size), -1000.0)
    body = (xx / 0.85) ** 2 + (yy / 0.6) ** 2 <= 1
    hu[body] = 40
    lung_r = 0.3 + 0.1 * np.sin(np.pi * z)
    for cx in (-0.38, 0.38):
        hu[((xx - cx) / lung_r) ** 2 + ((yy + 0.05) / (lung_r * 1.4)) ** 2 <= 1] = -850
    hu[(xx ** 2 + (yy - 0.42) ** 2) <= 0.08 ** 2] = 700  # spine
    if lesion is not None:
        lx, ly, lz, lr = lesion
        dz = (z - lz) * 2
        r2 = lr ** 2 - dz ** 2
        if r2 > 0:
            hu[((xx - lx) ** 2 + (yy - ly) ** 2) <= r2] = 60
    hu += rng.normal(0, 12, size=hu.shape)
    clipped: np.ndarray = np.clip(hu + 1024, 0, 4095)
    return clipped


@dataclass(frozen=True)
class GeneratedStudy:
    study_uid: str
    series_uid: str
    paths: list[Path]


def write_ct_series(out_dir: Path, *, slices: int = 300, size: int = 512, seed: int = 1,
                    patient: Patient = Patient(), announce_count: bool = True,
                    lesion: tuple[float, float, float, float] | None = (0.3, -0.1, 0.5, 0.06),
                    ) -> GeneratedStudy:
    """A chest CT phantom of ``slices`` 16-bit slices, reproducible from ``seed``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"ct:{seed}:{slices}:{size}:{patient.id}"
    study_uid, series_uid = _uid(key, "study"), _uid(key, "series")
    rng = np.random.default_rng(seed)
    frame_uid = _uid(key, "frame")
    paths = []
    for i in range(slices):
        sop_uid = _uid(key, "sop", i)
        ds = _base(CT_IMAGE_STORAGE, sop_uid, patient, study_uid, series_uid, "CT",
                   "CT chest phantom")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = i + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [-175.0, -175.0, -float(i) * 1.25]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [350.0 / size, 350.0 / size]
        ds.SliceThickness = 1.25
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        if announce_count:
            ds.NumberOfStudyRelatedInstances = slices
        _pixels(ds, ct_phantom_slice(i / max(1, slices - 1), size, rng, lesion))
        path = out_dir / f"ct-{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return GeneratedStudy(study_uid, series_uid, paths)


def draw_pneumothorax(img: np.ndarray, xx: np.ndarray, yy: np.ndarray, *, cx: float,
                      cy: float = -0.05, a: float = 0.28, b: float = 0.6,
                      collapse: float = 0.72, air: float = 250.0, lung: float = 700.0,
                      pleura: float = 1500.0, line: float = 0.012) -> None:
    """Paint a pneumothorax over the lung ellipse (cx, cy, a, b) of a radiograph, in place.

    The lung shrinks by ``collapse`` towards its medial and basal edges, so the
    gap it leaves is a crescent along the lateral wall and the apex: darker than
    lung (``air``: no lung density) and bounded by a thin bright visceral
    pleural line.  Geometry only, no randomness, so that the training phantoms
    (``ai_models.training.phantoms``) and this DICOM phantom draw the same thing.
    """
    side = 1.0 if cx >= 0 else -1.0
    ccx, ccy = cx - side * a * (1 - collapse), cy + b * (1 - collapse)
    ca, cb = a * collapse, b * collapse
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
    collapsed = ((xx - ccx) / ca) ** 2 + ((yy - ccy) / cb) ** 2 <= 1
    rim = ((xx - ccx) / (ca + line)) ** 2 + ((yy - ccy) / (cb + line)) ** 2 <= 1
    img[inside & ~collapsed] = air
    img[inside & collapsed] = lung
    img[inside & rim & ~collapsed] = pleura


def write_chest_radiograph(out_dir: Path, *, size: int = 1024, seed: int = 2,
                           patient: Patient = Patient(), opacity: bool = True,
                           pneumothorax: bool = False) -> GeneratedStudy:
    """A frontal chest radiograph phantom (DX, for presentation).

    ``opacity`` plants a dense blob in the right-of-image lung; ``pneumothorax``
    collapses the left-of-image lung (see `draw_pneumothorax`).  Both default
    to what the phantom always drew, so existing seeds give the same pixels.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"dx:{seed}:{size}:{patient.id}"
    study_uid, series_uid = _uid(key, "study"), _uid(key, "series")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = np.full((size, size), 3000.0)
    img[(xx / 0.8) ** 2 + (yy / 0.95) ** 2 <= 1] = 1800
    for cx in (-0.35, 0.35):
        img[((xx - cx) / 0.28) ** 2 + ((yy + 0.05) / 0.6) ** 2 <= 1] = 600
    img[(np.abs(xx) < 0.06) & (np.abs(yy) < 0.9)] = 2600  # mediastinum / spine
    if opacity:
        img[((xx - 0.35) ** 2 + (yy - 0.2) ** 2) <= 0.1 ** 2] = 1500
    if pneumothorax:
        draw_pneumothorax(img, xx, yy, cx=-0.35)
    img += rng.normal(0, 30, size=img.shape)
    ds = _base(DX_FOR_PRESENTATION, _uid(key, "sop"), patient, study_uid, series_uid, "DX",
               "Chest PA phantom")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.InstanceNumber = 1
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.35, 0.35]
    ds.PixelSpacing = [0.35, 0.35]
    ds.PatientOrientation = ["L", "F"]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 2000
    ds.WindowWidth = 4000
    ds.BurnedInAnnotation = "NO"
    _pixels(ds, np.clip(img, 0, 4095))
    path = out_dir / "dx-0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return GeneratedStudy(study_uid, series_uid, [path])


def chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
