"""The lab's state machines: order, specimen custody, shipment box, result, critical notice.

Every change of state goes through one of the ``check_*`` functions, so that a result
cannot go from ``held`` to ``autoverified`` behind a reviewer's back, nor a disposed
tube back onto an analyzer.

Result: ordered → pending (measured) → autoverified | held; held → verified (signed) |
rerun | rejected; rerun → pending (the new measurement; the old one is kept).  A rejected
specimen rejects its open results.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import InvalidTransition


class OrderState(StrEnum):
    ORDERED = "ordered"
    IN_PROGRESS = "in_progress"
    RESULTED = "resulted"
    CANCELLED = "cancelled"


class ShipmentState(StrEnum):
    PACKED = "packed"
    IN_TRANSIT = "in_transit"
    RECEIVED = "received"


class CustodyStep(StrEnum):
    ORDERED = "ordered"
    COLLECTED = "collected"
    PACKED = "packed"
    COURIER = "courier"
    RECEIVED = "received"
    ACCESSIONED = "accessioned"
    ALIQUOTED = "aliquoted"
    ON_ANALYZER = "on_analyzer"
    STORED = "stored"
    DISPOSED = "disposed"
    REJECTED = "rejected"


class ResultState(StrEnum):
    ORDERED = "ordered"
    PENDING = "pending"
    AUTOVERIFIED = "autoverified"
    HELD = "held"
    RERUN = "rerun"
    VERIFIED = "verified"
    REJECTED = "rejected"


class NoticeState(StrEnum):
    NOTIFIED = "notified"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"


#: Results that are final: released to the site (autoverified or signed) or rejected.
FINAL_RESULT_STATES = frozenset({ResultState.AUTOVERIFIED, ResultState.VERIFIED,
                                 ResultState.REJECTED})
#: Results released to the site with a value.
RELEASED_RESULT_STATES = frozenset({ResultState.AUTOVERIFIED, ResultState.VERIFIED})

_ORDER: dict[str, set[str]] = {
    "ordered": {"in_progress", "cancelled", "resulted"},
    "in_progress": {"in_progress", "resulted", "cancelled"},
    # A rerun after a first release (a corrected result) reopens the order.
    "resulted": {"in_progress", "resulted"},
    "cancelled": set(),
}

_SHIPMENT: dict[str, set[str]] = {
    "packed": {"in_transit", "received"},
    "in_transit": {"received"},
    "received": set(),
}

_AFTER_RECEIPT = {"accessioned", "rejected"}
_CUSTODY: dict[str, set[str]] = {
    "ordered": {"collected", "rejected"},
    "collected": {"packed", "received", "rejected"},
    "packed": {"courier", "received", "rejected"},
    "courier": {"received", "rejected"},
    "received": _AFTER_RECEIPT,
    "accessioned": {"aliquoted", "on_analyzer", "stored", "rejected"},
    "aliquoted": {"on_analyzer", "stored", "aliquoted", "rejected"},
    "on_analyzer": {"on_analyzer", "stored", "aliquoted", "disposed"},
    "stored": {"on_analyzer", "aliquoted", "stored", "disposed"},
    "rejected": {"disposed"},
    "disposed": set(),
}

_RESULT: dict[str, set[str]] = {
    "ordered": {"pending", "rejected"},
    "pending": {"autoverified", "held", "rejected"},
    "held": {"verified", "rerun", "rejected", "held"},
    "rerun": {"pending", "rejected"},
    # A released result may be rerun (a corrected value); the first value is kept.
    "autoverified": {"rerun"},
    "verified": {"rerun"},
    "rejected": set(),
}

_NOTICE: dict[str, set[str]] = {
    "notified": {"escalated", "acknowledged"},
    "escalated": {"escalated", "acknowledged"},
    "acknowledged": set(),
}


def _check(kind: str, table: dict[str, set[str]], current: str, new: str) -> None:
    if new not in table.get(current, set()):
        raise InvalidTransition(f"lab {kind}: {current} -> {new} is not allowed")


def check_order(current: str, new: str) -> None:
    _check("order", _ORDER, current, new)


def check_shipment(current: str, new: str) -> None:
    _check("shipment", _SHIPMENT, current, new)


def check_custody(current: str, new: str) -> None:
    """A scan out of order (a tube on the analyzer before it was received) is refused."""
    _check("specimen", _CUSTODY, current, new)


def check_result(current: str, new: str) -> None:
    _check("result", _RESULT, current, new)


def check_notice(current: str, new: str) -> None:
    _check("critical notice", _NOTICE, current, new)
