"""A pathologist's marks on a slide as DICOM Microscopy Bulk Simple Annotations.

Annotations are stored where the slide is, in the slide's study in Orthanc, as
standard ANN instances (highdicom ``MicroscopyBulkSimpleAnnotations``), so that any
DICOM viewer shows them and the archive keeps them with the images; the center keeps
no second copy in its database.  Each save is one new instance (who and when are the
instance's ContentCreatorName and ContentDate/Time); the slide's annotations are the
union of every ANN instance of the study that references the slide's series.

Encoding (2D, level-0 pixel coordinates of the total pixel matrix, column = x, row = y):

* one annotation group per (kind, text): the group's label is the kind (``point``,
  ``line``, ``polygon``, ``freehand`` or ``text``) and its description
  (AnnotationGroupDescription, UT) is the note's text; annotations without text of
  one kind share one group, so in the common case there is exactly one group per kind;
* graphic type POINT for ``point`` and ``text`` (a note pinned at a point), POLYLINE
  for ``line`` and ``freehand``, POLYGON for ``polygon`` (closed implicitly);
* coordinates as 32-bit floats (exact for whole pixels up to 2**24).

An ANN instance written by another tool is read by its graphic type (POINT → point,
POLYLINE → line, POLYGON/RECTANGLE/ELLIPSE → polygon) with the group label and
description as its text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from core.errors import InvalidInput

KINDS = ("point", "line", "polygon", "freehand", "text")
#: DICOM graphic type of each kind.
GRAPHIC_TYPE = {"point": "POINT", "text": "POINT", "line": "POLYLINE",
                "freehand": "POLYLINE", "polygon": "POLYGON"}
_POINTS_NEEDED = {"point": (1, 1), "text": (1, 1), "line": (2, None),
                  "freehand": (2, None), "polygon": (3, None)}
#: Caps on one save: a freehand outline of a large tumour is a few thousand points.
MAX_POINTS = 10_000
MAX_ANNOTATIONS = 1_000
MAX_TEXT = 1_000
ANN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.91.1"
MANUFACTURER = "Regional Diagnostic Center"


@dataclass(frozen=True)
class Annotation:
    """One mark: ``coords`` [[x, y], ...] in level-0 pixels; ``text`` the note/label."""

    kind: str
    coords: list[list[float]]
    text: str = ""
    author: str = ""
    created_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "coords": self.coords, "text": self.text,
                "author": self.author, "created_at": self.created_at}


def validate(annotations: list[Annotation], width: int, height: int) -> None:
    """Refuse (InvalidInput, HTTP 422) what cannot be stored faithfully, naming the
    annotation's index: an unknown kind, no or too many points, a point outside the
    slide ([0, width] x [0, height] level-0 pixels), a note too long."""
    if not annotations:
        raise InvalidInput("no annotations given")
    if len(annotations) > MAX_ANNOTATIONS:
        raise InvalidInput(f"{len(annotations)} annotations in one save; at most "
                           f"{MAX_ANNOTATIONS}")
    for i, a in enumerate(annotations):
        where = f"annotation {i}"
        if a.kind not in KINDS:
            raise InvalidInput(f"{where}: unknown kind {a.kind!r}; one of {', '.join(KINDS)}")
        if not a.coords:
            raise InvalidInput(f"{where}: no coordinates")
        if len(a.coords) > MAX_POINTS:
            raise InvalidInput(f"{where}: {len(a.coords)} points; at most {MAX_POINTS}")
        low, high = _POINTS_NEEDED[a.kind]
        if len(a.coords) < low or (high is not None and len(a.coords) > high):
            need = f"exactly {low}" if high == low else f"at least {low}"
            raise InvalidInput(f"{where}: a {a.kind} needs {need} point(s), got "
                               f"{len(a.coords)}")
        for j, point in enumerate(a.coords):
            if len(point) != 2 or not all(isinstance(v, int | float) and math.isfinite(v)
                                          for v in point):
                raise InvalidInput(f"{where}, point {j}: must be [x, y] numbers")
            x, y = point
            if not (0 <= x <= width and 0 <= y <= height):
                raise InvalidInput(f"{where}, point {j}: ({x}, {y}) is outside the slide "
                                   f"(0..{width} x 0..{height} pixels)")
        if len(a.text) > MAX_TEXT:
            raise InvalidInput(f"{where}: text of {len(a.text)} characters; at most "
                               f"{MAX_TEXT}")
        if a.kind == "text" and not a.text.strip():
            raise InvalidInput(f"{where}: a text note needs text")


def annotation_series_uid(slide_series_uid: str) -> str:
    """The one ANN series of a slide: derived from the slide's series UID, so that every
    save of the slide's annotations lands in the same series."""
    return str(generate_uid(entropy_srcs=["rdc-pathology-annotations", slide_series_uid]))


def _groups(annotations: list[Annotation]) -> list[tuple[str, str, list[Annotation]]]:
    """(kind, text, members) in order of first appearance."""
    found: dict[tuple[str, str], list[Annotation]] = {}
    for a in annotations:
        found.setdefault((a.kind, a.text), []).append(a)
    return [(k, t, members) for (k, t), members in found.items()]


def build_annotation_dataset(source_slide_ds_headers: pydicom.Dataset,
                             annotations: list[Annotation], author: str, *,
                             instance_number: int = 1,
                             now: datetime | None = None) -> pydicom.Dataset:
    """A new ANN instance holding ``annotations`` on the slide whose level-0 headers are
    ``source_slide_ds_headers`` (no pixel data needed), by ``author``."""
    now = now or datetime.now(UTC)
    groups = []
    for number, (kind, text, members) in enumerate(_groups(annotations), start=1):
        graphic = [np.asarray(a.coords, dtype=np.float64).reshape(-1, 2) for a in members]
        groups.append(hd.ann.AnnotationGroup(
            number=number, uid=generate_uid(), label=kind,
            annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            annotated_property_type=codes.SCT.MorphologicallyAbnormalStructure,
            graphic_type=GRAPHIC_TYPE[kind], graphic_data=graphic,
            algorithm_type="MANUAL", description=text or None))
    src = _with_type2(source_slide_ds_headers)
    ds = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[src], annotation_coordinate_type="2D", annotation_groups=groups,
        series_instance_uid=annotation_series_uid(str(src.SeriesInstanceUID)),
        series_number=900, sop_instance_uid=generate_uid(),
        instance_number=instance_number, manufacturer=MANUFACTURER,
        manufacturer_model_name="rdc pathology viewer", software_versions="0.1.0",
        device_serial_number="rdc", content_description="pathologist annotations",
        content_creator_name=_person_name(author), content_label="ANNOTATIONS")
    ds.ContentDate = pydicom.valuerep.DA(now.strftime("%Y%m%d"))
    ds.ContentTime = pydicom.valuerep.TM(now.strftime("%H%M%S.%f"))
    ds.TimezoneOffsetFromUTC = "+0000"
    return ds


#: Type 2 attributes highdicom copies from the source: present (maybe empty) in a valid
#: WSI, but a county scanner may leave some out.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _with_type2(src: pydicom.Dataset) -> pydicom.Dataset:
    missing = [k for k in _TYPE2 if k not in src]
    no_frame = "FrameOfReferenceUID" not in src
    if not missing and not no_frame:
        return src
    copy = pydicom.Dataset(src)
    for keyword in missing:
        setattr(copy, keyword, "")
    if no_frame:
        # highdicom compares the sources' frames of reference even for 2D annotations,
        # whose instance carries none (the Frame of Reference module is for 3D only):
        # a stand-in here reaches no output.  Some dicomizers leave it out.
        copy.FrameOfReferenceUID = generate_uid(
            entropy_srcs=["rdc-no-frame-of-reference", str(src.get("SeriesInstanceUID", ""))])
    return copy


def _person_name(author: str) -> str:
    # PN components are separated by ^ and = ; an account name holds neither.
    # A trailing ^ marks a one-component name (the account name) as intended.
    name = author.replace("^", " ").replace("=", " ").replace("\\", " ")[:63]
    return f"{name or 'unknown'}^"


def references_series(ds: pydicom.Dataset, series_uid: str) -> bool:
    """Whether the ANN instance ``ds`` annotates the series ``series_uid``."""
    for ref in ds.get("ReferencedSeriesSequence", []):
        if str(ref.get("SeriesInstanceUID", "")) == series_uid:
            return True
    for study_ref in ds.get("ReferencedStudySequence", []):
        for ref in study_ref.get("ReferencedSeriesSequence", []):
            if str(ref.get("SeriesInstanceUID", "")) == series_uid:
                return True
    return False


def _created_at(ds: pydicom.Dataset) -> datetime | None:
    date, time = str(ds.get("ContentDate", "")), str(ds.get("ContentTime", ""))
    if len(date) != 8:
        return None
    try:
        if "." in time:
            t = datetime.strptime(f"{date}{time}", "%Y%m%d%H%M%S.%f")
        else:
            t = datetime.strptime(f"{date}{time[:6].ljust(6, '0')}", "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return t.replace(tzinfo=UTC)


_FOREIGN_KIND = {"POINT": "point", "POLYLINE": "line", "POLYGON": "polygon",
                 "RECTANGLE": "polygon", "ELLIPSE": "polygon"}


def read_annotations(ds: pydicom.Dataset) -> list[Annotation]:
    """The annotations of one ANN instance (ours or another tool's, 2D only)."""
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds)
    if str(ds.get("AnnotationCoordinateType", "2D")) != "2D":
        return []  # 3D slide coordinates: not what this viewer draws
    author = str(ds.get("ContentCreatorName", "")).rstrip("^")
    created = _created_at(ds)
    out: list[Annotation] = []
    for group in ann.get_annotation_groups():
        label = str(group.label)
        description = str(group.get("AnnotationGroupDescription", "") or "")
        graphic_type = group.graphic_type.value
        if label in KINDS and GRAPHIC_TYPE[label] == graphic_type:
            kind, text = label, description
        else:
            kind = _FOREIGN_KIND.get(graphic_type, "polygon")
            text = " — ".join(t for t in (label, description) if t)
        for g in group.get_graphic_data(coordinate_type="2D"):
            points = np.asarray(g, dtype=np.float64).reshape(-1, 2)
            out.append(Annotation(kind=kind, coords=[[_num(x), _num(y)] for x, y in points],
                                  text=text, author=author, created_at=created))
    return out


def _num(v: float) -> float:
    """A coordinate as JSON shows it: whole pixels as integers-valued floats, else
    rounded to what float32 keeps."""
    return float(round(float(v), 3))
