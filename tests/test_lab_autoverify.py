"""Autoverification against the database (lab/autoverify.py): a run's results judged and
recorded (state, range, flag, critical, rule set, every rule that fired), one audit
record per batch, the patients' history read in one query whatever the batch's size, and
results held (never released) when the rules cannot be had."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lab_autoverify_support import NOW, add_run, add_specimen, db_any
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.db import Database, get_database
from core.errors import InvalidTransition
from core.models import AuditRecord
from core.models.lab import LabResult, LabRuleSet
from devkit import lab_dataset
from lab import autoverify
from lab.catalog import get_catalog

__all__ = ["db_any"]

CHEM_OK = {"NA": 140.0, "K": 4.1, "CL": 103.0, "HCO3": 25.0, "CREA": 70.0, "GLU": 5.2}


def _by_code(results: list[LabResult]) -> dict[str, LabResult]:
    return {r.test_code: r for r in results}


def test_a_run_is_judged_and_every_rule_recorded(db_any: Database) -> None:
    with db_any.session() as s:
        run = add_run(s)
        clean = add_specimen(s, CHEM_OK, patient="P1", run=run)
        bad = add_specimen(s, {"K": 6.9, "NA": 131.0, "GLU": None}, patient="P2", run=run,
                           hil={"H": 90}, flags={"K": ["W"]})
        other_run = add_specimen(s, {"K": 4.0}, patient="P3", run=add_run(s))
        judged = autoverify.verify_run(s, run.id, now=NOW)
        assert {r.id for r in judged} == {r.id for r in clean + bad}
        assert all(r.state == "autoverified" and r.rules_fired == [] for r in clean)
        assert all(r.rule_set == "autoverify-1" for r in judged)
        assert other_run[0].state == "pending"  # another run is not touched
        b = _by_code(bad)
        assert b["K"].state == "held" and b["K"].critical and b["K"].abnormal_flag == "HH"
        assert (b["K"].ref_low, b["K"].ref_high) == (3.5, 5.3)
        rules = {h["rule"] for h in b["K"].rules_fired}
        assert rules == {"critical", "hil", "instrument-flag", "reference-range",
                         "hemolysed-potassium"}
        assert all(h["source"] and h["message"] and h["severity"] == "hold"
                   for h in b["K"].rules_fired)
        assert b["NA"].state == "held" and not b["NA"].critical
        assert b["NA"].abnormal_flag == "L"
        assert {h["rule"] for h in b["GLU"].rules_fired} == {"no-value"}
        assert "could not be judged" in b["GLU"].rules_fired[0]["message"]
        [record] = s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.autoverify"))
        assert record.object_id == str(run.id)
        d = record.detail
        assert (d["judged"], d["autoverified"], d["held"], d["critical"]) == (9, 6, 3, 1)
        assert {o["id"]: o["state"] for o in d["results"]}[b["K"].id] == "held"


def test_a_second_pass_judges_nothing_again(db_any: Database) -> None:
    with db_any.session() as s:
        run = add_run(s)
        add_specimen(s, CHEM_OK, run=run)
        assert len(autoverify.verify_run(s, run.id, now=NOW)) == 6
        assert autoverify.verify_run(s, run.id, now=NOW) == []
        assert len(list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "lab.autoverify")))) == 1


def _history(s: Session, patient: str, site: str = "county-a", days: float = 1.0,
             state: str = "autoverified", **values: float) -> None:
    add_specimen(s, dict(values), patient=patient, site=site, state=state,
                 at=NOW - timedelta(days=days))


def test_delta_reads_only_the_patients_released_results_at_the_same_site(db_any: Database) -> None:
    with db_any.session() as s:
        _history(s, "P1", K=2.9)  # released: delta +1.3 mmol/L, 45 %
        _history(s, "P2", site="county-b", K=2.9)  # another site's patient P2
        _history(s, "P2", state="held", K=2.9)  # not released
        run = add_run(s)
        [p1] = add_specimen(s, {"K": 4.2}, patient="P1", run=run)
        [p2] = add_specimen(s, {"K": 4.2}, patient="P2", run=run)
        autoverify.verify_run(s, run.id, now=NOW)
        assert p1.state == "held" and [h["rule"] for h in p1.rules_fired] == ["delta"]
        assert "from 2.9 24 h earlier" in p1.rules_fired[0]["message"]
        assert p2.state == "autoverified"


def test_wbit_and_anion_gap_on_a_specimen(db_any: Database) -> None:
    with db_any.session() as s:
        _history(s, "P1", MCV=88.0, HGB=135.0, PLT=240.0, WBC=6.0)
        run = add_run(s, "HEME1")
        heme = add_specimen(s, {"MCV": 90.9, "HGB": 122.0, "PLT": 200.0, "WBC": 8.5},
                            patient="P1", run=run)
        chem = add_specimen(s, {"NA": 140.0, "CL": 110.0, "HCO3": 28.0}, patient="P5",
                            run=run)
        autoverify.verify_run(s, run.id, now=NOW)
        assert all([h["rule"] for h in r.rules_fired] == ["wbit"] for r in heme)
        assert all([h["rule"] for h in r.rules_fired] == ["anion-gap"] for r in chem)


def test_holds_from_the_specimen_and_qc(db_any: Database) -> None:
    with db_any.session() as s:
        run = add_run(s)
        [k] = add_specimen(s, {"K": 4.1}, run=run, hold="past stability: K 4 h unspun")
        [na] = add_specimen(s, {"NA": 140.0}, patient="P2", run=run)
        na.qc_hold = "QC reject on CHEM1 run R1: 1-3s"
        autoverify.verify_results(s, [k, na], now=NOW)
        assert k.rules_fired[0]["rule"] == "specimen-hold" and k.state == "held"
        assert na.rules_fired[0]["rule"] == "qc-hold" and "1-3s" in na.rules_fired[0]["message"]


def test_history_and_context_come_from_one_query_whatever_the_batch(db_any: Database) -> None:
    counts: dict[int, int] = {}
    for patients in (2, 25):
        with db_any.session() as s:
            run = add_run(s)
            for p in range(patients):
                _history(s, f"Q{patients}-{p}", K=4.0, NA=139.0)
                _history(s, f"Q{patients}-{p}", days=2, K=4.1, NA=138.0)
                add_specimen(s, CHEM_OK, patient=f"Q{patients}-{p}", run=run)
            s.flush()
            statements: list[str] = []

            def count(conn: Any, cursor: Any, statement: str, *args: Any,
                      seen: list[str] = statements) -> None:
                seen.append(statement)

            engine = s.get_bind()
            event.listen(engine, "before_cursor_execute", count)
            try:
                judged = autoverify.verify_run(s, run.id, now=NOW)
            finally:
                event.remove(engine, "before_cursor_execute", count)
            assert len(judged) == patients * 6
            assert all(r.state == "autoverified" for r in judged)
            touching = [q for q in statements
                        if q.lstrip().upper().startswith("SELECT") and "lab_results" in q]
            assert len(touching) == 1, touching
            counts[patients] = len([q for q in statements
                                    if q.lstrip().upper().startswith("SELECT")])
    assert counts[2] == counts[25]  # the rule set look-up, the batch query: constant


def test_results_are_held_when_the_rules_cannot_be_had(db_any: Database) -> None:
    with db_any.session() as s:
        # The enabled version's file is not the one validated (its sha256 differs).
        s.add(LabRuleSet(version="autoverify-1", file_sha256="0" * 64, enabled=True,
                         validation={"passed": True}))
        run = add_run(s)
        results = add_specimen(s, CHEM_OK, run=run)
        autoverify.verify_run(s, run.id, now=NOW)
        for r in results:
            assert r.state == "held"
            [hit] = r.rules_fired
            assert hit["rule"] == "unevaluable" and "changed since it was validated" in \
                hit["message"]


def test_only_pending_results_are_verified_and_classify_sets_nothing(db_any: Database) -> None:
    with db_any.session() as s:
        [done] = add_specimen(s, {"K": 4.1}, state="autoverified")
        with pytest.raises(InvalidTransition, match="only pending"):
            autoverify.verify_results(s, [done], now=NOW)
        [pending] = add_specimen(s, {"K": 5.0})
        flag, critical, rng = autoverify.classify(pending, get_catalog().test("K"), "F", 50.0)
        assert (flag, critical, rng.low if rng else None) == ("", False, 3.5)
        pending.value = 2.0
        assert autoverify.classify(pending, get_catalog().test("K"), "F", 50.0)[:2] == \
            ("LL", True)
        assert pending.state == "pending" and pending.abnormal_flag == ""


def test_over_90_percent_of_error_free_results_are_autoverified_from_the_db(
        tmp_path: Path) -> None:
    """H4's synthetic dataset (devkit/lab_dataset.py) stored as a center would hold it:
    previous visits released, the new results pending on their runs."""
    database = get_database(f"sqlite:///{tmp_path / 'dataset.sqlite3'}")
    try:
        ds = lab_dataset.generate(seed=11, patients=150)
        with database.session() as s:
            loaded = lab_dataset.load(s, ds)
        with database.session() as s:
            judged = [r for run_id in loaded.data_runs
                      for r in autoverify.verify_run(s, run_id)]
            assert len(judged) == 1500
            rate = sum(r.state == "autoverified" for r in judged) / len(judged)
            assert rate > 0.90, rate
            assert not any(r.critical and r.state == "autoverified" for r in judged)
    finally:
        database.dispose()
        get_database.cache_clear()
