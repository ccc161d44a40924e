"""Fan a complete study out to the models that read it.

Routing (in the worker) gives every imaging study one ``ai_preread`` job; this
handler looks at the study's series and creates one ``ai_inference`` job per
(series, enabled model version) that the model's manifest says it reads.  The
job key is that pair, so the same series is never run twice by one version,
and a late series gets its own jobs when the study completes again.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_models.registry import RegisteredModel, enabled_models, ensure_shipped
from core import jobs
from core.models import Instance, Job, Study
from core.settings import get_settings

log = logging.getLogger(__name__)

INFERENCE_QUEUE = "inference"


def inference_key(model: str, version: str, series_uid: str) -> str:
    return f"ai:{model}@{version}:{series_uid}"


def _reads(model: RegisteredModel, modality: str, sop_class: str) -> bool:
    applies = model.manifest.applies_to
    return modality in applies.modalities and (not applies.sop_classes
                                               or sop_class in applies.sop_classes)


def fan_out(session: Session, job: Job) -> None:
    if job.study_id is None:
        raise ValueError(f"ai_preread job {job.id} has no study")
    study = session.get(Study, job.study_id)
    if study is None:
        raise ValueError(f"ai_preread job {job.id}: study {job.study_id} does not exist")
    ensure_shipped(session, get_settings())
    models = enabled_models(session)
    series = session.execute(
        select(Instance.series_uid, Instance.modality, Instance.sop_class_uid, func.count())
        .where(Instance.study_id == study.id)
        .group_by(Instance.series_uid, Instance.modality, Instance.sop_class_uid)).all()
    created: list[str] = []
    for series_uid, modality, sop_class, _count in series:
        for model in models:
            if not _reads(model, modality, sop_class):
                continue
            m = model.manifest
            new_job, new = jobs.submit(session, jobs.NewJob(
                key=inference_key(m.name, m.version, series_uid), kind="ai_inference",
                queue=INFERENCE_QUEUE, study_id=study.id, priority=job.priority,
                rule=job.rule, params={"model": m.name, "version": m.version,
                                       "series_uid": series_uid}))
            if new:
                created.append(new_job.key)
    if not created and not any(_reads(m, mod, sop) for _, mod, sop, _ in series
                               for m in models):
        what = ", ".join(sorted({f"{mod} ({sop})" for _, mod, sop, _ in series})) or "none"
        enabled = ", ".join(m.manifest.ref for m in models) or "none enabled"
        raise jobs.SkipJob(f"no enabled model reads this study's series: {what}; "
                           f"models: {enabled}")
    log.info("ai.fan_out study=%s jobs=%s", study.id, created)
