"""What every ``rdc`` command shares: its consoles, the settings, and how an error ends it.

One place, so that every subcommand reports configuration problems and domain
errors the same way (a red line on stderr and the error's own exit code).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from core.errors import RDCError
from core.settings import Settings, get_settings

#: Piped output (logs, scripts, tests) gets wide tables rather than 80 columns of wrapping.
console = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True)


def load_settings() -> Settings:
    """The center's settings; an invalid configuration ends the command with code 2."""
    try:
        return get_settings()
    except Exception as e:  # pydantic validation: show the message, not a trace
        err.print(f"[red]configuration error:[/red] {e}")
        raise typer.Exit(2) from e


def fail(e: RDCError) -> typer.Exit:
    """Report ``e`` and give the exit that carries its code (``raise fail(e) from e``)."""
    err.print(f"[red]error:[/red] {e}")
    return typer.Exit(e.exit_code)
