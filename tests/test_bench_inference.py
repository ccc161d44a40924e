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
    engines = {(row["model"], row["engine"]) for row in data["rows"]}
    assert {("densenet121", "a torch"), ("densenet121", "b onnxruntime"),
            ("densenet121", "c pipeline"), ("unet3d", "a torch"),
            ("unet3d", "b onnxruntime")} <= engines, engines
    assert all(row["items_per_s"] > 0 and row["p95_ms"] >= row["p50_ms"] > 0
               for row in data["rows"])
    ratios = data["ratios"]
    assert isinstance(ratios["(c)/(b) densenet121 224px b8"], float)
    assert isinstance(ratios["(b)/(a) densenet121 224px b8"], float)
    assert (out / "inference.png").stat().st_size > 1000
    assert "(b)/(a)" in r.stdout and "(c)/(b)" in r.stdout
