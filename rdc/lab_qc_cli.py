"""``rdc lab`` commands for QC (merged into ``rdc lab`` by rdc/lab_cli.py): control lots,
a run's QC verdict and the Levey-Jennings chart as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.db import get_database
from core.errors import RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

app = typer.Typer()
lot_app = typer.Typer(help="Control lots: target mean and SD per analyte and level.",
                      no_args_is_help=True)
app.add_typer(lot_app, name="qc-lot")


@lot_app.command("add")
def lot_add(
    analyzer: Annotated[str, typer.Option("--analyzer", help="Catalog analyzer id.")],
    lot: Annotated[str, typer.Option("--lot", help="The control material's lot.")],
    test: Annotated[str, typer.Option("--test", help="Catalog test code, e.g. K.")],
    level: Annotated[int, typer.Option("--level", help="Control level (1, 2, 3).")],
    mean: Annotated[float, typer.Option("--mean", help="Target mean (test units).")],
    sd: Annotated[float, typer.Option("--sd", help="Target SD (test units, > 0).")],
) -> None:
    """Register a control lot's target mean and SD for one analyte and level."""
    from lab.qc import add_lot

    db = get_database(_settings().database_url)
    try:
        with db.session() as s:
            row = add_lot(s, analyzer_id=analyzer, lot=lot, test_code=test, level=level,
                          mean=mean, sd=sd, actor="cli")
            rid = row.id
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"control lot {rid}: {analyzer} {test} level {level} lot {lot}, "
                  f"mean {mean:g}, SD {sd:g}", markup=False)


@app.command("qc-lots")
def lots_cmd(
    analyzer: Annotated[str, typer.Option("--analyzer", help="Only this analyzer.")] = "",
) -> None:
    """List the control lots."""
    from lab.qc import lots

    db = get_database(_settings().database_url)
    with db.session() as s:
        rows = [(x.id, x.analyzer_id, x.test_code, x.level, x.lot, x.mean, x.sd, x.active)
                for x in lots(s, analyzer_id=analyzer or None)]
    table = Table("id", "analyzer", "test", "level", "lot", "mean", "SD", "active")
    for r in rows:
        table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in r))
    console.print(table)


@app.command("qc-status")
def status_cmd(run_id: Annotated[int, typer.Argument(help="The run's id.")]) -> None:
    """A run's QC verdict per analyte, and each control with the rules it broke."""
    from lab.qc import run_status

    db = get_database(_settings().database_url)
    try:
        with db.session() as s:
            st = run_status(s, run_id)
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"run {st['run_id']}: {st['analyzer']} {st['run_code']} ({st['state']}); "
                  f"{st['held_results']} patient result(s) on QC hold", markup=False)
    verdicts = Table("test", "QC", "rules")
    for test, v in sorted(st["qc_status"].items()):
        verdicts.add_row(test, v["status"], ", ".join(v["rules"]) or "-")
    console.print(verdicts)
    controls = Table("test", "lot", "level", "value", "z", "status", "rules")
    for c in st["controls"]:
        controls.add_row(c["test"], c["lot"], str(c["level"]), f"{c['value']:g}",
                         f"{c['z']:+.2f}", c["status"], ", ".join(c["rules"]) or "-")
    console.print(controls)


@app.command("qc-chart")
def chart_cmd(
    analyzer: Annotated[str, typer.Option("--analyzer", help="Catalog analyzer id.")],
    test: Annotated[str, typer.Option("--test", help="Catalog test code.")],
    level: Annotated[int, typer.Option("--level", help="Control level.")],
    out: Annotated[Path, typer.Option("--out", help="The PNG file to write.")],
    lot: Annotated[str, typer.Option("--lot", help="A lot (default: the active one).")] = "",
    last: Annotated[int, typer.Option("--last", help="How many points.")] = 60,
) -> None:
    """Write the Levey-Jennings chart of one control as PNG (rejected points in red,
    labelled with their rules)."""
    from lab.lj_chart import chart_data, render_png

    db = get_database(_settings().database_url)
    try:
        with db.session() as s:
            data = chart_data(s, analyzer_id=analyzer, test_code=test, level=level,
                              lot=lot or None, limit=last)
        png = render_png(data)
    except RDCError as e:
        raise _fail(e) from e
    try:
        out.write_bytes(png)
    except OSError as e:
        err.print(f"[red]error:[/red] cannot write {out}: {e.strerror or e}", markup=False)
        raise typer.Exit(1) from e
    rejected = sum(p["status"] == "reject" for p in data["points"])
    console.print(f"wrote {out}: {len(data['points'])} point(s) of lot {data['lot']}, "
                  f"{rejected} rejected", markup=False)
