"""The lab center: autoverification throughput, what the rules catch, and how fast the
Westgard rules find an analyzer shift.

On a synthetic but realistic dataset (``devkit.lab_dataset``: patients with previous
results, serum and EDTA tubes in analyzer runs with two control levels, errors injected
with their truth), stored in a real SQLite database (migrated, as the center's):

(1) autoverification throughput, in results per second: the center's batched engine
    (``lab.autoverify.verify_run``: one query for a run's context and history, one
    transaction and one audit record per run) against a naive implementation of the
    same rules written here: one result at a time, in its own transaction, each looking
    up its specimen, order, the specimen's other results and the patient's previous
    results, and writing its own audit record.  Both judge with the same rule file
    (``lab.rules_engine``), so their verdicts must agree (checked).  Medians of
    ``--runs`` runs, and the ratio.
(2) the autoverification rate on error-free data (target > 90 %, CLSI AUTO15) and, per
    injected error kind (each in its own dataset: error-free background + that kind),
    the sensitivity (wrong results held) and PPV (held results that were wrong) of QC +
    autoverification run as the ``lab_run`` job does, run by run.  Wrong blood in tube
    per specimen: the multi-analyte rule against a univariate delta check at 5 % false
    positives (Sheiner LB et al., Clin Chem 1979;25:2034: about 50 %).
(3) the average number of runs until the Westgard multirules detect a shift of 1, 2 and
    3 SD (both control levels), against a single 1-3s rule, by simulation; with each
    one's false rejections per run when nothing is wrong.

    .venv/bin/python -m benchmarks.lab [--quick] [--patients 500] [--kind-patients 1000]
        [--runs 3] [--trials 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select, update

from benchmarks.harness import median, write_json
from core import audit
from core.db import Database, get_database
from core.models.lab import LabOrder, LabResult, LabRun, LabSpecimen
from devkit.lab_dataset import (
    CV_I,
    ERROR_KINDS,
    Dataset,
    NewResult,
    generate,
    load,
    summary,
)
from lab import autoverify, qc, rules_engine
from lab.catalog import Catalog, age_years, get_catalog
from lab.rules_engine import Previous, ResultInput, RuleSet
from lab.states import RELEASED_RESULT_STATES
from lab.validate_rules import active_rule_set
from lab.westgard import ALL_RULES, ControlPoint, evaluate, runs_to_detect

console = Console() if sys.stdout.isatty() else Console(width=160)

#: Error rates of each kind's dataset (share of patients; of data runs for a shift).
KIND_RATES: dict[str, float] = {"wbit": 0.10, "hemolysis": 0.05, "shift": 0.20,
                                "transcription": 0.05, "stability": 0.05}
TARGET_AUTOVERIFIED = 0.90
#: Sheiner 1979: a univariate delta check finds about half at 5 % false positives.
UNIVARIATE_FP = 0.05
SHIFTS_SD = (1.0, 2.0, 3.0)
MAX_RUNS = 100


def _db(folder: Path, name: str) -> Database:
    return get_database(f"sqlite:///{folder / name}")


def _fill(db: Database, ds: Dataset) -> list[int]:
    with db.session() as s:
        loaded = load(s, ds)
    return loaded.data_runs


def _qc_all(db: Database) -> None:
    """QC of every run (history, then data) in order, as each run's job does first."""
    with db.session() as s:
        runs = list(s.scalars(select(LabRun).order_by(LabRun.started_at, LabRun.id)))
        for run in runs:
            qc.evaluate_run(s, run)


def _reset(db: Database) -> None:
    """Every new result back to pending, verdicts cleared."""
    with db.session() as s:
        s.execute(update(LabResult).where(LabResult.run_id.is_not(None)).values(
            state="pending", rules_fired=[], rule_set="", abnormal_flag="", critical=False,
            ref_low=None, ref_high=None))


def _states(db: Database) -> dict[int, str]:
    with db.session() as s:
        return {rid: st for rid, st in s.execute(
            select(LabResult.id, LabResult.state).where(LabResult.run_id.is_not(None)))}


# (1) throughput --------------------------------------------------------------------------------
def batched(db: Database, run_ids: Sequence[int]) -> int:
    """The center's engine, one transaction per run (as the lab_run job)."""
    n = 0
    for rid in run_ids:
        with db.session() as s:
            n += len(autoverify.verify_run(s, rid))
    return n


def naive(db: Database, rule_set: RuleSet, catalog: Catalog) -> int:
    """The same rules, one result at a time, each in its own transaction."""
    with db.session() as s:
        ids = list(s.scalars(select(LabResult.id).where(LabResult.state == "pending")
                             .order_by(LabResult.id)))
    released = [str(x) for x in RELEASED_RESULT_STATES]
    for rid in ids:
        with db.session() as s:
            r = s.get(LabResult, rid)
            assert r is not None
            spec = s.get(LabSpecimen, r.specimen_id)
            order = s.get(LabOrder, r.order_id)
            assert spec is not None and order is not None
            siblings = list(s.scalars(select(LabResult).where(
                LabResult.specimen_id == spec.id, LabResult.id != r.id,
                LabResult.value.is_not(None), LabResult.state != "rejected")))
            prev = tuple(Previous(code, float(v), at) for code, v, at in s.execute(
                select(LabResult.test_code, LabResult.value, LabResult.measured_at).where(
                    LabResult.site_id == r.site_id, LabResult.patient_id == r.patient_id,
                    LabResult.specimen_id != spec.id, LabResult.state.in_(released),
                    LabResult.value.is_not(None), LabResult.measured_at.is_not(None)))
                if v is not None and at is not None)
            hil = {k: float(v) for k, v in (spec.hil or {}).items()}

            def item(x: LabResult, judge: bool, hil: dict[str, float] = hil,
                     spec: LabSpecimen = spec, order: LabOrder = order,
                     prev: tuple[Previous, ...] = prev) -> ResultInput:
                at = x.measured_at or datetime.now(UTC)
                return ResultInput(
                    key=x.id, specimen=spec.id, test_code=x.test_code, value=x.value,
                    value_text=x.value_text, units=x.units, flags=tuple(x.instrument_flags),
                    hil=hil, sex=order.sex, age_y=age_years(order.birth_date, at),
                    measured_at=x.measured_at, specimen_hold=spec.hold_reason,
                    qc_hold=x.qc_hold, previous=prev, judge=judge)

            v = rules_engine.evaluate(rule_set, catalog,
                                      [item(r, True), *(item(x, False) for x in siblings)])[0]
            r.state = v.state
            r.ref_low, r.ref_high = v.ref_low, v.ref_high
            r.abnormal_flag, r.critical = v.abnormal_flag, v.critical
            r.rule_set = rule_set.version
            r.rules_fired = [h.to_dict() for h in v.hits]
            audit.append(s, actor="naive", action="lab.autoverify", object_type="lab_result",
                         object_id=str(r.id), detail={"state": v.state})
    return len(ids)


def throughput(folder: Path, patients: int, runs: int, seed: int) -> dict[str, Any]:
    ds = generate(seed=seed, patients=patients)
    db = _db(folder, "throughput.sqlite3")
    run_ids = _fill(db, ds)
    _qc_all(db)
    catalog = get_catalog()
    with db.session() as s:  # the rule set the engine uses (the enabled or shipped one)
        rule_set = active_rule_set(s)
    a_rates, b_rates = [], []
    same = True
    for _ in range(runs):
        _reset(db)
        t0 = time.perf_counter()
        n = batched(db, run_ids)
        a_rates.append(n / (time.perf_counter() - t0))
        mine = _states(db)
        _reset(db)
        t0 = time.perf_counter()
        n = naive(db, rule_set, catalog)
        b_rates.append(n / (time.perf_counter() - t0))
        same = same and _states(db) == mine
    db.dispose()
    return {"results": len(ds.results), "runs": runs, "batched_per_s": median(a_rates),
            "naive_per_s": median(b_rates), "ratio": median(a_rates) / median(b_rates),
            "batched_all": a_rates, "naive_all": b_rates, "same_verdicts": same}


# (2) detection ---------------------------------------------------------------------------------
Verdicts = dict[int, tuple[str, set[str]]]


def judge_dataset(folder: Path, name: str, ds: Dataset,
                  ) -> tuple[Verdicts, dict[int, NewResult]]:
    """Store, then QC + autoverify run by run (as the lab_run job): result id -> (state,
    the rules that held it), and result id -> its truth."""
    db = _db(folder, f"{name}.sqlite3")
    with db.session() as s:
        loaded = load(s, ds)
    with db.session() as s:
        for run in s.scalars(select(LabRun).where(LabRun.run_code.contains("-H"))
                             .order_by(LabRun.started_at, LabRun.id)):
            qc.evaluate_run(s, run)
    for rid in loaded.data_runs:
        with db.session() as s:
            data_run = s.get(LabRun, rid)
            assert data_run is not None
            qc.evaluate_run(s, data_run)
            autoverify.verify_run(s, rid)
    with db.session() as s:
        out = {rid: (st, {h["rule"] for h in fired if h.get("severity") == "hold"})
               for rid, st, fired in s.execute(
                   select(LabResult.id, LabResult.state, LabResult.rules_fired)
                   .where(LabResult.id.in_(list(loaded.results))))}
    db.dispose()
    missing = set(loaded.results) - set(out)
    if missing:
        raise RuntimeError(f"results not judged: {sorted(missing)[:5]}")
    return out, loaded.results


def rates(verdicts: Verdicts, truth: dict[int, NewResult],
          kind: str | None) -> dict[str, Any]:
    held = {rid for rid, (st, _) in verdicts.items() if st == "held"}
    wrong = {rid for rid, r in truth.items() if r.error is not None}
    row: dict[str, Any] = {"results": len(truth), "held": len(held),
                           "autoverified_rate": 1 - len(held) / len(truth)}
    if kind is not None:
        mine = {rid for rid, r in truth.items() if r.error == kind}
        row.update({"wrong": len(mine), "wrong_held": len(mine & held),
                    "sensitivity": len(mine & held) / len(mine) if mine else None,
                    "ppv": len(held & wrong) / len(held) if held else None})
    return row


def _latest(r: NewResult, code: str) -> float | None:
    prev = [p for p in r.previous if p.test_code == code]
    return max(prev, key=lambda p: p.at).value if prev else None


def wbit_compare(ds: Dataset, verdicts: Verdicts,
                 truth: dict[int, NewResult]) -> dict[str, Any]:
    """Per specimen with previous results: the multi-analyte rule (and any hold) against
    a univariate delta check with its limit at 5 % false positives on clean specimens."""
    tubes: dict[str, list[tuple[int, NewResult]]] = {}
    for rid, r in truth.items():
        if r.previous:
            tubes.setdefault(r.accession, []).append((rid, r))
    swapped = {a for a, rs in tubes.items() if all(r.error == "wbit" for _, r in rs)}
    clean = {a for a, rs in tubes.items() if all(r.error is None for _, r in rs)}

    def share(flagged: set[str], of: set[str]) -> float:
        return len(flagged & of) / len(of) if of else float("nan")

    by_rule = {a for a, rs in tubes.items() if any("wbit" in verdicts[rid][1] for rid, _ in rs)}
    any_hold = {a for a, rs in tubes.items() if any(verdicts[rid][0] == "held" for rid, _ in rs)}
    univariate: list[dict[str, Any]] = []
    for code in CV_I:
        deltas: dict[str, float] = {}
        for a, rs in tubes.items():
            for _, r in rs:
                before = _latest(r, code)
                if r.test_code == code and before:
                    deltas[a] = abs(r.value - before) / before
        clean_d = sorted(d for a, d in deltas.items() if a in clean)
        if len(clean_d) < 20:
            continue
        limit = clean_d[min(len(clean_d) - 1, int((1 - UNIVARIATE_FP) * len(clean_d)))]
        hit = {a for a, d in deltas.items() if d > limit}
        univariate.append({"analyte": code, "limit_pct": round(limit * 100, 2),
                           "fp": share(hit, clean & set(deltas)),
                           "sensitivity": share(hit, swapped & set(deltas))})
    best = max(univariate, key=lambda u: u["sensitivity"]) if univariate else None
    return {"swapped_specimens": len(swapped), "clean_specimens": len(clean),
            "multi_fp": share(by_rule, clean), "multi_sensitivity": share(by_rule, swapped),
            "any_hold_fp": share(any_hold, clean),
            "any_hold_sensitivity": share(any_hold, swapped),
            "univariate": univariate, "univariate_best": best,
            "univariate_median_sensitivity": statistics.median(
                u["sensitivity"] for u in univariate) if univariate else None}


def detection(folder: Path, patients: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ds = generate(seed=seed, patients=patients)
    verdicts, truth = judge_dataset(folder, "clean", ds)
    out["error_free"] = rates(verdicts, truth, None) | {"dataset": summary(ds)}
    for n, kind in enumerate(ERROR_KINDS, 1):
        ds = generate(seed=seed + n, patients=patients, errors={kind: KIND_RATES[kind]})
        verdicts, truth = judge_dataset(folder, kind, ds)
        out[kind] = rates(verdicts, truth, kind) | {"rate": KIND_RATES[kind],
                                                    "shifts": ds.shifts}
        if kind == "wbit":
            out["wbit_compare"] = wbit_compare(ds, verdicts, truth)
    return out


# (3) Westgard ----------------------------------------------------------------------------------
def westgard(trials: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    rule_sets = {"multirule": list(ALL_RULES), "1-3s": ["1-3s"]}
    out: dict[str, Any] = {}
    for name, rules in rule_sets.items():
        row: dict[str, Any] = {}
        false = 0
        for _ in range(trials):
            hist = [ControlPoint(r, lv, rng.gauss(0, 1)) for r in range(20) for lv in (1, 2)]
            cur = [ControlPoint(20, lv, rng.gauss(0, 1)) for lv in (1, 2)]
            false += any(v.rejects for v in evaluate(hist, cur, rules))
        row["false_rejection_per_run"] = false / trials
        for k in SHIFTS_SD:
            counts, censored = [], 0
            for _ in range(trials):
                hist = [ControlPoint(r, lv, rng.gauss(0, 1)) for r in range(20) for lv in (1, 2)]
                shifted = [[ControlPoint(20 + i, lv, rng.gauss(k, 1)) for lv in (1, 2)]
                           for i in range(MAX_RUNS)]
                found = runs_to_detect(shifted, hist, rules)
                if found is None:
                    censored += 1
                    found = MAX_RUNS
                counts.append(found)
            row[f"{k:g}sd"] = {"mean_runs": statistics.fmean(counts),
                               "first_run": sum(c == 1 for c in counts) / trials,
                               "censored": censored}
        out[name] = row
    return out


# report ----------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def report(res: dict[str, Any]) -> None:
    tp = res["throughput"]
    t1 = Table("(1) autoverification", "results", "results/s (median)", "runs", title=None)
    t1.add_row("batched engine (lab.autoverify)", str(tp["results"]),
               f"{tp['batched_per_s']:.0f}", str(tp["runs"]))
    t1.add_row("naive, one result per transaction", str(tp["results"]),
               f"{tp['naive_per_s']:.0f}", str(tp["runs"]))
    t1.add_row("ratio batched/naive", "", f"{tp['ratio']:.1f}x",
               "same verdicts" if tp["same_verdicts"] else "VERDICTS DIFFER")
    console.print(t1)
    det = res["detection"]
    ef = det["error_free"]
    ok = ef["autoverified_rate"] > TARGET_AUTOVERIFIED
    t2 = Table("(2) dataset", "results", "wrong", "held", "autoverified", "sensitivity", "PPV",
               "target")
    t2.add_row("error-free", str(ef["results"]), "0", str(ef["held"]),
               pct(ef["autoverified_rate"]), "-", "-",
               f"> 90 % autoverified: {'PASS' if ok else 'FAIL'}")
    for kind in ERROR_KINDS:
        r = det[kind]
        t2.add_row(kind, str(r["results"]), str(r["wrong"]), str(r["held"]),
                   pct(r["autoverified_rate"]), pct(r["sensitivity"]), pct(r["ppv"]), "")
    console.print(t2)
    w = det["wbit_compare"]
    t3 = Table("(2) wrong blood in tube, per specimen", "false positives", "sensitivity")
    t3.add_row("multi-analyte rule (wbit)", pct(w["multi_fp"]), pct(w["multi_sensitivity"]))
    t3.add_row("any hold (all rules)", pct(w["any_hold_fp"]), pct(w["any_hold_sensitivity"]))
    best = w["univariate_best"]
    if best is not None:
        t3.add_row(f"univariate delta, best analyte ({best['analyte']})", pct(best["fp"]),
                   pct(best["sensitivity"]))
        t3.add_row("univariate delta, median analyte", "5.0 %",
                   pct(w["univariate_median_sensitivity"]))
    console.print(t3)
    wg = res["westgard"]
    t4 = Table("(3) runs to detect a shift", *(f"{k:g} SD" for k in SHIFTS_SD),
               "false rejections/run")
    for name in ("multirule", "1-3s"):
        row = wg[name]
        t4.add_row(f"{name} (mean runs)", *(f"{row[f'{k:g}sd']['mean_runs']:.2f}"
                                            for k in SHIFTS_SD),
                   pct(row["false_rejection_per_run"]))
    console.print(t4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run (CI): minutes, not more")
    ap.add_argument("--patients", type=int, default=500, help="patients for throughput (1)")
    ap.add_argument("--kind-patients", type=int, default=1000,
                    help="patients of each detection dataset (2)")
    ap.add_argument("--runs", type=int, default=3, help="throughput repetitions (median)")
    ap.add_argument("--trials", type=int, default=2000, help="Westgard simulations (3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.patients, args.kind_patients, args.runs, args.trials = 40, 100, 2, 150
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rdc-bench-lab-") as tmp:
        folder = Path(tmp)
        console.print(f"(1) throughput: {args.patients} patients, {args.runs} runs ...")
        tp = throughput(folder, args.patients, args.runs, args.seed)
        console.print(f"(2) detection: {args.kind_patients} patients per dataset ...")
        det = detection(folder, args.kind_patients, args.seed)
    console.print(f"(3) Westgard: {args.trials} trials per shift ...")
    wg = westgard(args.trials, args.seed)
    res = {"created": datetime.now(UTC).isoformat(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "throughput": tp, "detection": det, "westgard": wg,
        "seconds": round(time.perf_counter() - started, 1)}
    report(res)
    name = "lab-quick.json" if args.quick else "lab.json"
    write_json(args.out / name, res)
    console.print(f"results in {args.out / name} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
