"""The pre-read SR from a skeleton (ai_models.sr_template) is the SR highdicom builds.

Every check compares against ``build_sr`` on the same input, all but the creation
times: different patients, findings both ways, an extra patient attribute (a new
shape), and a skeleton that a bad patch would break (it must fall back, not store a
wrong report)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import ai_models.sr_template as sr_template
from ai_models.dicom_outputs import build_sr
from ai_models.manifest import Manifest, load_manifest
from ai_models.pipelines.base import Finding
from ai_models.pipelines.classify import multilabel_result
from ai_models.sr_template import SRTemplates
from devkit.samples import Patient, write_chest_radiograph

ROOT = Path(__file__).resolve().parents[1]
CXR = ROOT / "ai_models" / "shipped" / "cxr-triage" / "1.0.0"
DEVICE = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(CXR)


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    root = tmp_path_factory.mktemp("dx")
    out: list[Dataset] = []
    for i in range(5):
        g = write_chest_radiograph(root / str(i), size=128, seed=40 + i,
                                   patient=Patient(id=f"TPL-{i}", name=f"Skeleton^Case{i}"))
        out.append(dcmread(g.paths[0]))
    return out


def _findings(manifest: Manifest, seed: int) -> list[Finding]:
    rng = np.random.default_rng(seed)
    # Probabilities on both sides of each threshold over the cases.
    logits = rng.normal(0.0, 3.0, len(manifest.labels)).astype(np.float32)
    return multilabel_result(manifest, logits).findings


def _comparable(ds: Dataset) -> object:
    return sr_template._normalised(ds)


def _bytes(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_patched_reports_equal_highdicom_reports(manifest: Manifest,
                                                 radiographs: list[Dataset]) -> None:
    templates = SRTemplates()
    positives = set()
    for i, ds in enumerate(radiographs):
        findings = _findings(manifest, i)
        positives |= {f.positive for f in findings}
        series, sop = f"2.25.{100 + i}", f"2.25.{200 + i}"
        got = templates.build([ds], manifest, findings, device=DEVICE, series_uid=series,
                              sop_uid=sop)
        want = build_sr([ds], manifest, findings, device=DEVICE, series_uid=series,
                        sop_uid=sop)
        assert _comparable(got) == _comparable(want), i
        assert got.PatientID == f"TPL-{i}" and got.SOPInstanceUID == sop
        # It encodes and reads back as the same report.
        again = dcmread(BytesIO(_bytes(got)))
        assert again.SOPInstanceUID == sop
        assert again.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == \
            ds.StudyInstanceUID
    assert positives == {True, False}, "the cases must cover present and absent"
    assert (templates.built, templates.patched) == (1, len(radiographs) - 1)


def test_the_skeleton_is_not_changed_by_patching(manifest: Manifest,
                                                 radiographs: list[Dataset]) -> None:
    templates = SRTemplates()
    templates.build([radiographs[0]], manifest, _findings(manifest, 0), device=DEVICE,
                    series_uid="2.25.1", sop_uid="2.25.2")
    skeleton = next(iter(templates._skeletons.values()))
    before = _bytes(skeleton.sr)
    for i, ds in enumerate(radiographs[1:], start=1):
        templates.build([ds], manifest, _findings(manifest, i), device=DEVICE,
                        series_uid=f"2.25.{i}1", sop_uid=f"2.25.{i}2")
    assert _bytes(skeleton.sr) == before


def test_another_source_shape_gets_its_own_skeleton(manifest: Manifest,
                                                    radiographs: list[Dataset]) -> None:
    templates = SRTemplates()
    first, second = radiographs[0], radiographs[1].copy()
    second.PatientAge = "064Y"  # a Patient Study attribute the first source lacks
    findings = _findings(manifest, 3)
    templates.build([first], manifest, findings, device=DEVICE, series_uid="2.25.11",
                    sop_uid="2.25.12")
    got = templates.build([second], manifest, findings, device=DEVICE, series_uid="2.25.21",
                          sop_uid="2.25.22")
    want = build_sr([second], manifest, findings, device=DEVICE, series_uid="2.25.21",
                    sop_uid="2.25.22")
    assert got.PatientAge == "064Y"
    assert _comparable(got) == _comparable(want)
    assert (templates.built, templates.patched) == (2, 0)


def test_a_skeleton_that_patches_wrong_falls_back_to_highdicom(
        manifest: Manifest, radiographs: list[Dataset], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    real_patch = sr_template.patch

    def forgetful(*args: object, **kw: object) -> Dataset:
        ds = real_patch(*args, **kw)  # type: ignore[arg-type]
        ds.PatientID = "SOMEONE-ELSE"  # a patch that misses a value
        return ds

    monkeypatch.setattr(sr_template, "patch", forgetful)
    templates = SRTemplates()
    for i, ds in enumerate(radiographs[:3]):
        got = templates.build([ds], manifest, _findings(manifest, i), device=DEVICE,
                              series_uid=f"2.25.{i + 1}3", sop_uid=f"2.25.{i + 1}4")
        assert got.PatientID == f"TPL-{i}"
    assert templates.patched == 0 and templates.built == 3
    assert "sr_template_mismatch" in caplog.text


def test_multi_source_and_seg_reports_go_to_highdicom(manifest: Manifest) -> None:
    ct = dcmread(str(get_testdata_file("CT_small.dcm")))
    other = ct.copy()
    other.SOPInstanceUID = "1.2.3.4.5.6.7"
    templates = SRTemplates()
    findings = _findings(manifest, 5)
    for n in range(2):
        got = templates.build([ct, other], manifest, findings, device=DEVICE,
                              series_uid=f"2.25.5{n}", sop_uid=f"2.25.6{n}")
        want = build_sr([ct, other], manifest, findings, device=DEVICE,
                        series_uid=f"2.25.5{n}", sop_uid=f"2.25.6{n}")
        assert _comparable(got) == _comparable(want)
    assert templates.patched == 0 and not templates._skeletons
