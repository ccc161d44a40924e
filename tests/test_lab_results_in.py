"""lab.results_in.store_run on a real center database: results attach where they belong,
reruns keep the earlier value, refusals are kept and audited, a resent run is not
doubled, and the run's evaluation job is submitted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from lab_analyzer_support import T0, make_lot, make_order
from sqlalchemy import func, select

from conftest import _create_pg_database, _drop_pg_database
from core.db import Database, get_database
from core.errors import InvalidInput
from core.models import AuditRecord, Job
from core.models.lab import (
    LabControlResult,
    LabCustodyEvent,
    LabInboundMessage,
    LabOrder,
    LabResult,
    LabRun,
    LabSpecimen,
)
from devkit.center import Center
from lab.instrument_oru import build_oru, parse_oru
from lab.results_in import ControlMeasurement, MeasuredResult, RunData, store_run


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, env_center: Center) -> Iterator[Database]:
    """The center's database (SQLite), or a fresh PostgreSQL one; the job queue is the
    test center's either way."""
    if request.param == "sqlite":
        yield env_center.db
        return
    admin = request.getfixturevalue("pg_admin")
    name, url = _create_pg_database(admin)
    database = get_database(url)
    try:
        yield database
    finally:
        database.dispose()
        get_database.cache_clear()
        _drop_pg_database(admin, name)


def _m(acc: str, code: str, value: float, units: str = "mmol/L", *,
       flags: tuple[str, ...] = (), hil: dict[str, float] | None = None) -> MeasuredResult:
    return MeasuredResult(accession=acc, test_code=code, value=value, value_text=f"{value:g}",
                          units=units, flags=flags, measured_at=T0, hil=hil)


def _setup(db: Database) -> None:
    with db.session() as s:
        make_order(s, 1, ("K", "NA"))
        make_order(s, 2, ("K", "CREA"))
        make_lot(s, "CHEM1", "QCA", "K", 1, 4.0, 0.1)
        make_lot(s, "CHEM1", "QCA", "K", 2, 6.5, 0.15)


def _result(db: Database, acc: str, code: str) -> LabResult:
    with db.session() as s:
        row = s.scalar(select(LabResult).join(LabSpecimen, LabSpecimen.id == LabResult.specimen_id)
                       .where(LabSpecimen.accession == acc, LabResult.test_code == code))
        assert row is not None
        return row


def test_results_attach_to_their_ordered_rows_and_the_job_is_submitted(
        db: Database) -> None:
    _setup(db)
    run = RunData("CHEM1", "RUN-1", (
        _m("L00000001", "K", 4.4, flags=("H",), hil={"H": 20.0, "I": 3.0, "L": 10.0}),
        _m("L00000001", "NA", 141),
        _m("L00000002", "K", 3.9),
        _m("L00000002", "CREA", 88, "umol/L"),
    ), (ControlMeasurement("QCA", "K", 1, 4.2, T0), ControlMeasurement("QCA", "K", 2, 6.2, T0)))
    out = store_run(db, run, actor="analyzer:CHEM1")
    assert (out.stored, out.controls, out.refused, out.duplicate) == (4, 2, (), False)
    k1 = _result(db, "L00000001", "K")
    assert (k1.state, k1.value, k1.value_text, k1.units) == ("pending", 4.4, "4.4", "mmol/L")
    assert k1.instrument_flags == ["H"] and k1.run_id == out.run_id
    assert k1.analyzer_id == "CHEM1" and k1.measured_at == T0 and k1.attempts == []
    assert _result(db, "L00000002", "CREA").value == 88
    assert _result(db, "L00000002", "K").value == 3.9
    with db.session() as s:
        spec = s.scalar(select(LabSpecimen).where(LabSpecimen.accession == "L00000001"))
        assert spec is not None and spec.hil == {"H": 20.0, "I": 3.0, "L": 10.0}
        # The tube's custody timeline shows it on the analyzer, once for the run.
        assert spec.state == "on_analyzer"
        (event,) = s.scalars(select(LabCustodyEvent).where(
            LabCustodyEvent.specimen_id == spec.id, LabCustodyEvent.step == "on_analyzer"))
        assert (event.actor, event.location, event.at) == ("analyzer:CHEM1", "CHEM1", T0)
        assert event.detail["run"] == "RUN-1"
        order = s.get(LabOrder, spec.order_id)
        assert order is not None and order.state == "in_progress"
        lab_run = s.get(LabRun, out.run_id)
        assert lab_run is not None and lab_run.state == "received"
        assert lab_run.analyzer_id == "CHEM1" and lab_run.run_code == "RUN-1"
        zs = sorted(round(r.z, 6) for r in s.scalars(
            select(LabControlResult).where(LabControlResult.run_id == out.run_id)))
        assert zs == [-2.0, 2.0]
        job = s.scalar(select(Job).where(Job.kind == "lab_run"))
        assert job is not None and job.params == {"run_id": out.run_id}
        assert job.queue == "routing" and job.state == "queued"
        audit = s.scalar(select(AuditRecord).where(AuditRecord.action == "lab.run_store"))
        assert audit is not None and audit.detail["results"] == 4
        assert audit.detail["controls"] == 2


def test_a_rerun_keeps_the_earlier_value_in_attempts(db: Database) -> None:
    _setup(db)
    first = store_run(db, RunData("CHEM1", "RUN-1", (_m("L00000001", "K", 6.9),), ()),
                      actor="t")
    with db.session() as s:
        row = s.get(LabResult, _result(db, "L00000001", "K").id)
        assert row is not None
        row.state = "rerun"  # as a reviewer's "rerun" leaves it
        row.review_action = "rerun"
        row.review_reason = "hemolysed?"
    later = T0 + timedelta(hours=1)
    second = store_run(db, RunData("CHEM1", "RUN-2", (MeasuredResult(
        "L00000001", "K", 4.1, "4.1", "mmol/L", (), later),), ()), actor="t")
    k = _result(db, "L00000001", "K")
    assert (k.state, k.value, k.run_id, k.measured_at) == ("pending", 4.1, second.run_id, later)
    assert k.review_action == ""
    assert len(k.attempts) == 1
    old = k.attempts[0]
    assert old["value"] == 6.9 and old["run_id"] == first.run_id
    assert old["review_action"] == "rerun" and old["review_reason"] == "hemolysed?"
    assert old["measured_at"] == T0.isoformat()


def test_unknown_specimen_is_refused_recorded_and_audited_the_rest_stored(
        db: Database) -> None:
    _setup(db)
    out = store_run(db, RunData("CHEM1", "RUN-1", (
        _m("L00000001", "K", 4.0), _m("L99999999", "K", 5.0)), ()), actor="analyzer:CHEM1")
    assert out.stored == 1
    assert len(out.refused) == 1 and "L99999999" in out.refused[0]
    assert "unknown specimen" in out.refused[0]
    with db.session() as s:
        msg = s.scalar(select(LabInboundMessage).where(LabInboundMessage.outcome == "AE"))
        assert msg is not None
        assert (msg.sender, msg.channel) == ("CHEM1", "astm")
        assert "unknown specimen" in msg.reason and "L99999999" in msg.raw
        audit = s.scalar(select(AuditRecord).where(
            AuditRecord.action == "lab.result_refused"))
        assert audit is not None and audit.object_id == str(msg.id)
        assert "L99999999" in audit.detail["reason"]
        # Nothing was attached anywhere else.
        values = s.scalars(select(LabResult.value).where(LabResult.value.is_not(None))).all()
        assert values == [4.0]


def test_wrong_units_unordered_test_and_finished_result_are_refused(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        row = s.get(LabResult, _result(db, "L00000002", "K").id)
        assert row is not None
        row.state = "autoverified"
    out = store_run(db, RunData("CHEM1", "RUN-1", (
        _m("L00000001", "K", 4.0, "mEq/L"),       # units differ from the catalog
        _m("L00000001", "GLU", 5.0),              # not ordered on this tube
        _m("L00000001", "HGB", 120, "g/L"),       # not a test of CHEM1
        _m("L00000001", "XYZ", 1),                # not in the catalog
        _m("L00000002", "K", 4.0),                # already released
    ), ()), actor="t")
    assert out.stored == 0
    reasons = "\n".join(out.refused)
    assert "'mEq/L' do not match the catalog's 'mmol/L'" in reasons
    assert "not ordered on this specimen" in reasons
    assert "does not perform this test" in reasons
    assert "unknown test code" in reasons
    assert "autoverified, not awaiting" in reasons
    assert _result(db, "L00000001", "K").value is None
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabInboundMessage)) == 5
        # Nothing was stored, so there is nothing to evaluate.
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.kind == "lab_run")) == 0


def test_a_cancelled_order_and_an_empty_run_are_refused(db: Database) -> None:
    _setup(db)
    with db.session() as s:
        spec = s.scalar(select(LabSpecimen).where(LabSpecimen.accession == "L00000001"))
        assert spec is not None
        order = s.get(LabOrder, spec.order_id)
        assert order is not None
        order.state = "cancelled"
    out = store_run(db, RunData("CHEM1", "RUN-1", (
        _m("L00000001", "K", 4.0), _m("L00000002", "K", 4.1)), ()), actor="t")
    assert out.stored == 1 and "the order is cancelled" in out.refused[0]
    assert _result(db, "L00000001", "K").value is None
    with pytest.raises(InvalidInput, match="no results and no controls"):
        store_run(db, RunData("CHEM1", "RUN-2", (), ()), actor="t")
    assert [r.run_code for r in _runs(db)] == ["RUN-1"]


def _runs(db: Database) -> list[LabRun]:
    with db.session() as s:
        return list(s.scalars(select(LabRun)))


def test_unknown_control_lot_is_refused(db: Database) -> None:
    _setup(db)
    out = store_run(db, RunData("CHEM1", "RUN-1", (), (
        ControlMeasurement("QCA", "K", 1, 4.0, T0),
        ControlMeasurement("QCZ", "K", 1, 4.0, T0),
        ControlMeasurement("QCA", "NA", 1, 140, T0))), actor="t")
    assert out.controls == 1 and len(out.refused) == 2
    assert all("unknown on analyzer CHEM1" in r for r in out.refused)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabControlResult)) == 1
        assert s.scalar(select(func.count()).select_from(LabInboundMessage)
                        .where(LabInboundMessage.outcome == "AE")) == 2


def test_a_resent_run_is_recognised_not_doubled(db: Database) -> None:
    _setup(db)
    run = RunData("CHEM1", "RUN-1", (_m("L00000001", "K", 4.0),),
                  (ControlMeasurement("QCA", "K", 1, 4.0, T0),))
    first = store_run(db, run, actor="t")
    again = store_run(db, run, actor="t")
    assert again.duplicate and again.run_id == first.run_id and again.stored == 0
    k = _result(db, "L00000001", "K")
    assert k.attempts == [] and k.value == 4.0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabRun)) == 1
        assert s.scalar(select(func.count()).select_from(LabControlResult)) == 1
        assert s.scalar(select(func.count()).select_from(Job)
                        .where(Job.kind == "lab_run")) == 1
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "lab.run_resent")) == 1


def test_an_unknown_analyzer_refuses_the_whole_run(db: Database) -> None:
    _setup(db)
    with pytest.raises(InvalidInput, match="unknown analyzer 'CHEM9'"):
        store_run(db, RunData("CHEM9", "RUN-1", (_m("L00000001", "K", 4.0),), ()),
                  actor="t")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabRun)) == 0
        msg = s.scalar(select(LabInboundMessage))
        assert msg is not None and msg.outcome == "AR" and "CHEM9" in msg.reason
    assert _result(db, "L00000001", "K").value is None


# --- HL7 ORU^R01 from the hematology analyzer (lab/instrument_oru.py) ----------------
ORU = "\r".join([
    "MSH|^~\\&|HEME1|HEME1|RDC|LAB|20261201080000||ORU^R01^ORU_R01|HRUN-7|P|2.5.1",
    "OBR|1||QC^LOT-H^2|HGB^^99RDC|||20261201075000",
    "OBX|1|NM|HGB^^99RDC||71|g/L||N|||F|||20261201075000",
    "OBR|2||L00000003|CBC^^99RDC|||20261201080000",
    "OBX|1|NM|718-7^Hemoglobin^LN||128|g/L|115-150|N|||F|||20261201080500",
    "OBX|2|NM|PLT^^99RDC||15|10*9/L||LL~W|||F",
    "OBX|3|ST|WBC^^99RDC||>400|10*9/L||>|||F",
])


def test_an_instrument_oru_reads_as_a_run() -> None:
    run = parse_oru(ORU)
    assert (run.analyzer_id, run.run_code) == ("HEME1", "HRUN-7")
    (qc,) = run.controls
    assert (qc.lot, qc.test_code, qc.level, qc.value) == ("LOT-H", "HGB", 2, 71.0)
    hgb, plt, wbc = run.results
    assert (hgb.accession, hgb.test_code, hgb.value, hgb.units) == ("L00000003", "HGB",
                                                                   128.0, "g/L")
    assert hgb.measured_at == T0 + timedelta(minutes=5)
    assert (plt.value, plt.flags, plt.measured_at) == (15.0, ("LL", "W"), T0)  # OBR-7
    assert (wbc.value, wbc.value_text, wbc.flags) == (None, ">400", (">",))
    assert parse_oru(build_oru(run, at=T0)) == run


@pytest.mark.parametrize(("change", "error"), [
    (("ORU^R01^ORU_R01", "ORM^O01"), "is not ORU.R01"),
    (("OBR|2||L00000003|", "OBR|2|||"), "OBR-3 .specimen. is empty"),
    (("718-7^Hemoglobin^LN", "9999-9^X^LN"), "LOINC '9999-9' is not in the test catalog"),
    (("QC^LOT-H^2", "QC^LOT-H^high"), "a control needs OBR-3 QC.lot.level"),
    (("20261201080500", "2026-12-01"), "not an HL7 date/time"),
])
def test_a_bad_instrument_oru_is_refused_naming_the_field(change: tuple[str, str],
                                                          error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse_oru(ORU.replace(*change))
    with pytest.raises(InvalidInput, match="not an HL7 v2 message"):
        parse_oru("hello")
