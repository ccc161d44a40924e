"""The ``lab_run`` job (lab/run_job.py): QC, autoverification, release of the autoverified
results, a critical notice per critical result, all in the job's one transaction; a
failing control holds its analyte's results; running the job twice changes nothing."""

from __future__ import annotations

from lab_autoverify_support import NOW, add_run, add_specimen, db
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from core import jobs
from core.db import Database
from core.models import AuditRecord, Job, OutboundMessage
from core.models.lab import (
    LabControlLot,
    LabControlResult,
    LabCriticalNotice,
    LabResult,
    LabRun,
)
from lab.run_job import JOB_KIND, process_run, run_lab_run

__all__ = ["db"]

CHEM = {"NA": 140.0, "K": 4.1, "CL": 103.0, "HCO3": 25.0, "CREA": 70.0, "GLU": 5.2}
#: Control lots of CHEM1 (level 1, level 2): mean, SD.
LOTS = {"K": ((4.0, 0.1), (6.5, 0.15)), "NA": ((120.0, 1.5), (155.0, 2.0))}


def _controls(s: Session, run: LabRun, k_shift_sd: float = 0.0) -> None:
    for code, levels in LOTS.items():
        for level, (mean, sd) in enumerate(levels, 1):
            lot = s.scalar(select(LabControlLot).where(
                LabControlLot.test_code == code, LabControlLot.level == level))
            if lot is None:
                lot = LabControlLot(analyzer_id="CHEM1", lot=f"QC-{code}-{level}",
                                    test_code=code, level=level, mean=mean, sd=sd)
                s.add(lot)
                s.flush()
            shift = k_shift_sd if code == "K" else 0.0
            value = mean + (0.3 + shift) * sd
            s.add(LabControlResult(lot_id=lot.id, run_id=run.id, value=value,
                                   z=(value - mean) / sd, measured_at=NOW))
    s.flush()


def _count(s: Session, model: type, *where: ColumnElement[bool]) -> int:
    return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_a_run_is_checked_verified_released_and_its_critical_notified(db: Database) -> None:
    with db.session() as s:
        run = add_run(s)
        _controls(s, run)
        clean = add_specimen(s, CHEM, patient="P1", run=run)
        [crit, na] = add_specimen(s, {"K": 7.2, "NA": 139.0}, patient="P2", run=run)
        counts = process_run(s, run.id, now=NOW)
        assert counts == {"results": 8, "autoverified": 7, "held": 1, "released": 7,
                          "critical": 1}
        assert run.state == "evaluated" and run.qc_status["K"]["status"] == "accept"
        assert all(r.state == "autoverified" and r.message_id is not None
                   for r in [*clean, na])
        # One ORU per order, back to the site.
        assert {r.message_id for r in clean} != {na.message_id}
        assert _count(s, OutboundMessage, OutboundMessage.kind == "lab-result") == 2
        assert crit.state == "held" and crit.critical and crit.message_id is None
        notice = s.scalar(select(LabCriticalNotice).where(
            LabCriticalNotice.result_id == crit.id))
        assert notice is not None and notice.site_id == "county-a" and notice.tier == 0
        assert _count(s, AuditRecord, AuditRecord.action == "lab.autoverify") == 1
        assert _count(s, AuditRecord, AuditRecord.action == "lab.release") == 2


def test_a_failing_control_holds_its_analyte_and_the_rest_goes_out(db: Database) -> None:
    with db.session() as s:
        run = add_run(s)
        _controls(s, run, k_shift_sd=3.5)  # both K levels beyond 3 SD: 1-3s, 2-2s
        first = add_specimen(s, CHEM, patient="P1", run=run)
        second = add_specimen(s, CHEM, patient="P2", run=run)
        process_run(s, run.id, now=NOW)
        assert run.qc_status["K"]["status"] == "reject"
        for r in first + second:
            if r.test_code == "K":
                assert r.state == "held" and r.message_id is None
                [hit] = r.rules_fired
                assert hit["rule"] == "qc-hold" and "1-3s" in hit["message"]
            else:
                assert r.state == "autoverified" and r.message_id is not None


def test_the_job_twice_changes_nothing(db: Database) -> None:
    if JOB_KIND not in jobs.registered_kinds():  # what lab/plugin.py registers
        jobs.register_handler(JOB_KIND, run_lab_run)
    with db.session() as s:
        run = add_run(s)
        _controls(s, run)
        add_specimen(s, CHEM, patient="P1", run=run)
        add_specimen(s, {"K": 7.2}, patient="P2", run=run)
        run_id = run.id
        job, _ = jobs.create_job(s, jobs.NewJob(key=f"lab_run:{run_id}", kind=JOB_KIND,
                                                queue="routing", params={"run_id": run_id}))
        job_id = job.id
    assert jobs.execute(db, job_id) == "succeeded"

    def snapshot() -> tuple[object, ...]:
        with db.session() as s:
            rows = s.execute(select(LabResult.id, LabResult.state, LabResult.message_id,
                                    LabResult.rules_fired)
                             .where(LabResult.run_id == run_id).order_by(LabResult.id)).all()
            return (tuple(tuple(r) for r in rows), _count(s, OutboundMessage),
                    _count(s, LabCriticalNotice),
                    _count(s, AuditRecord, AuditRecord.action.in_(
                        ["lab.autoverify", "lab.release", "lab.critical_notify"])))

    before = snapshot()
    assert before[1] == 2 and before[2] == 1
    # The handler itself run again (a retried job whose first commit went through).
    with db.session() as s:
        job_row = s.get(Job, job_id)
        assert job_row is not None
        run_lab_run(s, job_row)
    assert snapshot() == before
    assert jobs.execute(db, job_id) == "succeeded"  # a finished job is skipped
    assert snapshot() == before


def test_a_missing_run_is_skipped(db: Database) -> None:
    with db.session() as s:
        job, _ = jobs.create_job(s, jobs.NewJob(key="lab_run:999", kind=JOB_KIND,
                                                queue="routing", params={"run_id": 999}))
        try:
            run_lab_run(s, job)
        except jobs.SkipJob as e:
            assert "999" in str(e)
        else:
            raise AssertionError("a job for a missing run must be skipped")


def test_a_critical_beyond_the_measuring_range_is_notified_and_read_back(
        db: Database) -> None:
    """K ">10" (above the analyzer's measuring range) has no number, yet is critical: the
    site is notified like any other critical value, and reads it back with its '>'."""
    from core.errors import Conflict
    from lab import critical

    with db.session() as s:
        run = add_run(s)
        _controls(s, run)
        [k] = add_specimen(s, {"K": None}, patient="P3", run=run)
        k.value_text = ">10.0"
        s.flush()
        counts = process_run(s, run.id, now=NOW)
        assert counts["critical"] == 1
        assert k.state == "held" and k.critical
        notice = s.scalar(select(LabCriticalNotice).where(
            LabCriticalNotice.result_id == k.id))
        assert notice is not None and notice.state == "notified"
        notice_id = notice.id
    with db.session() as s:
        try:
            critical.acknowledge(s, notice_id, actor="nurse", name="Nurse Li",
                                 readback="10.0", now=NOW)
        except Conflict:
            pass
        else:
            raise AssertionError("a censored value read back without its '>' was accepted")
    with db.session() as s:
        acked = critical.acknowledge(s, notice_id, actor="nurse", name="Nurse Li",
                                     readback=">10.0", now=NOW)
        assert acked.state == "acknowledged" and acked.ack_matches
