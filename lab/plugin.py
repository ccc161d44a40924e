"""What the lab center declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations


def register() -> None:
    """Job handlers (a run's QC and autoverification, critical-value notification) and
    the periodic critical-value escalation; filled in by lab/ as its parts land."""
