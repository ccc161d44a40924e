"""``rdc lab`` commands: custody (merged into ``rdc lab`` by rdc/lab_cli.py)."""

from __future__ import annotations

import typer

app = typer.Typer()
