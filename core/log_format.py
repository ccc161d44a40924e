"""How the center's processes write log lines: JSON lines for machines, text for people.

Every line has ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``proc``
(the role: gateway, worker, web...), ``pid`` and ``msg`` (the message as the code wrote
it, ``event key=value ...``), and, when known, ``job_id``, ``study_id`` and ``site_id``
(from :func:`core.log_context.log_context`, or from ``extra=`` on the call);
a traceback goes in ``exc``.

Where which format goes (:func:`log_handlers`):

* the log file (``$RDC_HOME/logs/<proc>.log``) is always JSON lines, so that a log
  shipper reads every file the same way however the process was started;
* stderr is JSON too when it is not a terminal (``rdc up`` and systemd collect it),
  and the familiar text line when a person watches it, with the context appended as
  ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from core.log_context import FIELDS, current_context

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s proc={proc} %(message)s"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's IDs: ``extra=`` on the call wins over the surrounding context."""
    ctx: dict[str, Any] = current_context()
    for key in FIELDS:
        value = getattr(record, key, None)
        if value is not None:
            ctx[key] = value
    return ctx


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module doc for its keys)."""

    def __init__(self, proc: str) -> None:
        super().__init__()
        self.proc = proc

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "proc": self.proc,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger proc=NAME message key=value...`` for a person at a terminal."""

    def __init__(self, proc: str) -> None:
        super().__init__(TEXT_FORMAT.format(proc=proc))

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        message = record.message
        extra = [f"{k}={v}" for k, v in _context(record).items() if f"{k}={v}" not in message]
        return f"{text} {' '.join(extra)}" if extra else text


def stream_formatter(proc: str, stream: IO[str]) -> logging.Formatter:
    """JSON unless ``stream`` is a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        tty = False
    return TextFormatter(proc) if tty else JsonFormatter(proc)


def log_handlers(proc: str, log_file: Path | None,
                 stream: IO[str] | None = None) -> list[logging.Handler]:
    """The handlers of a process named ``proc``: ``stream`` (default stderr) and, if
    given, ``log_file`` (appended to, JSON lines)."""
    stream = sys.stderr if stream is None else stream
    console = logging.StreamHandler(stream)
    console.setFormatter(stream_formatter(proc, stream))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        file = logging.FileHandler(log_file)
        file.setFormatter(JsonFormatter(proc))
        handlers.append(file)
    return handlers
