"""The patient, study and specimen identity every converted slide instance carries.

A converter knows pixels, not the case: it writes a random patient and study.
`finalise_instance` overwrites that with the accession's identity and fills the
Specimen module (container = the glass slide, the specimen it holds, sampled
from part and block, stained with...) and a brightfield optical path, in the
coded form DICOM defines (highdicom's builders), so that intake and any other
DICOM viewer read stain, part and block from the slide itself.  The pixel data
is never decoded or re-encoded: only the frame order may change (TILED_FULL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from pathology.wsi_convert import WSI_SOP_CLASS, to_tiled_full

#: Substances of the stains a lab names by abbreviation (SNOMED CT, DICOM CID 8112).
STAIN_SUBSTANCES: dict[str, list[hd.sr.CodedConcept]] = {
    "h&e": [hd.sr.CodedConcept.from_code(codes.SCT.HematoxylinStain),
            hd.sr.CodedConcept.from_code(codes.SCT.WaterSolubleEosinStain)],
    "he": [hd.sr.CodedConcept.from_code(codes.SCT.HematoxylinStain),
           hd.sr.CodedConcept.from_code(codes.SCT.WaterSolubleEosinStain)],
}
#: DICOM CID 8103 "Block" (a paraffin or frozen block cut from a part).
BLOCK_TYPE = hd.sr.CodedConcept("1179252003", "SCT", "Block of tissue")
#: Local coding scheme for free-text organ names (no mapping to SNOMED is guessed).
LOCAL_SCHEME = "99RDC"
FROZEN_TEXT = "FROZEN SECTION"


@dataclass(frozen=True)
class SlideIdentity:
    """Who and what one glass slide is, as the importing site declares it."""

    patient_id: str
    patient_name: str
    accession: str
    study_uid: str
    series_uid: str
    specimen_id: str
    stain: str = "H&E"
    part: str = ""
    block: str = ""
    organ: str = ""
    frozen: bool = False
    study_description: str = ""
    container_id: str = ""
    slide_number: int = 1

    @property
    def container(self) -> str:
        return self.container_id or f"{self.specimen_id}-S{self.slide_number}"


def specimen_uid(accession: str, specimen_id: str, slide_number: int) -> str:
    """A stable UID for a specimen (same accession + specimen + slide → same UID)."""
    digest = hashlib.sha256(f"{accession}\0{specimen_id}\0{slide_number}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:15], 'big')}"


def stain_substances(stain: str) -> list[hd.sr.CodedConcept | str]:
    """Coded substances of a known stain, else the stain's name as free text."""
    key = stain.strip().lower().replace(" ", "")
    if key in STAIN_SUBSTANCES:
        return list(STAIN_SUBSTANCES[key])
    return [stain.strip()] if stain.strip() else []


def specimen_description(ident: SlideIdentity) -> hd.SpecimenDescription:
    """The Specimen Description item: sampled from part then block, then stained."""
    steps: list[hd.SpecimenPreparationStep] = []
    if ident.part:
        steps.append(hd.SpecimenPreparationStep(
            specimen_id=ident.block or ident.specimen_id,
            processing_procedure=hd.SpecimenSampling(
                method=codes.SCT.Dissection, parent_specimen_id=ident.part,
                parent_specimen_type=codes.SCT.GrossSpecimen)))
    if ident.block:
        steps.append(hd.SpecimenPreparationStep(
            specimen_id=ident.specimen_id,
            processing_procedure=hd.SpecimenSampling(
                method=codes.SCT.BlockSectioning, parent_specimen_id=ident.block,
                parent_specimen_type=BLOCK_TYPE),
            processing_description="Frozen section" if ident.frozen else None,
            embedding_medium=(codes.SCT.FrozenSectionEmbeddingMedium if ident.frozen
                              else codes.SCT.ParaffinWax)))
    substances = stain_substances(ident.stain)
    if substances:
        steps.append(hd.SpecimenPreparationStep(
            specimen_id=ident.specimen_id,
            processing_procedure=hd.SpecimenStaining(substances=substances)))
    organ = ([hd.sr.CodedConcept(_code_value(ident.organ), LOCAL_SCHEME, ident.organ[:64])]
             if ident.organ.strip() else None)
    short = ", ".join(x for x in (
        f"part {ident.part}" if ident.part else "", f"block {ident.block}" if ident.block else "",
        ident.stain, ident.organ, "frozen section" if ident.frozen else "") if x)
    return hd.SpecimenDescription(
        specimen_id=ident.specimen_id,
        specimen_uid=specimen_uid(ident.accession, ident.specimen_id, ident.slide_number),
        specimen_preparation_steps=steps or None,
        primary_anatomic_structures=organ,
        specimen_type=codes.SCT.TissueSection,
        specimen_short_description=short[:64] or None,
    )


def _code_value(text: str) -> str:
    return hashlib.sha256(text.strip().lower().encode()).hexdigest()[:16].upper()


def optical_path() -> Dataset:
    """One brightfield path, full-spectrum illumination, the sRGB ICC profile kept."""
    item = Dataset()
    item.OpticalPathIdentifier = "1"
    item.OpticalPathDescription = "Brightfield"
    item.IlluminationTypeCodeSequence = [hd.sr.CodedConcept(
        "111744", "DCM", "Brightfield illumination")]
    item.IlluminationColorCodeSequence = [hd.sr.CodedConcept(
        "414298005", "SCT", "Full Spectrum")]
    return item


def apply_identity(ds: Dataset, ident: SlideIdentity, *, level: int) -> None:
    """Write the identity, the Specimen module and the optical path into ``ds``."""
    if str(ds.SOPClassUID) != WSI_SOP_CLASS:
        raise ValueError(f"not a VL Whole Slide Microscopy Image: {ds.SOPClassUID}")
    ds.PatientID = ident.patient_id
    ds.PatientName = ident.patient_name
    ds.AccessionNumber = ident.accession
    ds.StudyInstanceUID = UID(ident.study_uid)
    ds.SeriesInstanceUID = UID(ident.series_uid)
    ds.StudyID = ident.accession[:16]
    description = ident.study_description
    if ident.frozen and FROZEN_TEXT.lower() not in description.lower():
        description = f"{FROZEN_TEXT} {description}".strip()
    ds.StudyDescription = description[:64] or "Pathology slides"
    ds.SeriesDescription = " ".join(x for x in (
        ident.stain, f"part {ident.part}" if ident.part else "",
        f"block {ident.block}" if ident.block else "") if x)[:64]
    ds.SeriesNumber = ident.slide_number
    ds.InstanceNumber = level + 1
    flavour = "LABEL" if "LABEL" in [str(v).upper() for v in ds.get("ImageType", [])] else "VOLUME"
    if flavour == "VOLUME":
        ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0
                        else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
    ds.ContainerIdentifier = ident.container
    ds.IssuerOfTheContainerIdentifierSequence = DicomSequence()
    ds.ContainerTypeCodeSequence = [hd.sr.CodedConcept.from_code(codes.SCT.MicroscopeSlide)]
    ds.SpecimenDescriptionSequence = [specimen_description(ident)]
    ds.LabelText = ident.container[:64]
    ds.BarcodeValue = ident.container[:64]
    # keep the converter's ICC profile (it describes how the tiles were encoded)
    old = ds.get("OpticalPathSequence")
    path = optical_path()
    if old and "ICCProfile" in old[0]:
        path.ICCProfile = old[0].ICCProfile
    ds.OpticalPathSequence = [path]
    ds.NumberOfOpticalPaths = 1
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.FocusMethod = ds.get("FocusMethod") or "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.SpecimenLabelInImage = "YES" if flavour == "LABEL" else "NO"
    ds.BurnedInAnnotation = "YES" if flavour == "LABEL" else "NO"


def finalise_instances(files: Sequence[Path], ident: SlideIdentity) -> list[Path]:
    """Rewrite each converted instance in place: tiling normalised, identity applied.

    ``files`` are one slide's instances, largest level first; each keeps its SOP
    Instance UID and its encoded frames.  Returns the files.
    """
    order = sorted(files, key=_matrix_width, reverse=True)
    for level, path in enumerate(order):
        ds = dcmread(path)
        to_tiled_full(ds)
        apply_identity(ds, ident, level=level)
        ds.save_as(path, enforce_file_format=True)
    return list(order)


def _matrix_width(path: Path) -> int:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["TotalPixelMatrixColumns"])
    return int(ds.get("TotalPixelMatrixColumns", 0))
