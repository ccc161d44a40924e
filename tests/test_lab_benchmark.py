"""The lab benchmark (``benchmarks/lab.py --quick``) run as a process, as from the README:
its printed tables have their lines, and the numbers are sane (rates are rates, the
batched engine is faster than one result per transaction and agrees with it, the
specimen-stability hold catches every tube past its window, the multirules find a shift
no later than 1-3s).  Timings are not asserted: they belong to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_quick_benchmark_prints_its_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.lab", "--quick", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for line in ("(1) autoverification", "batched engine (lab.autoverify)",
                 "naive, one result per transaction", "ratio batched/naive",
                 "(2) dataset", "error-free", "wbit", "hemolysis", "shift", "transcription",
                 "stability", "(2) wrong blood in tube, per specimen",
                 "multi-analyte rule (wbit)", "univariate delta, best analyte",
                 "(3) runs to detect a shift", "multirule (mean runs)", "1-3s (mean runs)"):
        assert line in out, f"{line!r} missing from:\n{out}"
    assert "same verdicts" in out
    ratio = re.search(r"ratio batched/naive\W+([\d.]+)x", out)
    assert ratio is not None and float(ratio.group(1)) > 1.0
    assert re.search(r"error-free .*\d+\.\d %.*> 90 % autoverified: (PASS|FAIL)", out)

    res = json.loads((tmp_path / "lab-quick.json").read_text())
    tp = res["throughput"]
    assert tp["results"] == 400 and tp["same_verdicts"] is True
    assert tp["batched_per_s"] > tp["naive_per_s"] > 0
    det = res["detection"]
    assert 0.5 < det["error_free"]["autoverified_rate"] <= 1.0
    for kind in ("wbit", "hemolysis", "shift", "transcription", "stability"):
        row = det[kind]
        assert row["wrong"] > 0, kind
        assert 0.0 <= row["sensitivity"] <= 1.0 and 0.0 < row["ppv"] <= 1.0, (kind, row)
        assert row["wrong_held"] <= row["held"] <= row["results"]
    # A tube past its window is held by the specimen hold, whatever its values.
    assert det["stability"]["sensitivity"] == 1.0
    assert det["hemolysis"]["sensitivity"] >= 0.5
    w = det["wbit_compare"]
    assert w["swapped_specimens"] > 0 and 0 <= w["multi_fp"] <= 0.3
    assert 0.0 <= w["univariate_best"]["sensitivity"] <= 1.0
    wg = res["westgard"]
    for name in ("multirule", "1-3s"):
        runs = [wg[name][f"{k}sd"]["mean_runs"] for k in (1, 2, 3)]
        assert runs[0] >= runs[1] >= runs[2] >= 1.0, (name, runs)
        assert 0.0 <= wg[name]["false_rejection_per_run"] < 0.1
    assert wg["multirule"]["1sd"]["mean_runs"] < wg["1-3s"]["1sd"]["mean_runs"]
    assert wg["multirule"]["3sd"]["mean_runs"] < 1.5
