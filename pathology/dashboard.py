"""The pathology dashboard: frozen-section step times per site, and concordance.

Frozen-section turnaround is a promise to the operating theatre, so the dashboard
shows each step of the clock (received → QC → first tile viewed → call → signed) as
the median and the 90th percentile per site: the median says how it usually goes, the
90th percentile how bad the bad days are.  ``n`` is given per step because a step is
counted only for cases that reached both of its ends.

The concordance table counts graded second opinions per pathologist pair (who asked,
who answered) and per organ: where first readers and consultants disagree.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import PathologyCase, PathologyConsult, PathologyEvent, User
from core.timeutil import as_utc
from pathology.consults import CONCORDANCE
from pathology.frozen import TIMELINE_STEPS

#: The dashboard's steps: name -> (from step, to step).
STEPS: dict[str, tuple[str, str]] = {
    "received_to_qc": ("received", "qc"),
    "qc_to_first_tile": ("qc", "first_tile"),
    "first_tile_to_call": ("first_tile", "call"),
    "call_to_signed": ("call", "signed"),
    "received_to_signed": ("received", "signed"),
}


def _stats(durations: list[float]) -> dict[str, Any]:
    if not durations:
        return {"n": 0, "p50_s": None, "p90_s": None}
    values = np.asarray(durations, dtype=float)
    return {"n": len(durations),
            "p50_s": round(float(np.percentile(values, 50, method="linear")), 3),
            "p90_s": round(float(np.percentile(values, 90, method="linear")), 3)}


def frozen_step_stats(session: Session,
                      sites: set[str] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """{site_id: {step: {"n", "p50_s", "p90_s"}}} over frozen cases of ``sites``
    (None: every site).  A step's duration runs from the first time its start step
    happened to the first time its end step happened; negative spans (clock skew between
    a county lab and the center) are left out rather than pulling the median down."""
    query = select(PathologyCase.id, PathologyCase.site_id).where(
        PathologyCase.urgency == "frozen")
    if sites is not None:
        query = query.where(PathologyCase.site_id.in_(sorted(sites)))
    site_of = {case_id: site_id for case_id, site_id in session.execute(query)}
    firsts: dict[int, dict[str, datetime]] = defaultdict(dict)
    if site_of:
        for case_id, step, at in session.execute(
                select(PathologyEvent.case_id, PathologyEvent.step, PathologyEvent.at)
                .where(PathologyEvent.case_id.in_(sorted(site_of)),
                       PathologyEvent.step.in_(TIMELINE_STEPS))
                .order_by(PathologyEvent.at, PathologyEvent.id)):
            firsts[case_id].setdefault(step, as_utc(at))
    durations: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: {name: [] for name in STEPS})
    for case_id, site_id in site_of.items():
        per_site = durations[site_id]
        times = firsts.get(case_id, {})
        for name, (start, end) in STEPS.items():
            if start in times and end in times:
                span = (times[end] - times[start]).total_seconds()
                if span >= 0:
                    per_site[name].append(span)
    return {site_id: {name: _stats(values) for name, values in steps.items()}
            for site_id, steps in sorted(durations.items())}


def _counts() -> dict[str, int]:
    return {**{c: 0 for c in CONCORDANCE}, "n": 0}


def concordance_table(session: Session, sites: set[str] | None) -> dict[str, list[dict[str, Any]]]:
    """Graded consults counted per (requester, consultant) pair and per organ, over the
    cases of ``sites`` (None: every site).  Names are display names; an organ left empty
    at intake is counted as "unspecified"."""
    query = (select(PathologyConsult.requested_by, PathologyConsult.consultant_id,
                    PathologyConsult.concordance, PathologyCase.organ)
             .join(PathologyCase, PathologyCase.id == PathologyConsult.case_id)
             .where(PathologyConsult.concordance.is_not(None)))
    if sites is not None:
        query = query.where(PathologyCase.site_id.in_(sorted(sites)))
    rows = list(session.execute(query))
    user_ids = {r[0] for r in rows} | {r[1] for r in rows}
    names = ({u.id: u.display_name for u in
              session.scalars(select(User).where(User.id.in_(sorted(user_ids))))}
             if user_ids else {})
    pairs: dict[tuple[str, str], dict[str, int]] = defaultdict(_counts)
    organs: dict[str, dict[str, int]] = defaultdict(_counts)
    for requested_by, consultant_id, concordance, organ in rows:
        if concordance not in CONCORDANCE:
            continue
        for bucket in (pairs[(names.get(requested_by, str(requested_by)),
                              names.get(consultant_id, str(consultant_id)))],
                       organs[organ or "unspecified"]):
            bucket[concordance] += 1
            bucket["n"] += 1
    return {
        "pairs": [{"requester": req, "consultant": con, **counts}
                  for (req, con), counts in sorted(pairs.items())],
        "organs": [{"organ": organ, **counts} for organ, counts in sorted(organs.items())],
    }
