"""The demonstration models and their pipelines, on files: shipped manifests and
weights, ONNX export parity, reproducible training, findings on the devkit.samples
phantoms, and the reasons a series is not read."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pydicom
import pytest
import torch
from onnx import numpy_helper
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from ai_models.manifest import Manifest, WeightsMismatch, load_manifest, verify_weights
from ai_models.pipelines import PIPELINES, get_pipeline
from ai_models.pipelines.base import NotApplicable, Pipeline, Result
from ai_models.pipelines.common import connected_components
from ai_models.pipelines.ct_nodule_seg import (
    SW_BATCH,
    SW_OVERLAP,
    resample,
    resample_monai,
    resample_slices,
    sliding_window,
)
from ai_models.training.export import export_onnx, onnx_session, parity
from ai_models.training.networks import ct_unet, cxr_densenet
from core.errors import InvalidInput
from devkit.samples import write_chest_radiograph, write_ct_series

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "ai_models" / "shipped"
CXR_DIR = SHIPPED / "cxr-triage" / "1.0.0"
CT_DIR = SHIPPED / "ct-nodule-seg" / "1.0.0"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
#: Torch and ONNX Runtime (CPU, float32) on the same random input: max |difference|.
PARITY_TOLERANCE = 1e-4


class Model:
    """A shipped model: manifest, pipeline and an ONNX Runtime session that counts runs."""

    def __init__(self, folder: Path) -> None:
        self.manifest = load_manifest(folder)
        self.session = onnx_session(verify_weights(folder, self.manifest))
        self.pipeline: Pipeline = get_pipeline(self.manifest)
        self.batches: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        return np.asarray(self.session.run(None, {"input": batch})[0])

    def read(self, series: Sequence[Sequence[Dataset]]) -> list[Result]:
        prepared = []
        for datasets in series:
            self.pipeline.check(datasets)
            prepared.append(self.pipeline.preprocess(datasets))
        outputs = self.pipeline.predict(prepared, self.run)
        return [self.pipeline.postprocess(p, o) for p, o in zip(prepared, outputs, strict=True)]


@pytest.fixture(scope="module")
def cxr() -> Model:
    return Model(CXR_DIR)


@pytest.fixture(scope="module")
def ct() -> Model:
    return Model(CT_DIR)


def _read(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _testdata(name: str) -> Dataset:
    """A file of pydicom's own test data (only names that ship with pydicom: others
    would be downloaded)."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return pydicom.dcmread(path)


def _findings(result: Result) -> dict[str, tuple[bool, bool]]:
    return {f.label: (f.positive, f.critical) for f in result.findings}


# --- manifests and weights ---------------------------------------------------------

@pytest.mark.parametrize("folder", [CXR_DIR, CT_DIR], ids=["cxr", "ct"])
def test_shipped_manifests_load_and_their_weights_verify(folder: Path) -> None:
    m = load_manifest(folder)
    assert verify_weights(folder, m) == folder / "model.onnx"
    assert m.demonstration and "NOT FOR CLINICAL USE" in m.intended_use
    assert "DEMONSTRATION WEIGHTS" in m.intended_use and "synthetic phantoms" in m.intended_use
    assert m.training is not None and m.training.script == "ai_models/training/train.py"
    assert m.pipeline in PIPELINES and get_pipeline(m).manifest is m
    assert m.version == "1.0.0"


def test_shipped_manifest_fields() -> None:
    c, s = load_manifest(CXR_DIR), load_manifest(CT_DIR)
    assert (c.name, c.task, c.pipeline, c.outputs) == ("cxr-triage", "classification",
                                                        "cxr_triage", ["sr"])
    assert c.applies_to.modalities == ["CR", "DX"] and c.input.size == [224, 224]
    assert c.label("pneumothorax").critical and c.label("pneumothorax").code.value == "36118008"
    assert not c.label("lung_opacity").critical
    assert (s.name, s.task, s.pipeline, s.outputs) == ("ct-nodule-seg", "segmentation",
                                                       "ct_nodule_seg", ["sr", "seg"])
    assert s.applies_to.min_slices == 16 and s.input.size == [64, 64, 64]
    assert s.label("lung_nodule").code.value == "786838002"
    assert (CT_DIR / "model.onnx").stat().st_size < 2_000_000


def test_a_weights_file_changed_by_one_byte_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ct-nodule-seg"
    shutil.copytree(CT_DIR, folder)
    weights = folder / "model.onnx"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    m = load_manifest(folder)
    with pytest.raises(WeightsMismatch, match="SHA-256"):
        verify_weights(folder, m)


def test_an_unknown_pipeline_key_is_refused() -> None:
    m = load_manifest(CXR_DIR)
    other = Manifest.model_validate({**m.model_dump(by_alias=True), "pipeline": "nope"})
    with pytest.raises(InvalidInput, match="nope"):
        get_pipeline(other)


# --- export -------------------------------------------------------------------------

def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dense = cxr_densenet(2).eval()
    path = export_onnx(dense, torch.zeros(1, 1, 224, 224), tmp_path / "cxr.onnx",
                       dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                     "logits": {0: "batch"}})
    assert parity(dense, path, rng.random((3, 1, 224, 224), dtype=np.float32)) \
        < PARITY_TOLERANCE
    # Dynamic spatial axes: the same graph reads 512 px.
    assert parity(dense, path, rng.random((1, 1, 512, 512), dtype=np.float32)) \
        < PARITY_TOLERANCE
    unet = ct_unet().eval()
    path = export_onnx(unet, torch.zeros(1, 1, 64, 64, 64), tmp_path / "ct.onnx")
    assert parity(unet, path, rng.random((3, 1, 64, 64, 64), dtype=np.float32)) \
        < PARITY_TOLERANCE
    assert path.stat().st_size < 2_000_000


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    runs: list[Path] = []
    for run in ("a", "b"):
        out = tmp_path / run
        done = subprocess.run([sys.executable, "-m", "ai_models.training.train", "cxr", "--quick",
                               "--seed", "3", "--out", str(out)], cwd=ROOT,
                              # Only a guard against a hang: on a loaded 2-core CI machine
                              # one quick run has taken over 120 s.
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "epoch 1/1 loss" in done.stdout
        m = load_manifest(out)
        verify_weights(out, m)
        assert m.training is not None and m.training.seed == 3 and m.demonstration
        runs.append(out)
    # Same seed, same model: the same graph, and the same weights up to float rounding.
    # Bit-exact training is not promised on a CPU (parallel reductions may add in another
    # order when the machine is busy: two CI runs once differed by 2e-7), so the weights
    # are compared with a tolerance far below what any prediction could notice.
    first, second = (onnx.load(str(out / "model.onnx")) for out in runs)
    assert [n.op_type for n in first.graph.node] == [n.op_type for n in second.graph.node]
    weights = [{i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
               for model in (first, second)]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name, value in weights[0].items():
        np.testing.assert_allclose(weights[1][name], value, rtol=0, atol=1e-5, err_msg=name)

    def without_digest(out: Path) -> list[str]:
        return [line for line in (out / "model.yaml").read_text().splitlines()
                if "sha256" not in line]

    assert without_digest(runs[0]) == without_digest(runs[1])


# --- chest radiographs --------------------------------------------------------------

def _monochrome1(ds: Dataset) -> Dataset:
    """The same radiograph stored inverted, as many CR devices store it."""
    inverted = 4095 - ds.pixel_array.astype(np.int32)
    ds.PixelData = inverted.astype("<u2").tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


def test_radiograph_findings_on_the_phantoms_in_one_batch(cxr: Model, tmp_path: Path) -> None:
    cases = {
        "ptx": write_chest_radiograph(tmp_path / "ptx", size=512, seed=11, pneumothorax=True,
                                      opacity=False),
        "opacity": write_chest_radiograph(tmp_path / "op", size=1024, seed=21),
        "both": write_chest_radiograph(tmp_path / "both", size=256, seed=31,
                                       pneumothorax=True),
        "clean": write_chest_radiograph(tmp_path / "clean", size=512, seed=12,
                                        opacity=False),
        "ptx_mono1": write_chest_radiograph(tmp_path / "m1", size=512, seed=41,
                                            pneumothorax=True, opacity=False),
    }
    series = [_read(g.paths) for g in cases.values()]
    series[-1] = [_monochrome1(series[-1][0])]
    before = len(cxr.batches)
    results = dict(zip(cases, cxr.read(series), strict=True))
    assert cxr.batches[before:] == [(5, 1, 224, 224)]  # one network call for all five
    want = {  # label: (positive, critical)
        "ptx": {"pneumothorax": (True, True), "lung_opacity": (False, False)},
        "opacity": {"pneumothorax": (False, False), "lung_opacity": (True, False)},
        "both": {"pneumothorax": (True, True), "lung_opacity": (True, False)},
        "clean": {"pneumothorax": (False, False), "lung_opacity": (False, False)},
        "ptx_mono1": {"pneumothorax": (True, True), "lung_opacity": (False, False)},
    }
    got = {k: _findings(r) for k, r in results.items()}
    assert got == want, {k: [(f.label, round(f.probability, 3)) for f in r.findings]
                         for k, r in results.items()}
    for r in results.values():
        assert r.mask is None and all(0.0 <= f.probability <= 1.0 for f in r.findings)


def test_the_pneumothorax_option_changes_only_one_lung(tmp_path: Path) -> None:
    plain = _read(write_chest_radiograph(tmp_path / "a", size=256, seed=7).paths)[0]
    ptx = _read(write_chest_radiograph(tmp_path / "b", size=256, seed=7,
                                       pneumothorax=True).paths)[0]
    changed = np.argwhere(plain.pixel_array != ptx.pixel_array)
    assert changed.size and changed[:, 1].max() < 128  # left of the image only
    assert plain.SOPInstanceUID == ptx.SOPInstanceUID  # same seed, same study


# --- CT -----------------------------------------------------------------------------

#: write_ct_series's planted nodule (0.3, -0.1, 0.5, 0.06) is an ellipsoid: 0.06 of the
#: half field (≈ 174 mm) in plane, and 0.03 of the series length in z.
SLICES, SIZE = 120, 256


def _nodule_ml(slices: int, size: int) -> float:
    r_xy = 0.06 * (size - 1) / 2 * 350.0 / size
    r_z = 0.03 * (slices - 1) * 1.25
    return 4 / 3 * math.pi * r_xy ** 2 * r_z / 1000


def test_a_planted_nodule_is_found_and_measured(ct: Model, tmp_path: Path) -> None:
    gen = write_ct_series(tmp_path / "ct", slices=SLICES, size=SIZE, seed=5)
    datasets = _read(gen.paths)
    shuffled = [datasets[i] for i in np.random.default_rng(0).permutation(len(datasets))]
    ct.pipeline.check(shuffled)
    prepared = ct.pipeline.preprocess(shuffled)
    positions = [float(ds.ImagePositionPatient[2]) for ds in prepared.datasets]
    assert positions == sorted(positions) and len(positions) == SLICES
    [output] = ct.pipeline.predict([prepared], ct.run)
    assert all(b[1:] == (1, 64, 64, 64) for b in ct.batches)
    result = ct.pipeline.postprocess(prepared, output)
    [f] = result.findings
    assert f.label == "lung_nodule" and f.positive and not f.critical and f.probability > 0.5
    truth = _nodule_ml(SLICES, SIZE)  # ≈ 2.04 mL
    assert f.volume_ml is not None and abs(f.volume_ml - truth) < 0.35 * truth, (f, truth)
    assert result.mask is not None and result.mask.shape == (SLICES, SIZE, SIZE)
    assert result.mask.dtype == bool
    # The mask sits on the planted nodule, on the sorted source slices.
    voxel_ml = 1.25 * (350.0 / SIZE) ** 2 / 1000
    assert abs(result.mask.sum() * voxel_ml - truth) < 0.35 * truth
    z, y, x = np.argwhere(result.mask).mean(axis=0)
    centre = (SLICES - 1) / 2, 0.45 * (SIZE - 1), 0.65 * (SIZE - 1)
    assert np.allclose((z, y, x), centre, atol=3), ((z, y, x), centre)


def test_a_clean_ct_has_no_nodule(ct: Model, tmp_path: Path) -> None:
    gen = write_ct_series(tmp_path / "ct", slices=SLICES, size=SIZE, seed=6, lesion=None)
    [result] = ct.read([_read(gen.paths)])
    [f] = result.findings
    assert not f.positive and f.volume_ml is None and f.probability < 0.5
    assert result.mask is not None and not result.mask.any()


# --- not applicable -----------------------------------------------------------------

def _skip_reason(pipeline: Pipeline, datasets: Sequence[Dataset]) -> str:
    with pytest.raises(NotApplicable) as e:
        pipeline.check(datasets)
    return str(e.value)


def _small_ct(tmp_path: Path, slices: int = 20) -> list[Dataset]:
    return _read(write_ct_series(tmp_path / f"ct{slices}", slices=slices, size=64,
                                 seed=9).paths)


def test_wrong_modality_is_not_read(cxr: Model, ct: Model) -> None:
    mr = _testdata("MR_small.dcm")
    for model in (cxr, ct):
        reason = _skip_reason(model.pipeline, [mr])
        assert "modality MR" in reason and model.manifest.ref in reason, reason


def test_too_few_slices_are_not_read(ct: Model, tmp_path: Path) -> None:
    reason = _skip_reason(ct.pipeline, _small_ct(tmp_path, slices=5))
    assert "5 slices" in reason and "at least 16 slices" in reason, reason


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "examples_palette.dcm"])
def test_colour_images_are_not_read(cxr: Model, name: str) -> None:
    ds = _testdata(name)
    ds.Modality, ds.SOPClassUID = "DX", DX_PRESENTATION  # only the colour is wrong
    reason = _skip_reason(cxr.pipeline, [ds])
    assert "photometric interpretation" in reason
    assert str(ds.PhotometricInterpretation) in reason, reason


def test_other_sop_classes_and_body_parts_are_not_read(cxr: Model, ct: Model,
                                                       tmp_path: Path) -> None:
    datasets = _small_ct(tmp_path)
    for ds in datasets:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    assert "Enhanced CT Image Storage" in _skip_reason(ct.pipeline, datasets)
    [dx] = _read(write_chest_radiograph(tmp_path / "hand", size=64, seed=3).paths)
    dx.BodyPartExamined = "HAND"
    assert "body part HAND" in _skip_reason(cxr.pipeline, [dx])


def test_inconsistent_slices_are_not_read(ct: Model, tmp_path: Path) -> None:
    def variant(change: str) -> list[Dataset]:
        datasets = _small_ct(tmp_path)
        if change == "no_position":
            del datasets[7].ImagePositionPatient
        elif change == "size":
            datasets[3].Rows = 32
        elif change == "coronal":
            for ds in datasets:
                ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        elif change == "gap":
            del datasets[10]
        elif change == "duplicate":
            datasets[4].ImagePositionPatient = datasets[5].ImagePositionPatient
        return datasets

    expected = {"no_position": "has no ImagePositionPatient", "size": "differ in size",
                "coronal": "not axial", "gap": "not uniform", "duplicate": "same position"}
    for change, words in expected.items():
        reason = _skip_reason(ct.pipeline, variant(change))
        assert words in reason, (change, reason)


def test_undecodable_pixel_data_is_not_read_and_names_the_transfer_syntax(
        cxr: Model, ct: Model, tmp_path: Path) -> None:
    # A JPEG 2000 series whose codestream is garbage: parseable, not decodable.
    datasets = _small_ct(tmp_path)
    for ds in datasets:
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    reason = _skip_reason(ct.pipeline, datasets)
    assert "cannot be decoded" in reason and "1.2.840.10008.1.2.4.90" in reason, reason
    # 12-bit JPEG Extended: no decoder plugin in this environment can read it.
    ds = _testdata("JPEG-lossy.dcm")
    ds.Modality, ds.SOPClassUID, ds.BodyPartExamined = "DX", DX_PRESENTATION, "CHEST"
    reason = _skip_reason(cxr.pipeline, [ds])
    assert "cannot be decoded" in reason and "1.2.840.10008.1.2.4.51" in reason, reason


def test_connected_components_are_26_connected() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner to corner: one component
    mask[4, 4, 2:5] = True
    labels, count = connected_components(mask)
    assert count == 2 and labels[0, 0, 0] == labels[1, 1, 1] == 1
    assert set(np.unique(labels[4, 4, 2:5])) == {2} and labels.sum() == 2 + 3 * 2
    assert connected_components(np.zeros((2, 2, 2), dtype=bool))[1] == 0


@pytest.mark.parametrize("shape", [(7, 9, 11), (64, 64, 64), (40, 33, 29)])
@pytest.mark.parametrize(("spacing", "target"), [
    ((1.25, 0.68, 0.68), (1.5, 1.5, 1.5)),  # the demo CT onto the model's grid
    ((2.0, 1.0, 1.0), (1.0, 1.0, 1.0)),     # upsampling
    ((0.7, 0.9, 2.5), (1.5, 1.5, 1.5)),     # every axis its own way
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),     # identity
])
def test_the_separable_resample_matches_monai_spacing(
        shape: tuple[int, int, int], spacing: tuple[float, float, float],
        target: tuple[float, float, float]) -> None:
    volume = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32) * 2000 - 1000
    fast = resample(volume, spacing, target)
    monai = resample_monai(volume, spacing, target)
    assert fast.shape == monai.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, monai, rtol=0, atol=2e-3)  # HU; float32 rounding


@pytest.mark.parametrize("shape", [(1, 70, 80, 90), (1, 40, 100, 64), (1, 64, 64, 64)])
def test_the_numpy_sliding_window_matches_monai(ct: Model, shape: tuple[int, ...]) -> None:
    from monai.inferers import sliding_window_inference

    roi = tuple(int(r) for r in ct.manifest.input.size)
    volume = np.random.default_rng(len(shape) + shape[1]).random(shape, dtype=np.float32)

    def network(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(ct.run(x.numpy()))

    with torch.no_grad():
        want = np.asarray(sliding_window_inference(
            torch.from_numpy(volume[None]), roi, SW_BATCH, network, overlap=SW_OVERLAP,
            mode="gaussian")[0])
    got = sliding_window(volume, roi, ct.run)
    assert got.shape == want.shape == (2, *shape[1:])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_resampling_slice_by_slice_equals_resampling_the_stack() -> None:
    rng = np.random.default_rng(3)
    slices = [rng.random((37, 41), dtype=np.float32) * 2000 - 1000 for _ in range(23)]
    for spacing, target in (((1.25, 0.68, 0.68), (1.5, 1.5, 1.5)),
                            ((0.7, 0.9, 2.5), (1.5, 1.5, 1.5))):
        whole = resample_monai(np.stack(slices), spacing, target)
        each = resample_slices(slices, spacing, target)
        assert each.shape == whole.shape
        np.testing.assert_allclose(each, whole, rtol=0, atol=2e-3)
