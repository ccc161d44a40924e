"""An ECG through the whole center: C-STORE through the gateway, routing, the
``ecg_analysis`` job against the real Orthanc, the cardiologists' queue, edits (audited)
and the refusal of a broken waveform with nothing stored."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pyotp
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

import ecg.jobs  # noqa: F401  (registers the ecg_analysis handler)
import pacs_gateway.routing  # noqa: F401  (registers the route handler)
from conftest import REPO, SENDER_AE, Center, wait_until
from core import jobs
from core.models import AuditRecord, ECGAnalysis, Job, Study
from core.settings import get_settings
from devkit.dcmtk import storescu
from reports.pdf import pdf_from_dataset
from viewer.accounts import add_user
from viewer.app import create_app

PASSWORD = "a long enough password 1"


@pytest.fixture
def live(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[Center]:
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    center.start_orthanc()
    center.add_site(inactivity_s=1)
    center.start_gateway()
    yield center
    get_settings.cache_clear()


def _send_and_route(c: Center, path: Path) -> int:
    assert storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                    called_ae=c.gateway_ae).succeeded

    def routed_job() -> int | None:
        with c.db.session() as s:
            st = s.scalar(select(Study).order_by(Study.id.desc()))
            if st is None or st.state != "complete":
                return None
            route = s.scalar(select(Job).where(Job.study_id == st.id, Job.kind == "route"))
            return route.id if route is not None else None
    route_id = wait_until(routed_job, 60, "the ECG study to complete")
    assert jobs.execute(c.db, route_id) == "succeeded"
    with c.db.session() as s:
        job = s.scalar(select(Job).where(Job.kind == "ecg_analysis").order_by(Job.id.desc()))
        assert job is not None and job.queue == "inference"
        return int(job.id)


def _cardiologist(c: Center) -> TestClient:
    with c.db.session() as s:
        _, uri = add_user(s, get_settings(), username="dr.heart", display_name="Dr Heart",
                          password=PASSWORD, roles=["cardiologist"], all_sites=True,
                          actor="test")
    api = TestClient(create_app())
    r = api.post("/api/auth/login", json={"username": "dr.heart", "password": PASSWORD,
                                          "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    api.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return api


def test_ecg_is_analysed_queued_shown_and_edited(live: Center) -> None:
    c = live
    job_id = _send_and_route(c, Path(get_testdata_file("waveform_ecg.dcm")))
    assert jobs.execute(c.db, job_id) == "succeeded"
    assert jobs.execute(c.db, job_id) == "succeeded"  # again: nothing written twice
    with c.db.session() as s:
        rows = list(s.scalars(select(ECGAnalysis)))
        assert len(rows) == 1
        row = rows[0]
        assert 55 <= row.measurements["heart_rate_bpm"] <= 67
        assert "sinus_rhythm" in [st["code"] for st in row.statements]

    api = _cardiologist(c)
    queue = api.get("/api/ecg/queue").json()
    assert queue["total"] == 1 and queue["items"][0]["id"] == row.id
    detail = api.get(f"/api/ecg/{row.id}").json()
    assert set(detail["tracing"]["leads"]) == {"I", "II", "III", "aVR", "aVL", "aVF",
                                               "V1", "V2", "V3", "V4", "V5", "V6"}
    assert len(detail["tracing"]["leads"]["II"]) == pytest.approx(
        detail["tracing"]["duration_s"] * 250, abs=2)
    r = api.put(f"/api/ecg/{row.id}", json={
        "measurements": {"pr_ms": 210.0},
        "statements": [{"code": "first_degree_av_block", "text": "First-degree AV block",
                        "critical": False}]})
    assert r.status_code == 200, r.text
    assert r.json()["measurements"]["pr_ms"] == 210.0
    assert api.put(f"/api/ecg/{row.id}", json={"measurements": {"bogus": 1}}).status_code == 422
    with c.db.session() as s:
        edited = s.get(ECGAnalysis, row.id)
        assert edited is not None and edited.edited_by == "dr.heart"
        assert edited.result["measurements"]["pr_ms"] != 210.0  # the automatic result stays
        edit = s.scalar(select(AuditRecord).where(AuditRecord.action == "ecg.edit"))
        assert edit is not None and edit.detail["measurements"]["pr_ms"][1] == 210.0


def test_a_broken_waveform_fails_the_job_and_stores_nothing(live: Center,
                                                            tmp_path: Path) -> None:
    c = live
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.WaveformSequence[0].NumberOfWaveformSamples *= 2  # says more than it holds
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    job_id = _send_and_route(c, path)
    assert jobs.execute(c.db, job_id) == "failed"
    with c.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and "truncated" in (job.error or "")
        assert s.scalar(select(ECGAnalysis)) is None


def test_the_ecg_report_is_prefilled_and_its_pdf_shows_the_tracing(live: Center,
                                                                   tmp_path: Path) -> None:
    c = live
    job_id = _send_and_route(c, Path(get_testdata_file("waveform_ecg.dcm")))
    assert jobs.execute(c.db, job_id) == "succeeded"
    env = {**c.env, "RDC_KEY_PASSPHRASE": "correct horse battery"}
    issued = subprocess.run([sys.executable, "-m", "rdc", "keys", "issue", "dr.heart",
                             "--name", "Dr Heart"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert issued.returncode == 0, issued.stderr
    api = _cardiologist(c)
    with c.db.session() as s:
        study_id = s.scalar(select(ECGAnalysis.study_id))
    report = api.post(f"/api/studies/{study_id}/report").json()
    assert report["template"] == "ecg@1.0.0"
    fields = report["versions"][0]["fields"]
    assert "Sinus rhythm" in fields["rhythm"] or "sinus" in fields["rhythm"].lower()
    assert "HR 6" in fields["measurements"] and "QRS" in fields["measurements"]
    assert fields["interpretation"].strip()
    # A cardiologist's edit of the analysis reaches the untouched prefilled field.
    with c.db.session() as s:
        analysis_id = s.scalar(select(ECGAnalysis.id))
    r = api.put(f"/api/ecg/{analysis_id}", json={"statements": [
        {"code": "sinus_rhythm", "text": "Sinus rhythm", "critical": False},
        {"code": "first_degree_av_block", "text": "First-degree AV block", "critical": False}]})
    assert r.status_code == 200, r.text
    fields = api.get(f"/api/reports/{report['id']}").json()["versions"][0]["fields"]
    assert fields["interpretation"] == "Sinus rhythm\nFirst-degree AV block"
    assert fields["rhythm"] == "Sinus rhythm"
    assert api.post(f"/api/studies/{study_id}/claim").json()["claimed_by"] == "dr.heart"
    r = api.post(f"/api/reports/{report['id']}/sign",
                 json={"passphrase": "correct horse battery"})
    assert r.status_code == 200, r.text
    pdf_uid = r.json()["versions"][0]["pdf_sop_uid"]
    # Signed: the study is nobody's any more, and the ECG it was signed on is frozen.
    item = api.get("/api/worklist", params={"status": "all"}).json()["items"][0]
    assert item["status"] == "signed" and item["claimed_by"] is None, item
    r = api.put(f"/api/ecg/{analysis_id}", json={
        "measurements": {"heart_rate_bpm": 130.0},
        "statements": [{"code": "stemi", "text": "Anterior STEMI", "critical": True}]})
    assert r.status_code == 409, r.text
    assert "signed" in r.json()["detail"] and "addendum" in r.json()["detail"]
    with c.db.session() as s:
        row = s.get(ECGAnalysis, analysis_id)
        assert row is not None and row.measurements["heart_rate_bpm"] != 130.0
        assert not row.critical
    with c.orthanc() as client:
        oid = client.find_instance(pdf_uid)
        assert oid is not None
        pdf = pdf_from_dataset(pydicom.dcmread(BytesIO(client.instance_file(oid))))
    path = tmp_path / "ecg.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "12-lead ECG" in text and "Interpretation" in text
    images = subprocess.run(["pdfimages", "-list", str(path)], capture_output=True,
                            text=True, check=True).stdout.strip().splitlines()
    assert len(images) >= 3  # header lines + the tracing
