"""What a pathology case puts into its report: the synoptic template's prefilled fields.

Registered with :mod:`reports.registry` by :func:`pathology.plugin.register` for every
prefill kind that starts with ``pathology_``, with the synoptic template
(``report_templates/pathology-synoptic.toml``).  The report is filed under the case's
primary study; the prefill speaks for the whole case (every slide, whichever study of
the case it came in).  An AI heat map is a demonstration model's output, never a
diagnosis, so it is always marked UNVERIFIED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import AIResult, PathologyCase, PathologySlide, Study

#: The pathology report template(s), registered with reports.registry.register_templates.
TEMPLATES_DIR = Path(__file__).resolve().parent / "report_templates"
#: The synoptic template's id.
TEMPLATE_ID = "pathology-synoptic"
#: The prefill kinds the template uses (``pathology_specimen``, ``pathology_comments``).
PREFILL_KINDS = "pathology_*"
#: Heat-map cells at or above this score are counted as "flagged" in the summary.
HEATMAP_FLAG = 0.5
UNVERIFIED = "UNVERIFIED — demonstration weights"


def case_of_study(session: Session, study: Study) -> PathologyCase | None:
    """The case a study belongs to: as its primary study, else through a slide."""
    row = session.scalar(select(PathologyCase).where(PathologyCase.primary_study_id == study.id)
                         .order_by(PathologyCase.id).limit(1))
    if row is not None:
        return row
    return session.scalar(select(PathologyCase).join(
        PathologySlide, PathologySlide.case_id == PathologyCase.id)
        .where(PathologySlide.study_id == study.id).order_by(PathologyCase.id).limit(1))


def _slides(session: Session, case: PathologyCase) -> list[PathologySlide]:
    return list(session.scalars(select(PathologySlide).where(PathologySlide.case_id == case.id)
                                .order_by(PathologySlide.part, PathologySlide.block,
                                          PathologySlide.id)))


def specimen_text(session: Session, case: PathologyCase) -> str:
    """One line per slide: part, block, stain and specimen id, as the lab labelled them."""
    lines = []
    if case.organ:
        lines.append(f"Organ/site: {case.organ}")
    for s in _slides(session, case):
        bits = [f"Part {s.part}" if s.part else "", f"block {s.block}" if s.block else "",
                s.stain, f"specimen {s.specimen_id}" if s.specimen_id else ""]
        lines.append(", ".join(b for b in bits if b) or f"slide {s.id}")
    return "\n".join(lines)


def heatmap_summary(heatmap: dict[str, Any]) -> str:
    """Per label: the highest cell score and the share of cells at or above the flag."""
    labels = [str(x) for x in heatmap.get("labels") or []]
    values = np.asarray(heatmap.get("values") or [], dtype=float)
    if values.size == 0:
        return "empty heat map"
    if values.ndim == 2:
        per_label = [values]
    elif values.ndim == 3 and labels and values.shape[-1] == len(labels):
        per_label = [values[..., i] for i in range(len(labels))]
    elif values.ndim == 3:
        per_label = list(values)
    else:
        per_label = [values.reshape(-1)]
    labels = labels + [f"label {i + 1}" for i in range(len(labels), len(per_label))]
    parts = [f"{label}: max {float(v.max()):.2f}, "
             f"{100 * float((v >= HEATMAP_FLAG).mean()):.1f}% of cells >= {HEATMAP_FLAG:g}"
             for label, v in zip(labels, per_label, strict=False)]
    return "; ".join(parts)


def comments_text(session: Session, case: PathologyCase) -> str:
    """Quality-gate notes of failed slides, and every AI heat map, marked UNVERIFIED."""
    slides = _slides(session, case)
    lines = []
    for s in slides:
        if s.qc_grade == "fail" and s.qc_reasons:
            where = "/".join(x for x in (s.part, s.block, s.stain) if x) or f"slide {s.id}"
            lines.append(f"QC ({where}): " + "; ".join(s.qc_reasons))
    uids = [s.series_uid for s in slides]
    if uids:
        # JSON null and SQL NULL both mean "no heat map": filtered here, not in SQL.
        results = session.scalars(select(AIResult).where(AIResult.series_uid.in_(uids))
                                  .order_by(AIResult.id))
        by_uid = {s.series_uid: s for s in slides}
        for r in results:
            if not r.heatmap:
                continue
            slide = by_uid.get(r.series_uid)
            where = ("/".join(x for x in (slide.part, slide.block, slide.stain) if x)
                     if slide is not None else r.series_uid)
            lines.append(f"AI heat map {r.model_name} {r.model_version} ({where}), "
                         f"{UNVERIFIED}: {heatmap_summary(r.heatmap)}")
    return "\n".join(lines)


def pathology_prefill(session: Session, study: Study, kind: str) -> str:
    """The text of a ``pathology_*`` field for the case the study belongs to."""
    case = case_of_study(session, study)
    if case is None:
        return ""
    if kind == "pathology_specimen":
        return specimen_text(session, case)
    if kind == "pathology_comments":
        return comments_text(session, case)
    return ""
