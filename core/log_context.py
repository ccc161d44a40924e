"""What a log line is about: the job, study and site being worked on, per thread/task.

``with log_context(job_id=7, study_id=3):`` makes every log record written inside the
block (by any logger, in this thread or asyncio task) carry those IDs; the formatters
of :mod:`core.log_format` add them to each line.  Blocks nest: an inner block adds to
or overrides the outer one's fields and the outer ones return when it ends.

A :class:`contextvars.ContextVar` rather than a thread-local, so that asyncio tasks
each have their own.  A new thread starts with an empty context (the uploader's
threads, pynetdicom's association threads): set it where the work is picked up.

Only internal IDs belong here (the database's job and study IDs, site IDs), never
patient data or DICOM UIDs: log files travel to places patient data must not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

#: The fields a context may carry, in the order a line shows them.
FIELDS = ("job_id", "study_id", "site_id")

_current: ContextVar[Mapping[str, int | str] | None] = ContextVar("rdc_log_context",
                                                                default=None)


@contextmanager
def log_context(*, job_id: int | None = None, study_id: int | None = None,
                site_id: str | None = None) -> Iterator[None]:
    """Within the block, log records carry the given IDs (``None``: leave as is)."""
    given = {"job_id": job_id, "study_id": study_id, "site_id": site_id}
    merged = {**(_current.get() or {}), **{k: v for k, v in given.items() if v is not None}}
    token = _current.set(merged)
    try:
        yield
    finally:
        _current.reset(token)


def current_context() -> dict[str, int | str]:
    """The IDs of the innermost :func:`log_context`, in :data:`FIELDS` order."""
    ctx = _current.get() or {}
    return {k: ctx[k] for k in FIELDS if k in ctx}
