"""The ``ecg_analysis`` job: analyse every ECG waveform of a complete study.

Routing queues the job by ID when an ECG study completes.  The worker loads each
waveform object from Orthanc, reads and analyses it, and stores one
:class:`~core.models.ECGAnalysis` per object (a re-run finds it and writes
nothing twice).  A critical statement raises the study to the top of the
cardiologists' queue.  An unreadable waveform fails the job with the reader's
precise message, and nothing is stored for the study, so there is never a
half-analysed ECG.
"""

from __future__ import annotations

import logging
from io import BytesIO

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, jobs
from core.ecg_waveform import ECG_SOP_CLASSES
from core.models import ECGAnalysis, Job, Study
from core.orthanc_client import OrthancClient, OrthancError
from core.settings import get_settings
from ecg.analyze import ANALYSIS_VERSION, Analysis, analyze
from ecg.readers import read_ecg

log = logging.getLogger(__name__)

JOB_KIND = "ecg_analysis"
CRITICAL_PRIORITY = 8


def _waveforms(client: OrthancClient, study: Study) -> list[tuple[str, bytes]]:
    found = [x for x in client.lookup(study.study_uid) if x.get("Type") == "Study"]
    if not found:
        raise jobs.TransientJobError(f"study {study.study_uid} is not in Orthanc yet")
    out = []
    for inst in client.study_instances(str(found[0]["ID"])):
        data = client.instance_file(str(inst["ID"]))
        head = pydicom.dcmread(BytesIO(data), stop_before_pixels=True,
                               specific_tags=["SOPClassUID"])
        if str(head.get("SOPClassUID", "")) in ECG_SOP_CLASSES:
            out.append((str(inst["ID"]), data))
    return out


def store_analysis(session: Session, study: Study, data: bytes, analysis: Analysis,
                   sop_uid: str, series_uid: str) -> ECGAnalysis:
    """One row per waveform object, idempotent on its SOP Instance UID."""
    existing = session.scalar(select(ECGAnalysis).where(
        ECGAnalysis.sop_instance_uid == sop_uid))
    if existing is not None:
        return existing
    result = analysis.to_dict()
    row = ECGAnalysis(study_id=study.id, sop_instance_uid=sop_uid, series_uid=series_uid,
                      analysis_version=ANALYSIS_VERSION, result=result,
                      measurements=dict(result["measurements"] or {}),
                      statements=list(result["statements"]), critical=analysis.critical,
                      quality=str(result["quality"].get("grade", "")),
                      confidence=float(result["confidence"]))
    session.add(row)
    session.flush()
    return row


def run_ecg_analysis(session: Session, job: Job) -> None:
    """Analyse the study's ECGs; refuses the whole study if one waveform is unreadable."""
    study = session.get(Study, job.study_id) if job.study_id is not None else None
    if study is None:
        raise ValueError(f"ecg_analysis job {job.id} has no study")
    try:
        with OrthancClient.from_settings(get_settings()) as client:
            waveforms = _waveforms(client, study)
    except OrthancError as e:
        raise jobs.TransientJobError(f"Orthanc: {e}") from e
    if not waveforms:
        raise jobs.SkipJob("the study holds no ECG waveform object")
    analysed = []
    for orthanc_id, data in waveforms:  # read and analyse all before storing any
        ecg = read_ecg(data)
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        analysed.append((str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), analyze(ecg),
                         orthanc_id, data))
    rows = [store_analysis(session, study, data, a, sop, series)
            for sop, series, a, _, data in analysed]
    critical = [r.id for r in rows if r.critical]
    if critical and study.priority < CRITICAL_PRIORITY:
        study.priority = CRITICAL_PRIORITY
    audit.append(session, actor="worker", action="ecg.analysed", object_type="study",
                 object_id=str(study.id), detail={
                     "analyses": [r.id for r in rows], "critical": critical,
                     "version": ANALYSIS_VERSION})
    log.info("ecg.analysed study=%s analyses=%s critical=%s", study.id,
             [r.id for r in rows], critical)
