"""State machines of the shared domain objects.

Transitions are data so that the database layer, the API and the tests agree
on one definition; :func:`check_transition` is the only gate.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import InvalidTransition


class StudyState(StrEnum):
    RECEIVED = "received"
    COMPLETE = "complete"
    REOPENED = "reopened"


class InstanceState(StrEnum):
    SPOOLED = "spooled"
    STORED = "stored"
    FAILED = "failed"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    #: The job does not apply (a model that does not read this series): final, with
    #: the reason in ``Job.error`` so that nobody mistakes it for a silent gap.
    SKIPPED = "skipped"


class ReportState(StrEnum):
    """State of a report version (and of the report, which follows its newest version)."""

    DRAFT = "draft"  # AI prefill or a reader's work in progress; unverified
    PRELIMINARY = "preliminary"  # shared before signing, still editable
    FINAL = "final"  # signed and frozen
    AMENDED = "amended"  # a report whose final version has a signed addendum


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENT = "sent"  # the site's SCP answered success to every C-STORE
    COMMITTED = "committed"  # the site confirmed storage commitment
    FAILED = "failed"  # the last attempt failed; another is scheduled
    DEAD = "dead"  # retries ran out: on the dead-letter list until resent


_TRANSITIONS: dict[type[StrEnum], dict[str, set[str]]] = {
    StudyState: {
        "received": {"complete"},
        "complete": {"reopened"},
        "reopened": {"complete"},
    },
    InstanceState: {
        "spooled": {"stored", "failed"},
        # A failed upload may be retried by an operator and succeed later.
        "failed": {"stored", "spooled"},
        "stored": set(),
    },
    JobState: {
        "queued": {"running", "dead"},
        # running -> queued: a transient failure or a lost worker hands it back.
        "running": {"succeeded", "failed", "queued", "dead", "skipped"},
        "failed": {"queued", "dead"},
        "succeeded": set(),
        "skipped": set(),
        "dead": {"queued"},
    },
    ReportState: {
        "draft": {"draft", "preliminary", "final"},
        "preliminary": {"preliminary", "draft", "final"},
        # A final version is never edited; the report moves on by an addendum.
        "final": {"amended"},
        "amended": {"amended"},
    },
    DeliveryState: {
        "pending": {"sent", "failed", "dead"},
        "failed": {"sent", "failed", "dead", "pending"},
        "sent": {"committed", "failed"},
        "committed": set(),
        # An operator's resend puts a dead delivery back in line.
        "dead": {"pending"},
    },
}


def check_transition(kind: type[StrEnum], current: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> new`` is allowed."""
    if new not in _TRANSITIONS[kind].get(current, set()):
        raise InvalidTransition(f"{kind.__name__}: {current} -> {new} is not allowed")
