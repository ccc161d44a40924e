"""The inference worker: ``ai_inference`` jobs, batched per model, to SR/SEG in Orthanc.

A job names one series and one model version.  The worker that takes a job
fills a batch with other queued jobs of the same model (up to the manifest's
batch size, waiting at most ``RDC_AI_BATCH_WAIT_MS``), highest priority first,
so STAT studies are read before routine ones.  Claimed jobs keep their own
broker messages until they are finished, so a worker killed mid-batch loses
nothing: the jobs are found running-but-stale, or their messages arrive at
another worker, and run again.

Every result is written idempotently: the SR and SEG UIDs are derived from
(series, model, version), Orthanc keeps the first copy of a UID, and the
``ai_results`` row is unique on the same triple.  A rerun therefore never
produces a second result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ai_models.dicom_outputs import build_seg
from ai_models.manifest import Manifest
from ai_models.output_uids import result_uids
from ai_models.pipelines import get_pipeline
from ai_models.pipelines.base import NotApplicable, Pipeline, Prepared, Result
from ai_models.pipelines.wsi_map import build_parametric_map
from ai_models.preread import inference_key
from ai_models.registry import get_model
from ai_models.runtime import SESSIONS, LoadedModel
from ai_models.sr_template import SR_TEMPLATES
from core import audit, jobs, metrics
from core.db import Database
from core.models import AIFinding, AIResult, Instance, Job, Study
from core.orthanc_client import OrthancClient, OrthancNotFound, OrthancUnavailable
from core.settings import Settings, get_settings
from core.states import InstanceState, JobState

log = logging.getLogger(__name__)

#: Threads that fetch and decode series, and build and upload outputs, for one batch.
IO_THREADS = 4

#: Worklist priority of a study with an unverified critical AI finding: below a
#: STAT request (9), above urgent (7) and routine (5).
AI_CRITICAL_PRIORITY = 8


@dataclass
class Item:
    job_id: int
    study_id: int
    series_uid: str
    leader: bool
    prepared: Prepared | None = None
    outcome: JobState = JobState.RUNNING
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    output: np.ndarray | None = None
    stored: Stored | None = None


@dataclass(frozen=True)
class Stored:
    """What one item left in Orthanc, to be recorded with the rest of its batch."""

    result: Result
    sr_uid: str
    #: The SEG or, for a tile model, the heat map (Parametric Map).
    seg_uid: str | None


def fetch_series(client: OrthancClient, series_uid: str) -> list[Dataset]:
    """The series' instances from Orthanc, found by UID, parsed (pixels decoded later)."""
    orthanc_id = client.find_series(series_uid)
    if orthanc_id is None:
        raise LookupError(f"series {series_uid} is not in Orthanc")
    return fetch_instances(client, client.series_instances(orthanc_id))


def fetch_instances(client: OrthancClient, orthanc_ids: Sequence[str]) -> list[Dataset]:
    """These instances' files from Orthanc, parsed (pixel data decoded later).

    A CT series is hundreds of files: they are fetched on IO_THREADS connections at
    once, in their order, so Orthanc's disk and the round trips overlap."""
    def one(instance: str) -> Dataset:
        data = client.instance_file(instance)
        try:
            return dcmread(BytesIO(data))
        except (InvalidDicomError, ValueError, EOFError) as e:
            raise NotApplicable(f"instance {instance} of the series cannot be parsed: {e}"
                                ) from e

    if len(orthanc_ids) <= 1:
        return [one(i) for i in orthanc_ids]
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(orthanc_ids)),
                            thread_name_prefix="ai-fetch") as pool:
        return list(pool.map(one, orthanc_ids))


def stored_instances(db: Database, items: Sequence[Item]) -> dict[int, list[str]]:
    """Orthanc IDs of each item's series, as the gateway recorded them (one query).

    The gateway knows every instance it stored in Orthanc, so the worker needs no
    lookup and no listing per series: one request per instance file.  An item whose
    study has no such rows (an import, a series stored another way) is left out and
    found by UID in Orthanc instead."""
    wanted = {(i.study_id, i.series_uid): i.job_id for i in items}
    if not wanted:
        return {}
    # A resent instance has a receipt of its own with the same Orthanc ID (Orthanc kept
    # one copy): each ID counts once, or a CT would get the same slice twice.
    found: dict[int, dict[str, None]] = {}
    with db.session() as s:
        rows = s.execute(select(Instance.study_id, Instance.series_uid, Instance.orthanc_id)
                         .where(Instance.study_id.in_({k[0] for k in wanted}),
                                Instance.series_uid.in_({k[1] for k in wanted}),
                                Instance.state == InstanceState.STORED,
                                Instance.orthanc_id.is_not(None)))
        for study_id, series_uid, orthanc_id in rows:
            job_id = wanted.get((study_id, series_uid))
            if job_id is not None and orthanc_id:
                found.setdefault(job_id, {})[str(orthanc_id)] = None
    return {job_id: list(ids) for job_id, ids in found.items()}


def _fill_batch(db: Database, leader: Job, manifest: Manifest, wait_s: float) -> list[int]:
    want = manifest.batch_size - 1
    prefix = inference_key(manifest.name, manifest.version, "")
    claimed: list[int] = []
    deadline = time.monotonic() + wait_s
    while True:
        claimed += jobs.claim_queued(db, "ai_inference", prefix, want - len(claimed),
                                     exclude={leader.id, *claimed})
        if len(claimed) >= want or time.monotonic() >= deadline:
            return claimed
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))


def _load_items(db: Database, leader: Job, follower_ids: list[int]) -> list[Item]:
    assert leader.study_id is not None
    items = [Item(leader.id, leader.study_id, str(leader.params["series_uid"]), True)]
    with db.session() as s:
        for job in s.scalars(select(Job).where(Job.id.in_(follower_ids))):
            if job.study_id is None:
                items.append(Item(job.id, 0, "", False, outcome=JobState.FAILED,
                                  error="ai_inference job has no study"))
                continue
            items.append(Item(job.id, job.study_id, str(job.params["series_uid"]), False))
    return items


class BatchRunner:
    """Runs one batch of items through a pipeline and stores the results."""

    def __init__(self, db: Database, settings: Settings, loaded: LoadedModel,
                 pipeline: Pipeline) -> None:
        self.db = db
        self.settings = settings
        self.loaded = loaded
        self.pipeline = pipeline
        self.manifest = loaded.manifest
        self.batch_len = 1
        #: Orthanc IDs of the items' instances, by job, where the gateway recorded them.
        self.known: dict[int, list[str]] = {}

    def run(self, items: Sequence[Item]) -> None:
        with OrthancClient.from_settings(self.settings, retries=2) as client:
            waiting = [i for i in items if i.outcome == JobState.RUNNING]
            self.known = stored_instances(self.db, waiting)
            # Fetching from Orthanc waits on the network and Orthanc's disk, decoding
            # partly outside the GIL: a few threads overlap them (bounded: at most
            # IO_THREADS series are in flight, and a batch is the manifest's size).
            self._each(waiting, lambda item: self._prepare(client, item))
            ready = [i for i in items if i.prepared is not None]
            jobs.touch(self.db, [i.job_id for i in items])
            if ready:
                self._predict_and_store(client, ready)

    @staticmethod
    def _each(items: Sequence[Item], work: Callable[[Item], None]) -> None:
        """``work`` on every item, on up to IO_THREADS threads (in order on one)."""
        if len(items) <= 1:
            for item in items:
                work(item)
            return
        with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(items)),
                                thread_name_prefix="ai-io") as pool:
            for _ in pool.map(work, items):
                pass

    def _prepare(self, client: OrthancClient, item: Item) -> None:
        started = time.perf_counter()
        # A pipeline that reads a series its own way (a whole-slide image, tile by tile
        # from the WSI plugin) says so with prepare_from_orthanc; the others get files.
        from_orthanc = getattr(self.pipeline, "prepare_from_orthanc", None)
        try:
            if from_orthanc is not None:
                item.prepared = from_orthanc(client, item.series_uid)
            else:
                datasets = self._fetch(client, item)
                self.pipeline.check(datasets)
                item.prepared = self.pipeline.preprocess(datasets)
        except NotApplicable as e:
            item.outcome, item.error = JobState.SKIPPED, str(e)
        except (OrthancUnavailable, OrthancNotFound) as e:
            item.outcome, item.error = JobState.QUEUED, f"Orthanc: {e}"
        except Exception as e:
            log.exception("ai.prepare_failed job_id=%s", item.job_id)
            item.outcome, item.error = JobState.FAILED, f"{type(e).__name__}: {e}"
        item.timings["prepare_ms"] = (time.perf_counter() - started) * 1000

    def _fetch(self, client: OrthancClient, item: Item) -> list[Dataset]:
        known = self.known.get(item.job_id)
        if known:
            try:
                return fetch_instances(client, known)
            except OrthancNotFound:  # deleted or replaced since: ask Orthanc by UID
                log.info("ai.fetch_by_uid job_id=%s: a recorded instance is gone",
                         item.job_id)
        return fetch_series(client, item.series_uid)

    def _predict_and_store(self, client: OrthancClient, ready: list[Item]) -> None:
        started = time.perf_counter()
        prepared = [i.prepared for i in ready if i.prepared is not None]
        try:
            outputs = self.pipeline.predict(prepared, self.loaded.run)
        except Exception as e:
            log.exception("ai.predict_failed model=%s", self.manifest.ref)
            for item in ready:
                item.outcome, item.error = JobState.FAILED, f"inference: {e}"
            return
        predict_s = time.perf_counter() - started
        metrics.MODEL_SECONDS.labels(model=self.manifest.name,
                                     provider=self.loaded.provider).observe(predict_s)
        predict_ms = predict_s * 1000 / len(ready)
        self.batch_len = len(ready)
        jobs.touch(self.db, [i.job_id for i in ready])
        for item, output in zip(ready, outputs, strict=True):
            item.timings["predict_ms"] = predict_ms
            item.output = output
        # Build and upload every item's DICOM outputs on the I/O threads, then record
        # the batch's results in one transaction.
        self._each(ready, lambda item: self._build_and_upload(client, item))
        stored = [i for i in ready if i.stored is not None]
        if stored:
            try:
                record_results(self.db, stored, self.manifest, device=self.loaded.provider,
                               batch_size=self.batch_len)
            except Exception as e:
                log.exception("ai.record_failed model=%s", self.manifest.ref)
                for item in stored:
                    item.outcome, item.error = JobState.FAILED, f"{type(e).__name__}: {e}"
                return
            for item in stored:
                item.outcome = JobState.SUCCEEDED

    def _build_and_upload(self, client: OrthancClient, item: Item) -> None:
        try:
            item.stored = self._store(client, item)
        except OrthancUnavailable as e:
            item.outcome, item.error = JobState.QUEUED, f"Orthanc: {e}"
        except Exception as e:
            log.exception("ai.store_failed job_id=%s", item.job_id)
            item.outcome, item.error = JobState.FAILED, f"{type(e).__name__}: {e}"

    def _store(self, client: OrthancClient, item: Item) -> Stored:
        """Post-process one item and put its SEG or heat map and its SR into Orthanc."""
        assert item.prepared is not None and item.output is not None
        started = time.perf_counter()
        result = self.pipeline.postprocess(item.prepared, item.output)
        m = self.manifest
        uids = result_uids(item.series_uid, m.name, m.version)
        source = item.prepared.datasets
        seg_ds = None
        if "seg" in m.outputs and result.mask is not None and result.mask.any():
            label = next(f.label for f in result.findings if f.positive) \
                if any(f.positive for f in result.findings) else m.labels[0].name
            seg_ds = build_seg(source, m, result.mask, label=label,
                               series_uid=uids.seg_series, sop_uid=uids.seg)
            _upload(client, seg_ds)
        map_ds = None
        if "parametric_map" in m.outputs and result.heatmap is not None:
            # A model writes a SEG or a heat map, never both: the map takes the SEG's
            # derived UIDs, so the web app finds it from the ai_results row as it does a SEG.
            map_ds = build_parametric_map(source, m, result.heatmap,
                                          series_uid=uids.seg_series, sop_uid=uids.seg)
            _upload(client, map_ds)
        derived = seg_ds if seg_ds is not None else map_ds
        sr_ds = SR_TEMPLATES.build(source, m, result.findings, series_uid=uids.sr_series,
                                   sop_uid=uids.sr, device=self.loaded.provider, seg=seg_ds)
        _upload(client, sr_ds)
        item.timings["store_ms"] = (time.perf_counter() - started) * 1000
        return Stored(result, str(sr_ds.SOPInstanceUID),
                      str(derived.SOPInstanceUID) if derived is not None else None)


def _upload(client: OrthancClient, ds: Dataset) -> None:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    answer = client.upload_instance(buf.getvalue())
    log.info("ai.uploaded sop=%s status=%s", ds.SOPInstanceUID, answer.get("Status"))


def record_results(db: Database, items: Sequence[Item], manifest: Manifest, *, device: str,
                   batch_size: int) -> list[bool]:
    """Write a batch's results and findings in one transaction, each once.

    Returns, per item, False where its result already existed (a rerun, or another
    worker that raced this one): the job still succeeds, with the first result."""
    with db.session() as s:
        return [_record_one(s, item, manifest, device=device, batch_size=batch_size)
                for item in items]


def _record_one(s: Session, item: Item, manifest: Manifest, *, device: str,
                batch_size: int) -> bool:
    assert item.stored is not None
    result, sr_uid, seg_uid = item.stored.result, item.stored.sr_uid, item.stored.seg_uid
    critical = any(f.critical for f in result.findings)
    duration = sum(item.timings.values())
    exists = s.scalar(select(AIResult.id).where(
        AIResult.series_uid == item.series_uid, AIResult.model_name == manifest.name,
        AIResult.model_version == manifest.version))
    if exists is not None:
        log.info("ai.result_exists series=%s model=%s", item.series_uid, manifest.ref)
        return False
    row = AIResult(job_id=item.job_id, study_id=item.study_id, series_uid=item.series_uid,
                   model_name=manifest.name, model_version=manifest.version,
                   device=device, batch_size=batch_size, duration_ms=duration,
                   sr_sop_uid=sr_uid, seg_sop_uid=seg_uid, critical=critical,
                   heatmap=result.heatmap)
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        log.info("ai.result_raced series=%s model=%s", item.series_uid, manifest.ref)
        return False
    for f in result.findings:
        label = manifest.label(f.label)
        s.add(AIFinding(result_id=row.id, study_id=item.study_id, label=f.label,
                        probability=f.probability, threshold=label.threshold,
                        positive=f.positive, critical=f.critical, volume_ml=f.volume_ml))
    if critical:
        _raise_priority(s, item.study_id)
    audit.append(s, actor=f"ai:{manifest.ref}", action="ai.result", object_type="study",
                 object_id=str(item.study_id), detail={
                     "series_uid": item.series_uid, "job_id": item.job_id,
                     "device": device, "critical": critical, "sr": sr_uid, "seg": seg_uid,
                     "positive": [f.label for f in result.findings if f.positive]})
    return True


def _raise_priority(s: Session, study_id: int) -> None:
    study = s.get(Study, study_id, with_for_update=True)
    if study is None:
        return
    study.ai_critical = True
    study.priority = max(study.priority, AI_CRITICAL_PRIORITY)
    s.execute(update(Job).where(Job.study_id == study_id, Job.queue.in_(jobs.HUMAN_QUEUES),
                                Job.priority < AI_CRITICAL_PRIORITY)
              .values(priority=AI_CRITICAL_PRIORITY))


def run_inference_job(db: Database, job: Job) -> None:
    settings = get_settings()
    name, version = str(job.params["model"]), str(job.params["version"])
    with db.session() as session:
        row = get_model(session, name, version)
        if not row.enabled:
            raise jobs.SkipJob(f"model {name}@{version} is disabled")
        manifest = Manifest.model_validate(row.manifest)
        folder = Path(row.path)
    loaded = SESSIONS.get(folder, manifest, settings.ai_device, settings.ai_threads)
    pipeline = get_pipeline(manifest)
    followers = _fill_batch(db, job, manifest, settings.ai_batch_wait_ms / 1000)
    items = _load_items(db, job, followers)
    metrics.JOB_BATCH_SIZE.labels(model=manifest.name).observe(len(items))
    try:
        BatchRunner(db, settings, loaded, pipeline).run(items)
    except BaseException:
        # Hand claimed jobs back (their messages are still in the broker) before the
        # leader's own failure is recorded.
        jobs.finish_claimed_many(db, [(item.job_id, JobState.QUEUED, "batch interrupted")
                                      for item in items[1:]])
        raise
    jobs.finish_claimed_many(db, [(item.job_id, item.outcome, item.error)
                                  for item in items[1:]])
    log.info("ai.batch model=%s provider=%s size=%s outcomes=%s", manifest.ref,
             loaded.provider, len(items), [str(i.outcome) for i in items])
    leader = items[0]
    if leader.outcome == JobState.SKIPPED:
        raise jobs.SkipJob(leader.error or "not applicable")
    if leader.outcome == JobState.QUEUED:
        raise jobs.TransientJobError(leader.error or "try again")
    if leader.outcome == JobState.FAILED:
        raise RuntimeError(leader.error or "failed")
