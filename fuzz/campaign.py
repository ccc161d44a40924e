"""The long fuzzing campaign: every target (or those named), one after the other.

    nice -n 19 python -m fuzz.campaign --runs 1000000
    python -m fuzz.campaign --runs 1000000 --target inspect_encoded --max-seconds 3600

Each target runs from its committed seeds until ``--runs`` executions (or
``--max-seconds``), with libFuzzer's per-input time limit and memory limits; new
interesting inputs go to ``--work`` (default: a folder under the system's temporary
folder), never into the committed corpus.  A finding is copied into the target's
corpus as a ``regress-*`` seed with ``--keep-findings``.  The figures of each run
(executions, executions per second, coverage, features, peak RSS, findings) are
printed as a Markdown table and written as JSON to ``<work>/campaign.json``, to go
into ``benchmarks/RESULTS.md``.  Exit code 1 when any target had a finding.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from fuzz.runner import FuzzRun, keep_findings, run_target
from fuzz.targets import TARGETS


def _row(run: FuzzRun) -> str:
    findings = ", ".join(p.name for p in run.findings) or "0"
    return (f"| {run.target} | {run.executions:,} | {run.seconds:,.0f} | "
            f"{run.executions / max(run.seconds, 1e-9):,.0f} | {run.coverage:,} | "
            f"{run.features:,} | {run.peak_rss_mb} | {findings} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000,
                        help="executions per target (default 1000000)")
    parser.add_argument("--max-seconds", type=int, default=None,
                        help="stop a target after this long even below --runs")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="only this target (repeatable); default: all")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    parser.add_argument("--timeout", type=int, default=10, help="per-input limit, seconds")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--malloc-limit-mb", type=int, default=1024)
    parser.add_argument("--keep-findings", action="store_true",
                        help="copy findings into the corpus as regress-* seeds")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rdc-fuzz-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    summary_path = work / "campaign.json"
    summary: list[dict[str, object]] = []
    print("| target | executions | seconds | exec/s | coverage (edges) | features | "
          "peak RSS MB | findings |")
    print("|---|---:|---:|---:|---:|---:|---:|---|", flush=True)
    any_finding = False
    for target in args.target or list(TARGETS):
        run = run_target(target, work / target, runs=args.runs, seconds=args.max_seconds,
                         timeout_s=args.timeout, rss_limit_mb=args.rss_limit_mb,
                         malloc_limit_mb=args.malloc_limit_mb)
        if args.keep_findings:
            keep_findings(run)
        any_finding |= not run.clean
        print(_row(run), flush=True)
        record = {k: v for k, v in asdict(run).items() if k != "output_tail"}
        record["findings"] = [str(p) for p in run.findings]
        record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        summary.append(record)
        summary_path.write_text(json.dumps(summary, indent=2))
    print(f"\nfigures: {summary_path}")
    raise SystemExit(1 if any_finding else 0)


if __name__ == "__main__":
    main()
