"""Quality control of an analyzer run: the Westgard multirules on its controls, and the
hold of every patient result of an analyte whose control failed.

Why it runs before autoverification (``lab.run_job``): a result measured while the
analyzer was out of control must not be released by the rules, however normal it looks.
``evaluate_run`` sets ``result.qc_hold`` naming the rule; the autoverification engine
holds such a result, and a reviewer must rerun it or release it with a reason
(``lab.review``, audited ``lab.qc_release``).

History: the last :data:`HISTORY_N` control results of each lot measured before the
run (10-x needs ten points of one level; 20 keeps the across-levels windows full).  Runs
are ordered by when their controls were measured, so the levels of one run line up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput, NotFound
from core.models.lab import LabControlLot, LabControlResult, LabResult, LabRun
from lab.catalog import get_catalog
from lab.states import FINAL_RESULT_STATES
from lab.westgard import DEFAULT_RULES, ControlPoint, Violation, evaluate, status_of

#: Control results of each lot read as history (per lot, newest first).
HISTORY_N = 20


def add_lot(session: Session, *, analyzer_id: str, lot: str, test_code: str, level: int,
            mean: float, sd: float, actor: str) -> LabControlLot:
    """Register a control lot's target mean and SD for one analyte and level.

    The analyzer must run the test (catalog); SD must be positive, since every z-score
    divides by it; a lot already registered for that analyte and level is a Conflict.
    """
    catalog = get_catalog()
    analyzer = catalog.analyzers.get(analyzer_id)
    if analyzer is None:
        raise InvalidInput(f"unknown analyzer {analyzer_id!r}: not in the lab catalog "
                           f"{catalog.version} (known: {', '.join(sorted(catalog.analyzers))})")
    catalog.test(test_code)
    if test_code not in analyzer.tests:
        raise InvalidInput(f"analyzer {analyzer_id} does not run test {test_code} "
                           f"(it runs: {', '.join(analyzer.tests)})")
    if not lot.strip() or len(lot) > 32 or "^" in lot or "|" in lot:
        raise InvalidInput(f"lot {lot!r}: 1-32 characters, no '^' or '|' (it travels in "
                           "the ASTM specimen id QC^<lot>^<level>)")
    if not 1 <= level <= 9:
        raise InvalidInput(f"level {level}: must be 1-9")
    if not (sd > 0 and sd == sd and abs(sd) != float("inf")):
        raise InvalidInput(f"SD {sd}: must be a positive number")
    if mean != mean or abs(mean) == float("inf"):
        raise InvalidInput(f"mean {mean}: must be a number")
    taken = session.scalar(select(LabControlLot).where(
        LabControlLot.analyzer_id == analyzer_id, LabControlLot.lot == lot,
        LabControlLot.test_code == test_code, LabControlLot.level == level))
    if taken is not None:
        raise Conflict(f"control lot {lot} {test_code} level {level} is already registered "
                       f"on {analyzer_id} (mean {taken.mean}, SD {taken.sd})")
    row = LabControlLot(analyzer_id=analyzer_id, lot=lot, test_code=test_code, level=level,
                        mean=mean, sd=sd, active=True)
    session.add(row)
    session.flush()
    audit.append(session, actor=actor, action="lab.qc_lot_add", object_type="lab_control_lot",
                 object_id=str(row.id), detail={"analyzer": analyzer_id, "lot": lot,
                                                 "test": test_code, "level": level,
                                                 "mean": mean, "sd": sd})
    return row


def lots(session: Session, *, analyzer_id: str | None = None) -> list[LabControlLot]:
    q = select(LabControlLot).order_by(LabControlLot.analyzer_id, LabControlLot.test_code,
                                       LabControlLot.level, LabControlLot.id)
    if analyzer_id:
        q = q.where(LabControlLot.analyzer_id == analyzer_id)
    return list(session.scalars(q))


def _history(session: Session, run: LabRun, lot_ids: Sequence[int], before: datetime,
             ) -> list[tuple[LabControlResult, int]]:
    """(control result, its lot's level) of the last HISTORY_N per lot before ``before``."""
    out: list[tuple[LabControlResult, int]] = []
    for lot_id in lot_ids:
        rows = session.execute(
            select(LabControlResult, LabControlLot.level)
            .join(LabControlLot, LabControlLot.id == LabControlResult.lot_id)
            .where(LabControlResult.lot_id == lot_id, LabControlResult.run_id != run.id,
                   LabControlResult.measured_at <= before)
            .order_by(LabControlResult.measured_at.desc(), LabControlResult.id.desc())
            .limit(HISTORY_N)).all()
        out.extend((r, int(lv)) for r, lv in rows)
    return out


def _judge(session: Session, run: LabRun, current: list[tuple[LabControlResult, LabControlLot]],
           ) -> tuple[list[Violation], list[ControlPoint]]:
    """The violations of one analyte's controls in ``run``, and its current points."""
    before = min(cr.measured_at for cr, _ in current)
    hist = _history(session, run, sorted({lot.id for _, lot in current}), before)
    # Runs in the order their controls were measured: each earlier run gets an ordinal.
    first_at: dict[int, datetime] = {}
    for cr, _ in hist:
        at = first_at.get(cr.run_id)
        first_at[cr.run_id] = cr.measured_at if at is None else min(at, cr.measured_at)
    ordinal = {rid: i for i, rid in enumerate(sorted(first_at, key=lambda r: (first_at[r], r)))}
    now_run = len(ordinal)
    history = [ControlPoint(ordinal[cr.run_id], lv, cr.z) for cr, lv in hist]
    points = [ControlPoint(now_run, lot.level, cr.z) for cr, lot in current]
    return evaluate(history, points, DEFAULT_RULES), points


def _inherited_reject(session: Session, run: LabRun, test_code: str) -> dict[str, Any] | None:
    """An analyte with no control in this run keeps the analyzer's last QC verdict if
    that was a reject: the analyzer is out of control until a control passes."""
    last = session.execute(
        select(LabControlResult.run_id)
        .join(LabControlLot, LabControlLot.id == LabControlResult.lot_id)
        .where(LabControlLot.analyzer_id == run.analyzer_id,
               LabControlLot.test_code == test_code, LabControlResult.run_id != run.id,
               LabControlResult.measured_at <= run.started_at)
        .order_by(LabControlResult.measured_at.desc()).limit(1)).scalar()
    if last is None:
        return None
    prev = session.get(LabRun, last)
    if prev is None:
        return None
    verdict = (prev.qc_status or {}).get(test_code)
    if not verdict or verdict.get("status") != "reject":
        return None
    return {"status": "reject",
            "rules": [f"{r} (run {prev.run_code}, no passing control since)"
                      for r in verdict.get("rules", [])]}


def evaluate_run(session: Session, run: LabRun, now: datetime | None = None,
                 ) -> dict[str, dict[str, Any]]:
    """Judge every analyte's controls in ``run``; hold the patient results of rejected ones.

    Returns (and stores on ``run.qc_status``) per test code ``{"status": "accept" |
    "warning" | "reject", "rules": [labels]}``.  Each control result gets its own status
    and the rules that involve its level.  Audited ``lab.qc_evaluate``.
    """
    del now  # the verdict depends on the measurements, not on when it is computed
    rows = session.execute(
        select(LabControlResult, LabControlLot)
        .join(LabControlLot, LabControlLot.id == LabControlResult.lot_id)
        .where(LabControlResult.run_id == run.id)
        .order_by(LabControlLot.test_code, LabControlLot.level, LabControlResult.id)).all()
    by_test: dict[str, list[tuple[LabControlResult, LabControlLot]]] = defaultdict(list)
    for cr, lot in rows:
        cr.z = (cr.value - lot.mean) / lot.sd  # the lot's current targets
        by_test[lot.test_code].append((cr, lot))
    verdicts: dict[str, dict[str, Any]] = {}
    for test_code, current in by_test.items():
        violations, _ = _judge(session, run, current)
        status = status_of(violations)
        verdicts[test_code] = {"status": status, "rules": [v.label for v in violations]}
        for cr, lot in current:
            mine = [v for v in violations if v.level in (None, lot.level)]
            cr.rules = [v.label for v in mine]
            cr.status = status_of(mine)
    patient_tests = set(session.scalars(
        select(LabResult.test_code).where(LabResult.run_id == run.id).distinct()))
    for test_code in sorted(patient_tests - set(verdicts)):
        inherited = _inherited_reject(session, run, test_code)
        if inherited is not None:
            verdicts[test_code] = inherited
    held: dict[str, int] = {}
    for test_code, verdict in verdicts.items():
        if verdict["status"] != "reject":
            continue
        rejecting = [r for r in verdict["rules"] if not r.startswith("1-2s")]
        reason = (f"QC reject on {run.analyzer_id} run {run.run_code}: "
                  f"{', '.join(rejecting)}")
        results = session.scalars(select(LabResult).where(
            LabResult.run_id == run.id, LabResult.test_code == test_code))
        n = 0
        for r in results:
            if r.state in FINAL_RESULT_STATES or r.review_action == "release":
                continue
            r.qc_hold = reason
            n += 1
        held[test_code] = n
    run.qc_status = verdicts
    session.flush()
    audit.append(session, actor="qc", action="lab.qc_evaluate", object_type="lab_run",
                 object_id=str(run.id),
                 detail={"analyzer": run.analyzer_id, "run": run.run_code,
                         "verdicts": verdicts, "held": held})
    return verdicts


def evaluate_run_id(session: Session, run_id: int, now: datetime | None = None,
                    ) -> dict[str, dict[str, Any]]:
    run = session.get(LabRun, run_id)
    if run is None:
        raise NotFound(f"lab run {run_id} not found")
    return evaluate_run(session, run, now)


def run_status(session: Session, run_id: int) -> dict[str, Any]:
    """A run's QC verdict with each control result (what ``rdc lab qc-status`` prints)."""
    run = session.get(LabRun, run_id)
    if run is None:
        raise NotFound(f"lab run {run_id} not found")
    controls = [
        {"test": lot.test_code, "lot": lot.lot, "level": lot.level, "value": cr.value,
         "z": round(cr.z, 2), "status": cr.status, "rules": list(cr.rules)}
        for cr, lot in session.execute(
            select(LabControlResult, LabControlLot)
            .join(LabControlLot, LabControlLot.id == LabControlResult.lot_id)
            .where(LabControlResult.run_id == run_id)
            .order_by(LabControlLot.test_code, LabControlLot.level))]
    held = session.scalar(select(func.count()).select_from(LabResult).where(
        LabResult.run_id == run_id, LabResult.qc_hold != ""))
    return {"run_id": run.id, "analyzer": run.analyzer_id, "run_code": run.run_code,
            "state": run.state, "qc_status": dict(run.qc_status or {}),
            "controls": controls, "held_results": int(held or 0)}
