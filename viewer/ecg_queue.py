"""The cardiologists' ECG queue: analyses to read, the tracing, edits, priors.

Sorted by severity (critical statements first, then intervals the analysis could not
measure, then poor quality that needs a human look), then by waiting time.  Every view
is audited; every edit of a measurement or statement is audited with what it was and
what it became.  The HTTP routes are in :mod:`viewer.api.ecg`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import HTTPException
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core import audit
from core.db import Database
from core.errors import Conflict
from core.models import ECGAnalysis, Report, Site, Study
from core.states import ReportState
from ecg.readers import read_ecg
from ecg.signal import LEADS, Ecg12
from reports import service
from viewer import studies
from viewer.archive import archived_file
from viewer.auth import UserContext
from viewer.worklist import patient_age, patient_sex, visible

#: The tracing goes to the browser at this rate: enough for a 25 mm/s display.
DISPLAY_HZ = 250.0
SIGNED = (ReportState.FINAL, ReportState.AMENDED)


def _summary(row: ECGAnalysis, study: Study, site_name: str, report_state: str | None,
             now: datetime) -> dict[str, Any]:
    m = row.measurements or {}
    waited = study.completed_at or row.created_at or now
    return {
        "id": row.id, "study_id": study.id, "site_id": study.site_id, "site_name": site_name,
        "patient_id": study.patient_id, "patient_name": study.patient_name,
        "patient_sex": patient_sex(study), "patient_age": patient_age(study),
        "critical": row.critical, "quality": row.quality, "confidence": row.confidence,
        "heart_rate_bpm": m.get("heart_rate_bpm"),
        "statements": [{"code": s.get("code"), "text": s.get("text"),
                        "critical": bool(s.get("critical"))} for s in row.statements],
        "waiting_s": int((now - waited).total_seconds()),
        "status": "signed" if report_state in SIGNED else
        ("reported" if report_state else "unread"),
        "edited_by": row.edited_by,
        "needs_human_measurement": needs_human_measurement(row),
    }


def needs_human_measurement(row: ECGAnalysis) -> bool:
    """The analysis could not measure an interval it needs (QT, QRS) on a readable ECG, and
    no cardiologist has entered it since."""
    reasons = (row.result or {}).get("human_measurement_reasons") or {}
    m = row.measurements or {}
    return bool((row.result or {}).get("needs_human_measurement")) and any(
        m.get(name) is None for name in reasons)


def queue_order() -> tuple[Any, ...]:
    """Critical first, then ECGs that need a human to measure an interval (and no one has
    edited yet), then poor quality, then the longest waiting."""
    needs_human = ECGAnalysis.result["needs_human_measurement"].as_boolean()
    return (case((ECGAnalysis.critical, 0), else_=1),
            case((needs_human & ECGAnalysis.edited_by.is_(None), 0), else_=1),
            case((ECGAnalysis.quality.in_(["poor", "unusable"]), 0), else_=1),
            func.coalesce(Study.completed_at, ECGAnalysis.created_at), ECGAnalysis.id)


def queue(s: Session, user: UserContext, *, status: str, page: int, page_size: int,
          study_id: int | None) -> dict[str, Any]:
    """One page of the ECGs ``user`` may read, in :func:`queue_order`; ``study_id``
    narrows it to one study's ECGs (the worklist opens a study's ECG so)."""
    now = datetime.now(UTC)
    q = (select(ECGAnalysis, Study, Site.name, Report.state)
         .join(Study, Study.id == ECGAnalysis.study_id)
         .join(Site, Site.id == Study.site_id)
         .outerjoin(Report, (Report.study_id == Study.id)
                    & (Report.subject_type == "study")))
    q = visible(q, user)
    if study_id is not None:
        q = q.where(Study.id == study_id)
    if status == "open":
        q = q.where((Report.id.is_(None)) | (Report.state.not_in(list(SIGNED))))
    elif status != "all":
        raise HTTPException(422, "status must be 'open' or 'all'")
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.execute(q.order_by(*queue_order()).limit(page_size)
                     .offset((page - 1) * page_size)).all()
    return {"total": int(total), "page": page, "page_size": page_size,
            "items": [_summary(r, st, name, rs, now) for r, st, name, rs in rows]}


def _visible_analysis(s: Any, user: UserContext, analysis_id: int) -> tuple[ECGAnalysis, Study]:
    row = s.get(ECGAnalysis, analysis_id)
    study = s.get(Study, row.study_id) if row is not None else None
    if row is None or study is None or not user.can_see_site(study.site_id):
        raise HTTPException(404, "not found")
    return row, study


def _waveform(sop_uid: str) -> Ecg12:
    return read_ecg(archived_file(sop_uid, "waveform"))


def _tracing(sop_uid: str) -> dict[str, Any]:
    """The 12 leads in millivolts, resampled for display."""
    ecg = _waveform(sop_uid)
    n = ecg.leads.shape[1]
    duration = n / ecg.sampling_rate
    m = int(duration * DISPLAY_HZ)
    src_t = np.arange(n) / ecg.sampling_rate
    dst_t = np.arange(m) / DISPLAY_HZ
    leads = {name: np.round(np.interp(dst_t, src_t, ecg.leads[i]), 3).tolist()
             for i, name in enumerate(LEADS)}
    return {"sampling_rate": DISPLAY_HZ, "duration_s": round(duration, 3), "leads": leads,
            "derived_leads": list(ecg.derived_leads)}


def open_ecg(db: Database, user: UserContext, analysis_id: int,
             tracing: bool) -> dict[str, Any]:
    """One ECG: analysis, current (edited) measurements and statements, the tracing,
    and the same patient's previous ECG for comparison (audited as a view).

    The tracing is read from the archive after the transaction has ended."""
    now = datetime.now(UTC)
    with db.session() as s:
        row, study = _visible_analysis(s, user, analysis_id)
        site = s.get(Site, study.site_id)
        report_state = s.scalar(select(Report.state).where(Report.study_id == study.id))
        previous = None
        if study.patient_id:
            prev_q = visible(select(ECGAnalysis, Study)
                             .join(Study, Study.id == ECGAnalysis.study_id)
                             .where(Study.patient_id == study.patient_id,
                                    ECGAnalysis.id != row.id,
                                    ECGAnalysis.created_at <= row.created_at), user)
            found = s.execute(prev_q.order_by(ECGAnalysis.created_at.desc()).limit(1)).first()
            if found is not None:
                previous = {"id": found[0].id, "study_id": found[1].id,
                            "date": found[1].study_date,
                            "measurements": found[0].measurements,
                            "statements": found[0].statements}
        audit.append(s, actor=user.username, action="ecg.view", object_type="ecg_analysis",
                     object_id=str(row.id), detail={"study_id": study.id})
        try:
            service.check_inputs_open(s, study.id, "the ECG")
            locked = None
        except Conflict as e:
            locked = str(e)
        out = {**_summary(row, study, site.name if site else "", report_state, now),
               "sop_instance_uid": row.sop_instance_uid, "measurements": row.measurements,
               "statements_full": row.statements, "result": row.result,
               "previous": previous,
               # The ECG model's findings (ecg-rhythm), beside the rule statements.
               "ai_findings": studies.ai_findings(s, study.id),
               # Why its measurements, statements and findings are read-only now, or null.
               "locked": locked}
        sop = row.sop_instance_uid
    if tracing:
        out["tracing"] = _tracing(sop)
    return out


def edit_ecg(s: Session, user: UserContext, analysis_id: int,
             measurements: dict[str, Any] | None,
             statements: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The cardiologist's corrections; the automatic result is kept unchanged beside.
    ``statements`` is the full list after the edit."""
    row, study = _visible_analysis(s, user, analysis_id)
    service.check_inputs_open(s, study.id, "the ECG's measurements and statements")
    before = service.prefill_texts(s, study.id)
    changes: dict[str, Any] = {}
    if measurements:
        unknown = set(measurements) - set(row.measurements)
        if unknown:
            raise HTTPException(422, f"unknown measurements: {sorted(unknown)}")
        changes["measurements"] = {k: [row.measurements.get(k), v]
                                   for k, v in measurements.items()
                                   if row.measurements.get(k) != v}
        row.measurements = {**row.measurements, **measurements}
    if statements is not None:
        new = [st | {"edited": True} for st in statements]
        changes["statements"] = {"before": [x.get("code") for x in row.statements],
                                 "after": [x["code"] for x in new]}
        row.statements = new
        row.critical = any(x["critical"] for x in new)
    row.edited_by, row.edited_at = user.username, datetime.now(UTC)
    audit.append(s, actor=user.username, action="ecg.edit", object_type="ecg_analysis",
                 object_id=str(row.id), detail={"study_id": study.id, **changes})
    s.flush()
    service.refresh_prefill(s, study.id, before, user.username)
    return {"id": row.id, "measurements": row.measurements,
            "statements": row.statements, "critical": row.critical,
            "edited_by": row.edited_by}
