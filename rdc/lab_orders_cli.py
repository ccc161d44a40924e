"""``rdc lab`` commands: orders (merged into ``rdc lab`` by rdc/lab_cli.py)."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command("version")
def version() -> None:
    """Print the test catalog's version (placeholder until the orders commands land)."""
    typer.echo("lab")
