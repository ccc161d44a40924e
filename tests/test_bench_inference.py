"""The inference benchmark runs end to end and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_inference_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--quick", "--device",
                        "cpu", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "inference.json").read_text())
    engines = {(row["model"], row["section"]) for row in data["rows"]}
    assert {("densenet121", "a"), ("densenet121", "b"), ("densenet121", "c"),
            ("unet3d", "a"), ("unet3d", "b"), ("unet3d", "c")} <= engines, engines
    assert all(row["items_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
               for row in data["rows"])
    ratios = {(r["name"], r["model"], r["config"]): r for r in data["ratios"]}
    ct_config = "x".join(map(str, data["parameters"]["ct_volume"]))
    for key in [("(c)/(b)", "densenet121", "224px b8"), ("(b)/(a)", "densenet121", "224px b8"),
                ("(c)/(b)", "unet3d", ct_config)]:
        assert isinstance(ratios[key]["value"], float) and ratios[key]["value"] > 0, ratios
        assert ratios[key]["pass"] == (ratios[key]["value"] >= ratios[key]["target"])
    # The full pipeline really ran through the queue: every item has its SR in Orthanc.
    assert data["pipeline"]["srs_in_orthanc"] == data["pipeline"]["items"] > 0
    # Time to a finding: radiographs alone and CT studies alone, each timed.
    pipeline = data["pipeline"]
    assert len(pipeline["alone_latency_ms"]) == 3 and pipeline["alone_latency_median_ms"] > 0
    assert len(pipeline["ct_latency_ms"]) == 2 and pipeline["ct_latency_median_ms"] > 0
    assert pipeline["ct_series"]["network_input"] == data["parameters"]["ct_volume"]
    assert "time to a finding, CT alone" in r.stdout
    # CPU per item, from /proc: the pipeline's worker and Orthanc, and ORT in (b).
    assert pipeline["cpu_ms_per_item"]["worker"] > 0
    assert pipeline["cpu_ms_per_item"]["orthanc"] > 0
    b_row = next(row for row in data["rows"]
                 if (row["model"], row["section"], row["config"]) == ("densenet121", "b",
                                                                      "224px b8"))
    assert b_row["cpu_ms_per_item"] > 0
    assert "can reach at most" in r.stdout
    assert (out / "inference.png").stat().st_size > 1000
    assert "(b)/(a)" in r.stdout and "(c)/(b)" in r.stdout
