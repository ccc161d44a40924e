"""A tile model's heat map as a DICOM Parametric Map over the slide (highdicom).

Why a Parametric Map and not a SEG: the map holds probabilities (0..1 floats), one
frame per class, not a yes/no mask; and why not a SEG or map on the slide's own
pixel grid: a cell covers ``cell_px`` level-0 pixels (512 on the synthetic slides),
and no pyramid level has to match that.  The map therefore has its own, coarser
geometry *in the slide's frame of reference*: pixel spacing = ``cell_px`` x the
slide's level-0 spacing, the slide's orientation (ImageOrientationSlide) and its
origin (TotalPixelMatrixOrigin), as one tile of rows x cols pixels per class
(highdicom writes it TILED_SPARSE with explicit plane positions).  A viewer that
reads DICOM WSI geometry lays it over the slide; the center's own viewer uses the
same numbers from ``ai_results.heatmap``.

The map is marked as what it is: ContentQualification RESEARCH, a content
description and label naming the demonstration weights, the model and version in
the equipment attributes, and the first 16 hex digits of the weights' SHA-256 as the
device serial number (as the SEG writer does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ai_models.dicom_outputs import DEMO_NOTE, MANUFACTURER
from ai_models.manifest import Manifest
from ai_models.output_uids import deterministic_uid

UNIT_NONE = Code("1", "UCUM", "no units")
#: Series number of the heat map (the SR is 9001, a SEG 9002).
MAP_SERIES_NUMBER = 9003


def heatmap_array(heatmap: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Every class's (rows, cols, labels) float32 probabilities from the heat map JSON
    (``classes``), shape-checked, with the class names."""
    classes = heatmap["classes"]
    labels = [str(name) for name in classes["labels"]]
    values = np.asarray(classes["values"], dtype=np.float32)
    want = (int(heatmap["rows"]), int(heatmap["cols"]), len(labels))
    if values.shape != want:
        raise ValueError(f"heat map values have shape {values.shape}, expected {want}")
    return labels, values


def with_frame_of_reference(slide: Dataset) -> Dataset:
    """The slide's headers, with a Frame of Reference UID if the slide has none.

    The VL WSI IOD requires one, but converters (OrthancWSIDicomizer among them) leave
    it out.  highdicom places a multi-frame map only in a frame of reference, so a slide
    without one gets a UID derived from its series: the map is then in a frame of its
    own, still positioned by the slide's origin, orientation and spacing and referencing
    the slide as its source.  The slide in Orthanc is not changed.
    """
    if str(slide.get("FrameOfReferenceUID", "") or ""):
        return slide
    copy = Dataset()
    copy.update(slide)
    copy.FrameOfReferenceUID = deterministic_uid("frame-of-reference",
                                                 str(slide.SeriesInstanceUID))
    copy.setdefault("PositionReferenceIndicator", "SLIDE_CORNER")
    return copy


def build_parametric_map(source: Sequence[Dataset], manifest: Manifest,
                         heatmap: dict[str, Any], *, series_uid: str,
                         sop_uid: str) -> Dataset:
    """The heat map of one slide; ``source[0]`` is the slide's level-0 image (headers)."""
    slide = with_frame_of_reference(source[0])
    labels, values = heatmap_array(heatmap)
    spacing = slide.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    cell = int(heatmap["cell_px"])
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=(float(spacing[0]) * cell, float(spacing[1]) * cell),
        slice_thickness=float(getattr(slide.SharedFunctionalGroupsSequence[0]
                                      .PixelMeasuresSequence[0], "SliceThickness", 0.001)
                              or 0.001))
    orientation = hd.PlaneOrientationSequence(
        coordinate_system="SLIDE",
        image_orientation=[float(v) for v in slide.ImageOrientationSlide])
    origin = slide.TotalPixelMatrixOriginSequence[0]
    position = hd.PlanePositionSequence(
        coordinate_system="SLIDE",
        image_position=(float(origin.XOffsetInSlideCoordinateSystem),
                        float(origin.YOffsetInSlideCoordinateSystem),
                        float(getattr(origin, "ZOffsetInSlideCoordinateSystem", 0.0) or 0.0)),
        pixel_matrix_position=(1, 1))
    mappings = [[hd.pm.RealWorldValueMapping(
        lut_label=name[:16], lut_explanation=f"probability of {name} per cell"[:64],
        unit=UNIT_NONE, value_range=(0.0, 1.0), slope=1.0, intercept=0.0)]
        for name in labels]
    demo = manifest.demonstration
    return hd.pm.ParametricMap(
        source_images=[slide], pixel_array=values[None], series_instance_uid=series_uid,
        series_number=MAP_SERIES_NUMBER, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=manifest.name[:64],
        software_versions=manifest.version,
        device_serial_number=manifest.weights.sha256[:16],
        contains_recognizable_visual_features=False, real_world_value_mappings=mappings,
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5,
                                                         window_width=1.0)],
        pixel_measures=measures, plane_orientation=orientation, plane_positions=[position],
        content_label="AI_HEATMAP",
        content_description=(f"AI heat map, {DEMO_NOTE}" if demo else "AI heat map")[:64],
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        series_description=(f"AI heat map {manifest.name} {manifest.version}"
                            + (" DEMONSTRATION" if demo else "") + " UNVERIFIED")[:64])
