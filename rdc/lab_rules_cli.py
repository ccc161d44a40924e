"""``rdc lab`` commands for the autoverification rules (merged into ``rdc lab`` by
rdc/lab_cli.py): validate a rule set version by replay, enable it, list the versions.

A version is validated before it is enabled (CLSI AUTO10): ``validate-rules`` replays
past results with the verdicts people gave them, prints the report, records it on the
version (with the rule file's sha256) and ends with code 1 when it fails; an edited file
must be validated again before ``enable-rules`` accepts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.db import get_database
from core.errors import RDCError
from rdc.console import console
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

if TYPE_CHECKING:
    from lab.validate_rules import ValidationReport

app = typer.Typer()

_RULES_DIR = typer.Option("--rules-dir", hidden=True,
                          help="Folder of the rule files (default: the shipped lab/rules).")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f} %"


def _print_report(report: ValidationReport) -> None:
    lines = [
        f"rule set {report.version} (file sha256 {report.file_sha256[:16]}...)",
        f"replay {report.replay}: {report.results} results",
        f"  agreement with people         {_pct(report.agreement)}",
        f"  autoverification rate         {_pct(report.autoverification_rate)}",
        f"  held by people / by the rules {report.human_held} / {report.rules_held} "
        f"(both {report.held_by_both})",
        f"  sensitivity (people's holds)  {_pct(report.sensitivity)}",
        f"  PPV of a hold                 {_pct(report.ppv)}",
        f"  critical values released      {report.critical_released} of "
        f"{report.critical_results}",
    ]
    for kind, c in report.by_error.items():
        lines.append(f"  error {kind:<14} held {c['held']} of {c['results']} "
                     f"({_pct(float(c['sensitivity']))})")
    lines.append("PASSED" if report.passed else "FAILED: " + "; ".join(report.reasons))
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _validate(replay: Path, version: str, rules_dir: Path | None) -> bool:
    from lab.catalog import get_catalog
    from lab.rules_engine import load_rule_set, rule_file
    from lab.validate_rules import record_validation, replay_file

    s = _settings()
    rule_set = load_rule_set(rule_file(version, rules_dir))
    report = replay_file(rule_set, get_catalog(s), replay)
    with get_database(s.database_url).session() as session:
        record_validation(session, report, actor="cli")
    _print_report(report)
    return report.passed


@app.command("validate-rules")
def validate_rules_cmd(
    replay: Annotated[Path, typer.Option("--replay", help="Replay file: JSON lines of past "
                                         "results with the people's verdicts.")],
    version: Annotated[str, typer.Option("--version", help="Rule set version (a file "
                                         "lab/rules/<version>.toml).")] = "autoverify-1",
    rules_dir: Annotated[Path | None, _RULES_DIR] = None,
) -> None:
    """Replay past results through a rule set version (CLSI AUTO10) and record the outcome.

    Prints agreement, autoverification rate, sensitivity for results people held, PPV and
    per error kind; exits 1 when the set fails (sensitivity below 0.99 or a critical value
    released)."""
    try:
        passed = _validate(replay, version, rules_dir)
    except RDCError as e:
        raise _fail(e) from e
    if not passed:
        raise typer.Exit(1)


@app.command("enable-rules")
def enable_rules_cmd(
    version: Annotated[str, typer.Argument(help="Rule set version to enable.")],
    replay: Annotated[Path | None, typer.Option(
        "--replay", help="Validate with this replay file first (else the recorded "
                         "validation of the same file is required).")] = None,
    rules_dir: Annotated[Path | None, _RULES_DIR] = None,
) -> None:
    """Enable a rule set version for autoverification; refused unless its file as it is
    now passed a validation."""
    from lab.validate_rules import enable_rule_set

    try:
        if replay is not None and not _validate(replay, version, rules_dir):
            console.print(f"{version} not enabled: its validation failed", markup=False)
            raise typer.Exit(1)
        s = _settings()
        with get_database(s.database_url).session() as session:
            row = enable_rule_set(session, version, actor="cli", rules_dir=rules_dir)
            sha = row.file_sha256
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"enabled rule set {version} (file sha256 {sha[:16]}...)", markup=False)


@app.command("rules")
def rules_cmd(
    rules_dir: Annotated[Path | None, _RULES_DIR] = None,
) -> None:
    """List the rule set versions: validated, passed, enabled, in use, file changed."""
    from lab.validate_rules import rule_sets

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            rows = rule_sets(session, rules_dir)
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"{'version':<20} {'validated':<10} {'passed':<7} {'enabled':<8} "
                  f"{'in use':<7} note", markup=False)
    for r in rows:
        note = []
        if r["file_changed"]:
            note.append("file changed since validation")
        if r["file"] is None:
            note.append("no file")
        if r["in_use"] and not r["enabled"]:
            note.append("shipped default (no version enabled)")
        console.print(f"{r['version']:<20} {_yes(r['validated']):<10} {_yes(r['passed']):<7} "
                      f"{_yes(r['enabled']):<8} {_yes(r['in_use']):<7} {'; '.join(note)}",
                      markup=False)


def _yes(flag: object) -> str:
    return "yes" if flag else "no"
