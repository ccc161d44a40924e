"""Autoverification of measured results against the database: load, judge, record.

The rules are judged by the pure engine (lab/rules_engine.py); this module is the part
that reads and writes rows.  Everything the rules need for a batch (the results to
judge, the other results of their specimens, the specimens, the orders, and the
patients' previous released results) comes from ONE query, whatever the batch's size:
a run of 500 results must not cost 500 look-ups of history (benchmarks/lab.py measures
it against a one-result-at-a-time implementation).

Each judged result gets its reference range, abnormal flag, critical mark, the rule set
version, every rule that fired, and its state (autoverified or held); the batch gets one
``lab.autoverify`` audit record with the counts and each result's outcome.  Results of
a batch whose rules cannot be had (no valid rule set, no catalog) are held saying so,
never released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

from core import audit
from core.errors import InvalidTransition, NotFound, RDCError
from core.models.lab import LabOrder, LabResult, LabSpecimen
from lab import rules_engine
from lab.catalog import Catalog, RefRange, Test, age_years, get_catalog
from lab.rules_engine import Previous, ResultInput, RuleHit, RuleSet, Verdict
from lab.states import RELEASED_RESULT_STATES, ResultState, check_result
from lab.validate_rules import active_rule_set

__all__ = ["RuleHit", "classify", "verify_results", "verify_run"]

ACTOR = "autoverification"


def classify(result: LabResult, test: Test, sex: str,
             age_y: float | None) -> tuple[str, bool, RefRange | None]:
    """(abnormal flag, critical, reference range) of a result from the catalog; sets
    nothing.  A result with no numeric value has no flag, unless it was reported beyond the
    measuring range ("<x" / ">x"), whose bound is classified."""
    return rules_engine.classify_value(result.value, test, sex, age_y, result.value_text or "")


@dataclass
class _Batch:
    current: list[LabResult]
    inputs: list[ResultInput]


def _load(session: Session, which: ColumnElement[bool],
          selected: Callable[[LabResult], bool]) -> _Batch:
    """The batch selected by ``which`` (SQL) / ``selected`` (the same test in Python, on
    the loaded rows), with its context, in one query.

    The query returns rows (a result, with the columns the rules read of its specimen and
    order) of two kinds: every result of the
    batch's specimens (those to judge, and the others the anion gap and WBIT rules read),
    and every released result of the batch's patients (same site and patient id), the
    history of the delta and WBIT rules.
    """
    batch_specimens = select(LabResult.specimen_id).where(which)
    batch_patients = select(LabResult.site_id, LabResult.patient_id).where(which)
    # Released history through the (site, patient) index: the sites and patient ids as
    # plain IN lists lead the planner to it; the row-value IN keeps exact pairs.  The
    # state test is wrapped so that it is not taken for an index (every released
    # result of the center would be scanned by the worklist index).
    released = [str(s) for s in RELEASED_RESULT_STATES]
    rows = session.execute(
        select(LabResult, LabSpecimen.hil, LabSpecimen.hold_reason, LabSpecimen.rejection_code,
               LabOrder.sex, LabOrder.birth_date)
        .join(LabSpecimen, LabSpecimen.id == LabResult.specimen_id)
        .join(LabOrder, LabOrder.id == LabResult.order_id)
        .where(or_(
            LabResult.specimen_id.in_(batch_specimens),
            and_(LabResult.site_id.in_(select(LabResult.site_id).where(which)),
                 LabResult.patient_id.in_(select(LabResult.patient_id).where(which)),
                 tuple_(LabResult.site_id, LabResult.patient_id).in_(batch_patients),
                 func.coalesce(LabResult.state, "").in_(released),
                 LabResult.value.is_not(None), LabResult.measured_at.is_not(None))))
        .order_by(LabResult.id)
    ).all()
    on_specimen: dict[int, list[tuple[LabResult, _Context]]] = {}
    history: dict[tuple[str, str], list[tuple[int, Previous]]] = {}
    for result, hil, hold_reason, rejection_code, sex, birth_date in rows:
        context = _Context(hil or {}, hold_reason or "", rejection_code or "", sex or "U",
                           birth_date or "")
        on_specimen.setdefault(result.specimen_id, []).append((result, context))
        if (result.state in RELEASED_RESULT_STATES and result.value is not None
                and result.measured_at is not None):
            history.setdefault((result.site_id, result.patient_id), []).append(
                (result.specimen_id, Previous(result.test_code, float(result.value),
                                              result.measured_at)))
    current: list[LabResult] = []
    inputs: list[ResultInput] = []
    for specimen_id, members in on_specimen.items():
        if not any(selected(r) for r, _ in members):
            continue  # a released result of the history, not of the batch's specimens
        for result, context in members:
            judge = selected(result)
            if judge:
                current.append(result)
            elif result.value is None or result.state == ResultState.REJECTED:
                continue
            key = (result.site_id, result.patient_id)
            prev = tuple(p for sid, p in history.get(key, []) if sid != specimen_id)
            inputs.append(_input(result, context, prev, judge))
    return _Batch(current=current, inputs=inputs)


@dataclass(frozen=True)
class _Context:
    """What the rules read of a result's specimen and order (columns, not rows: the
    history's results come with theirs too, and building objects for them is waste)."""

    hil: dict[str, Any]
    hold_reason: str
    rejection_code: str
    sex: str
    birth_date: str


def _input(result: LabResult, context: _Context, previous: tuple[Previous, ...],
           judge: bool) -> ResultInput:
    hold = context.hold_reason
    if context.rejection_code:
        hold = (f"{hold}; " if hold else "") + f"rejected ({context.rejection_code})"
    hil: dict[str, float] = {}
    for k, v in context.hil.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            hil[str(k)] = float(v)
    at = result.measured_at
    return ResultInput(
        key=result.id, specimen=result.specimen_id, test_code=result.test_code,
        value=result.value, value_text=result.value_text or "", units=result.units or "",
        flags=tuple(result.instrument_flags or ()), hil=hil, sex=context.sex,
        age_y=age_years(context.birth_date, at or datetime.now(UTC)),
        measured_at=at, specimen_hold=hold, qc_hold=result.qc_hold or "",
        previous=previous, judge=judge)


def _rules_and_catalog(session: Session) -> tuple[RuleSet | None, Catalog | None, str]:
    """The enabled rule set (the shipped one while none is enabled: see
    lab.validate_rules.active_rule_set) and the catalog, or why they cannot be had."""
    try:
        rule_set = active_rule_set(session)
    except RDCError as e:
        return None, None, f"no usable autoverification rule set: {e}"
    try:
        catalog = get_catalog()
    except RDCError as e:
        return rule_set, None, f"the test catalog cannot be read: {e}"
    return rule_set, catalog, ""


def _judge(session: Session, batch: _Batch) -> tuple[list[Verdict], str]:
    rule_set, catalog, why = _rules_and_catalog(session)
    if rule_set is None or catalog is None:
        return rules_engine.unevaluable_verdicts(batch.inputs, why), (
            rule_set.version if rule_set else "")
    return rules_engine.evaluate(rule_set, catalog, batch.inputs), rule_set.version


def _verify(session: Session, batch: _Batch, *, object_type: str, object_id: str,
            now: datetime | None) -> list[LabResult]:
    not_pending = [f"{r.id} ({r.state})" for r in batch.current
                   if r.state != ResultState.PENDING]
    if not_pending:  # nothing is judged unless every result may move
        raise InvalidTransition(f"only pending (measured) results are autoverified; not: "
                                f"{', '.join(not_pending)}")
    if not batch.current:
        return []
    verdicts, version = _judge(session, batch)
    by_key = {v.key: v for v in verdicts}
    moment = now or datetime.now(UTC)
    outcomes: list[dict[str, Any]] = []
    for r in batch.current:
        v = by_key[r.id]
        check_result(r.state, v.state)
        r.state = v.state
        r.ref_low, r.ref_high = v.ref_low, v.ref_high
        r.abnormal_flag = v.abnormal_flag
        r.critical = v.critical
        r.rule_set = version
        r.rules_fired = [h.to_dict() for h in v.hits]
        r.updated_at = moment
        outcomes.append({"id": r.id, "test": r.test_code, "state": v.state,
                         "critical": v.critical,
                         "rules": sorted({h.rule for h in v.hits})})
    held = sum(1 for o in outcomes if o["state"] == ResultState.HELD)
    audit.append(session, actor=ACTOR, action="lab.autoverify", object_type=object_type,
                 object_id=object_id, detail={
                     "rule_set": version, "judged": len(outcomes),
                     "autoverified": len(outcomes) - held, "held": held,
                     "critical": sum(1 for o in outcomes if o["critical"]),
                     "results": outcomes})
    session.flush()
    return batch.current


def verify_results(session: Session, results: Sequence[LabResult],
                   now: datetime | None = None) -> list[LabResult]:
    """Judge these pending results (one query for all their context); a result that is
    not pending refuses the whole batch (InvalidTransition) before anything changes."""
    ids = sorted({int(r.id) for r in results})
    if not ids:
        return []
    session.flush()
    wanted = set(ids)
    batch = _load(session, LabResult.id.in_(ids), lambda r: r.id in wanted)
    found = {r.id for r in batch.current}
    if found != wanted:
        raise NotFound(f"lab results not found: {sorted(wanted - found)}")
    # The audit's object id is short (128 characters): the range; every id is in detail.
    label = str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"
    return _verify(session, batch, object_type="lab_results", object_id=label, now=now)


def verify_run(session: Session, run_id: int, now: datetime | None = None) -> list[LabResult]:
    """Judge the run's pending results; results judged before (a job run twice) are left
    as they are.  Returns the results judged now."""
    session.flush()
    batch = _load(session,
                  and_(LabResult.run_id == run_id, LabResult.state == ResultState.PENDING),
                  lambda r: r.run_id == run_id and r.state == ResultState.PENDING)
    return _verify(session, batch, object_type="lab_run", object_id=str(run_id), now=now)
