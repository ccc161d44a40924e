"""The pathology case's state machine.

received → qc_passed | qc_failed → assigned → in_review → (consult_requested →
consult_answered) → signed → amended.  A failed quality gate does not hide the case:
it is still assigned and read, marked, while the site's technician rescans.  A later
slide (another block) may arrive at any time before sign-out and re-runs the gate.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import InvalidTransition


class CaseState(StrEnum):
    RECEIVED = "received"
    QC_PASSED = "qc_passed"
    QC_FAILED = "qc_failed"
    ASSIGNED = "assigned"
    IN_REVIEW = "in_review"
    CONSULT_REQUESTED = "consult_requested"
    CONSULT_ANSWERED = "consult_answered"
    SIGNED = "signed"
    AMENDED = "amended"


#: States in which the case is still to be read (the worklist's "open" filter).
OPEN_STATES = frozenset({CaseState.RECEIVED, CaseState.QC_PASSED, CaseState.QC_FAILED,
                         CaseState.ASSIGNED, CaseState.IN_REVIEW,
                         CaseState.CONSULT_REQUESTED, CaseState.CONSULT_ANSWERED})

_QC = {"qc_passed", "qc_failed"}
_TRANSITIONS: dict[str, set[str]] = {
    "received": _QC | {"assigned"},
    "qc_passed": _QC | {"assigned"},
    "qc_failed": _QC | {"assigned"},
    # A new slide re-runs the gate; the holder keeps the case.
    "assigned": _QC | {"in_review", "received"},
    "in_review": {"consult_requested", "signed", "assigned", "in_review"},
    "consult_requested": {"consult_answered", "consult_requested", "in_review"},
    "consult_answered": {"consult_requested", "in_review", "signed"},
    # A signed case moves on only by a signed amendment.
    "signed": {"amended"},
    "amended": {"amended"},
}


def check_case_transition(current: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> new`` is allowed."""
    if new not in _TRANSITIONS.get(current, set()):
        raise InvalidTransition(f"pathology case: {current} -> {new} is not allowed")
