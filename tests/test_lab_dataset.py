"""The synthetic lab dataset: seeded, biologically plausible, each injected error where
and what its truth says; its replay file read by the validation harness; loaded into a
real database, where lab.qc holds exactly the results its QC labels say."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import Center
from core.models.lab import LabControlResult, LabResult, LabRun, LabSpecimen
from devkit.lab_dataset import (
    CV_A,
    CV_I,
    ERROR_KINDS,
    NewResult,
    generate,
    load,
    main,
    write_replay,
)
from lab import qc
from lab.catalog import get_catalog
from lab.stability import stability_hours
from lab.validate_rules import read_replay


def test_seeded_and_error_free_by_default() -> None:
    a = generate(seed=5, patients=60)
    b = generate(seed=5, patients=60)
    c = generate(seed=6, patients=60)
    assert [(r.accession, r.test_code, r.value) for r in a.results] == \
        [(r.accession, r.test_code, r.value) for r in b.results]
    assert [r.value for r in a.results] != [r.value for r in c.results]
    assert len(a.results) == 60 * 10 and len({r.accession for r in a.results}) == 120
    assert {r.error for r in a.results} == {None}
    assert all(r.specimen_hold == "" for r in a.results)
    # Two control levels per analyte per run, history runs first.
    assert len(a.controls) == len(a.runs) * 10
    catalog = get_catalog()
    for r in a.results:
        t = catalog.test(r.test_code)
        assert t.measuring_low is not None and t.measuring_high is not None
        assert t.measuring_low <= r.value <= t.measuring_high
        assert r.units == t.units


def test_within_subject_variation_is_the_cited_cv() -> None:
    ds = generate(seed=11, patients=800, real_change=0.0)
    for code in ("NA", "HGB", "K"):
        rel = []
        for r in ds.results:
            if r.test_code != code or not r.previous:
                continue
            latest = max((p for p in r.previous if p.test_code == code), key=lambda p: p.at)
            rel.append((r.value - latest.value) / latest.value * 100)
        expected = (2 * (CV_I[code] ** 2 + CV_A[code] ** 2)) ** 0.5  # % SD of a difference
        # Rounding to the catalog's decimals adds a little (Na to 1 mmol/L: ~0.4 %).
        assert expected * 0.85 < statistics.pstdev(rel) < expected * 1.35, code


def test_each_error_kind_is_injected_as_its_truth_says() -> None:
    rates = {"wbit": 0.1, "hemolysis": 0.05, "shift": 0.15, "transcription": 0.05,
             "stability": 0.05}
    ds = generate(seed=2, patients=400, errors=rates)
    count = Counter(r.error for r in ds.results)
    assert set(count) == {None, *ERROR_KINDS}
    by_patient: dict[tuple[str, str], list[NewResult]] = {}
    for r in ds.results:
        by_patient.setdefault((r.site_id, r.patient_id), []).append(r)
    # WBIT: whole visits (both tubes, all ten analytes), an even number of patients.
    wbit = [k for k, rs in by_patient.items() if any(r.error == "wbit" for r in rs)]
    assert len(wbit) == 40
    assert all(all(r.error == "wbit" for r in by_patient[k]) for k in wbit)
    # Hemolysis: only K, with H above K's limit and K raised.
    hemo = [r for r in ds.results if r.error == "hemolysis"]
    assert len(hemo) == 20 and {r.test_code for r in hemo} == {"K"}
    assert all(r.hil["H"] > 50 for r in hemo)
    clean_k = [r.value for r in ds.results if r.test_code == "K" and r.error is None]
    assert statistics.mean(r.value for r in hemo) > statistics.mean(clean_k) + 0.3
    assert all(r.hil.get("H", 0) <= 20 for r in ds.results
               if r.tube == "serum" and r.error != "hemolysis" and
               all(x.error != "hemolysis" for x in by_patient[(r.site_id, r.patient_id)]))
    # Transcription: one result per affected patient.
    trans = Counter((r.site_id, r.patient_id) for r in ds.results
                    if r.error == "transcription")
    assert len(trans) == 20 and set(trans.values()) == {1}
    # Shift: the shifted analyte's controls in those runs sit near the shift.
    assert ds.shifts
    lots = {(lo.analyzer_id, lo.test_code, lo.level): lo for lo in ds.lots}
    for analyzer, test, first_run, sd in ds.shifts:
        runs = {r.run_code for r in ds.results if r.error == "shift" and r.test_code == test}
        assert first_run in runs
        z = [(c.value - lots[(analyzer, test, c.level)].mean) / lots[(analyzer, test, c.level)].sd
             for c in ds.controls if c.run_code in runs and c.test_code == test]
        assert abs(statistics.mean(z) - sd) < 1.5
    # Stability: the tube is held, and the wrong results are those past their window.
    catalog = get_catalog()
    stale = [r for r in ds.results if r.error == "stability"]
    assert stale
    for r in stale:
        assert r.specimen_hold.startswith("past stability: ")
        hours = (r.measured_at - r.collected_at).total_seconds() / 3600
        assert stability_hours(catalog.test(r.test_code), r.condition, r.spun) < hours


def test_replay_file_is_what_the_validation_harness_reads(tmp_path: Path) -> None:
    ds = generate(seed=4, patients=50, errors={"transcription": 0.1, "wbit": 0.08})
    path = tmp_path / "replay.jsonl"
    assert write_replay(ds, path) == len(ds.results)
    lines = read_replay(path)
    assert len(lines) == len(ds.results)
    for line, r in zip(lines, ds.results, strict=True):
        assert line.item.test_code == r.test_code and line.item.value == r.value
        assert line.item.specimen == r.accession
        assert line.error == r.error
        if r.error:
            assert line.human == "hold"
        assert len(line.item.previous) == len(r.previous)


def test_loaded_into_the_database_and_qc_agrees(center: Center) -> None:
    ds = generate(seed=9, patients=120, errors={"shift": 0.3, "stability": 0.05},
                  specimens_per_run=20)
    with center.db.session() as s:
        loaded = load(s, ds)
    with center.db.session() as s:
        pending = s.scalar(select(func.count()).select_from(LabResult)
                           .where(LabResult.state == "pending"))
        released = s.scalar(select(func.count()).select_from(LabResult)
                            .where(LabResult.state == "autoverified"))
        assert pending == len(ds.results)
        assert released == sum(len(r.previous) for r in ds.results
                               if r.tube == "serum" and r.test_code == "K")
        assert s.scalar(select(func.count()).select_from(LabControlResult)) == len(ds.controls)
        held_tubes = s.scalar(select(func.count()).select_from(LabSpecimen)
                              .where(LabSpecimen.hold_reason != ""))
        assert held_tubes == len({r.accession for r in ds.results if r.specimen_hold})
        # Judge every run in order, as the lab_run job does.
        for run in s.scalars(select(LabRun).order_by(LabRun.started_at, LabRun.id)):
            qc.evaluate_run(s, run)
        holds = {rid: r.qc_hold for rid, r in loaded.results.items()}
        db_holds = {rid: hold for rid, hold in s.execute(
            select(LabResult.id, LabResult.qc_hold).where(LabResult.id.in_(list(holds))))}
    assert db_holds == holds
    assert any(holds.values())


def test_command_line_writes_a_replay_file(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    assert main(["--out", str(out), "--patients", "20", "--error", "transcription=0.1"]) == 0
    lines = read_replay(out)
    assert len(lines) == 200
    assert sum(ln.error == "transcription" for ln in lines) == 2
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--error", "typo=0.1"])
    assert e.value.code == 2
