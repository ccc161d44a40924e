"""Progress of the long copies (instances, bytes) on a terminal and in logs.

On a terminal rich draws live bars; in a script or a CI log, where those are not
drawn, a plain line every few seconds says how far the copy has come, so that an
operator watching a multi-hour backup knows it is moving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


@dataclass
class Step:
    """One counted step (``advance`` it by items or bytes)."""

    console: Console
    description: str
    total: int
    unit: str
    progress: Progress | None
    task: TaskID | None
    every_s: float = 10.0
    done: int = 0
    _last: float = field(default_factory=time.monotonic)

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, amount)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.console.print(f"  {self.description}: {self.done}/{self.total} {self.unit}")


@contextmanager
def step(console: Console, description: str, total: int, unit: str = "files") -> Iterator[Step]:
    """A progress bar (terminal) or periodic lines (logs) for one copy."""
    if console.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(),
                   DownloadColumn() if unit == "bytes" else MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(description, total=total)
            yield Step(console, description, total, unit, progress, task)
        return
    started = time.monotonic()
    s = Step(console, description, total, unit, None, None)
    yield s
    console.print(f"  {description}: {s.done}/{total} {unit} in "
                  f"{time.monotonic() - started:.1f} s")
