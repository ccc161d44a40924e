"""Analyzer results in: one run (an ASTM transfer or an instrument ORU) stored at once.

Why one function for both protocols: the ASTM listener (lab/astm_server.py) and the
instrument ORU parser (lab/instrument_oru.py) both reduce what the analyzer said to a
:class:`RunData`; storing it is the same step whatever the wire was.  Everything of a run
is written in one transaction, so that a crash or an error half-way stores nothing of
it.  A result that cannot be attached where it belongs (unknown specimen, a test the
specimen was not ordered for, the wrong units, a control lot the center does not know)
is refused: kept as a :class:`LabInboundMessage` and audited, never dropped silently and
never attached to something else.  After the commit the ``lab_run`` job (QC, then
autoverification) takes the run by its id.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import audit
from core.db import Database
from core.errors import InvalidInput, InvalidTransition
from core.jobs import NewJob, submit
from core.models.lab import (
    LabControlLot,
    LabControlResult,
    LabInboundMessage,
    LabOrder,
    LabResult,
    LabRun,
    LabSpecimen,
)
from lab.catalog import Analyzer, Catalog, get_catalog
from lab.custody import record_event
from lab.stability import apply_holds
from lab.states import CustodyStep, ResultState, check_custody, check_order, check_result

log = logging.getLogger(__name__)

#: The job that evaluates a stored run (QC, then autoverification): lab/run_job.py.
RUN_JOB_KIND = "lab_run"
#: A queue the default worker listens on (core.queue.QUEUES): machine work, not people's.
RUN_JOB_QUEUE = "routing"

#: Result states that await a measurement: a first one, or a rerun a reviewer asked for.
_AWAITING = frozenset({ResultState.ORDERED, ResultState.RERUN})


@dataclass(frozen=True)
class MeasuredResult:
    """One patient result as the analyzer reported it."""

    accession: str
    test_code: str
    value: float | None
    value_text: str
    units: str
    flags: tuple[str, ...]
    measured_at: datetime
    #: Serum indices of the specimen ({"H": 120.0, "I": 10.0, "L": 30.0}), if measured.
    hil: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ControlMeasurement:
    """One QC material measurement: which lot, analyte and level, and the value."""

    lot: str
    test_code: str
    level: int
    value: float
    measured_at: datetime


@dataclass(frozen=True)
class RunData:
    """What one run of one analyzer reported (the wire format is already gone)."""

    analyzer_id: str
    run_code: str
    results: tuple[MeasuredResult, ...]
    controls: tuple[ControlMeasurement, ...]


@dataclass(frozen=True)
class StoredRun:
    """The outcome of :func:`store_run`: the run's id, how many patient results were
    attached, and one reason per refused result or control."""

    run_id: int
    stored: int
    refused: tuple[str, ...]
    controls: int = 0
    #: The run had been received before (same analyzer and run code): nothing was stored
    #: again; ``run_id`` is the first copy's.
    duplicate: bool = False


def store_run(db: Database, run: RunData, *, actor: str) -> StoredRun:
    """Store ``run`` in one transaction and queue its evaluation once committed.

    An analyzer the catalog does not know refuses the whole run (InvalidInput, recorded
    in a transaction of its own).  A run already received (same analyzer and run code,
    e.g. resent because our acknowledgement was lost) is recognised and not doubled.
    """
    catalog = get_catalog()
    analyzer = catalog.analyzers.get(run.analyzer_id)
    if analyzer is None:
        reason = f"unknown analyzer {run.analyzer_id!r}: not in catalog {catalog.version}"
        with db.session() as s:
            _record_refusal(s, "hl7", run.analyzer_id, run.run_code, reason,
                            _raw_of_run(run), actor=actor, outcome="AR")
        raise InvalidInput(reason)
    try:
        with db.session() as s:
            return _store(s, catalog, analyzer, run, actor=actor)
    except IntegrityError:
        # The same run stored by another connection between our look-up and insert.
        with db.session() as s:
            existing = _existing_run(s, run)
            if existing is None:
                raise
            return _duplicate(s, existing, run, actor=actor)


def _existing_run(s: Session, run: RunData) -> LabRun | None:
    return s.scalar(select(LabRun).where(LabRun.analyzer_id == run.analyzer_id,
                                         LabRun.run_code == run.run_code))


def _duplicate(s: Session, existing: LabRun, run: RunData, *, actor: str) -> StoredRun:
    audit.append(s, actor=actor, action="lab.run_resent", object_type="lab_run",
                 object_id=str(existing.id),
                 detail={"analyzer": run.analyzer_id, "run_code": run.run_code,
                         "results": len(run.results), "controls": len(run.controls)})
    log.info("lab.run_resent analyzer=%s run=%s id=%s", run.analyzer_id, run.run_code,
             existing.id)
    return StoredRun(run_id=existing.id, stored=0, refused=(), duplicate=True)


def _store(s: Session, catalog: Catalog, analyzer: Analyzer, run: RunData, *,
           actor: str) -> StoredRun:
    existing = _existing_run(s, run)
    if existing is not None:
        return _duplicate(s, existing, run, actor=actor)
    if not run.run_code.strip():
        raise InvalidInput(f"analyzer {run.analyzer_id}: a run needs a run code")
    if not run.results and not run.controls:
        raise InvalidInput(f"analyzer {run.analyzer_id} run {run.run_code}: no results and "
                           f"no controls in it")
    times = [m.measured_at for m in run.results] + [c.measured_at for c in run.controls]
    started = min(times, default=datetime.now(UTC))
    lab_run = LabRun(analyzer_id=analyzer.id, run_code=run.run_code, started_at=started,
                     state="receiving", qc_status={})
    s.add(lab_run)
    s.flush()
    channel = "astm" if analyzer.protocol == "astm" else "hl7"
    refused: list[str] = []
    stored = 0
    ctx = _context(s, run)
    for n, m in enumerate(run.results, 1):
        reason = _attach_result(s, catalog, analyzer, lab_run, m, ctx)
        if reason is None:
            stored += 1
            continue
        refused.append(reason)
        _record_refusal(s, channel, analyzer.id, f"{run.run_code}:R{n}", reason,
                        json.dumps(_jsonable(m), sort_keys=True), actor=actor,
                        run_id=lab_run.id)
    controls = 0
    for n, c in enumerate(run.controls, 1):
        reason = _attach_control(s, analyzer, lab_run, c)
        if reason is None:
            controls += 1
            continue
        refused.append(reason)
        _record_refusal(s, channel, analyzer.id, f"{run.run_code}:C{n}", reason,
                        json.dumps(_jsonable(c), sort_keys=True), actor=actor,
                        run_id=lab_run.id)
    lab_run.state = "received"
    s.flush()
    audit.append(s, actor=actor, action="lab.run_store", object_type="lab_run",
                 object_id=str(lab_run.id),
                 detail={"analyzer": analyzer.id, "run_code": run.run_code,
                         "results": stored, "controls": controls, "refused": len(refused)})
    if stored or controls:
        submit(s, NewJob(key=f"lab_run:{lab_run.id}", kind=RUN_JOB_KIND,
                         queue=RUN_JOB_QUEUE, params={"run_id": lab_run.id}))
    log.info("lab.run_store analyzer=%s run=%s id=%s results=%d controls=%d refused=%d",
             analyzer.id, run.run_code, lab_run.id, stored, controls, len(refused))
    return StoredRun(run_id=lab_run.id, stored=stored, refused=tuple(refused),
                     controls=controls)


@dataclass
class _Context:
    """The rows a run's results go to, read in three queries rather than per result."""

    specimens: dict[str, LabSpecimen]
    results: dict[tuple[int, str], LabResult]
    orders: dict[int, LabOrder]
    seen: set[tuple[str, str]] = field(default_factory=set)
    on_analyzer: set[int] = field(default_factory=set)


def _context(s: Session, run: RunData) -> _Context:
    accessions = {m.accession for m in run.results}
    specimens = {sp.accession: sp for sp in s.scalars(
        select(LabSpecimen).where(LabSpecimen.accession.in_(accessions)))} if accessions else {}
    ids = [sp.id for sp in specimens.values()]
    results = {(r.specimen_id, r.test_code): r for r in s.scalars(
        select(LabResult).where(LabResult.specimen_id.in_(ids)))} if ids else {}
    order_ids = {sp.order_id for sp in specimens.values()}
    orders = {o.id: o for o in s.scalars(
        select(LabOrder).where(LabOrder.id.in_(order_ids)))} if order_ids else {}
    return _Context(specimens, results, orders)


def _attach_result(s: Session, catalog: Catalog, analyzer: Analyzer, lab_run: LabRun,
                   m: MeasuredResult, ctx: _Context) -> str | None:
    """Attach ``m`` to its LabResult; returns the refusal reason, or None when stored."""
    where = f"specimen {m.accession!r} test {m.test_code!r}"
    test = catalog.tests.get(m.test_code)
    if test is None:
        return f"{where}: unknown test code (catalog {catalog.version})"
    if m.test_code not in analyzer.tests:
        return f"{where}: analyzer {analyzer.id} does not perform this test"
    specimen = ctx.specimens.get(m.accession)
    if specimen is None:
        return f"{where}: unknown specimen"
    result = ctx.results.get((specimen.id, m.test_code))
    if result is None:
        return f"{where}: this test was not ordered on this specimen"
    order = ctx.orders.get(result.order_id)
    if order is None or order.state == "cancelled":
        return f"{where}: the order is cancelled"
    if m.units != test.units:
        return f"{where}: units {m.units!r} do not match the catalog's {test.units!r}"
    if (m.accession, m.test_code) in ctx.seen:
        return f"{where}: measured twice in one run"
    if result.state not in _AWAITING:
        return f"{where}: the result is {result.state}, not awaiting a measurement"
    ctx.seen.add((m.accession, m.test_code))
    if result.measured_at is not None or result.value_text:
        result.attempts = [*result.attempts, _attempt_of(result)]
    check_result(result.state, ResultState.PENDING)
    result.state = ResultState.PENDING
    result.value = m.value
    result.value_text = m.value_text
    result.units = m.units
    result.instrument_flags = list(m.flags)
    result.analyzer_id = analyzer.id
    result.run_id = lab_run.id
    result.measured_at = m.measured_at
    # The verdict and review belonged to the earlier measurement (kept in attempts).
    result.abnormal_flag = ""
    result.critical = False
    result.rule_set = ""
    result.rules_fired = []
    result.qc_hold = ""
    result.review_action = ""
    result.review_reason = ""
    result.reviewed_by = ""
    result.reviewed_at = None
    result.updated_at = datetime.now(UTC)
    if m.hil:
        specimen.hil = {**specimen.hil, **{k: float(v) for k, v in m.hil.items()}}
    if specimen.id not in ctx.on_analyzer:
        ctx.on_analyzer.add(specimen.id)
        _on_analyzer(s, specimen, analyzer, lab_run, m.measured_at)
    if order.state != "in_progress":
        check_order(order.state, "in_progress")
        order.state = "in_progress"
        order.updated_at = datetime.now(UTC)
    return None


def _on_analyzer(s: Session, specimen: LabSpecimen, analyzer: Analyzer, lab_run: LabRun,
                 at: datetime) -> None:
    """The tube's custody timeline shows it on the analyzer (once per run); its state
    moves there when that is a step it may take (an accessioned or stored tube)."""
    record_event(s, step=CustodyStep.ON_ANALYZER, actor=f"analyzer:{analyzer.id}",
                 specimen=specimen, location=analyzer.id, at=at,
                 detail={"run": lab_run.run_code, "run_id": lab_run.id})
    # Judged at the time of measurement: a tube measured past its window, with no scan
    # in between to notice, is held (the autoverification reads hold_reason).
    apply_holds(s, specimen, at, actor=f"analyzer:{analyzer.id}")
    try:
        check_custody(specimen.state, CustodyStep.ON_ANALYZER)
    except InvalidTransition:
        log.warning("lab tube %s measured while %s: state left as it is",
                    specimen.accession, specimen.state)
        return
    specimen.state = CustodyStep.ON_ANALYZER


def _attempt_of(result: LabResult) -> dict[str, Any]:
    """The earlier measurement of a result, as kept in ``attempts`` (nothing is lost)."""
    return {
        "value": result.value, "value_text": result.value_text, "units": result.units,
        "flags": list(result.instrument_flags), "analyzer_id": result.analyzer_id,
        "run_id": result.run_id,
        "measured_at": result.measured_at.isoformat() if result.measured_at else None,
        "abnormal_flag": result.abnormal_flag, "critical": result.critical,
        "rules_fired": list(result.rules_fired), "qc_hold": result.qc_hold,
        "review_action": result.review_action, "review_reason": result.review_reason,
        "reviewed_by": result.reviewed_by,
    }


def _attach_control(s: Session, analyzer: Analyzer, lab_run: LabRun,
                    c: ControlMeasurement) -> str | None:
    lot = s.scalar(select(LabControlLot).where(
        LabControlLot.analyzer_id == analyzer.id, LabControlLot.lot == c.lot,
        LabControlLot.test_code == c.test_code, LabControlLot.level == c.level))
    if lot is None:
        return (f"control lot {c.lot!r} test {c.test_code!r} level {c.level}: unknown "
                f"on analyzer {analyzer.id}")
    if not lot.active:
        return f"control lot {c.lot!r} test {c.test_code!r} level {c.level}: not active"
    if lot.sd <= 0:
        return f"control lot {c.lot!r} test {c.test_code!r} level {c.level}: SD is not > 0"
    s.add(LabControlResult(lot_id=lot.id, run_id=lab_run.id, value=c.value,
                           z=(c.value - lot.mean) / lot.sd, status="accept", rules=[],
                           measured_at=c.measured_at))
    return None


def _record_refusal(s: Session, channel: str, sender: str, control_id: str, reason: str,
                    raw: str, *, actor: str, outcome: str = "AE",
                    run_id: int | None = None) -> None:
    """Keep what was refused, and why, as an inbound message; and audit it."""
    taken = s.scalar(select(LabInboundMessage.id).where(
        LabInboundMessage.sender == sender, LabInboundMessage.control_id == control_id))
    if taken is not None or not control_id.strip():
        control_id = f"refused-{uuid.uuid4().hex}"
    msg = LabInboundMessage(sender=sender, peer="", channel=channel,
                            message_type="RESULT", control_id=control_id[:64],
                            outcome=outcome, reason=reason, raw=raw)
    s.add(msg)
    s.flush()
    audit.append(s, actor=actor, action="lab.result_refused", object_type="lab_inbound",
                 object_id=str(msg.id),
                 detail={"analyzer": sender, "reason": reason, "run_id": run_id})
    log.warning("lab.result_refused analyzer=%s %s", sender, reason)


def _jsonable(item: MeasuredResult | ControlMeasurement) -> dict[str, Any]:
    d = asdict(item)
    d["measured_at"] = item.measured_at.isoformat()
    if "hil" in d and d["hil"] is not None:
        d["hil"] = dict(d["hil"])
    return d


def _raw_of_run(run: RunData) -> str:
    return json.dumps({"analyzer_id": run.analyzer_id, "run_code": run.run_code,
                       "results": [_jsonable(m) for m in run.results],
                       "controls": [_jsonable(c) for c in run.controls]}, sort_keys=True)
