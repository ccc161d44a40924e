"""The pre-read SR from a prepared skeleton: highdicom once per shape, patched after.

Why: building a TID 1500 report with highdicom costs about 20 ms of CPU per item
(content-tree validation, evidence search, deep copies), more than the network
itself at batch 8 on a small CPU.  The report of one model for one kind of source
always has the same tree; only the patient and study, the references, the derived
UIDs, the dates and the findings' values change.  So the first report of a given
shape is built by :func:`ai_models.dicom_outputs.build_sr` and kept; later ones are
a deep copy with those values replaced.

A skeleton is never trusted blindly.  The first time one is reused, the patched
report is compared with a report highdicom builds for the same input (all but the
creation times); if they differ in anything, that shape falls back to highdicom
for good and the difference is logged.  Only single-source reports without a
segmentation are templated (radiographs, ECGs): a multi-slice source or a SEG
reference goes to highdicom every time.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, DS, DT, TM

from ai_models.dicom_outputs import ABSENT, PRESENT, PROBABILITY, build_sr
from ai_models.manifest import Manifest
from ai_models.output_uids import deterministic_uid
from ai_models.pipelines.base import Finding

log = logging.getLogger(__name__)

#: Top-level attributes the SR sets itself: never taken from the source.
_OWN = frozenset({
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
    "InstanceNumber", "Manufacturer", "SeriesDescription", "InstanceCreationDate",
    "InstanceCreationTime", "ContentDate", "ContentTime", "ValueType",
    "ConceptNameCodeSequence", "ContentSequence", "ContinuityOfContent", "CompletionFlag",
    "VerificationFlag", "PreliminaryFlag", "ContentTemplateSequence",
    "CurrentRequestedProcedureEvidenceSequence", "ContributingEquipmentSequence",
    "PerformedProcedureCodeSequence", "ReferencedPerformedProcedureStepSequence",
    "VerifyingObserverSequence", "PertinentOtherEvidenceSequence",
})
TRACKING_UID = "112040"
IMAGE_LIBRARY = "126010"
VOLUME = "118565006"
#: DCM "Acquisition Equipment": the contributing-equipment item copied from the source.
ACQUISITION_EQUIPMENT = "109101"


@dataclass
class _Skeleton:
    sr: Dataset
    #: Top-level keywords copied from the source (equal in the SR and its source).
    copied: tuple[str, ...]
    verified: bool = False
    broken: bool = False


def _shape(manifest: Manifest, source: Dataset, findings: Sequence[Finding],
           device: str) -> tuple[Any, ...]:
    """What decides the report's tree: the model, the device, which findings (and
    which carry a volume), and which top-level attributes the source has."""
    return (manifest.name, manifest.version, manifest.weights.sha256, device,
            tuple((f.label, f.volume_ml is not None) for f in findings),
            tuple(sorted(int(e.tag) for e in source)))


def _copied_keywords(sr: Dataset, source: Dataset) -> tuple[str, ...]:
    out = []
    for elem in sr:
        kw = elem.keyword
        if kw and kw not in _OWN and kw in source and source[elem.tag].value == elem.value:
            out.append(kw)
    return tuple(out)


def _normalised(ds: Dataset) -> Any:
    """A comparable form of a report: its JSON, less the creation times."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()
                    if not (isinstance(v, dict) and k in _TIME_TAGS)}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node
    return strip(ds.to_json_dict())


#: The creation times (InstanceCreationDate/Time, ContentDate/Time, ContributionDateTime),
#: as JSON tags: left out of the self-check.
_TIME_TAGS = frozenset({"00080012", "00080013", "00080023", "00080033", "0018A002"})


class SRTemplates:
    """Skeletons of this process, by shape (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skeletons: dict[tuple[Any, ...], _Skeleton] = {}
        self.built = 0
        self.patched = 0

    def build(self, source: Sequence[Dataset], manifest: Manifest,
              findings: Sequence[Finding], *, series_uid: str, sop_uid: str, device: str,
              seg: Dataset | None = None) -> Dataset:
        """The same report as :func:`build_sr`, from a skeleton where one fits."""
        if seg is not None or len(source) != 1:
            return build_sr(source, manifest, findings, series_uid=series_uid,
                            sop_uid=sop_uid, device=device, seg=seg)
        key = _shape(manifest, source[0], findings, device)
        with self._lock:
            skeleton = self._skeletons.get(key)
        if skeleton is None or skeleton.broken:
            sr = build_sr(source, manifest, findings, series_uid=series_uid, sop_uid=sop_uid,
                          device=device)
            self.built += 1
            if skeleton is None:
                with self._lock:
                    self._skeletons.setdefault(key, _Skeleton(
                        copy.deepcopy(sr), _copied_keywords(sr, source[0])))
            return sr
        sr = patch(skeleton, source[0], manifest, findings, series_uid=series_uid,
                   sop_uid=sop_uid)
        if not skeleton.verified:
            expected = build_sr(source, manifest, findings, series_uid=series_uid,
                                sop_uid=sop_uid, device=device)
            if _normalised(expected) != _normalised(sr):
                log.warning("ai.sr_template_mismatch model=%s: the patched report differs "
                            "from highdicom's; this shape is built by highdicom from now on",
                            manifest.ref)
                skeleton.broken = True
                self.built += 1
                return expected
            skeleton.verified = True
        self.patched += 1
        return sr

    def clear(self) -> None:
        with self._lock:
            self._skeletons.clear()


def patch(skeleton: _Skeleton, source: Dataset, manifest: Manifest,
          findings: Sequence[Finding], *, series_uid: str, sop_uid: str) -> Dataset:
    """The skeleton with this source, these UIDs and these findings.

    The skeleton is copied as a tree of new datasets that share its leaf elements (a
    deep copy costs more than highdicom's own build); every patched value therefore
    goes in as a new element (:func:`_put`), never by assigning to a shared one."""
    sr = _tree_copy(skeleton.sr)
    sr.file_meta = copy.deepcopy(skeleton.sr.file_meta)
    for kw in skeleton.copied:
        _put(sr, kw, copy.deepcopy(source[kw].value))
    _put(sr, "SOPInstanceUID", sop_uid)
    sr.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    _put(sr, "SeriesInstanceUID", series_uid)
    now = datetime.now()
    for kw in ("InstanceCreationDate", "ContentDate"):
        _put(sr, kw, DA(now.date()))
    for kw in ("InstanceCreationTime", "ContentTime"):
        _put(sr, kw, TM(now.time()))
    for item in sr.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item:
            _put(item, "ContributionDateTime", DT(now))
        elif "PurposeOfReferenceCodeSequence" in item and \
                item.PurposeOfReferenceCodeSequence[0].CodeValue == ACQUISITION_EQUIPMENT:
            for elem in list(item):  # the source's acquisition equipment
                if elem.keyword in source and elem.keyword not in (
                        "ContributionDescription", "PurposeOfReferenceCodeSequence"):
                    _put(item, elem.keyword, copy.deepcopy(source[elem.keyword].value))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    _put(evidence, "StudyInstanceUID", source.StudyInstanceUID)
    ref_series = evidence.ReferencedSeriesSequence[0]
    _put(ref_series, "SeriesInstanceUID", source.SeriesInstanceUID)
    _reference(ref_series.ReferencedSOPSequence[0], source)
    groups = _groups(sr)
    if len(groups) != len(findings):
        raise ValueError(f"skeleton has {len(groups)} groups for {len(findings)} findings")
    for group, finding in zip(groups, findings, strict=True):
        _patch_group(group, finding, manifest, source)
    return sr


def _tree_copy(ds: Dataset) -> Dataset:
    """New datasets and sequences all the way down, sharing the leaf elements."""
    out = Dataset()
    for elem in ds:
        if elem.VR == "SQ":
            out[elem.tag] = DataElement(elem.tag, "SQ", [_tree_copy(i) for i in elem.value])
        else:
            out[elem.tag] = elem
    return out


def _put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` as a new element (the old one may be shared with the skeleton)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    vr = ds[tag].VR if tag in ds else dictionary_VR(tag)
    ds[tag] = DataElement(tag, vr, value)


def _reference(ref: Dataset, source: Dataset) -> None:
    _put(ref, "ReferencedSOPClassUID", source.SOPClassUID)
    _put(ref, "ReferencedSOPInstanceUID", source.SOPInstanceUID)


def _groups(sr: Dataset) -> list[Dataset]:
    for item in sr.ContentSequence:
        if item.ValueType == "CONTAINER" and \
                item.ConceptNameCodeSequence[0].CodeValue == IMAGE_LIBRARY:
            return list(item.ContentSequence)
    raise ValueError("the skeleton has no Imaging Measurements container")


def _patch_group(group: Dataset, finding: Finding, manifest: Manifest, source: Dataset
                 ) -> None:
    label_code = manifest.label(finding.label).code.value
    for item in group.ContentSequence:
        concept = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "UIDREF" and concept == TRACKING_UID:
            _put(item, "UID", deterministic_uid(
                "tracking", manifest.name, manifest.version, str(source.SeriesInstanceUID),
                finding.label))
        elif item.ValueType == "IMAGE":
            _reference(item.ReferencedSOPSequence[0], source)
        elif item.ValueType == "NUM" and concept == PROBABILITY.value:
            _set_number(item, round(finding.probability, 6))
        elif item.ValueType == "NUM" and concept == VOLUME:
            if finding.volume_ml is None:
                raise ValueError("skeleton has a volume the finding lacks")
            _set_number(item, round(finding.volume_ml, 3))
        elif item.ValueType == "CODE" and concept == label_code:
            answer = PRESENT if finding.positive else ABSENT
            coded = item.ConceptCodeSequence[0]
            _put(coded, "CodeValue", answer.value)
            _put(coded, "CodingSchemeDesignator", answer.scheme_designator)
            _put(coded, "CodeMeaning", answer.meaning)


def _set_number(item: Dataset, value: float) -> None:
    measured = item.MeasuredValueSequence[0]
    _put(measured, "NumericValue", DS(value, auto_format=True))
    _put(measured, "FloatingPointValue", float(value))


#: The process-wide skeletons the inference worker uses.
SR_TEMPLATES = SRTemplates()
