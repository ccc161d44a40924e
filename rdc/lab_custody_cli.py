"""``rdc lab`` commands: custody (merged into ``rdc lab`` by rdc/lab_cli.py).

Boxes packed, picked up and received (with the box logger's CSV), tube scans, coded
rejections, the timelines of a tube and of a box, and label PDFs — what the lab's
scanning stations and the web app do, from a terminal.  Every change is one transaction:
a refused command (exit code != 0, the reason on stderr) has stored nothing.
"""

from __future__ import annotations

import csv
import getpass
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from core.db import get_database
from core.errors import InvalidInput, RDCError
from rdc.console import console
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

app = typer.Typer()
box_app = typer.Typer(help="Shipment boxes: pack at the site, courier pickup, receive here.",
                      no_args_is_help=True)
app.add_typer(box_app, name="box")

T = TypeVar("T")

By = Annotated[str, typer.Option("--by", help="Who scans (default: cli:<your login>).")]
At = Annotated[str, typer.Option("--at", help="When, ISO 8601 with offset (default: now).")]


def _who(by: str) -> str:
    if by:
        return by
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _when(at: str) -> datetime | None:
    if not at:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError as e:
        raise InvalidInput(f"--at {at!r}: not an ISO 8601 time") from e
    if moment.tzinfo is None:
        raise InvalidInput(f"--at {at!r}: give the UTC offset (e.g. {at}+08:00)")
    return moment


@contextmanager
def _session() -> Iterator[Session]:
    s = _settings()
    with get_database(s.database_url).session() as session:
        yield session


def _run(work: Callable[[Session], T]) -> T:
    """``work`` in one transaction; a center error ends the command with its exit code."""
    try:
        with _session() as session:
            return work(session)
    except RDCError as e:
        raise _fail(e) from e


def read_temperature_log(path: Path) -> list[tuple[datetime, float]]:
    """A box logger's CSV: ``time,temperature_c`` per line (a header line is allowed);
    times ISO 8601 with a UTC offset.  A bad line is refused naming its number."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InvalidInput(f"temperature log {path}: {e.strerror or e}") from e
    readings: list[tuple[datetime, float]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise InvalidInput(f"{path}:{number}: expected 2 columns (time, °C), "
                               f"found {len(row)}")
        if number == 1 and not row[0].strip()[:1].isdigit():
            continue  # header
        try:
            moment = datetime.fromisoformat(row[0].strip())
            value = float(row[1])
        except ValueError:
            raise InvalidInput(f"{path}:{number}: {','.join(row)!r} is not "
                               "'ISO time,temperature'") from None
        if moment.tzinfo is None:
            raise InvalidInput(f"{path}:{number}: time {row[0].strip()!r} has no UTC offset")
        if not math.isfinite(value):
            raise InvalidInput(f"{path}:{number}: {row[1]!r} is not a temperature")
        readings.append((moment, value))
    return readings


# --------------------------------------------------------------------------- boxes


@box_app.command("pack")
def box_pack(
    box_code: Annotated[str, typer.Argument(help="The box's barcode.")],
    accessions: Annotated[list[str], typer.Argument(help="Accessions of the tubes packed.")],
    site: Annotated[str, typer.Option("--site", help="The site packing the box.")],
    condition: Annotated[str, typer.Option(
        help="room, refrigerated or frozen: what the box keeps.")] = "room",
    location: Annotated[str, typer.Option(help="Where (default: the site).")] = "",
    by: By = "", at: At = "",
) -> None:
    """Pack tubes into a new shipment box (all tubes checked first).

    A tube the box's condition does not keep is shown as held.
    """
    from lab.custody import box_timeline, pack_box

    def work(s: Session) -> tuple[str, list[tuple[str, str]]]:
        box = pack_box(s, site_id=site, box_code=box_code, accessions=accessions,
                       condition=condition, actor=_who(by), at=_when(at), location=location)
        held = [(t["accession"], t["hold_reason"])
                for t in box_timeline(s, box.id)["specimens"] if t["hold_reason"]]
        return (f"box {box.box_code} packed ({box.condition}) with {len(accessions)} tube(s)",
                held)

    head, held = _run(work)
    console.print(head, markup=False)
    for accession, hold in held:
        console.print(f"  [red]{escape(accession)} HELD[/red] — {escape(hold)}")


@box_app.command("pickup")
def box_pickup(
    box_code: Annotated[str, typer.Argument(help="The box's barcode.")],
    courier: Annotated[str, typer.Option("--courier", help="The courier (company, driver).")],
    location: Annotated[str, typer.Option(help="Where (default: the site).")] = "",
    by: By = "", at: At = "",
) -> None:
    """The courier picks the box up: it and its tubes are in transit."""
    from lab.custody import courier_pickup

    def work(s: Session) -> str:
        box = courier_pickup(s, box_code, actor=_who(by), courier=courier, at=_when(at),
                             location=location)
        return f"box {box.box_code} picked up by {box.courier}"

    console.print(_run(work), markup=False)


@box_app.command("receive")
def box_receive(
    box_code: Annotated[str, typer.Argument(help="The box's barcode.")],
    log: Annotated[Path | None, typer.Option(
        "--log", help="The box logger's CSV (time,temperature_c; ISO times with offset).")
    ] = None,
    location: Annotated[str, typer.Option(help="Where it is received.")] = "center",
    by: By = "", at: At = "",
) -> None:
    """Receive a box with its temperature log; its tubes are received and accessioned.

    A reading out of the box's range holds every tube in it.
    """
    from lab.custody import box_timeline, receive_box

    def work(s: Session) -> tuple[str, str, list[tuple[str, str]]]:
        readings = read_temperature_log(log) if log is not None else []
        box = receive_box(s, box_code, actor=_who(by), temperature_log=readings,
                          location=location, at=_when(at))
        tubes = [(t["accession"], t["hold_reason"])
                 for t in box_timeline(s, box.id)["specimens"]]
        return (f"box {box.box_code} received: {len(readings)} reading(s), "
                f"{len(tubes)} tube(s)", box.excursion, tubes)

    head, excursion, tubes = _run(work)
    console.print(head, markup=False)
    if excursion:
        console.print(f"[red]temperature excursion:[/red] {escape(excursion)}")
    for accession, hold in tubes:
        console.print(f"  {accession}: " + (f"HELD — {hold}" if hold else "ok"), markup=False)


# --------------------------------------------------------------------------- tubes


@app.command("scan")
def scan_cmd(
    accession: Annotated[str, typer.Argument(help="The tube's accession (its barcode).")],
    step: Annotated[str, typer.Argument(
        help="collected, packed, courier, received, accessioned, aliquoted, on_analyzer, "
             "stored or disposed.")],
    location: Annotated[str, typer.Option(help="Where (bench, analyzer, fridge...).")] = "",
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="Temperature where known (°C).")] = None,
    by: By = "", at: At = "",
) -> None:
    """Record one scan of a tube (refused when out of order)."""
    from lab.custody import scan

    def work(s: Session) -> str:
        tube = scan(s, accession, step, actor=_who(by), location=location,
                    temperature_c=temperature, at=_when(at))
        return tube.hold_reason

    hold = _run(work)
    console.print(f"{accession}: {step}", markup=False)
    if hold:
        console.print(f"[red]held:[/red] {escape(hold)}")


@app.command("reject")
def reject_cmd(
    accession: Annotated[str, typer.Argument(help="The tube's accession.")],
    code: Annotated[str, typer.Option(
        "--code", help="hemolysed, clotted, insufficient, unlabelled or mismatched.")],
    note: Annotated[str, typer.Option(help="What was seen.")] = "",
    by: By = "", at: At = "",
) -> None:
    """Reject a tube with a coded reason; the site is sent the rejection.

    The tube's open results are rejected with it.
    """
    from lab.custody import reject_specimen

    def work(s: Session) -> str:
        tube = reject_specimen(s, accession, code, actor=_who(by), note=note, at=_when(at))
        return f"{tube.accession} rejected ({tube.rejection_code}); the site is told"

    console.print(_run(work), markup=False)


def _events_table(title: str, events: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("when (UTC)", "step", "who", "where", "°C", "detail"):
        table.add_column(col)
    for e in events:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
        table.add_row(escape(e["at"]), escape(e["step"]), escape(e["actor"]),
                      escape(e["location"]),
                      "" if e["temperature_c"] is None else f"{e['temperature_c']:g}",
                      escape(detail))
    return table


@app.command("timeline")
def timeline_cmd(
    accession: Annotated[str, typer.Argument(help="The tube's accession.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A tube's chain of custody, oldest first."""
    from lab.custody import find_specimen, specimen_timeline

    def work(s: Session) -> tuple[list[dict[str, Any]], str]:
        tube = find_specimen(s, accession)
        return specimen_timeline(s, tube.id), tube.hold_reason

    events, hold = _run(work)
    if as_json:
        print(json.dumps({"accession": accession, "hold_reason": hold, "events": events},
                         ensure_ascii=False, indent=2))
        return
    console.print(_events_table(f"specimen {accession}", events))
    if hold:
        console.print(f"[red]held:[/red] {escape(hold)}")


@app.command("box-timeline")
def box_timeline_cmd(
    box_code: Annotated[str, typer.Argument(help="The box's barcode.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A box's events, temperature log and tubes."""
    from lab.custody import box_timeline, find_shipment

    view = _run(lambda s: box_timeline(s, find_shipment(s, box_code).id))
    if as_json:
        print(json.dumps(view, ensure_ascii=False, indent=2))
        return
    console.print(f"box {view['box_code']} from {view['site_id']}: {view['condition']}, "
                  f"{view['state']}", markup=False)
    console.print(_events_table("events", view["events"]))
    if view["temperature_log"]:
        readings = Table(title="temperature log")
        readings.add_column("when (UTC)")
        readings.add_column("°C")
        for r in view["temperature_log"]:
            mark = "" if r["in_range"] else "[red] out of range[/red]"
            readings.add_row(escape(r["at"]), f"{r['temperature_c']:g}{mark}")
        console.print(readings)
    if view["excursion"]:
        console.print(f"[red]temperature excursion:[/red] {escape(view['excursion'])}")
    for t in view["specimens"]:
        console.print(f"  {t['accession']} {t['specimen_type']}: {t['state']}"
                      + (f", rejected ({t['rejection_code']})" if t["rejection_code"] else "")
                      + (f", HELD — {t['hold_reason']}" if t["hold_reason"] else ""),
                      markup=False)


@app.command("label")
def label_cmd(
    accessions: Annotated[list[str], typer.Argument(help="Accessions to print.")],
    out: Annotated[Path, typer.Option("--out", help="The PDF to write.")],
    width_mm: Annotated[float, typer.Option(help="Label width (mm).")] = 50,
    height_mm: Annotated[float, typer.Option(help="Label height (mm).")] = 25,
) -> None:
    """Code 128 labels, one per page, as PDF for a label printer."""
    from lab.labels import labels_for

    data = _run(lambda s: labels_for(s, accessions, width_mm=width_mm, height_mm=height_mm))
    try:
        out.write_bytes(data)
    except OSError as e:
        raise _fail(InvalidInput(f"cannot write {out}: {e.strerror or e}")) from e
    console.print(f"{len(accessions)} label(s) written to {out}", markup=False)
