"""QC of a run on a real database: a failing control holds the run's patient results of
that analyte (the rule named), other analytes and other runs are untouched, the history
of earlier runs is read (2-2s across runs), the control results carry their rules, and
everything is audited.  Lots are registered through ``lab.qc.add_lot`` (bad input
refused) and the ``rdc lab qc-*`` commands run as a process."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from conftest import Center
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AuditRecord
from core.models.lab import (
    LabControlLot,
    LabControlResult,
    LabOrder,
    LabResult,
    LabRun,
    LabSpecimen,
)
from core.sites import SiteSpec, add_site
from lab import qc

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
LOTS = {("K", 1): (4.0, 0.1), ("K", 2): (6.5, 0.15), ("NA", 1): (120.0, 1.5),
        ("NA", 2): (150.0, 2.0)}


def _site(s: Session) -> None:
    add_site(s, SiteSpec(id="county-a", name="County A", ae_title="COUNTY_A",
                         host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
             actor="test")


def _lots(s: Session) -> dict[tuple[str, int], LabControlLot]:
    return {(t, lv): qc.add_lot(s, analyzer_id="CHEM1", lot=f"QC{lv}-2612", test_code=t,
                                level=lv, mean=m, sd=sd, actor="test")
            for (t, lv), (m, sd) in LOTS.items()}


def _run(s: Session, code: str, at: datetime, lots: dict[tuple[str, int], LabControlLot],
         z: dict[tuple[str, int], float], patients: int = 0) -> LabRun:
    """A CHEM1 run with one control per lot at ``z`` SD, and ``patients`` specimens with a
    K and an NA result each."""
    run = LabRun(analyzer_id="CHEM1", run_code=code, started_at=at, state="received")
    s.add(run)
    s.flush()
    for key, lot in lots.items():
        value = lot.mean + z.get(key, 0.0) * lot.sd
        s.add(LabControlResult(lot_id=lot.id, run_id=run.id, value=value, z=0.0,
                               measured_at=at))
    for i in range(patients):
        order = LabOrder(site_id="county-a", placer_order_number=f"{code}-{i}",
                         filler_order_number=f"F{code}-{i}", patient_id=f"P{i}", sex="F")
        s.add(order)
        s.flush()
        spec = LabSpecimen(order_id=order.id, accession=f"L{code}{i:04d}",
                           specimen_type="serum")
        s.add(spec)
        s.flush()
        for test, value in (("K", 4.1), ("NA", 140.0)):
            s.add(LabResult(order_id=order.id, specimen_id=spec.id, site_id="county-a",
                            patient_id=f"P{i}", test_code=test, state="pending",
                            value=value, units="mmol/L", analyzer_id="CHEM1", run_id=run.id,
                            measured_at=at))
    s.flush()
    return run


def test_failing_control_holds_that_analyte_of_that_run_only(center: Center) -> None:
    with center.db.session() as s:
        _site(s)
        lots = _lots(s)
        for i in range(5):  # quiet history
            r = _run(s, f"H{i}", T0 + timedelta(hours=i), lots, {("K", 1): 0.3 * (-1) ** i})
            assert {v["status"] for v in qc.evaluate_run(s, r).values()} == {"accept"}
        bad = _run(s, "R1", T0 + timedelta(hours=6), lots, {("K", 1): 3.5}, patients=3)
        verdicts = qc.evaluate_run(s, bad)
        later = _run(s, "R2", T0 + timedelta(hours=7), lots, {}, patients=2)
        assert qc.evaluate_run(s, later)["K"]["status"] == "accept"
        bad_id, later_id = bad.id, later.id
    assert verdicts["K"] == {"status": "reject", "rules": ["1-2s", "1-3s"]}
    assert verdicts["NA"] == {"status": "accept", "rules": []}
    with center.db.session() as s:
        run = s.get(LabRun, bad_id)
        assert run is not None and run.qc_status["K"]["status"] == "reject"
        results = list(s.scalars(select(LabResult).where(LabResult.run_id == bad_id)))
        k = [r for r in results if r.test_code == "K"]
        na = [r for r in results if r.test_code == "NA"]
        assert len(k) == 3 and len(na) == 3
        assert all(r.qc_hold == "QC reject on CHEM1 run R1: 1-3s" for r in k)
        assert all(r.qc_hold == "" for r in na)
        assert all(r.qc_hold == "" for r in s.scalars(
            select(LabResult).where(LabResult.run_id == later_id)))
        controls = {(lot.test_code, lot.level): cr for cr, lot in s.execute(
            select(LabControlResult, LabControlLot)
            .join(LabControlLot, LabControlLot.id == LabControlResult.lot_id)
            .where(LabControlResult.run_id == bad_id))}
        assert controls[("K", 1)].status == "reject"
        assert controls[("K", 1)].rules == ["1-2s", "1-3s"]
        assert controls[("K", 1)].z == pytest.approx(3.5)
        assert controls[("K", 2)].status == "accept" and controls[("K", 2)].rules == []
        audits = list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "lab.qc_evaluate", AuditRecord.object_id == str(bad_id))))
        assert len(audits) == 1
        assert audits[0].detail["held"] == {"K": 3}
        assert audits[0].detail["verdicts"]["K"]["status"] == "reject"
        status = qc.run_status(s, bad_id)
        assert status["held_results"] == 3 and status["qc_status"]["K"]["status"] == "reject"


def test_2_2s_across_runs_and_levels_from_the_database(center: Center) -> None:
    with center.db.session() as s:
        _site(s)
        lots = _lots(s)
        for i in range(3):
            qc.evaluate_run(s, _run(s, f"H{i}", T0 + timedelta(hours=i), lots, {}))
        first = _run(s, "A", T0 + timedelta(hours=4), lots, {("NA", 2): 2.4}, patients=1)
        assert qc.evaluate_run(s, first)["NA"]["status"] == "warning"
        second = _run(s, "B", T0 + timedelta(hours=5), lots, {("NA", 2): 2.2}, patients=2)
        v = qc.evaluate_run(s, second)
        assert v["NA"]["status"] == "reject"
        assert "2-2s (across runs)" in v["NA"]["rules"]
        held = [r.qc_hold for r in s.scalars(select(LabResult).where(
            LabResult.run_id == second.id, LabResult.test_code == "NA"))]
        assert held == ["QC reject on CHEM1 run B: 2-2s (across runs)"] * 2
        # Across levels within one run: K levels 1 and 2 both below -2 SD, and R-4s.
        both = _run(s, "C", T0 + timedelta(hours=6), lots, {("K", 1): -2.3, ("K", 2): -2.1})
        assert "2-2s (across levels)" in qc.evaluate_run(s, both)["K"]["rules"]
        spread = _run(s, "D", T0 + timedelta(hours=7), lots, {("K", 1): 2.3, ("K", 2): -2.1})
        assert "R-4s (across levels)" in qc.evaluate_run(s, spread)["K"]["rules"]


def test_analyte_without_controls_keeps_the_last_reject(center: Center) -> None:
    with center.db.session() as s:
        _site(s)
        lots = _lots(s)
        bad = _run(s, "R1", T0, lots, {("K", 2): -3.2})
        assert qc.evaluate_run(s, bad)["K"]["status"] == "reject"
        # The next run carries only NA controls: its K results stay held.
        na_only = {k: v for k, v in lots.items() if k[0] == "NA"}
        nxt = _run(s, "R2", T0 + timedelta(hours=1), na_only, {}, patients=1)
        v = qc.evaluate_run(s, nxt)
        assert v["K"]["status"] == "reject"
        assert v["K"]["rules"][-1] == "1-3s (run R1, no passing control since)"
        k = s.scalars(select(LabResult).where(LabResult.run_id == nxt.id,
                                              LabResult.test_code == "K")).one()
        assert k.qc_hold.startswith("QC reject on CHEM1 run R2: ")


def test_add_lot_refuses_bad_input(center: Center) -> None:
    with center.db.session() as s:
        qc.add_lot(s, analyzer_id="CHEM1", lot="L1", test_code="K", level=1, mean=4.0,
                   sd=0.1, actor="test")
        with pytest.raises(InvalidInput, match=r"SD 0\.0"):
            qc.add_lot(s, analyzer_id="CHEM1", lot="L2", test_code="K", level=1, mean=4.0,
                       sd=0.0, actor="test")
        with pytest.raises(InvalidInput, match="does not run test HGB"):
            qc.add_lot(s, analyzer_id="CHEM1", lot="L2", test_code="HGB", level=1,
                       mean=4.0, sd=0.1, actor="test")
        with pytest.raises(InvalidInput, match="unknown analyzer"):
            qc.add_lot(s, analyzer_id="NOPE", lot="L2", test_code="K", level=1, mean=4.0,
                       sd=0.1, actor="test")
        with pytest.raises(InvalidInput, match="unknown test code"):
            qc.add_lot(s, analyzer_id="CHEM1", lot="L2", test_code="XX", level=1, mean=4.0,
                       sd=0.1, actor="test")
        with pytest.raises(Conflict, match="already registered"):
            qc.add_lot(s, analyzer_id="CHEM1", lot="L1", test_code="K", level=1, mean=4.0,
                       sd=0.1, actor="test")
        with pytest.raises(NotFound):
            qc.evaluate_run_id(s, 999)
    with center.db.session() as s:
        assert [(x.lot, x.test_code, x.level) for x in qc.lots(s)] == [("L1", "K", 1)]


def test_qc_commands(center: Center, tmp_path: Path) -> None:
    with center.db.session() as s:
        _site(s)
    r = center.rdc("lab", "qc-lot", "add", "--analyzer", "CHEM1", "--lot", "Q1",
                   "--test", "K", "--level", "1", "--mean", "4.0", "--sd", "0.1")
    assert r.returncode == 0, r.stderr
    r = center.rdc("lab", "qc-lot", "add", "--analyzer", "CHEM1", "--lot", "Q1",
                   "--test", "K", "--level", "2", "--mean", "6.5", "--sd", "0")
    assert r.returncode != 0 and "SD" in r.stderr
    r = center.rdc("lab", "qc-lots")
    assert r.returncode == 0 and re.search(r"K\W+1\W+Q1\W+4\W+0\.1\W+True", r.stdout), r.stdout
    with center.db.session() as s:
        lot = s.scalars(select(LabControlLot)).one()
        runs = []
        for i, z in enumerate([0.2, -0.5, 3.6]):
            run = _run(s, f"C{i}", T0 + timedelta(hours=i), {("K", 1): lot}, {("K", 1): z},
                       patients=1 if i == 2 else 0)
            qc.evaluate_run(s, run)
            runs.append(run.id)
    r = center.rdc("lab", "qc-status", str(runs[-1]))
    assert r.returncode == 0, r.stderr
    assert "reject" in r.stdout and "1-3s" in r.stdout
    r = center.rdc("lab", "qc-status", "9999")
    assert r.returncode != 0 and "not found" in r.stderr
    out = tmp_path / "k1.png"
    r = center.rdc("lab", "qc-chart", "--analyzer", "CHEM1", "--test", "K", "--level", "1",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = center.rdc("lab", "qc-chart", "--analyzer", "CHEM1", "--test", "NA", "--level", "1",
                   "--out", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "no control lot" in r.stderr
