"""Turnaround times per site and modality, from the timestamps the center records.

Stages: received → complete → AI done → opened → signed → delivered.  Each
interval's percentiles are computed over the studies that reached both ends
within the window; a stage a study has not reached yet is simply left out.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.models import AIResult, Delivery, Report, ReportVersion, Study
from viewer.auth import UserContext
from viewer.worklist import visible

STAGES = ("received", "complete", "ai_done", "opened", "signed", "delivered")
#: The turnaround chart is never lower than this (inches, at 90 dpi: 306 px).
CHART_MIN_HEIGHT_IN = 3.4


def turnaround(session: Session, user: UserContext, days: int = 30) -> dict[str, Any]:
    """Percentiles (minutes) of each stage interval, per (site, modality)."""
    since = datetime.now(UTC) - timedelta(days=days)
    ai_done = (select(AIResult.study_id, func.max(AIResult.created_at).label("t"))
               .group_by(AIResult.study_id).subquery())
    signed = (select(Report.study_id, func.min(ReportVersion.signed_at).label("t"))
              .join(ReportVersion, ReportVersion.report_id == Report.id)
              .where(ReportVersion.signed_at.is_not(None)).group_by(Report.study_id).subquery())
    delivered = (select(Report.study_id, func.min(Delivery.sent_at).label("t"))
                 .join(ReportVersion, ReportVersion.report_id == Report.id)
                 .join(Delivery, Delivery.report_version_id == ReportVersion.id)
                 .where(Delivery.sent_at.is_not(None)).group_by(Report.study_id).subquery())
    q = visible(select(Study, ai_done.c.t, signed.c.t, delivered.c.t)
                .outerjoin(ai_done, ai_done.c.study_id == Study.id)
                .outerjoin(signed, signed.c.study_id == Study.id)
                .outerjoin(delivered, delivered.c.study_id == Study.id)
                .where(Study.first_received_at >= since), user)
    samples: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for study, t_ai, t_signed, t_delivered in session.execute(q):
        times: dict[str, datetime | None] = dict(zip(
            STAGES, (study.first_received_at, study.completed_at, t_ai, study.first_opened_at,
                     t_signed, t_delivered), strict=True))
        key = (study.site_id, "/".join(study.modalities) or "?")
        for a, b in pairwise(STAGES):
            start, end = times[a], times[b]
            if a == "ai_done" and start is None:
                start = times["complete"]  # no AI for this study: opened counts from complete
            if start is not None and end is not None:
                samples[key][f"{a}->{b}"].append((end - start).total_seconds() / 60)
        if times["complete"] and times["signed"]:
            samples[key]["complete->signed"].append(
                (times["signed"] - times["complete"]).total_seconds() / 60)
    rows = []
    for (site, modality), intervals in sorted(samples.items()):
        for name, values in sorted(intervals.items()):
            arr = np.asarray(values)
            rows.append({"site_id": site, "modality": modality, "interval": name,
                         "count": int(arr.size),
                         "p50_min": round(float(np.percentile(arr, 50)), 2),
                         "p90_min": round(float(np.percentile(arr, 90)), 2),
                         "max_min": round(float(arr.max()), 2)})
    return {"days": days, "stages": list(STAGES), "rows": rows}


def chart_png(data: dict[str, Any]) -> bytes:
    """Median and 90th percentile of complete → signed per site and modality."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["interval"] == "complete->signed"]
    # Title, axis label and legend need room of their own: one row still gets a chart
    # of about 300 px (at 90 dpi), not a sliver.
    fig, ax = plt.subplots(figsize=(7, max(CHART_MIN_HEIGHT_IN, 1.4 + 0.45 * len(rows))))
    labels = [f"{r['site_id']} {r['modality']}" for r in rows]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["p50_min"] for r in rows], height=0.4, label="median")
    ax.barh(y + 0.2, [r["p90_min"] for r in rows], height=0.4, label="90th percentile")
    ax.set_yticks(y, labels)
    # First row on top; a few rows keep slim bars rather than filling the chart.
    ax.set_ylim(max(len(rows), 3) - 0.4, -0.6)
    ax.set_xlabel("minutes from complete to signed")
    ax.set_title(f"Turnaround, last {data['days']} days")
    if rows:
        ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
