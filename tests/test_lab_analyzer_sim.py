"""The simulated analyzer (devkit/analyzer_sim.py) and ``rdc lab analyzer-sim``: realistic
runs of pending tubes with their controls, injected faults, and both wire protocols
(ASTM for CHEM1; HL7 ORU over MLLP for HEME1, through the lab's MLLP listener)."""

from __future__ import annotations

import statistics
from datetime import timedelta

import pytest
from lab_analyzer_support import T0, astm_listener, make_lot, make_order, runs, serving
from sqlalchemy import func, select
from typer.testing import CliRunner

from core.errors import InvalidInput
from core.models.lab import LabControlLot, LabControlResult, LabCriticalNotice, LabResult
from devkit.analyzer_sim import (
    ControlFault,
    CriticalValue,
    SimOptions,
    parse_shift,
    plan_run,
    run_analyzer,
)
from devkit.center import Center
from devkit.ports import wait_until
from lab import mllp_server
from lab.catalog import get_catalog
from lab.results_in import store_run
from lab.run_job import process_run
from rdc.lab_cli import lab_app


def _chem_orders(c: Center, n: int = 6) -> None:
    with c.db.session() as s:
        for i in range(1, n + 1):
            make_order(s, i, ("K", "NA", "CREA", "GLU"), sex="M" if i % 2 else "F")
        make_order(s, 100, ("HGB", "WBC", "PLT"), specimen_type="whole blood")


def test_default_control_lots_are_created_once_and_existing_lots_used(
        env_center: Center) -> None:
    c = env_center
    with c.db.session() as s:
        make_lot(s, "CHEM1", "MYLOT", "K", 1, 4.2, 0.08)
    run = plan_run(c.db, "CHEM1", SimOptions(seed=1, controls_only=True), now=T0)
    assert len(run.controls) == 14  # 7 analytes, 2 levels
    assert {(m.test_code, m.level) for m in run.controls} == {
        (t, lv) for t in get_catalog().analyzers["CHEM1"].tests for lv in (1, 2)}
    k1 = next(m for m in run.controls if (m.test_code, m.level) == ("K", 1))
    assert k1.lot == "MYLOT" and abs(k1.value - 4.2) <= 1.8 * 0.08 + 1e-9
    plan_run(c.db, "CHEM1", SimOptions(seed=2, controls_only=True), now=T0)
    with c.db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabControlLot)) == 14
        lots = {(lot.test_code, lot.level): lot for lot in s.scalars(select(LabControlLot))}
    # Realistic targets: level 2 of potassium is abnormal high, its SD the analytical CV.
    assert lots["K", 2].mean == 6.5 and lots["K", 2].sd == pytest.approx(6.5 * 0.015)
    assert lots["NA", 1].mean == 135.0 and lots["NA", 1].sd == pytest.approx(0.945)


def test_a_run_measures_pending_tubes_with_plausible_values(env_center: Center) -> None:
    c = env_center
    _chem_orders(c)
    run = plan_run(c.db, "CHEM1", SimOptions(seed=3, flag_rate=0.0), now=T0)
    assert len(run.results) == 24 and {m.accession for m in run.results} == {
        f"L{i:08d}" for i in range(1, 7)}  # not the EDTA tube of HEME1
    catalog = get_catalog()
    for m in run.results:
        test = catalog.test(m.test_code)
        ref = test.reference_range("M", 45)
        assert ref is not None and ref.low is not None and ref.high is not None
        width = ref.high - ref.low
        assert m.value is not None and ref.low - width / 2 < m.value < ref.high + width / 2
        assert m.units == test.units and m.flags == ()
        assert m.value_text == f"{m.value:.{test.decimals}f}"
        assert m.hil is not None and m.hil["H"] < 50  # serum tubes carry indices
        assert m.measured_at > T0  # after the controls
    # The controls come first, then the tubes one after the other.
    assert max(c.measured_at for c in run.controls) < min(m.measured_at for m in run.results)
    # A patient's value is the patient's: another run agrees within the noise.
    again = plan_run(c.db, "CHEM1", SimOptions(seed=99), now=T0 + timedelta(hours=2))
    first = {(m.accession, m.test_code): m.value for m in run.results}
    for m in again.results:
        before = first[m.accession, m.test_code]
        assert before is not None and m.value is not None
        assert abs(m.value - before) / before < 0.15, m


def test_faults_are_injected_where_asked(env_center: Center) -> None:
    c = env_center
    _chem_orders(c)
    opts = SimOptions(fail_controls=(ControlFault.parse("K:2:+3.5"),),
                      criticals=(CriticalValue.parse("L00000003:K:7.1"),),
                      hemolysed=("L00000004",), seed=4)
    run = plan_run(c.db, "CHEM1", opts, now=T0)
    with c.db.session() as s:
        lot = s.scalar(select(LabControlLot).where(LabControlLot.test_code == "K",
                                                   LabControlLot.level == 2))
        assert lot is not None
    k2 = next(m for m in run.controls if (m.test_code, m.level) == ("K", 2))
    assert (k2.value - lot.mean) / lot.sd == pytest.approx(3.5, abs=1e-3)
    crit = next(m for m in run.results if (m.accession, m.test_code) == ("L00000003", "K"))
    assert (crit.value, crit.value_text) == (7.1, "7.1")
    hem = next(m for m in run.results if m.accession == "L00000004")
    assert hem.hil is not None and hem.hil["H"] >= 250
    # A shift of +3 SD on sodium: every control of it far above target.
    shifted = plan_run(c.db, "CHEM1", SimOptions(shift=dict([parse_shift("NA:+3")]), seed=5),
                       now=T0)
    with c.db.session() as s:
        na = {lot.level: lot for lot in s.scalars(select(LabControlLot).where(
            LabControlLot.test_code == "NA"))}
    zs = [(m.value - na[m.level].mean) / na[m.level].sd for m in shifted.controls
          if m.test_code == "NA"]
    assert len(zs) == 2 and all(z > 1.1 for z in zs) and statistics.mean(zs) > 2
    with pytest.raises(InvalidInput, match="L99999999"):
        plan_run(c.db, "CHEM1", SimOptions(criticals=(CriticalValue("L99999999", "K", 7),)))
    with pytest.raises(InvalidInput, match="TEST:LEVEL:SD"):
        ControlFault.parse("K+3")
    with pytest.raises(InvalidInput, match="does not measure"):
        plan_run(c.db, "CHEM1", SimOptions(shift={"HGB": 2.0}))


def test_out_of_range_values_are_reported_as_the_analyzer_does(env_center: Center) -> None:
    c = env_center
    _chem_orders(c, 1)
    run = plan_run(c.db, "CHEM1", SimOptions(criticals=(
        CriticalValue("L00000001", "K", 12.0), CriticalValue("L00000001", "GLU", 0.05)),
        seed=6), now=T0)
    k = next(m for m in run.results if m.test_code == "K")
    glu = next(m for m in run.results if m.test_code == "GLU")
    assert (k.value, k.value_text, k.flags) == (None, ">10", (">",))
    assert (glu.value, glu.value_text, glu.flags) == (None, "<0.1", ("<",))


def test_heme1_sends_an_oru_over_mllp_and_the_run_is_stored(env_center: Center) -> None:
    c = env_center
    _chem_orders(c, 1)
    with serving(lambda port: mllp_server.serve(c.db, "127.0.0.1", port)) as port:
        sent = run_analyzer(c.db, "HEME1", "127.0.0.1", port,
                            SimOptions(seed=7, run_code="H-1",
                                       criticals=(CriticalValue("L00000100", "PLT", 15),)))
    assert sent.ack_code == "AA", sent.ack_text
    (lab_run,) = runs(c.db)
    assert (lab_run.analyzer_id, lab_run.run_code) == ("HEME1", "H-1")
    with c.db.session() as s:
        got = {r.test_code: r for r in s.scalars(select(LabResult).where(
            LabResult.run_id == lab_run.id))}
        assert set(got) == {"HGB", "WBC", "PLT"}
        assert got["PLT"].value == 15 and got["PLT"].state == "pending"
        assert got["HGB"].units == "g/L"
        # HEME1 runs 5 analytes: 10 controls.
        assert s.scalar(select(func.count()).select_from(LabControlResult)
                        .where(LabControlResult.run_id == lab_run.id)) == 10


def test_cli_sends_a_run_and_refuses_bad_options(env_center: Center) -> None:
    c = env_center
    _chem_orders(c, 2)
    runner = CliRunner()
    with astm_listener(c.db, c.settings) as port:
        r = runner.invoke(lab_app, ["analyzer-sim", "--analyzer", "CHEM1", "--port", str(port),
                                    "--fail-control", "K:2:+3.5",
                                    "--critical", "L00000002:K:7.1", "--seed", "8",
                                    "--run-code", "CLI-1"])
        assert r.exit_code == 0, r.output
        assert "CHEM1 run CLI-1: 14 controls, 8 results on 2 tubes" in r.output
        wait_until(lambda: runs(c.db), 20, "the run stored")
        with c.db.session() as s:
            k = s.scalar(select(LabResult).where(LabResult.value == 7.1))
            assert k is not None and k.test_code == "K"
        r = runner.invoke(lab_app, ["analyzer-sim", "--analyzer", "CHEM1", "--port", str(port),
                                    "--fail-control", "K2"])
        assert r.exit_code != 0 and "TEST:LEVEL:SD" in r.output
        r = runner.invoke(lab_app, ["analyzer-sim", "--analyzer", "XRAY", "--port", str(port)])
        assert r.exit_code != 0 and "unknown analyzer 'XRAY'" in r.output
    r = runner.invoke(lab_app, ["analyzer-sim", "--analyzer", "CHEM1", "--port", str(port)])
    assert r.exit_code == 3 and "cannot reach the lab listener" in r.output


def test_a_rerun_asked_by_a_reviewer_is_measured_again(env_center: Center) -> None:
    c = env_center
    _chem_orders(c, 2)
    first = plan_run(c.db, "CHEM1", SimOptions(seed=13, run_code="R1"), now=T0)
    store_run(c.db, first, actor="t")
    assert plan_run(c.db, "CHEM1", SimOptions(seed=14), now=T0).results == ()
    with c.db.session() as s:
        k = s.scalar(select(LabResult).where(LabResult.test_code == "K")
                     .order_by(LabResult.id))
        assert k is not None
        k.state = "rerun"  # as lab.review leaves a result a reviewer sent back
    again = plan_run(c.db, "CHEM1", SimOptions(seed=15, run_code="R2"),
                     now=T0 + timedelta(hours=1))
    (m,) = again.results
    assert (m.accession, m.test_code) == ("L00000001", "K")
    store_run(c.db, again, actor="t")
    with c.db.session() as s:
        k = s.scalar(select(LabResult).where(LabResult.test_code == "K")
                     .order_by(LabResult.id))
        assert k is not None and k.state == "pending" and len(k.attempts) == 1
        assert k.value == m.value


def test_a_simulated_run_stored_twice_is_not_doubled(env_center: Center) -> None:
    c = env_center
    _chem_orders(c, 2)
    run = plan_run(c.db, "CHEM1", SimOptions(seed=9), now=T0)
    first = store_run(c.db, run, actor="t")
    again = store_run(c.db, run, actor="t")
    assert first.stored == 8 and first.controls == 14 and first.refused == ()
    assert again.duplicate and again.run_id == first.run_id


def test_simulated_electrolytes_keep_a_physiological_anion_gap(env_center: Center) -> None:
    c = env_center
    with c.db.session() as s:
        for i in range(1, 41):
            make_order(s, i, ("NA", "CL", "HCO3"))
    run = plan_run(c.db, "CHEM1", SimOptions(seed=11), now=T0)
    by_tube: dict[str, dict[str, float]] = {}
    for m in run.results:
        assert m.value is not None
        by_tube.setdefault(m.accession, {})[m.test_code] = m.value
    gaps = [v["NA"] - v["CL"] - v["HCO3"] for v in by_tube.values()]
    assert len(gaps) == 40 and all(3 <= g <= 20 for g in gaps), gaps
    assert 9 <= statistics.mean(gaps) <= 15


def test_a_failing_control_holds_its_analyte_and_a_critical_opens_a_notice(
        env_center: Center) -> None:
    """The simulator's run through the lab_run job: what the demo relies on."""
    c = env_center
    with c.db.session() as s:
        for i in range(1, 11):
            make_order(s, i, ("K", "NA", "CL", "HCO3", "CREA", "GLU"))
    for n in range(3):  # in-control history for the lots
        qc = plan_run(c.db, "CHEM1", SimOptions(seed=n, controls_only=True,
                                                run_code=f"QC-{n}"), now=T0 + timedelta(hours=n))
        stored = store_run(c.db, qc, actor="t")
        with c.db.session() as s:
            process_run(s, stored.run_id)
    run = plan_run(c.db, "CHEM1", SimOptions(
        seed=12, flag_rate=0.0, run_code="RUN-F", fail_controls=(ControlFault("K", 2, 3.5),),
        criticals=(CriticalValue("L00000003", "GLU", 1.9),)), now=T0 + timedelta(hours=4))
    stored = store_run(c.db, run, actor="t")
    with c.db.session() as s:
        process_run(s, stored.run_id)
    with c.db.session() as s:
        results = list(s.scalars(select(LabResult).where(LabResult.run_id == stored.run_id)))
        assert len(results) == 60
        k = [r for r in results if r.test_code == "K"]
        assert all(r.state == "held" and "1-3s" in r.qc_hold for r in k)
        others = [r for r in results if r.test_code != "K"]
        assert all(r.qc_hold == "" for r in others)
        glu = next(r for r in others if r.value == 1.9)
        assert glu.critical and glu.state == "held"
        notice = s.scalar(select(LabCriticalNotice))
        assert notice is not None and notice.result_id == glu.id
        # Everything else of an error-free simulated run is autoverified.
        assert sum(r.state == "autoverified" for r in others) == len(others) - 1
