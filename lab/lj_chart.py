"""Levey-Jennings charts: a control lot's measurements against its mean and ±1/2/3 SD,
with the Westgard rules each point broke, as data (the web app draws it) and as a PNG.

Why both from one place: the JSON the web app plots and the PNG a reviewer prints or
attaches must show the same points, limits and flags.  The flags are the ones stored on
each control result by ``lab.qc.evaluate_run``, not recomputed, so the chart shows what
the run was judged by.

Levey S, Jennings ER. The use of control charts in the clinical laboratory. Am J Clin
Pathol 1950;20:1059-66.
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound
from core.models.lab import LabControlLot, LabControlResult, LabRun

#: The colour of a rejected point (and only of rejected points): tests find it by value.
REJECT_COLOR = "#d62728"
REJECT_RGB = (0xD6, 0x27, 0x28)
WARNING_COLOR = "#ff9f1c"
POINT_COLOR = "#1f4e79"
DEFAULT_LIMIT = 60


def chart_data(session: Session, *, analyzer_id: str, test_code: str, level: int,
               lot: str | None = None, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """The last ``limit`` measurements of the (active, newest) control lot of one analyte
    and level, oldest first, with z, status and rules; the lot's mean and the ±1/2/3 SD
    lines.  NotFound when no such lot is registered."""
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit {limit}: must be 1-1000")
    q = select(LabControlLot).where(LabControlLot.analyzer_id == analyzer_id,
                                    LabControlLot.test_code == test_code,
                                    LabControlLot.level == level)
    if lot:
        q = q.where(LabControlLot.lot == lot)
    lots = list(session.scalars(q.order_by(LabControlLot.active.desc(),
                                           LabControlLot.id.desc())))
    if not lots:
        raise NotFound(f"no control lot for {test_code} level {level} on {analyzer_id}"
                       + (f" (lot {lot})" if lot else ""))
    chosen = lots[0]
    rows = session.execute(
        select(LabControlResult, LabRun.run_code)
        .join(LabRun, LabRun.id == LabControlResult.run_id)
        .where(LabControlResult.lot_id == chosen.id)
        .order_by(LabControlResult.measured_at.desc(), LabControlResult.id.desc())
        .limit(limit)).all()
    points = [{"id": cr.id, "run_id": cr.run_id, "run_code": code,
               "measured_at": cr.measured_at.isoformat(), "value": cr.value,
               "z": round((cr.value - chosen.mean) / chosen.sd, 3), "status": cr.status,
               "rules": list(cr.rules)} for cr, code in reversed(rows)]
    m, sd = chosen.mean, chosen.sd
    return {"analyzer": analyzer_id, "test": test_code, "level": level, "lot": chosen.lot,
            "lot_id": chosen.id, "mean": m, "sd": sd,
            "lines": {"mean": m, **{f"{sign}{k}sd": m + (k if sign == "+" else -k) * sd
                                    for k in (1, 2, 3) for sign in ("+", "-")}},
            "points": points}


def render_png(data: dict[str, Any], *, width_px: int = 1000, height_px: int = 420,
               dpi: int = 100) -> bytes:
    """The chart as PNG (``width_px`` x ``height_px``): values by run, mean and SD lines,
    rejected points as large red markers labelled with their rules, warnings in orange."""
    if not (200 <= width_px <= 4000 and 150 <= height_px <= 3000):
        raise InvalidInput(f"chart size {width_px}x{height_px}: 200-4000 x 150-3000 px")
    # The Agg canvas directly, not pyplot: no global figure state, safe in a web worker.
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    m, sd = float(data["mean"]), float(data["sd"])
    pts = data["points"]
    xs = list(range(1, len(pts) + 1))
    ys = [float(p["value"]) for p in pts]
    styles = {0: ("#2ca02c", "-"), 1: ("#9e9e9e", ":"), 2: ("#e6a700", "--"),
              3: ("#7b1fa2", "--")}
    for k in (0, 1, 2, 3):
        color, ls = styles[k]
        for sign in ((1,) if k == 0 else (1, -1)):
            y = m + sign * k * sd
            ax.axhline(y, color=color, linestyle=ls, linewidth=1)
            label = "mean" if k == 0 else f"{'+' if sign > 0 else '-'}{k}SD"
            ax.text(1.005, y, label, transform=ax.get_yaxis_transform(), fontsize=8,
                    va="center", color=color)
    if pts:
        ax.plot(xs, ys, color=POINT_COLOR, linewidth=1, marker="o", markersize=4)
    for x, y, p in zip(xs, ys, pts, strict=True):
        if p["status"] == "reject":
            ax.plot([x], [y], linestyle="none", marker="o", markersize=13,
                    color=REJECT_COLOR, markeredgecolor=REJECT_COLOR,
                    antialiased=False, zorder=5)
            ax.annotate(", ".join(r for r in p["rules"] if not r.startswith("1-2s"))
                        or "reject", (x, y), textcoords="offset points", xytext=(8, 8),
                        fontsize=8, color="#000000")
        elif p["status"] == "warning":
            ax.plot([x], [y], linestyle="none", marker="o", markersize=8,
                    color=WARNING_COLOR, zorder=4)
    lo = min([m - 3.6 * sd, *ys])
    hi = max([m + 3.6 * sd, *ys])
    pad = (hi - lo) * 0.05
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(0.5, max(len(pts), 1) + 0.5)
    ax.set_xlabel("run (oldest first)")
    ax.set_ylabel(str(data["test"]))
    ax.set_title(f"Levey-Jennings: {data['analyzer']} {data['test']} level "
                 f"{data['level']}, lot {data['lot']} (mean {m:g}, SD {sd:g})",
                 fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.93, top=0.9, bottom=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
