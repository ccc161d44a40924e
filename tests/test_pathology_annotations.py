"""Slide annotations as DICOM Microscopy Bulk Simple Annotations: the encoding on its
own (every kind, notes, another tool's groups), the checks that refuse what cannot be
stored, and the round trip through the API into a real Orthanc and back."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from test_pathology_api import World, make_wsi, world

from core.errors import InvalidInput
from pathology.annotations import (
    ANN_SOP_CLASS,
    MAX_POINTS,
    MAX_TEXT,
    Annotation,
    annotation_series_uid,
    build_annotation_dataset,
    read_annotations,
    references_series,
    validate,
)

__all__ = ["world"]  # the fixture, shared with the API tests

SAMPLE = [
    Annotation("point", [[10, 20]]),
    Annotation("text", [[5, 5]], "mitosis here"),
    Annotation("line", [[1, 2], [300, 4]]),
    Annotation("freehand", [[1, 2], [3, 4], [5, 6.5], [9.25, 10]]),
    Annotation("polygon", [[0, 0], [1024, 0], [1024, 768]], "tumour front"),
    Annotation("point", [[11, 21]]),
    Annotation("polygon", [[100, 100], [200, 100], [150, 180]]),
]


def _source(tmp: Path) -> pydicom.Dataset:
    """A real slide's level-0 headers (devkit.wsi_samples)."""
    _, _, files = make_wsi(tmp, width=1024, height=768)
    return pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)


def _key(a: Any) -> tuple[Any, ...]:
    """An annotation (or its JSON) as a sortable, comparable tuple: kind, text, points."""
    d = a.as_dict() if isinstance(a, Annotation) else a
    return (d["kind"], d["text"], [[float(x), float(y)] for x, y in d["coords"]])


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def test_every_kind_survives_the_dicom_encoding(tmp_path: Path) -> None:
    src = _source(tmp_path)
    at = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
    ds = _roundtrip(build_annotation_dataset(src, SAMPLE, "dr.a", now=at))
    assert ds.SOPClassUID == ANN_SOP_CLASS and ds.Modality == "ANN"
    assert ds.SeriesInstanceUID == annotation_series_uid(str(src.SeriesInstanceUID))
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert references_series(ds, str(src.SeriesInstanceUID))
    assert not references_series(ds, "1.2.3")
    # One group per kind and note: point, text, line, freehand, polygon+note, polygon.
    groups = ds.AnnotationGroupSequence
    assert [(g.AnnotationGroupLabel, g.GraphicType) for g in groups] == [
        ("point", "POINT"), ("text", "POINT"), ("line", "POLYLINE"),
        ("freehand", "POLYLINE"), ("polygon", "POLYGON"), ("polygon", "POLYGON")]
    assert [g.NumberOfAnnotations for g in groups] == [2, 1, 1, 1, 1, 1]
    back = read_annotations(ds)
    assert sorted(map(_key, back)) == sorted(map(_key, SAMPLE))
    assert {a.author for a in back} == {"dr.a"}
    assert {a.created_at for a in back} == {at}


def test_another_tools_groups_are_read_by_graphic_type(tmp_path: Path) -> None:
    src = _source(tmp_path)
    # What highdicom needs of a source, which the other tool is assumed to have filled.
    src.FrameOfReferenceUID = src.get("FrameOfReferenceUID", generate_uid())
    for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID",
                    "StudyDate", "StudyTime", "AccessionNumber"):
        if keyword not in src:
            setattr(src, keyword, "")
    group = hd.ann.AnnotationGroup(
        number=1, uid=generate_uid(), label="Tumor",
        annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        annotated_property_type=codes.SCT.MorphologicallyAbnormalStructure,
        graphic_type="POLYGON", graphic_data=[np.array([[1.0, 1.0], [9.0, 1.0], [5.0, 7.0]])],
        algorithm_type="MANUAL", description="invasive")
    ds = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[src], annotation_coordinate_type="2D", annotation_groups=[group],
        series_instance_uid=generate_uid(), series_number=1, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="other", manufacturer_model_name="x",
        software_versions="1", device_serial_number="1")
    [a] = read_annotations(_roundtrip(ds))
    assert (a.kind, a.text, a.coords) == ("polygon", "Tumor — invasive",
                                          [[1.0, 1.0], [9.0, 1.0], [5.0, 7.0]])


@pytest.mark.parametrize(("bad", "message"), [
    (Annotation("point", [[1025, 5]]), "annotation 1, point 0: (1025, 5) is outside the slide"),
    (Annotation("polygon", [[0, 0], [5, -1], [9, 9]]), "annotation 1, point 1: (5, -1)"),
    (Annotation("circle", [[1, 1]]), "annotation 1: unknown kind 'circle'"),
    (Annotation("line", []), "annotation 1: no coordinates"),
    (Annotation("polygon", [[0, 0], [5, 5]]), "a polygon needs at least 3 point(s), got 2"),
    (Annotation("point", [[0, 0], [5, 5]]), "a point needs exactly 1 point(s), got 2"),
    (Annotation("freehand", [[1, 1]] * (MAX_POINTS + 1)), f"at most {MAX_POINTS}"),
    (Annotation("text", [[1, 1]], "x" * (MAX_TEXT + 1)), f"at most {MAX_TEXT}"),
    (Annotation("text", [[1, 1]], "  "), "a text note needs text"),
    (Annotation("point", [[float("nan"), 1]]), "must be [x, y] numbers"),
])
def test_validate_names_the_refused_annotation(bad: Annotation, message: str) -> None:
    good = Annotation("point", [[1024, 768]])  # the far corner is still on the slide
    with pytest.raises(InvalidInput) as e:
        validate([good, bad], 1024, 768)
    assert message in str(e.value)


def test_validate_refuses_nothing_to_save() -> None:
    with pytest.raises(InvalidInput, match="no annotations"):
        validate([], 10, 10)


# Through the API into Orthanc ----------------------------------------------------------------


def _ann_instances(w: World) -> int:
    """ANN instances in the slide's study in Orthanc."""
    with w.c.orthanc() as o:
        study = o.get(f"/series/{w.orthanc_series[w.slide_a]}").json()["ParentStudy"]
        return sum(len(s["Instances"]) for s in o.study_series(study)
                   if s["MainDicomTags"].get("Modality") == "ANN")


def test_annotations_round_trip_through_orthanc(world: World) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    clerk_a = w.client("clerk.a", ["site_user"], ["county-a"])
    url = f"/api/pathology/slides/{w.slide_a}/annotations"
    assert dr_a.get(url).json() == {"annotations": []}

    first = [{"kind": "polygon", "coords": [[10, 10], [400, 10], [400, 300]],
              "text": "tumour front"},
             {"kind": "point", "coords": [[512, 384]], "text": ""},
             {"kind": "text", "coords": [[100, 200]], "text": "mitoses 12/10 HPF"},
             {"kind": "freehand", "coords": [[1, 1], [2, 3], [5, 8], [13, 21]], "text": ""}]
    r = dr_a.post(url, json={"annotations": first})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["sop_instance_uid"]
    assert sorted(map(_key, saved["annotations"])) == sorted(map(_key, first))
    assert {a["author"] for a in saved["annotations"]} == {"dr.a"}

    # Reopened (a new request, from the archive): the same.
    reopened = dr_a.get(url).json()["annotations"]
    assert sorted(map(_key, reopened)) == sorted(map(_key, first))
    # The county account of the site sees them, and may not add any.
    assert sorted(map(_key, clerk_a.get(url).json()["annotations"])) == sorted(map(_key, first))
    assert clerk_a.post(url, json={"annotations": first}).status_code == 403
    # The other slide of the same study has none of them.
    assert dr_a.get(f"/api/pathology/slides/{w.slide_a2}/annotations").json() == \
        {"annotations": []}

    # A second save adds to the first; the answer holds all of them.
    dr_a2 = w.client("dr.a2", ["pathologist"], ["county-a"])
    more = [{"kind": "line", "coords": [[0, 0], [1024, 768]], "text": "5.2 mm"}]
    r = dr_a2.post(url, json={"annotations": more})
    assert r.status_code == 201, r.text
    assert sorted(map(_key, r.json()["annotations"])) == sorted(map(_key, first + more))
    assert {a["author"] for a in r.json()["annotations"]
            if a["kind"] == "line"} == {"dr.a2"}
    assert _ann_instances(w) == 2

    # The stored instance is a real ANN object in the slide's study.
    with w.c.orthanc() as o:
        iid = o.find_instance(saved["sop_instance_uid"])
        assert iid is not None
        ds = pydicom.dcmread(io.BytesIO(o.instance_file(iid)))
    assert ds.SOPClassUID == ANN_SOP_CLASS
    assert references_series(ds, w.series[w.slide_a])


@pytest.mark.parametrize(("body", "message"), [
    ({"annotations": [{"kind": "point", "coords": [[5, 5]]},
                      {"kind": "polygon", "coords": [[0, 0], [2000, 0], [5, 5]]}]},
     "annotation 1, point 1: (2000.0, 0.0) is outside the slide"),
    ({"annotations": [{"kind": "blob", "coords": [[5, 5]]}]}, "annotation 0: unknown kind"),
    ({"annotations": [{"kind": "line", "coords": []}]}, "annotation 0: no coordinates"),
    ({"annotations": []}, "no annotations given"),
])
def test_refused_annotations_store_nothing(world: World, body: dict[str, object],
                                           message: str) -> None:
    w = world
    dr_a = w.client("dr.a", ["pathologist"], ["county-a"])
    url = f"/api/pathology/slides/{w.slide_a}/annotations"
    r = dr_a.post(url, json=body)
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
    assert dr_a.get(url).json() == {"annotations": []}
    assert _ann_instances(w) == 0
