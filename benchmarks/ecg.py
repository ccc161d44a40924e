"""12-lead ECG analysis throughput against the baseline a user would write.

(a) the baseline: ``neurokit2.ecg_process`` on each of the 12 leads (clean, peaks,
    quality, DWT delineation per lead), then the global intervals a user would take from
    it: median PR/QRS/QT over beats, median over leads, HR from R peaks, QTc;
(b) the center's :func:`ecg.analyze.analyze`: quality checks, one RR/median-beat pass
    over all 12 leads with numpy, one neurokit2 delineation of the median beat, axes,
    ST levels and the interpretation rules.

Both run in the same process on the same simulated 10-s, 500 Hz ECGs
(``nk.ecg_simulate(method="multileads")`` at rates spread over 40-150 bpm, leads I, II and
V1-V6 recorded, the other four derived as a cart does). Printed: ECGs/s for each, the
ratio (b)/(a), and which measurements each *produced* (share of ECGs with a value). That
share is completeness, not accuracy: a wrong QT counts as produced. Accuracy is measured
by ``benchmarks/ecg_validation.py``, which reuses this module's speed comparison.

    .venv/bin/python -m benchmarks.ecg [--n 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import neurokit2 as nk
import numpy as np
from rich.console import Console
from rich.table import Table

from ecg.analyze import analyze
from ecg.signal import LEADS, Ecg12, assemble

console = Console()
FS = 500.0

#: Measurements compared; ST and axes are per-ECG (all 12 leads / frontal plane).
FIELDS = ("heart_rate", "rr", "pr", "qrs", "qt", "qtc_bazett", "qtc_fridericia",
          "p_axis", "qrs_axis", "t_axis", "st_j60_12_leads", "lead_quality", "statements")


#: The leads an electrocardiograph records; it derives III, aVR, aVL and aVF from I and II
#: (neurokit2's own 12 columns do not obey Einthoven's law, which real ECGs do).
RECORDED = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def simulate(n: int, seed: int) -> list[Ecg12]:
    rng = np.random.default_rng(seed)
    ecgs = []
    for i in range(n):
        hr = float(rng.uniform(40, 150))
        df = nk.ecg_simulate(duration=10, sampling_rate=int(FS), heart_rate=hr, noise=0.01,
                             method="multileads", random_state=seed + i)
        ecgs.append(assemble({c: df[c].to_numpy() for c in RECORDED}, FS))
    return ecgs


def _median_interval(info: dict[str, Any], start: str, stop: str) -> float:
    a = np.asarray(info[start], dtype=float)
    b = np.asarray(info[stop], dtype=float)
    if a.size == 0 or a.size != b.size:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.nanmedian(b - a) / FS * 1000.0)


def baseline(ecg: Ecg12) -> dict[str, bool]:
    """What a user gets from ``nk.ecg_process`` per lead plus a few lines of numpy."""
    per_lead: dict[str, list[float]] = {"hr": [], "pr": [], "qrs": [], "qt": []}
    quality = []
    for lead in ecg.leads.astype(np.float64):
        try:
            signals, info = nk.ecg_process(lead, sampling_rate=FS)
        except (ValueError, IndexError, ZeroDivisionError):
            continue  # neurokit2 gives up on some leads (too few or odd R peaks)
        rpeaks = np.asarray(info["ECG_R_Peaks"])
        per_lead["hr"].append(60000.0 / float(np.mean(np.diff(rpeaks)) / FS * 1000.0)
                              if rpeaks.size > 1 else math.nan)
        per_lead["pr"].append(_median_interval(info, "ECG_P_Onsets", "ECG_R_Onsets"))
        per_lead["qrs"].append(_median_interval(info, "ECG_R_Onsets", "ECG_R_Offsets"))
        per_lead["qt"].append(_median_interval(info, "ECG_R_Onsets", "ECG_T_Offsets"))
        quality.append(float(signals["ECG_Quality"].mean()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = {k: float(np.nanmedian(v)) for k, v in per_lead.items()}
    ok = {k: math.isfinite(v) for k, v in value.items()}
    qtc_ok = ok["qt"] and ok["hr"]
    return {"heart_rate": ok["hr"], "rr": ok["hr"], "pr": ok["pr"], "qrs": ok["qrs"],
            "qt": ok["qt"], "qtc_bazett": qtc_ok, "qtc_fridericia": qtc_ok,
            "p_axis": False, "qrs_axis": False, "t_axis": False, "st_j60_12_leads": False,
            "lead_quality": len(quality) == 12, "statements": False}



def center(ecg: Ecg12) -> dict[str, bool]:
    result = analyze(ecg)
    m = result.measurements
    if m is None:
        return {f: f == "lead_quality" for f in FIELDS}
    return {"heart_rate": True, "rr": True, "pr": m.pr_ms is not None,
            "qrs": m.qrs_ms is not None, "qt": m.qt_ms is not None,
            "qtc_bazett": m.qtc_bazett_ms is not None,
            "qtc_fridericia": m.qtc_fridericia_ms is not None,
            "p_axis": m.p_axis_deg is not None, "qrs_axis": m.qrs_axis_deg is not None,
            "t_axis": m.t_axis_deg is not None,
            "st_j60_12_leads": set(m.st_j60_mv) == set(LEADS),
            "lead_quality": len(result.quality.leads) == 12,
            "statements": bool(result.statements)}


def run(fn: Any, ecgs: list[Ecg12]) -> tuple[float, list[dict[str, bool]]]:
    fn(ecgs[0])  # warm-up: imports, filter design caches
    start = time.perf_counter()
    produced = [fn(e) for e in ecgs]
    return len(ecgs) / (time.perf_counter() - start), produced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="number of simulated ECGs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # neurokit2 warns per lead about short signals

    console.print(f"simulating {args.n} 12-lead ECGs (10 s, {FS:g} Hz) ...")
    ecgs = simulate(args.n, args.seed)
    base_rate, base_prod = run(baseline, ecgs)
    ours_rate, ours_prod = run(center, ecgs)
    ratio = ours_rate / base_rate

    def share(produced: list[dict[str, bool]]) -> dict[str, float]:
        return {f: sum(p[f] for p in produced) / len(produced) for f in FIELDS}

    base_share, ours_share = share(base_prod), share(ours_prod)
    table = Table(title="ECG analysis: share of ECGs with a value for each measurement "
                        "(completeness, not accuracy)")
    table.add_column("measurement")
    table.add_column("baseline nk.ecg_process x12", justify="right")
    table.add_column("center analyze()", justify="right")
    for f in FIELDS:
        table.add_row(f, f"{base_share[f]:.0%}", f"{ours_share[f]:.0%}")
    console.print(table)
    console.print(f"baseline: {base_rate:.2f} ECGs/s   center: {ours_rate:.2f} ECGs/s   "
                  f"ratio: {ratio:.1f}x")
    at_least = all(ours_share[f] >= base_share[f] for f in FIELDS)
    console.print(f"measurements at least as complete as the baseline: {at_least}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ecg.json").write_text(json.dumps({
        "n_ecgs": args.n, "sampling_rate_hz": FS, "duration_s": 10,
        "baseline_ecgs_per_s": round(base_rate, 3), "center_ecgs_per_s": round(ours_rate, 3),
        "ratio": round(ratio, 2), "completeness_baseline": base_share,
        "completeness_center": ours_share, "at_least_as_complete": at_least,
    }, indent=2) + "\n")
    console.print(f"results in {args.out / 'ecg.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
