"""``rdc lab`` commands: analyzer (merged into ``rdc lab`` by rdc/lab_cli.py).

``rdc lab analyzer-sim`` runs a simulated analyzer against the center's listener, over
the real protocol of that analyzer (ASTM for CHEM1, HL7 ORU over MLLP for HEME1): the
demo and an operator checking the listener use it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from core.db import get_database
from core.errors import InvalidInput, RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

app = typer.Typer()


@app.command("analyzer-sim")
def analyzer_sim(
    analyzer: Annotated[str, typer.Option("--analyzer", help="Catalog analyzer id, e.g. "
                                                             "CHEM1 or HEME1.")],
    fail_control: Annotated[list[str] | None, typer.Option(
        "--fail-control", help="A failing control TEST:LEVEL:SD, e.g. K:2:+3.5 "
                               "(repeatable).")] = None,
    critical: Annotated[list[str] | None, typer.Option(
        "--critical", help="A critical value ACCESSION:TEST:VALUE, e.g. L00000042:K:7.1 "
                           "(repeatable).")] = None,
    shift: Annotated[list[str] | None, typer.Option(
        "--shift", help="An analyzer shift TEST:SD, e.g. K:+2 (repeatable).")] = None,
    hemolysed: Annotated[list[str] | None, typer.Option(
        "--hemolysed", help="A tube (accession) measured with a high H index.")] = None,
    host: Annotated[str, typer.Option(help="The center's lab listener host "
                                           "(default: lab_host, or 127.0.0.1).")] = "",
    port: Annotated[int, typer.Option(help="Its port (default: lab_astm_port for ASTM "
                                           "analyzers, lab_mllp_port for HL7).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Random seed (repeatable runs).")] = None,
    run_code: Annotated[str, typer.Option("--run-code", help="The run code (default: "
                                                             "analyzer and time).")] = "",
    controls_only: Annotated[bool, typer.Option("--controls-only",
                                                help="A QC-only run.")] = False,
    bad_checksums: Annotated[int, typer.Option(
        "--bad-checksums", help="ASTM: send the first frame with a bad checksum this many "
                                "times first (6: the transfer is given up).")] = 0,
) -> None:
    """Send one run of pending tubes (with two control levels per analyte) to the center."""
    from devkit.analyzer_sim import (
        ControlFault,
        CriticalValue,
        SimOptions,
        analyzer_of,
        parse_shift,
        run_analyzer,
    )
    from lab import astm
    from lab.catalog import get_catalog

    s = _settings()
    try:
        spec = analyzer_of(get_catalog(s), analyzer)
        options = SimOptions(
            fail_controls=tuple(ControlFault.parse(f) for f in fail_control or ()),
            criticals=tuple(CriticalValue.parse(c) for c in critical or ()),
            shift=dict(parse_shift(x) for x in shift or ()),
            hemolysed=tuple(hemolysed or ()), seed=seed, run_code=run_code or None,
            controls_only=controls_only)
        target = host or (s.lab_host if s.lab_host not in ("0.0.0.0", "::", "") else
                          "127.0.0.1")
        target_port = port or (s.lab_astm_port if spec.protocol == "astm"
                               else s.lab_mllp_port)
        sent = run_analyzer(get_database(s.database_url), spec.id, target, target_port,
                            options, bad_checksums=bad_checksums)
    except RDCError as e:
        raise _fail(e) from e
    except astm.TransferError as e:
        err.print(f"[red]error:[/red] the ASTM transfer failed: {e}")
        raise typer.Exit(3) from e
    except OSError as e:
        err.print(f"[red]error:[/red] cannot reach the lab listener: {e}")
        raise typer.Exit(3) from e
    run = sent.run
    console.print(f"{spec.id} run {run.run_code}: {len(run.controls)} controls, "
                  f"{len(run.results)} results on "
                  f"{len({m.accession for m in run.results})} tubes sent to "
                  f"{target}:{target_port} ({spec.protocol})", markup=False)
    if sent.naks:
        console.print(f"  {sent.naks} frame(s) sent again after a NAK", markup=False)
    if spec.protocol != "astm":
        console.print(f"  answer: {sent.ack_code} {sent.ack_text}", markup=False)
        if sent.ack_code != "AA":
            raise _fail(InvalidInput(f"the center answered {sent.ack_code}: "
                                     f"{sent.ack_text}"))
