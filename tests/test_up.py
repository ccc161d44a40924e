"""``rdc up`` on the embedded default (SQLite, filesystem broker): two centers side by
side, the demo, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select

from conftest import REPO, Center, wait_until
from core.models import AIFinding, AIResult, ECGAnalysis, Job, Study


def _embedded(tmp_path: Path, name: str) -> Center:
    # Empty URLs: the settings fall back to the embedded defaults under RDC_HOME.
    return Center(home=tmp_path / name, db_url="", broker_url="")


def _start_up(c: Center) -> tuple[subprocess.Popen[str], Path]:
    c.home.mkdir(parents=True, exist_ok=True)
    log = c.home / "up.test.log"
    proc = subprocess.Popen([sys.executable, "-m", "rdc", "up"], env=c.env, cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: proc.poll() is not None or "is up" in log.read_text(), 120,
               f"{c.home.name} to come up")
    assert proc.poll() is None, log.read_text()
    return proc, log


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_demo_ai(c: Center) -> None:
    """The demo radiograph and CT have AI SR (and SEG for the CT) in Orthanc, readable by
    pydicom and highdicom, naming the algorithm; findings and priority are stored."""
    with c.db.session() as s:
        results = {r.model_name: r for r in s.scalars(select(AIResult))}
        assert {"cxr-triage", "ct-nodule-seg"} <= set(results), results
        dx = s.get(Study, results["cxr-triage"].study_id)
        assert dx is not None and dx.ai_critical and dx.priority == 8
        labels = {f.label for f in s.scalars(select(AIFinding))}
        assert {"pneumothorax", "lung_opacity", "lung_nodule"} <= labels, labels
    with c.orthanc() as client:
        for name, r in results.items():
            uids = [r.sr_sop_uid] + ([r.seg_sop_uid] if r.seg_sop_uid else [])
            for uid in uids:
                orthanc_id = client.find_instance(uid)
                assert orthanc_id is not None, f"{name}: {uid} not in Orthanc"
                data = client.instance_file(orthanc_id)
                ds = pydicom.dcmread(BytesIO(data))
                if ds.Modality == "SR":
                    sr = hd.sr.srread(BytesIO(data))
                    assert ds.VerificationFlag == "UNVERIFIED"
                    assert name in str(sr) or name in data.decode("latin-1")
                elif ds.Modality == "SEG":
                    seg = hd.seg.segread(BytesIO(data))
                    assert seg.number_of_segments == 1
                else:  # the slide tile model's heat map: a Parametric Map
                    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30", (name, ds.Modality)
                    assert "DEMONSTRATION" in str(ds.get("SeriesDescription", "")).upper() \
                        or b"DEMONSTRATION" in data.upper(), name
    assert results["ct-nodule-seg"].seg_sop_uid is not None, "no SEG for the demo CT"


# Two whole centers on two cores: generous, since a loaded CI machine is slow here.
@pytest.mark.timeout(1200)
def test_two_embedded_centers_demo_and_clean_stop(tmp_path: Path) -> None:
    a, b = _embedded(tmp_path, "center-a"), _embedded(tmp_path, "center-b")
    procs: list[subprocess.Popen[str]] = []
    try:
        pa, log_a = _start_up(a)
        procs.append(pa)
        pb, _log_b = _start_up(b)
        procs.append(pb)
        text = log_a.read_text()
        for what in (f"DICOM AE RDC_CENTER on 0.0.0.0:{a.gateway_port}",
                     f"http://127.0.0.1:{a.web_port}", f"127.0.0.1:{a.orthanc_http_port}",
                     "filesystem://"):
            assert what in text, text
        assert a.settings.database_url.startswith("sqlite:///")

        demo = a.rdc("demo", "--ct-slices", "60", timeout=1000)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "CT chest phantom" in demo.stdout and "Chest PA phantom" in demo.stdout
        assert "0 refused" in demo.stdout, demo.stdout
        assert "CRITICAL" in demo.stdout and "pneumothorax" in demo.stdout, demo.stdout
        # pydicom's 12-lead ECG went through the gateway and was analysed for the queue.
        assert "ECG study" in demo.stdout and "Sinus rhythm" in demo.stdout, demo.stdout
        with a.db.session() as s:
            assert s.scalar(select(ECGAnalysis)) is not None
        _check_demo_ai(a)

        with a.orthanc() as oa, b.orthanc() as ob:
            assert oa.statistics()["CountStudies"] >= 2
            assert ob.statistics()["CountStudies"] == 0  # the other center saw nothing

        # The CT announces its size: it completes at once and the worker, through the
        # embedded broker, routes it to the reading queue.
        def routed() -> bool:
            with a.db.session() as s:
                ct = next((st for st in s.scalars(select(Study)) if "CT" in st.modalities),
                          None)
                if ct is None:
                    return False
                return s.scalar(select(Job).where(Job.study_id == ct.id,
                                                  Job.kind == "human_read")) is not None
        wait_until(routed, 90, "the CT study to be routed by the embedded worker")

        status = a.rdc("status")
        assert status.returncode == 0 and "demo-county" in status.stdout
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(90))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(-9)
    assert codes == [0, 0], (a.logs(), b.logs())
    assert "stopped" in log_a.read_text()
    time.sleep(1)
    for c in (a, b):
        for port in (c.gateway_port, c.web_port, c.orthanc_http_port, c.orthanc_dicom_port):
            assert not _listening(port), f"port {port} still open after stop"
