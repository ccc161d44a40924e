"""What the pathology reading domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations


def register() -> None:
    """Job handlers (intake + quality gate), the frozen-section escalation, the report."""
