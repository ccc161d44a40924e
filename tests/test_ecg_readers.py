"""ECG readers: the pydicom sample, WFDB and aECG round trips, and refused bad input."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from core.ecg_waveform import InconsistentDicomWaveform, check_group
from core.errors import InvalidInput
from ecg.analyze import analyze
from ecg.errors import InconsistentWaveform, MissingLeads, NotAnEcg, UnreadableWaveform
from ecg.readers import read_ecg
from ecg.signal import LEADS, Ecg12

SAMPLE = get_testdata_file("waveform_ecg.dcm")
assert SAMPLE is not None
#: Real PhysioNet records shared by the team (read in place, never copied).
ECG_DATA = Path(os.environ.get(
    "RDC_ECG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "ecg"))


def _sample_ds() -> Dataset:
    return pydicom.dcmread(SAMPLE)


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_dicom_sample_reads_in_standard_order_and_millivolts() -> None:
    ecg = read_ecg(Path(str(SAMPLE)).read_bytes(), "waveform_ecg.dcm")
    assert isinstance(ecg, Ecg12)
    assert ecg.leads.shape == (12, 10000) and ecg.leads.dtype == np.float32
    assert ecg.sampling_rate == 1000.0
    assert ecg.patient_id == "642341"
    assert ecg.sop_instance_uid == str(_sample_ds().SOPInstanceUID)
    assert ecg.acquisition_time is not None and ecg.acquisition_time.year == 2013
    # Raw value x 1.25 uV -> mV: the largest deflection is ~2 mV, not 2000.
    assert 0.5 < float(np.abs(ecg.leads).max()) < 5.0
    raw = _sample_ds().waveform_array(0)
    np.testing.assert_allclose(ecg.lead("V1"), raw[:, 6] / 1000, rtol=1e-6)
    # Einthoven: III = II - I, within the file's quantisation.
    assert np.abs(ecg.lead("III") - (ecg.lead("II") - ecg.lead("I"))).max() < 0.01


def test_dicom_truncated_waveform_data_is_refused() -> None:
    ds = _sample_ds()
    group = ds.WaveformSequence[0]
    group.WaveformData = group.WaveformData[: len(group.WaveformData) // 2]
    with pytest.raises(InconsistentWaveform, match=r"WaveformData has 120000 bytes .*240000"):
        read_ecg(_to_bytes(ds))


def test_dicom_wrong_channel_count_is_refused() -> None:
    ds = _sample_ds()
    ds.WaveformSequence[0].NumberOfWaveformChannels = 11
    with pytest.raises(InconsistentWaveform,
                       match="NumberOfWaveformChannels is 11 but ChannelDefinitionSequence has 12"):
        read_ecg(_to_bytes(ds))


def test_dicom_too_few_channels_is_refused() -> None:
    ds = _sample_ds()
    group = ds.WaveformSequence[0]
    group.ChannelDefinitionSequence = group.ChannelDefinitionSequence[:3]
    group.NumberOfWaveformChannels = 3
    with pytest.raises(InconsistentWaveform, match="3 channels; a 12-lead ECG needs at least 8"):
        read_ecg(_to_bytes(ds))


def test_dicom_zero_sampling_rate_is_refused() -> None:
    ds = _sample_ds()
    ds.WaveformSequence[0].SamplingFrequency = 0
    with pytest.raises(InconsistentWaveform, match=r"SamplingFrequency must be > 0 Hz"):
        read_ecg(_to_bytes(ds))


def test_dicom_hemodynamic_sop_class_is_not_an_ecg() -> None:
    ds = _sample_ds()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with pytest.raises(NotAnEcg, match=r"Hemodynamic Waveform Storage.* not an ECG"):
        read_ecg(_to_bytes(ds))


def test_dicom_pressure_channels_are_not_an_ecg() -> None:
    ds = _sample_ds()
    for definition in ds.WaveformSequence[0].ChannelDefinitionSequence:
        definition.ChannelSourceSequence[0].CodeMeaning = "Arterial blood pressure"
        definition.ChannelSourceSequence[0].CodeValue = "2:16"
        definition.ChannelSensitivityUnitsSequence[0].CodeValue = "mm[Hg]"
    with pytest.raises(NotAnEcg, match=r"units 'mm\[Hg\]' are not a voltage"):
        read_ecg(_to_bytes(ds))


def test_dicom_channels_with_no_lead_names_are_not_an_ecg() -> None:
    ds = _sample_ds()
    for definition in ds.WaveformSequence[0].ChannelDefinitionSequence:
        definition.ChannelSourceSequence[0].CodeMeaning = "Audio"
    with pytest.raises(NotAnEcg, match="no channel is an ECG lead"):
        read_ecg(_to_bytes(ds))


def test_garbage_and_empty_input_are_unreadable() -> None:
    with pytest.raises(UnreadableWaveform, match="unrecognised ECG format"):
        read_ecg(b"\x00\x01not an ecg at all")
    with pytest.raises(UnreadableWaveform, match="empty input"):
        read_ecg(b"")
    with pytest.raises(UnreadableWaveform, match="not a readable DICOM"):
        read_ecg(b"\x00" * 64, "x.dcm")


# --- WFDB -----------------------------------------------------------------------------

def _signals(n: int = 5000, fs: float = 500.0) -> np.ndarray:
    t = np.arange(n) / fs
    rows = [np.sin(2 * np.pi * (1 + i / 10) * t) * (0.5 + i / 20) for i in range(12)]
    return np.stack(rows, axis=1)


def _wfdb_zip(tmp_path: Path, names: list[str], signals: np.ndarray,
              edit_header: str | None = None, cut_dat: int = 0) -> bytes:
    wfdb.wrsamp("rec", fs=500, units=["mV"] * len(names), sig_name=names, p_signal=signals,
                fmt=["16"] * len(names), write_dir=str(tmp_path), comments=["age: 63", "sex: F"])
    header = (tmp_path / "rec.hea").read_text()
    if edit_header is not None:
        _, rest = header.split("\n", 1)
        header = edit_header + "\n" + rest
    dat = (tmp_path / "rec.dat").read_bytes()
    if cut_dat:
        dat = dat[:-cut_dat]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("rec.hea", header)
        archive.writestr("rec.dat", dat)
    return buf.getvalue()


def test_wfdb_round_trip(tmp_path: Path) -> None:
    signals = _signals()
    ecg = read_ecg(_wfdb_zip(tmp_path, list(LEADS), signals), "rec.zip")
    assert ecg.source_format == "wfdb" and ecg.sampling_rate == 500.0
    np.testing.assert_allclose(ecg.leads, signals.T, atol=1e-3)
    assert ecg.patient_sex == "F" and ecg.patient_age_years == 63.0


def test_wfdb_eight_leads_derive_the_limb_leads(tmp_path: Path) -> None:
    signals = _signals()
    names = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    eight = signals[:, [0, 1, 6, 7, 8, 9, 10, 11]]
    ecg = read_ecg(_wfdb_zip(tmp_path, names, eight))
    assert ecg.derived_leads == ("III", "aVR", "aVL", "aVF")
    np.testing.assert_allclose(ecg.lead("III"), eight[:, 1] - eight[:, 0], atol=2e-3)


def test_wfdb_missing_precordial_leads_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MissingLeads, match=r"missing lead.*V6"):
        read_ecg(_wfdb_zip(tmp_path, list(LEADS[:11]), _signals()[:, :11]))


def test_wfdb_zero_sampling_rate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InconsistentWaveform, match="sampling frequency must be > 0 Hz"):
        read_ecg(_wfdb_zip(tmp_path, list(LEADS), _signals(), edit_header="rec 12 0 5000"))


def test_wfdb_truncated_signal_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InconsistentWaveform, match="WFDB record 'rec' cannot be decoded"):
        read_ecg(_wfdb_zip(tmp_path, list(LEADS), _signals(), cut_dat=24000))


def test_wfdb_header_declaring_more_than_its_files_hold_costs_nothing() -> None:
    """Found by the fuzzing campaign: wfdb sizes its read buffer from the header, so a
    header declaring 3.7e11 samples made it ask numpy for 1 TiB (MemoryError)."""
    from ecg.readers.wfdb import read_wfdb_record

    leads = b"rec.dat 212 200 12 0 0 0 0 MLII\nrec.dat 212 200 12 0 0 0 0 V5\n"
    header = b"rec 2 360 366666666660\n" + leads
    with pytest.raises(InconsistentWaveform, match="more than 24 hours"):
        read_wfdb_record(header, {"rec.dat": bytes(300)})
    header = b"rec 2 1e12 366666666660\n" + leads
    with pytest.raises(InconsistentWaveform, match=r"\(truncated\?\)"):
        read_wfdb_record(header, {"rec.dat": bytes(300)})
    header = (b"rec 2 360 1000\nrec.dat 212x4000000 200 12 0 0 0 0 MLII\n"
              b"rec.dat 212 200 12 0 0 0 0 V5\n")
    with pytest.raises(InconsistentWaveform, match=r"\(truncated\?\)"):
        read_wfdb_record(header, {"rec.dat": bytes(300)})
    # A skew longer than the record: wfdb pads the skewed frames with zeros (129 GiB).
    header = (b"rec 2 360 100\nrec.dat 212:27608874281 200 12 0 0 0 0 MLII\n"
              b"rec.dat 212 200 12 0 0 0 0 V5\n")
    with pytest.raises(InconsistentWaveform, match="skew"):
        read_wfdb_record(header, {"rec.dat": bytes(300)})


def test_wfdb_header_alone_is_refused() -> None:
    with pytest.raises(UnreadableWaveform, match=r"send the \.hea and its \.dat"):
        read_ecg(b"rec 12 500 5000\n", "rec.hea")


# --- HL7 aECG ---------------------------------------------------------------------------

def _aecg(signals: np.ndarray, increment: str = "0.002", codes: list[str] | None = None) -> bytes:
    codes = codes or [f"MDC_ECG_LEAD_{name.upper()}" for name in LEADS]
    scale_uv = 5.0
    parts = []
    for code, column in zip(codes, signals.T, strict=True):
        digits = " ".join(str(int(v)) for v in np.round(column * 1000 / scale_uv))
        parts.append(
            f'<component><sequence><code code="{code}" codeSystem="2.16.840.1.113883.6.24"/>'
            '<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>'
            f'<scale value="{scale_uv}" unit="uV"/><digits>{digits}</digits></value>'
            "</sequence></component>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="1.2.3"/><effectiveTime><low value="20240305101500"/></effectiveTime>'
        "<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>"
        '<id extension="PAT-7"/><subjectDemographicPerson>'
        '<administrativeGenderCode code="M"/></subjectDemographicPerson>'
        "</trialSubject></subject></subjectAssignment></componentOf></timepointEvent>"
        "</componentOf><component><series><code code=\"RHYTHM\"/><component><sequenceSet>"
        '<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
        '<value xsi:type="GLIST_TS"><head value="20240305101500.000"/>'
        f'<increment value="{increment}" unit="s"/></value></sequence></component>'
        + "".join(parts)
        + "</sequenceSet></component></series></component></AnnotatedECG>"
    ).encode()


def test_aecg_round_trip() -> None:
    signals = _signals()
    ecg = read_ecg(_aecg(signals), "ecg.xml")
    assert ecg.source_format == "aecg" and ecg.sampling_rate == pytest.approx(500.0)
    assert ecg.patient_id == "PAT-7" and ecg.patient_sex == "M"
    assert ecg.acquisition_time is not None and ecg.acquisition_time.year == 2024
    np.testing.assert_allclose(ecg.leads, signals.T, atol=0.003)


def test_aecg_zero_increment_is_refused() -> None:
    with pytest.raises(InconsistentWaveform, match="time increment must be > 0"):
        read_ecg(_aecg(_signals(), increment="0"))


def test_aecg_without_ecg_leads_is_not_an_ecg() -> None:
    codes = [f"MDC_PRESS_BLD_{i}" for i in range(12)]
    with pytest.raises(NotAnEcg, match="no MDC_ECG_LEAD_"):
        read_ecg(_aecg(_signals(), codes=codes))


def test_aecg_malformed_and_entity_bombs_are_unreadable() -> None:
    with pytest.raises(UnreadableWaveform, match="not well-formed"):
        read_ecg(b"<AnnotatedECG><unclosed>")
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
            b'<AnnotatedECG xmlns="urn:hl7-org:v3">&a;</AnnotatedECG>')
    with pytest.raises(UnreadableWaveform):
        read_ecg(bomb)


def test_too_short_recording_is_refused() -> None:
    with pytest.raises(InconsistentWaveform, match="at least 5 s"):
        read_ecg(_aecg(_signals(n=1000)))


# --- Plausible wrong numbers are refused (issue 10, item 6) ------------------------------

def test_dicom_waveform_data_longer_than_declared_is_refused() -> None:
    # A 13th channel interleaved in the data but not declared: reading the declared 12
    # channels from the first 240000 bytes shifts every channel by one sample per frame.
    ds = _sample_ds()
    group = ds.WaveformSequence[0]
    raw = np.frombuffer(group.WaveformData, dtype="<i2").reshape(10000, 12)
    extra = np.column_stack([raw, raw[:, :1]]).astype("<i2")
    group.WaveformData = extra.tobytes()
    with pytest.raises(InconsistentWaveform,
                       match=r"WaveformData has 260000 bytes but 12 channels x 10000 samples "
                             r"x 2 bytes = 240000 are declared \(20000 bytes too many"):
        read_ecg(_to_bytes(ds))


def test_dicom_waveform_data_may_carry_one_pad_byte() -> None:
    # An odd length (8-bit samples, odd count) is padded to even; the pad is not data.
    group = _sample_ds().WaveformSequence[0]
    group.WaveformData = bytes(group.WaveformData) + b"\x00"
    assert check_group(group, 0) == (12, 10000, 1000.0)
    group.WaveformData = bytes(group.WaveformData) + b"\x00"
    with pytest.raises(InconsistentDicomWaveform, match="2 bytes too many"):
        check_group(group, 0)


def test_dicom_duplicated_lead_label_is_refused() -> None:
    # Channel 4 (aVR) labelled "Lead I": it used to replace lead I silently, and aVR was
    # then derived from the wrong lead I.
    ds = _sample_ds()
    ds.WaveformSequence[0].ChannelDefinitionSequence[3].ChannelSourceSequence[0].CodeMeaning = (
        "Lead I")
    with pytest.raises(InconsistentWaveform,
                       match=r"lead I appears twice: .*ChannelDefinitionSequence\[0\] and \[3\]"):
        read_ecg(_to_bytes(ds))


def test_dicom_missing_channel_sensitivity_is_refused() -> None:
    # Without it pydicom takes 1 uV per step instead of the file's 1.25 uV: 20 % low.
    ds = _sample_ds()
    del ds.WaveformSequence[0].ChannelDefinitionSequence[5].ChannelSensitivity
    with pytest.raises(InconsistentWaveform,
                       match=r"ChannelDefinitionSequence\[5\]: ChannelSensitivity is missing"):
        read_ecg(_to_bytes(ds))


def test_dicom_zero_channel_sensitivity_is_refused() -> None:
    ds = _sample_ds()
    ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivity = "0"
    with pytest.raises(InconsistentWaveform, match="ChannelSensitivity must be > 0"):
        read_ecg(_to_bytes(ds))


def test_dicom_missing_correction_factor_is_a_warning_that_travels() -> None:
    ds = _sample_ds()
    for definition in ds.WaveformSequence[0].ChannelDefinitionSequence:
        del definition.ChannelSensitivityCorrectionFactor
    ecg = read_ecg(_to_bytes(ds))
    expected = read_ecg(Path(str(SAMPLE)).read_bytes())
    np.testing.assert_allclose(ecg.leads, expected.leads)  # the file's factor was 1
    assert len(ecg.warnings) == 12
    assert "ChannelSensitivityCorrectionFactor is missing; 1 assumed" in ecg.warnings[0]
    assert expected.warnings == ()
    assert analyze(ecg).to_dict()["metadata"]["reader_warnings"] == list(ecg.warnings)


def test_wfdb_header_with_more_signal_lines_than_declared_is_the_readers_error(
        tmp_path: Path) -> None:
    # wfdb itself fails on this with a raw TypeError (an HTTP 500, a puzzling job error).
    data = _wfdb_zip(tmp_path, list(LEADS), _signals(), edit_header="rec 8 500 5000")
    with pytest.raises(InconsistentWaveform,
                       match="WFDB header declares 8 signals but has 12 signal lines") as info:
        read_ecg(data, "rec.zip")
    assert isinstance(info.value, InvalidInput) and info.value.http_status == 422


def test_wfdb_header_with_fewer_signal_lines_than_declared_is_refused(tmp_path: Path) -> None:
    data = _wfdb_zip(tmp_path, list(LEADS), _signals(), edit_header="rec 13 500 5000")
    with pytest.raises(InconsistentWaveform, match="declares 13 signals but has 12"):
        read_ecg(data)


def _wfdb_zip_with_line(tmp_path: Path, index: int, line: str) -> bytes:
    """A 12-lead WFDB zip whose header line ``index`` (0: the record line) is replaced."""
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=list(LEADS), p_signal=_signals(),
                fmt=["16"] * 12, write_dir=str(tmp_path))
    lines = (tmp_path / "rec.hea").read_text().splitlines()
    lines[index] = line
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("rec.hea", "\n".join(lines) + "\n")
        archive.writestr("rec.dat", (tmp_path / "rec.dat").read_bytes())
    return buf.getvalue()


def test_wfdb_unknown_storage_format_is_the_readers_error(tmp_path: Path) -> None:
    # wfdb raises a bare KeyError('999') for it.
    data = _wfdb_zip_with_line(tmp_path, 1, "rec.dat 999 200/mV 16 0 0 0 0 I")
    with pytest.raises(InconsistentWaveform, match="WFDB record 'rec' cannot be decoded"):
        read_ecg(data)


@pytest.mark.parametrize("line", ["rec.dat 16", "rec.dat 16 0/mV 16 0 0 0 0 I",
                                  "rec.dat 16 -200/mV 16 0 0 0 0 I"])
def test_wfdb_lead_without_a_gain_is_refused(tmp_path: Path, line: str) -> None:
    # Missing or zero gain means "uncalibrated": wfdb would invent 200 units per mV.
    with pytest.raises(InconsistentWaveform, match=r"WFDB signal 1 .*ADC gain is"):
        read_ecg(_wfdb_zip_with_line(tmp_path, 1, line))


def test_wfdb_reader_error_is_an_http_422_in_the_center_app(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from core.settings import get_settings
    from viewer.app import create_app

    monkeypatch.setenv("RDC_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        app = create_app()
        data = _wfdb_zip(tmp_path, list(LEADS), _signals(), edit_header="rec 8 500 5000")

        @app.get("/test-ecg-read")
        def read_upload() -> dict[str, str]:
            read_ecg(data, "rec.zip")
            return {}

        answer = TestClient(app).get("/test-ecg-read")
    finally:
        get_settings.cache_clear()
    assert answer.status_code == 422
    assert answer.json() == {"detail": "WFDB header declares 8 signals but has 12 signal lines",
                             "error": "InconsistentWaveform"}


def test_wfdb_duplicated_lead_is_refused(tmp_path: Path) -> None:
    # aVR's channel labelled I (wfdb itself refuses to write such a header).
    data = _wfdb_zip_with_line(tmp_path, 4, "rec.dat 16 200(0)/mV 16 0 0 0 0 I")
    with pytest.raises(InconsistentWaveform,
                       match=r"lead I appears twice: channel 1 \('I'\) and channel 4 \('I'\)"):
        read_ecg(data)


def test_aecg_duplicated_lead_is_refused() -> None:
    codes = [f"MDC_ECG_LEAD_{name.upper()}" for name in LEADS]
    codes[3] = "MDC_ECG_LEAD_I"
    with pytest.raises(InconsistentWaveform, match="lead I appears twice"):
        read_ecg(_aecg(_signals(), codes=codes))


def test_real_ptb_record_reads_through_the_wfdb_reader() -> None:
    # PTB s0010_re: 12 standard leads + 3 Frank leads (ignored) at 1000 Hz, read from the
    # shared data folder (never copied into the project).
    base = ECG_DATA / "s0010_re"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for suffix in (".hea", ".dat", ".xyz"):
            archive.writestr(f"s0010_re{suffix}", base.with_suffix(suffix).read_bytes())
    ecg = read_ecg(buf.getvalue(), "s0010_re.zip")
    reference = wfdb.rdrecord(str(base))
    assert ecg.sampling_rate == 1000.0 and ecg.n_samples == 38400
    assert ecg.derived_leads == () and ecg.warnings == ()
    assert ecg.patient_sex == "F" and ecg.patient_age_years == 81.0
    np.testing.assert_allclose(ecg.lead("aVL"), reference.p_signal[:, 4], atol=1e-4)
