"""AI results as DICOM: a TID 1500 measurement report (SR) and a binary SEG.

Both are built with highdicom, go into the *same study* as the images they
were computed from, and say what produced them: the algorithm's name, version
and the SHA-256 of its weights (Algorithm Identification), and a device
observer that names the model.  The SR is always ``UNVERIFIED``: a pre-read,
never a report.  UIDs come from the caller and are derived from (series,
model, version), so a rerun produces the same objects rather than new ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai_models.manifest import Manifest
from ai_models.output_uids import deterministic_uid
from ai_models.pipelines.base import Finding

MANUFACTURER = "Regional Diagnostic Center"
#: SNOMED CT "Present" / "Absent" for the thresholded outcome of each label.
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
PROBABILITY = Code("RDC-PROB", "99RDC", "Probability")
UNIT_NONE = Code("1", "UCUM", "no units")
CATEGORY = Code("49755003", "SCT", "Morphologically abnormal structure")
MILLILITER = Code("ml", "UCUM", "milliliter")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
DEMO_NOTE = "DEMONSTRATION WEIGHTS, NOT FOR CLINICAL USE"


def _code(label_code: object) -> Code:
    value, scheme, meaning = (getattr(label_code, k) for k in ("value", "scheme", "meaning"))
    return Code(value, scheme, meaning)


def _sr_algorithm(manifest: Manifest) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=manifest.name, version=manifest.version,
        parameters=[f"weights_sha256={manifest.weights.sha256}"],
        manufacturer=MANUFACTURER)


def _seg_algorithm(manifest: Manifest) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=manifest.name, family=codes.cid7162.ArtificialIntelligence,
        version=manifest.version, source=MANUFACTURER,
        parameters={"weights_sha256": manifest.weights.sha256})


def _observer(manifest: Manifest, device: str) -> hd.sr.ObservationContext:
    note = f"{MANUFACTURER} ({DEMO_NOTE})" if manifest.demonstration else MANUFACTURER
    attrs = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=deterministic_uid("device", manifest.name, manifest.version),
        name=f"{manifest.name} {manifest.version}"[:64], manufacturer_name=note[:64],
        model_name=f"{manifest.name} {manifest.version} on {device}"[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=attrs))


def _group(manifest: Manifest, finding: Finding, source: Sequence[Dataset],
           seg: Dataset | None, index: int) -> hd.sr.MeasurementsAndQualitativeEvaluations | \
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    label = manifest.label(finding.label)
    code = _code(label.code)
    algorithm = _sr_algorithm(manifest)
    tracking = hd.sr.TrackingIdentifier(
        uid=deterministic_uid("tracking", manifest.name, manifest.version,
                              str(source[0].SeriesInstanceUID), finding.label),
        identifier=f"{finding.label} #{index}")
    measurements = [hd.sr.Measurement(name=PROBABILITY, value=round(finding.probability, 6),
                                      unit=UNIT_NONE, algorithm_id=algorithm)]
    if finding.volume_ml is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.SCT.Volume, value=round(finding.volume_ml, 3),
            unit=MILLILITER, algorithm_id=algorithm))
    evaluations = [hd.sr.QualitativeEvaluation(name=code,
                                               value=PRESENT if finding.positive else ABSENT)]
    if seg is not None and finding.positive:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=1, source_series=hd.sr.SourceSeriesForSegmentation(
                    str(source[0].SeriesInstanceUID))),
            finding_type=code, algorithm_id=algorithm, measurements=measurements,
            qualitative_evaluations=evaluations, finding_category=CATEGORY)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=code, algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            str(source[0].SOPClassUID), str(source[0].SOPInstanceUID))])


def build_sr(source: Sequence[Dataset], manifest: Manifest, findings: Sequence[Finding], *,
             series_uid: str, sop_uid: str, device: str,
             seg: Dataset | None = None) -> Dataset:
    """The run's TID 1500 measurement report: one group per label, UNVERIFIED."""
    groups = [_group(manifest, f, source, seg, i + 1) for i, f in enumerate(findings)]
    report = hd.sr.MeasurementReport(
        observation_context=_observer(manifest, device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups)
    evidence = list(source) + ([seg] if seg is not None else [])
    description = f"AI pre-read {manifest.name} {manifest.version}"
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=series_uid,
        series_number=9001, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=description[:64])
    return sr


def build_seg(source: Sequence[Dataset], manifest: Manifest, mask: np.ndarray, *, label: str,
              series_uid: str, sop_uid: str) -> Dataset:
    """A binary SEG of ``mask`` (frames, rows, cols), aligned with ``source``.

    Empty frames are left out; an all-empty mask is refused (there is nothing to
    segment, and the SR alone says so).
    """
    if mask.shape != (len(source), int(source[0].Rows), int(source[0].Columns)):
        raise ValueError(f"mask shape {mask.shape} does not match {len(source)} source "
                         f"images of {source[0].Rows}x{source[0].Columns}")
    if not mask.any():
        raise ValueError("the mask is empty: no SEG for a negative result")
    lab = manifest.label(label)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=CATEGORY,
        segmented_property_type=_code(lab.code),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_seg_algorithm(manifest))
    seg = hd.seg.Segmentation(
        source_images=list(source), pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=series_uid,
        series_number=9002, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=manifest.name[:64],
        software_versions=manifest.version, device_serial_number=manifest.weights.sha256[:16],
        content_description=(f"AI {label}" + (f" ({DEMO_NOTE})"
                                              if manifest.demonstration else ""))[:64],
        series_description=f"AI segmentation {manifest.name} {manifest.version}"[:64],
        omit_empty_frames=True)
    return seg
