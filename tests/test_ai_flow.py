"""AI pre-reads end to end: C-STORE → route → ai_preread → batched ai_inference on a
real worker → SR/SEG in Orthanc, findings and priority in the database."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import select

from conftest import SENDER_AE, Center, wait_until
from core.models import AIFinding, AIResult, Job, Study
from devkit.dcmtk import storescu
from devkit.samples import Patient, write_chest_radiograph, write_ct_series


@pytest.fixture
def ai_center(center: Center) -> Iterator[Center]:
    c = center
    c.extra_env.update({"RDC_JOB_LEASE_S": "5", "RDC_AI_BATCH_WAIT_MS": "300"})
    c.start_orthanc()
    c.add_site()
    c.start_gateway()
    yield c


def _send(c: Center, paths: list[Path]) -> None:
    result = storescu(paths, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert len(result.succeeded) == len(paths), result.output[-2000:]


def _study(c: Center, uid: str) -> Study | None:
    with c.db.session() as s:
        return s.scalar(select(Study).where(Study.study_uid == uid))


def _ai_jobs(c: Center, study_uid: str, kind: str = "ai_inference") -> list[Job]:
    with c.db.session() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return []
        return list(s.scalars(select(Job).where(Job.study_id == study.id, Job.kind == kind)))


def _finished(c: Center, study_uid: str, kind: str = "ai_inference") -> list[Job] | None:
    jobs = _ai_jobs(c, study_uid, kind)
    return jobs if jobs and all(j.state in ("succeeded", "skipped", "failed", "dead")
                                for j in jobs) else None


def _instance(c: Center, sop_uid: str) -> pydicom.Dataset:
    with c.orthanc() as client:
        orthanc_id = client.find_instance(sop_uid)
        assert orthanc_id is not None, f"{sop_uid} is not in Orthanc"
        return pydicom.dcmread(BytesIO(client.instance_file(orthanc_id)))


def _content_text(ds: pydicom.Dataset) -> str:
    """Every text, code meaning and number in an SR's content tree, flattened."""
    out: list[str] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            for kw in ("TextValue", "UID", "DateTime", "PersonName"):
                if kw in item:
                    out.append(str(item.get(kw)))
            for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                for code in item.get(seq, []):
                    out.append(str(code.CodeMeaning))
            for mv in item.get("MeasuredValueSequence", []):
                out.append(str(mv.NumericValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return "\n".join(out)


def _results(c: Center, study_id: int) -> list[AIResult]:
    with c.db.session() as s:
        return list(s.scalars(select(AIResult).where(AIResult.study_id == study_id)))


def _findings(c: Center, study_id: int) -> dict[str, AIFinding]:
    with c.db.session() as s:
        return {f.label: f for f in s.scalars(select(AIFinding)
                                               .where(AIFinding.study_id == study_id))}


def test_chest_radiograph_and_ct_get_sr_seg_findings_and_priority(ai_center: Center,
                                                                  tmp_path: Path) -> None:
    c = ai_center
    c.start_worker()
    ptx = write_chest_radiograph(tmp_path / "ptx", size=512, seed=11, pneumothorax=True,
                                 opacity=False, patient=Patient(id="AI-PTX"))
    clean = write_chest_radiograph(tmp_path / "clean", size=512, seed=12, opacity=False,
                                   patient=Patient(id="AI-CLEAN"))
    ct = write_ct_series(tmp_path / "ct", slices=80, size=256, seed=5,
                         patient=Patient(id="AI-CT"))
    _send(c, ptx.paths + clean.paths + ct.paths)

    for g in (ptx, clean, ct):
        jobs = wait_until(lambda g=g: _finished(c, g.study_uid), 240,
                          f"AI jobs of {g.study_uid}")
        assert [j.state for j in jobs] == ["succeeded"], [(j.state, j.error) for j in jobs]

    # The pneumothorax is critical: the study goes up the worklist.
    s_ptx, s_clean, s_ct = (_study(c, g.study_uid) for g in (ptx, clean, ct))
    assert s_ptx and s_clean and s_ct
    assert s_ptx.ai_critical and s_ptx.priority == 8
    assert not s_clean.ai_critical and s_clean.priority < 8
    with c.db.session() as s:
        read = s.scalar(select(Job).where(Job.study_id == s_ptx.id, Job.kind == "human_read"))
        assert read is not None and read.priority == 8
    f_ptx, f_clean, f_ct = (_findings(c, st.id) for st in (s_ptx, s_clean, s_ct))
    assert f_ptx["pneumothorax"].positive and f_ptx["pneumothorax"].critical
    assert not f_clean["pneumothorax"].positive and not f_clean["lung_opacity"].positive
    assert f_ct["lung_nodule"].positive and f_ct["lung_nodule"].volume_ml is not None
    assert 1.0 < f_ct["lung_nodule"].volume_ml < 15.0, f_ct["lung_nodule"].volume_ml

    # SR in Orthanc, in the same study, unverified, naming the algorithm.
    [r_ptx] = _results(c, s_ptx.id)
    assert r_ptx.device == "CPUExecutionProvider" and r_ptx.duration_ms > 0
    sr = _instance(c, r_ptx.sr_sop_uid)
    assert sr.StudyInstanceUID == ptx.study_uid and sr.VerificationFlag == "UNVERIFIED"
    text = _content_text(sr)
    assert "cxr-triage" in text and "1.0.0" in text, text
    assert "Pneumothorax" in text
    hd.sr.srread(BytesIO(_dump(sr)))  # highdicom parses it

    [r_ct] = _results(c, s_ct.id)
    assert r_ct.seg_sop_uid is not None
    seg = hd.seg.segread(BytesIO(_dump(_instance(c, r_ct.seg_sop_uid))))
    assert seg.StudyInstanceUID == ct.study_uid
    assert seg.number_of_segments == 1
    ct_sr = _instance(c, r_ct.sr_sop_uid)
    assert "ct-nodule-seg" in _content_text(ct_sr)

    # The operator sees what ran where.
    runs = c.rdc("models", "runs")
    assert runs.returncode == 0 and "cxr-triage@1.0.0" in runs.stdout, runs.stdout


def _dump(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _undecodable_ct(tmp_path: Path) -> list[Path]:
    """A CT series whose JPEG 2000 pixel data is garbage: parseable, not decodable."""
    gen = write_ct_series(tmp_path / "j2k", slices=20, size=64, seed=9,
                          patient=Patient(id="AI-J2K"))
    for p in gen.paths:
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.save_as(p, enforce_file_format=True)
    return gen.paths


def test_inapplicable_series_are_skipped_with_reasons_and_the_worker_goes_on(
        ai_center: Center, tmp_path: Path) -> None:
    c = ai_center
    c.start_worker()
    short = write_ct_series(tmp_path / "short", slices=5, size=64, seed=7,
                            patient=Patient(id="AI-SHORT"))
    j2k = _undecodable_ct(tmp_path)
    good = write_chest_radiograph(tmp_path / "good", size=256, seed=13,
                                  patient=Patient(id="AI-GOOD"))
    _send(c, short.paths)
    _send(c, j2k)
    _send(c, good.paths)

    [j_short] = wait_until(lambda: _finished(c, short.study_uid), 180, "the short CT")
    assert j_short.state == "skipped" and "slices" in (j_short.error or ""), j_short.error
    [j_j2k] = wait_until(lambda: _finished(c, _uid(j2k[0])), 180, "the undecodable CT")
    assert j_j2k.state in ("skipped", "failed"), j_j2k.error
    assert "decod" in (j_j2k.error or "").lower() and "1.2.840.10008.1.2.4.90" in \
        (j_j2k.error or ""), j_j2k.error
    [j_good] = wait_until(lambda: _finished(c, good.study_uid), 180, "the good radiograph")
    assert j_good.state == "succeeded", j_good.error
    for uid in (short.study_uid, _uid(j2k[0])):
        st = _study(c, uid)
        assert st is not None and _results(c, st.id) == []


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (the Celery pool children too)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        try:
            kids = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            kids = []
        pids += [int(k) for k in kids]
        i += 1
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_worker_killed_mid_batch_each_job_gives_exactly_one_result(
        ai_center: Center, tmp_path: Path) -> None:
    c = ai_center
    # Let the whole batch gather; a short time limit makes Redis hand the killed
    # worker's unacknowledged message back soon (visibility timeout = 2 x limit).
    c.extra_env.update({"RDC_AI_BATCH_WAIT_MS": "3000", "RDC_JOB_TIME_LIMIT_S": "45"})
    studies = [write_chest_radiograph(tmp_path / f"cxr{i}", size=1024, seed=100 + i,
                                      pneumothorax=i % 2 == 0, patient=Patient(id=f"K-{i}"))
               for i in range(6)]
    c.start_worker()
    _send(c, [p for g in studies for p in g.paths])

    def running() -> list[Job]:
        jobs = [j for g in studies for j in _ai_jobs(c, g.study_uid)]
        return [j for j in jobs if j.state == "running"] if len(jobs) == 6 else []

    # One worker process (concurrency 1) with several jobs running: one batch.
    in_flight = wait_until(lambda: len(r := running()) >= 2 and r, 180, "a batch in flight",
                           interval=0.05)
    assert c.worker_proc is not None
    _kill_tree(c.worker_proc.pid)
    c.worker_proc.wait(10)
    c.worker_proc = None
    with c.db.session() as s:
        done_at_kill = set(s.scalars(select(AIResult.job_id)))
    assert {j.id for j in in_flight} - done_at_kill, "the batch finished before the kill"
    time.sleep(1)

    c.start_worker()  # another worker takes over
    for g in studies:
        jobs = wait_until(lambda g=g: _finished(c, g.study_uid), 240, "jobs after the kill")
        assert [j.state for j in jobs] == ["succeeded"], [(j.state, j.error) for j in jobs]
    with c.db.session() as s:
        results = list(s.scalars(select(AIResult)))
    assert len(results) == 6 and len({r.series_uid for r in results}) == 6
    with c.orthanc() as client:
        for g in studies:
            orthanc_study = client.lookup(g.study_uid)[0]["ID"]
            series = client.study_series(orthanc_study)
            srs = [x for x in series if x["MainDicomTags"].get("Modality") == "SR"]
            assert len(srs) == 1 and len(srs[0]["Instances"]) == 1, series
