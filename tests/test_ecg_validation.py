"""The ECG validation benchmark's quick run meets its accuracy targets (issue 10).

It measures accuracy on real records (MIT-BIH 100's annotated beats, the PTB record
s0010_re) and on constructed ECGs with known truth; see ``benchmarks/ecg_validation.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

DATA = REPO.parent / "shared" / "data" / "ecg"


def test_ecg_validation_quick_run_meets_the_targets(tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, "-m", "benchmarks.ecg_validation", "--quick", "--out",
                        str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "ecg_validation.json").read_text())
    assert data["quick"] is True

    peaks = data["mitbih_100_r_peaks"]
    assert peaks["reference_beats"] == 2273
    assert peaks["sensitivity"] >= 0.995 and peaks["ppv"] >= 0.995, peaks

    windows = data["mitbih_100_windows"]
    assert windows["windows"] >= 30
    assert windows["pr"]["sd_ms"] <= 10.0 and windows["qrs"]["sd_ms"] <= 10.0, windows
    assert windows["hr_abs_error_bpm_mean"] <= 1.0
    assert windows["statement_windows"]["first_degree_av_block"] == 0
    assert windows["statement_windows"]["atrial_fibrillation_suspected"] == 0

    ptb = data["ptb_s0010_re"]
    assert ptb["expected_found"] == {"rbbb": True, "inferior_q_waves": True,
                                     "qrs_adjusted_qt": True}, ptb["codes"]

    constructed = data["constructed"]
    per = constructed["per_statement"]
    assert {"long_qt", "normal_qt", "af", "pause", "bigeminy", "fast_regular", "sinus"} <= set(
        constructed["families"])
    assert per["long_qt"]["sensitivity"] >= 0.95, per["long_qt"]
    af = per["atrial_fibrillation_suspected"]
    assert af["sensitivity"] >= 0.90 and af["ppv"] >= 0.90, af
    assert per["pause"]["sensitivity"] == 1.0, per["pause"]
    assert constructed["n_false_critical"] == 0, constructed["false_critical"]
    assert constructed["fast_regular_called_af"] == 0

    assert data["speed"]["ratio"] >= 5.0, data["speed"]
    assert data["all_met"] is True, data["met"]
    assert "all targets met: True" in r.stdout
