"""The pathology benchmark (``benchmarks/pathology.py``): its viewer geometry (which
tiles a field of view and a pan step need), and one tiny end-to-end run against a real
Orthanc and a real ``rdc web``, so CI proves the benchmark still runs.  Nothing here
asserts a timing: the numbers belong to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

# The benchmarks are run from the repository root (``python -m benchmarks.pathology``),
# which pytest does not put on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.pathology import (
    SCREEN,
    Level,
    Pyramid,
    field_of_view,
    fit_level,
    pan_steps,
    random_tiles,
    tiles_in_view,
)


def _pyramid(width: int, height: int, tile: int, factor: int = 4) -> Pyramid:
    levels: list[Level] = []
    ds = 1
    while True:
        w, h = math.ceil(width / ds), math.ceil(height / ds)
        levels.append(Level(len(levels), w, h, float(ds), math.ceil(w / tile),
                            math.ceil(h / tile)))
        if max(w, h) <= tile:
            break
        ds *= factor
    return Pyramid(width, height, tile, tuple(levels))


def test_field_of_view_is_the_level_openseadragon_draws_at_fit() -> None:
    # 40960 x 30720 on 1920 x 1080: 28.4 slide pixels per screen pixel; OpenSeadragon
    # (minPixelRatio 0.5) draws the 16x level, 2560 x 1920, whole.
    pyr = _pyramid(40960, 30720, 256)
    lv = fit_level(pyr)
    assert lv.downsample == 16 and (lv.width, lv.height) == (2560, 1920)
    fov = field_of_view(pyr)
    assert len(fov) == 10 * 8 and {t[0] for t in fov} == {lv.level}
    assert len(field_of_view(_pyramid(40960, 30720, 512))) == 5 * 4
    # A slide smaller than the screen: full resolution.
    small = _pyramid(1000, 800, 256)
    assert fit_level(small) is small.levels[0]
    # A pyramid that stops before the fitting zoom: its coarsest level.
    short = Pyramid(40960, 30720, 256, _pyramid(40960, 30720, 256).levels[:2])
    assert fit_level(short) is short.levels[1]


def test_pan_step_brings_in_only_the_new_column() -> None:
    pyr = _pyramid(40960, 30720, 256)
    for step in pan_steps(pyr, 50, random.Random(3)):
        assert {t[0] for t in step} == {0}
        cols = {t[1] for t in step}
        rows = {t[2] for t in step}
        # 256 screen pixels to the right at full resolution: one or two new columns,
        # each as tall as the screen (5 or 6 rows of 256-pixel tiles).
        assert 1 <= len(cols) <= 2 and len(rows) in (5, 6), step
    lv = pyr.levels[0]
    assert tiles_in_view(lv, 256, 0, 0, *SCREEN) == [
        (0, c, r) for r in range(5) for c in range(8)]
    # Clipped at the slide's edge.
    assert tiles_in_view(lv, 256, lv.width - 10, lv.height - 10, *SCREEN) == [
        (0, lv.tiles_x - 1, lv.tiles_y - 1)]


def test_random_tiles_stay_inside_the_pyramid() -> None:
    pyr = _pyramid(9000, 7000, 512)
    tiles = random_tiles(pyr, 500, random.Random(0))
    assert {t[0] for t in tiles} == {lv.level for lv in pyr.levels}
    for level, col, row in tiles:
        lv = pyr.levels[level]
        assert 0 <= col < lv.tiles_x and 0 <= row < lv.tiles_y


@pytest.mark.timeout(600)
def test_tiny_benchmark_run_completes(tmp_path: Path) -> None:
    """Every scenario of the benchmark runs end to end on a small slide, and the JSON
    it writes holds every source, step and verdict (no timing is judged here)."""
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pathology", "--width", "3072", "--height", "2048",
         "--runs", "1", "--requests", "24", "--clients", "4", "--repeat", "2",
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=540,
        check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads((out / "pathology.json").read_text())
    results = data["results"]
    assert set(results["tiles"]) == {"256", "512"}
    for by in results["tiles"].values():
        assert set(by) == {"(a) OpenSlide read_region", "(b) Orthanc WSI direct",
                           "(c) web app proxy"}
        assert all(r["tiles_per_s"] > 0 and r["requests_per_run"] == 24
                   for r in by.values()), by
    for view in results["viewer"].values():
        assert view["fov_tiles"] >= 1
        for path in ("(b) Orthanc WSI direct", "(c) web app proxy"):
            assert view[path]["field_of_view"]["n"] == 2
            assert view[path]["pan_step"]["n"] >= 1
    assert results["case_open"]["slides"] == 2
    assert all(d["megapixels_per_s"] > 0 for d in results["dicomizer"].values())
    judged = {v["what"] for v in data["verdicts"]}
    assert any("(c)/(b)" in w for w in judged) and any("case open" in w for w in judged)
    assert "PASS" in done.stdout or "FAIL" in done.stdout
