"""The CLSI AUTO10-style replay (lab/validate_rules.py, ``rdc lab validate-rules``): the
shipped autoverify-1 passes on a realistic replay and autoverifies > 90 % of error-free
results; a replay with errors the rules cannot see fails; a version is enabled only
with a passing validation of its file as it is now.

The replays come from devkit/lab_dataset.py (H4's synthetic dataset, seeded), whose
``human`` verdict holds every injected error and every critical value.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_autoverify_support import db
from sqlalchemy import select
from typer.testing import CliRunner

from core.db import Database
from core.errors import Conflict, InvalidInput
from core.models import AuditRecord
from core.models.lab import LabRuleSet
from core.settings import get_settings
from devkit import lab_dataset
from lab.catalog import get_catalog
from lab.rules_engine import RULES_DIR, RuleFileError, load_rule_set, rule_file
from lab.validate_rules import (
    active_rule_set,
    enable_rule_set,
    read_replay,
    record_validation,
    replay_file,
    rule_sets,
)

__all__ = ["db"]
CATALOG = get_catalog()
SHIPPED = load_rule_set(rule_file("autoverify-1"))


def _replay(tmp_path: Path, name: str, errors: dict[str, float], seed: int = 3,
            patients: int = 400) -> Path:
    ds = lab_dataset.generate(seed=seed, patients=patients, errors=errors)
    path = tmp_path / f"{name}.jsonl"
    lab_dataset.write_replay(ds, path)
    return path


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("replays")
    return {
        "clean": _replay(tmp, "clean", {}),
        # Errors a rule can see on the result or its tube: hemolysis (H index, K) and
        # tubes past stability (specimen hold).
        "visible": _replay(tmp, "visible", {"hemolysis": 0.05, "stability": 0.05}, seed=4),
        # Analyzer shifts of 1-3 SD that the Westgard rules did not always catch.
        # The dataset's reviewer does not hold a small shift that the controls missed
        # (nobody could see it); this file's reviewer is an oracle who held every wrong
        # result, so the rules release results it held: a failing validation.
        "shifted": _oracle(_replay(tmp, "shifted", {"shift": 0.4}, seed=5)),
    }


def _oracle(path: Path) -> Path:
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]
    for line in lines:
        if line["error"] is not None:
            line["human"] = "hold"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_shipped_rules_autoverify_over_90_percent_of_error_free_results(
        replays: dict[str, Path]) -> None:
    report = replay_file(SHIPPED, CATALOG, replays["clean"])
    assert report.results == 4000
    assert report.autoverification_rate > 0.90, report
    assert report.critical_released == 0


def test_shipped_rules_pass_a_realistic_replay(replays: dict[str, Path]) -> None:
    report = replay_file(SHIPPED, CATALOG, replays["visible"])
    assert report.passed, report.reasons
    assert report.human_held > 100 and report.sensitivity is not None
    assert report.sensitivity >= 0.99
    assert report.by_error["hemolysis"]["sensitivity"] == 1.0
    assert report.by_error["stability"]["sensitivity"] == 1.0
    assert 0 < report.ppv <= 1 if report.ppv is not None else False
    assert report.autoverification_rate > 0.8
    assert report.file_sha256 == SHIPPED.sha256 and len(report.replay_sha256) == 64


def test_a_replay_with_errors_the_rules_miss_fails(replays: dict[str, Path]) -> None:
    report = replay_file(SHIPPED, CATALOG, replays["shifted"])
    assert not report.passed
    assert report.sensitivity is not None and report.sensitivity < 0.99
    assert any("sensitivity" in r and "below 0.99" in r for r in report.reasons)
    assert report.by_error["shift"]["sensitivity"] < 0.99


def test_counts_on_a_small_replay(tmp_path: Path) -> None:
    lines = [
        {"result": {"test_code": "K", "value": 4.1, "units": "mmol/L", "sex": "F",
                    "age_y": 50, "measured_at": "2026-11-30T08:00:00+00:00"},
         "previous": [], "human": "release", "error": None},
        {"result": {"test_code": "K", "value": 7.1, "units": "mmol/L", "sex": "F",
                    "age_y": 50, "measured_at": "2026-11-30T08:00:00+00:00"},
         "previous": [], "human": "hold", "error": None},
        {"result": {"test_code": "NA", "value": 131, "units": "mmol/L", "sex": "F",
                    "age_y": 50, "measured_at": "2026-11-30T08:00:00+00:00"},
         "previous": [], "human": "release", "error": None},
        {"result": {"test_code": "K", "value": 4.0, "units": "mmol/L", "sex": "M",
                    "age_y": 60, "hil": {"H": 200}, "specimen": "S9"},
         "previous": [], "human": "hold", "error": "hemolysis"},
    ]
    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    r = replay_file(SHIPPED, CATALOG, path)
    assert (r.results, r.human_held, r.rules_held, r.held_by_both) == (4, 2, 3, 2)
    assert (r.sensitivity, r.ppv, r.agreement) == (1.0, 2 / 3, 0.75)
    assert r.autoverification_rate == 0.25
    assert (r.critical_results, r.critical_released) == (1, 0)
    assert r.by_error == {"hemolysis": {"results": 1, "held": 1, "sensitivity": 1.0}}
    assert r.passed


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "line 1: not JSON"),
    ('{"result": {"value": 1}, "human": "hold"}', "test_code is required"),
    ('{"result": {"test_code": "K", "value": 1}, "human": "maybe"}', "human must be"),
    ('{"result": {"test_code": "K", "value": "4.1"}, "human": "hold"}', "result.value"),
    ('{"result": {"test_code": "K", "value": 4, "measured_at": "yesterday"}, '
     '"human": "hold"}', "not an ISO 8601 time"),
    ("\n", "has no results"),
])
def test_bad_replay_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput, match=message):
        read_replay(path)


# --- enabling --------------------------------------------------------------------------------
@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(RULES_DIR / "autoverify-1.toml", folder / "autoverify-1.toml")
    text = (RULES_DIR / "autoverify-1.toml").read_text(encoding="utf-8")
    (folder / "autoverify-2.toml").write_text(
        text.replace('version = "autoverify-1"', 'version = "autoverify-2"'), encoding="utf-8")
    return folder


def test_enable_needs_a_passing_validation_of_the_same_file(
        db: Database, rules_dir: Path, replays: dict[str, Path]) -> None:
    v2 = load_rule_set(rules_dir / "autoverify-2.toml")
    with db.session() as s:
        assert active_rule_set(s, rules_dir).version == "autoverify-1"  # shipped default
        with pytest.raises(Conflict, match="never been validated"):
            enable_rule_set(s, "autoverify-2", actor="test", rules_dir=rules_dir)
        record_validation(s, replay_file(v2, CATALOG, replays["shifted"]), actor="test")
        with pytest.raises(Conflict, match="did not pass"):
            enable_rule_set(s, "autoverify-2", actor="test", rules_dir=rules_dir)
        record_validation(s, replay_file(v2, CATALOG, replays["visible"]), actor="test")
        row = enable_rule_set(s, "autoverify-2", actor="test", rules_dir=rules_dir)
        assert row.enabled and row.file_sha256 == v2.sha256 and row.validation["passed"]
        assert active_rule_set(s, rules_dir).version == "autoverify-2"
        listed = {r["version"]: r for r in rule_sets(s, rules_dir)}
        assert listed["autoverify-2"]["in_use"] and not listed["autoverify-1"]["in_use"]
        actions = [a.action for a in s.scalars(select(AuditRecord).where(
            AuditRecord.object_type == "lab_rule_set"))]
        assert actions == ["lab.rules_validate", "lab.rules_validate", "lab.rules_enable"]
    # An edited file: refused by enable and by the running autoverification alike.
    path = rules_dir / "autoverify-2.toml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "widen_fraction = 0.5", "widen_fraction = 1.5"), encoding="utf-8")
    with db.session() as s:
        with pytest.raises(Conflict, match="changed since it was validated"):
            enable_rule_set(s, "autoverify-2", actor="test", rules_dir=rules_dir)
        with pytest.raises(RuleFileError, match="changed since it was validated"):
            active_rule_set(s, rules_dir)
        assert {r["version"]: r for r in rule_sets(s, rules_dir)}["autoverify-2"][
            "file_changed"]
        # A failing validation turns an enabled version off.
        v2_edited = load_rule_set(path)
        record_validation(s, replay_file(v2_edited, CATALOG, replays["shifted"]),
                          actor="test")
        row2 = s.scalar(select(LabRuleSet).where(LabRuleSet.version == "autoverify-2"))
        assert row2 is not None and not row2.enabled


# --- the commands ------------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path: Path, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RDC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RDC_DATABASE_URL", str(db.engine.url))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_validate_enable_and_list(cli_env: None, db: Database, rules_dir: Path,
                                      replays: dict[str, Path]) -> None:
    from rdc.cli import app

    runner = CliRunner()
    d = ["--rules-dir", str(rules_dir)]
    ok = runner.invoke(app, ["lab", "validate-rules", "--replay", str(replays["visible"]),
                             "--version", "autoverify-2", *d])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output and "sensitivity (people's holds)  100.00 %" in ok.output
    assert "error hemolysis" in ok.output
    bad = runner.invoke(app, ["lab", "validate-rules", "--replay", str(replays["shifted"]),
                              "--version", "autoverify-1", *d])
    assert bad.exit_code == 1 and "FAILED: sensitivity" in bad.output
    refused = runner.invoke(app, ["lab", "enable-rules", "autoverify-1", *d])
    assert refused.exit_code != 0 and "did not pass" in refused.output
    enabled = runner.invoke(app, ["lab", "enable-rules", "autoverify-2", *d])
    assert enabled.exit_code == 0 and "enabled rule set autoverify-2" in enabled.output
    listing = runner.invoke(app, ["lab", "rules", *d])
    assert listing.exit_code == 0
    rows = {line.split()[0]: line.split()[1:5] for line in listing.output.splitlines()[1:]}
    assert rows["autoverify-2"] == ["yes", "yes", "yes", "yes"]
    assert rows["autoverify-1"] == ["yes", "no", "no", "no"]
    missing = runner.invoke(app, ["lab", "validate-rules", "--replay", str(replays["clean"]),
                                  "--version", "autoverify-7", *d])
    assert missing.exit_code != 0 and "no rule file" in missing.output
    with_replay = runner.invoke(app, ["lab", "enable-rules", "autoverify-1", "--replay",
                                      str(replays["shifted"]), *d])
    assert with_replay.exit_code == 1 and "not enabled" in with_replay.output
