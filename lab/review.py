"""The lab reviewers' worklist and their decisions on held results.

Held results are listed critical first, then oldest, each with what a reviewer needs to
decide without opening five screens: the patient's previous results of that test (the
delta history), the QC status of its run and analyte, the specimen's HIL indices and
hold, and every rule that fired.  A decision is one of

* ``rerun``: measure again (the value is kept in the result's attempts when the new
  one arrives); a result already released goes out again as a correction;
* ``reject``: no result; the site is told why (an ORU with status X);
* ``release``: lift a QC hold (a failing control held the result) with a reason; the
  result stays held until a reviewer signs it (:mod:`lab.signing`).

A reason is always required, every change goes through :mod:`lab.states`, and each
decision is audited (``lab.review``; a QC release also ``lab.qc_release``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput, NotFound
from core.models import LabOrder, LabResult, LabRun, LabSpecimen, OutboundMessage
from lab.catalog import get_catalog
from lab.results_out import build_oru, send_message, update_order_state
from lab.states import (
    RELEASED_RESULT_STATES,
    ResultState,
    check_result,
)

__all__ = ["ACTIONS", "held_worklist", "result_detail", "review"]

ACTIONS: Final = ("rerun", "reject", "release")
#: How many previous results of the same test the delta history shows.
HISTORY: Final = 5


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _history(session: Session, results: Iterable[LabResult]) -> dict[int, list[dict[str, Any]]]:
    """Per result: the patient's earlier released results of the same test, newest
    first (one query for the whole list)."""
    results = list(results)
    if not results:
        return {}
    rows = session.scalars(select(LabResult).where(
        LabResult.site_id.in_({r.site_id for r in results}),
        LabResult.patient_id.in_({r.patient_id for r in results}),
        LabResult.test_code.in_({r.test_code for r in results}),
        LabResult.state.in_([s.value for s in RELEASED_RESULT_STATES]))
        .order_by(LabResult.measured_at.desc(), LabResult.id.desc()))
    by_key: dict[tuple[str, str, str], list[LabResult]] = defaultdict(list)
    for row in rows:
        by_key[(row.site_id, row.patient_id, row.test_code)].append(row)
    out: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        earlier = [p for p in by_key[(r.site_id, r.patient_id, r.test_code)]
                   if p.id != r.id and (r.measured_at is None or p.measured_at is None
                                        or p.measured_at < r.measured_at)]
        out[r.id] = [{"result_id": p.id, "value": p.value, "value_text": p.value_text,
                      "flag": p.abnormal_flag, "measured_at": _iso(p.measured_at)}
                     for p in earlier[:HISTORY]]
    return out


def _item(result: LabResult, order: LabOrder, specimen: LabSpecimen, run: LabRun | None,
          history: list[dict[str, Any]]) -> dict[str, Any]:
    test = get_catalog().tests.get(result.test_code)
    qc = (run.qc_status or {}).get(result.test_code) if run is not None else None
    return {
        "id": result.id, "state": result.state, "site_id": result.site_id,
        "order_id": order.id, "placer_order_number": order.placer_order_number,
        "filler_order_number": order.filler_order_number, "priority": order.priority,
        "patient_id": result.patient_id, "patient_name": order.patient_name,
        "sex": order.sex, "birth_date": order.birth_date, "visit_number": order.visit_number,
        "accession": specimen.accession, "test_code": result.test_code,
        "test_name": test.name if test is not None else result.test_code,
        "loinc": result.loinc, "value": result.value, "value_text": result.value_text,
        "units": result.units, "ref_low": result.ref_low, "ref_high": result.ref_high,
        "flag": result.abnormal_flag, "critical": result.critical,
        "measured_at": _iso(result.measured_at), "analyzer_id": result.analyzer_id,
        "run_id": result.run_id, "run_code": run.run_code if run is not None else None,
        "qc": qc, "qc_hold": result.qc_hold, "hil": dict(specimen.hil or {}),
        "specimen_hold": specimen.hold_reason, "rules_fired": list(result.rules_fired or []),
        "rule_set": result.rule_set, "history": history,
    }


def _context(session: Session, results: list[LabResult]) -> tuple[
        dict[int, LabOrder], dict[int, LabSpecimen], dict[int, LabRun]]:
    orders = {o.id: o for o in session.scalars(select(LabOrder).where(
        LabOrder.id.in_({r.order_id for r in results})))}
    specimens = {s.id: s for s in session.scalars(select(LabSpecimen).where(
        LabSpecimen.id.in_({r.specimen_id for r in results})))}
    run_ids = {r.run_id for r in results if r.run_id is not None}
    runs = {u.id: u for u in session.scalars(select(LabRun).where(LabRun.id.in_(run_ids)))} \
        if run_ids else {}
    return orders, specimens, runs


def held_worklist(session: Session, *, site_ids: frozenset[str] | None,
                  limit: int = 200) -> list[dict[str, Any]]:
    """Held results of ``site_ids`` (None: every site), critical first, then oldest."""
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    query = select(LabResult).where(LabResult.state == ResultState.HELD)
    if site_ids is not None:
        if not site_ids:
            return []
        query = query.where(LabResult.site_id.in_(site_ids))
    query = query.order_by(
        case((LabResult.critical.is_(True), 0), else_=1),
        func.coalesce(LabResult.measured_at, LabResult.created_at), LabResult.id).limit(limit)
    results = list(session.scalars(query))
    orders, specimens, runs = _context(session, results)
    history = _history(session, results)
    return [_item(r, orders[r.order_id], specimens[r.specimen_id],
                  runs.get(r.run_id) if r.run_id is not None else None, history[r.id])
            for r in results]


def result_detail(session: Session, result_id: int) -> dict[str, Any]:
    """Everything about one result: the worklist's item plus earlier attempts, the
    review, the signature and the message that carried it to the site."""
    result = session.get(LabResult, result_id)
    if result is None:
        raise NotFound(f"no lab result {result_id}")
    orders, specimens, runs = _context(session, [result])
    item = _item(result, orders[result.order_id], specimens[result.specimen_id],
                 runs.get(result.run_id) if result.run_id is not None else None,
                 _history(session, [result])[result.id])
    message = session.get(OutboundMessage, result.message_id) \
        if result.message_id is not None else None
    item.update({
        "attempts": list(result.attempts or []),
        "review": {"action": result.review_action, "reason": result.review_reason,
                   "by": result.reviewed_by, "at": _iso(result.reviewed_at)},
        "signature": None if result.signed_at is None else {
            "by": result.signed_by, "key_id": result.signer_key_id,
            "at": _iso(result.signed_at), "hash_algorithm": result.hash_algorithm,
            "content_hash": result.content_hash},
        "message": None if message is None else {
            "id": message.id, "kind": message.kind, "control_id": message.control_id,
            "ack_code": message.ack_code, "acked_at": _iso(message.acked_at)},
        "specimen_rejection": {"code": specimens[result.specimen_id].rejection_code,
                               "note": specimens[result.specimen_id].rejection_note},
    })
    return item


def _reopen_or_close(session: Session, order_id: int) -> None:
    order = session.get(LabOrder, order_id)
    assert order is not None  # foreign key
    update_order_state(session, order)


def _supersede(result: LabResult) -> dict[str, Any]:
    """A released (or signed) result is measured again: its signature and the message
    that carried it belong to the old value.  They move into the audit record of the
    rerun (hash-chained, so nothing is lost) and leave the row, so that the new value
    can be signed and sent (as a correction: OBX-11 ``C``)."""
    old = {"value": result.value, "value_text": result.value_text,
           "message_id": result.message_id, "signed_by": result.signed_by,
           "signer_key_id": result.signer_key_id, "signed_at": _iso(result.signed_at),
           "hash_algorithm": result.hash_algorithm, "content_hash": result.content_hash,
           "canonical": result.canonical, "envelope": result.envelope}
    result.message_id = None
    result.signed_by = result.signer_key_id = result.signed_at = None
    result.canonical = result.hash_algorithm = result.content_hash = result.envelope = None
    return old


def review(session: Session, result_id: int, action: str, *, actor: str,
           reason: str) -> LabResult:
    """Apply a reviewer's decision (``rerun``, ``reject`` or ``release`` of a QC hold).

    Refused with nothing changed: an unknown action or an empty reason
    (:class:`InvalidInput`), a transition :mod:`lab.states` does not allow
    (:class:`~core.errors.InvalidTransition`), a release of a result with no QC hold
    (:class:`Conflict`).  A rejected result is reported to the site (status X, the
    reason in an NTE).
    """
    if action not in ACTIONS:
        raise InvalidInput(f"unknown review action {action!r}; one of {list(ACTIONS)}")
    reason = reason.strip()
    if not reason:
        raise InvalidInput(f"a reason is required to {action} a result")
    if not actor:
        raise InvalidInput("a review needs the acting user")
    result = session.get(LabResult, result_id, with_for_update=True)
    if result is None:
        raise NotFound(f"no lab result {result_id}")
    before = result.state
    hold = result.qc_hold
    detail: dict[str, Any] = {"action": action, "reason": reason, "from": before}
    if action == "release":
        if before != ResultState.HELD:
            raise Conflict(f"result {result_id} is {before}: only a held result's QC hold "
                           "is released")
        if not hold:
            raise Conflict(f"result {result_id} has no QC hold to release")
        result.qc_hold = ""
        detail["qc_hold"] = hold
    else:
        new = ResultState.RERUN if action == "rerun" else ResultState.REJECTED
        check_result(before, new)
        result.state = new
        if action == "rerun":
            # The rerun is the remedy for a QC hold: the new run's QC judges it again.
            result.qc_hold = ""
            if hold:
                detail["qc_hold"] = hold
            if result.signed_at is not None or result.message_id is not None:
                detail["superseded"] = _supersede(result)
    now = datetime.now(UTC)
    result.review_action, result.review_reason = action, reason
    result.reviewed_by, result.reviewed_at, result.updated_at = actor, now, now
    session.flush()
    if action == "reject":
        message = build_oru(session, [result], kind="lab-rejection")
        result.message_id = message.id
        detail["delivery_id"] = send_message(session, message)
        detail["message"] = message.control_id
    if action != "release":
        _reopen_or_close(session, result.order_id)
    detail["to"] = result.state
    audit.append(session, actor=actor, action="lab.review", object_type="lab_result",
                 object_id=str(result.id), detail=detail)
    if action == "release":
        audit.append(session, actor=actor, action="lab.qc_release", object_type="lab_result",
                     object_id=str(result.id), detail={"qc_hold": hold, "reason": reason,
                                                       "run_id": result.run_id,
                                                       "test": result.test_code})
    session.flush()
    return result
