"""The Levey-Jennings chart from a real database: its data (points oldest first, z, the
stored rules, mean and ±1/2/3 SD lines) and its PNG, decoded: the asked size, and the
rejected point drawn in the reject colour where the point is (and that colour absent
from a chart with no rejected point)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from conftest import Center
from core.errors import InvalidInput, NotFound
from core.models.lab import LabControlResult, LabRun
from lab import qc
from lab.lj_chart import REJECT_RGB, chart_data, render_png

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _fill(center: Center, zs: list[float]) -> None:
    with center.db.session() as s:
        lot = qc.add_lot(s, analyzer_id="CHEM1", lot="Q7", test_code="GLU", level=2,
                         mean=16.0, sd=0.4, actor="test")
        for i, z in enumerate(zs):
            run = LabRun(analyzer_id="CHEM1", run_code=f"R{i}", started_at=T0 + timedelta(hours=i))
            s.add(run)
            s.flush()
            s.add(LabControlResult(lot_id=lot.id, run_id=run.id, value=16.0 + z * 0.4, z=z,
                                   measured_at=T0 + timedelta(hours=i)))
            s.flush()
            qc.evaluate_run(s, run)


def _reject_pixels(png: bytes) -> tuple[tuple[int, int], np.ndarray]:
    img = Image.open(io.BytesIO(png))
    img.load()
    rgb = np.asarray(img.convert("RGB"))
    mask = np.all(rgb == np.array(REJECT_RGB, dtype=np.uint8), axis=2)
    return img.size, mask


def test_chart_data_and_png(center: Center) -> None:
    zs = [0.1, -0.4, 0.6, -0.2, 0.3, 3.4, 0.2, -0.5]
    _fill(center, zs)
    with center.db.session() as s:
        data = chart_data(s, analyzer_id="CHEM1", test_code="GLU", level=2)
        with pytest.raises(NotFound, match="no control lot for GLU level 1"):
            chart_data(s, analyzer_id="CHEM1", test_code="GLU", level=1)
        with pytest.raises(InvalidInput):
            chart_data(s, analyzer_id="CHEM1", test_code="GLU", level=2, limit=0)
        last3 = chart_data(s, analyzer_id="CHEM1", test_code="GLU", level=2, limit=3)
    assert [p["run_code"] for p in last3["points"]] == ["R5", "R6", "R7"]
    assert [p["z"] for p in data["points"]] == pytest.approx(zs)
    assert [p["status"] for p in data["points"]] == ["accept"] * 5 + ["reject"] + ["accept"] * 2
    assert data["points"][5]["rules"] == ["1-2s", "1-3s"]
    assert data["lines"]["mean"] == 16.0
    assert data["lines"]["+3sd"] == pytest.approx(17.2)
    assert data["lines"]["-2sd"] == pytest.approx(15.2)
    assert data["lot"] == "Q7" and data["mean"] == 16.0 and data["sd"] == 0.4

    png = render_png(data, width_px=900, height_px=400)
    size, mask = _reject_pixels(png)
    assert size == (900, 400)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 50  # a 13-point disc, unblended
    # Where the 6th of 8 points sits: the x axis spans 0.5..8.5 between the margins
    # (8 % and 93 % of the width); the marker is at x = 6, above the mean (upper half).
    left, right = 0.08 * 900, 0.93 * 900
    expected_x = left + (6 - 0.5) / 8 * (right - left)
    assert abs(float(np.median(xs)) - expected_x) < 12
    assert float(np.median(ys)) < 400 / 2

    # The same chart without the rejected point: no pixel of the reject colour.
    calm = dict(data, points=[dict(p, status="accept") for p in data["points"]])
    _, calm_mask = _reject_pixels(render_png(calm, width_px=900, height_px=400))
    assert not calm_mask.any()
    with pytest.raises(InvalidInput):
        render_png(data, width_px=10, height_px=10)
