"""``rdc models``: the AI operator's commands for the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import func, select

from core.db import get_database
from core.errors import RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

models_app = typer.Typer(help="Register, verify, enable and retire AI models.",
                         no_args_is_help=True)

VersionOpt = Annotated[str | None, typer.Option(
    "--version", "-v", help="Model version (default: the newest registered).")]




@models_app.command("list")
def list_cmd() -> None:
    """Registered model versions, whether they may run, and how often they ran."""
    from ai_models.registry import ensure_shipped, list_models
    from core.models import AIResult

    s = _settings()
    db = get_database(s.database_url)
    table = Table("name", "version", "task", "enabled", "weights SHA-256", "runs",
                  "last verified", "notes")
    with db.session() as sess:
        ensure_shipped(sess, s)
        runs = dict(sess.execute(select(AIResult.model_name + "@" + AIResult.model_version,
                                        func.count()).group_by(AIResult.model_name,
                                                               AIResult.model_version)).all())
        for m in list_models(sess):
            verified = m.last_verified_at.strftime("%Y-%m-%d %H:%M") if m.last_verified_at \
                else "never"
            table.add_row(m.name, m.version, m.task, "yes" if m.enabled else "no",
                          m.sha256[:16] + "…", str(runs.get(f"{m.name}@{m.version}", 0)),
                          verified, "demonstration weights, not for clinical use"
                          if m.demonstration else "")
    console.print(table)


@models_app.command("add")
def add_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder with model.yaml and the weights.",
                                           exists=True, file_okay=False)],
    enable: Annotated[bool, typer.Option("--enable", help="Enable it at once.")] = False,
) -> None:
    """Register a model version (the weights must match the SHA-256 in model.yaml)."""
    from ai_models.registry import add_model

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            row = add_model(sess, s, folder, actor="cli", enable=enable)
            console.print(f"registered {row.name}@{row.version} ({row.task}), "
                          f"{'enabled' if row.enabled else 'disabled'}, at {row.path}")
    except RDCError as e:
        raise _fail(e) from e


@models_app.command("verify")
def verify_cmd(
    name: Annotated[str | None, typer.Argument(help="Model name (default: all).")] = None,
    version: VersionOpt = None,
) -> None:
    """Check that each model's weights still match their registered SHA-256."""
    from ai_models.registry import get_model, list_models, verify_model

    s = _settings()
    bad = 0
    with get_database(s.database_url).session() as sess:
        try:
            rows = [get_model(sess, name, version)] if name else list_models(sess)
        except RDCError as e:
            raise _fail(e) from e
        for row in rows:
            try:
                verify_model(sess, row, actor="cli")
                console.print(f"[green]ok[/green]  {row.name}@{row.version} "
                              f"sha256 {row.sha256}")
            except RDCError as e:
                bad += 1
                err.print(f"[red]FAILED[/red] {e}")
    if bad:
        raise typer.Exit(1)


def _set_enabled(name: str, version: str | None, enabled: bool) -> None:
    from ai_models.registry import get_model, set_enabled

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            row = get_model(sess, name, version)
            set_enabled(sess, row, enabled, actor="cli")
            console.print(f"{row.name}@{row.version} {'enabled' if enabled else 'disabled'}")
    except RDCError as e:
        raise _fail(e) from e


@models_app.command("enable")
def enable_cmd(name: Annotated[str, typer.Argument(help="Model name.")],
               version: VersionOpt = None) -> None:
    """Allow a model version to run (its weights are verified first)."""
    _set_enabled(name, version, True)


@models_app.command("disable")
def disable_cmd(name: Annotated[str, typer.Argument(help="Model name.")],
                version: VersionOpt = None) -> None:
    """Retire a model version: new studies are no longer sent to it."""
    _set_enabled(name, version, False)


@models_app.command("runs")
def runs_cmd(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
    """Which model ran on which series, on which device, and how long it took."""
    from core.models import AIResult

    s = _settings()
    table = Table("when", "model", "study", "series", "device", "batch", "ms", "critical")
    with get_database(s.database_url).session() as sess:
        for r in sess.scalars(select(AIResult).order_by(AIResult.id.desc()).limit(limit)):
            table.add_row(r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                          f"{r.model_name}@{r.model_version}", str(r.study_id),
                          "…" + r.series_uid[-16:], r.device, str(r.batch_size),
                          f"{r.duration_ms:.0f}", "yes" if r.critical else "")
    console.print(table)


@models_app.command("export")
def export_cmd(
    source: Annotated[Path, typer.Argument(
        help="A TorchScript file (.pt/.ts) or a MONAI bundle folder.", exists=True)],
    manifest: Annotated[Path, typer.Option(
        help="model.yaml to complete (weights.sha256 is filled in).", exists=True,
        dir_okay=False)],
    out: Annotated[Path, typer.Option(help="Folder to write model.yaml and model.onnx to.")],
) -> None:
    """Export a TorchScript model or MONAI bundle to ONNX as a registrable model folder."""
    from ai_models.training.export_cli import export_model_folder

    try:
        report = export_model_folder(source, manifest, out)
    except RDCError as e:
        raise _fail(e) from e
    console.print(report)
