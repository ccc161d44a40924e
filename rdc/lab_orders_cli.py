"""``rdc lab`` commands: orders in (merged into ``rdc lab`` by rdc/lab_cli.py).

``rdc lab listen`` runs the lab's listener process (MLLP for orders and HL7 analyzers,
ASTM for the others) in the foreground, as ``rdc up`` does for its ``lab`` child;
``rdc lab order FILE`` sends an HL7 order file to a listener over MLLP and prints the
ACK, as a county site's system would (an interface check from the command line).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from core.db import get_database
from core.errors import RDCError
from rdc.console import console, err, fail
from rdc.console import load_settings as _settings

app = typer.Typer()


@app.command("listen")
def listen() -> None:
    """Run the lab listener in the foreground: HL7 over MLLP (orders from sites,
    results from HL7 analyzers) and ASTM E1394 (analyzers); RDC_LAB_MLLP_PORT and
    RDC_LAB_ASTM_PORT, 0 turns one off."""
    from lab.listen import run
    from rdc.cli import setup_logging

    s = _settings()
    setup_logging(s, "lab")
    db = get_database(s.database_url)

    def ready(servers: list[asyncio.Server]) -> None:
        where = ", ".join(f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
                          for server in servers for sock in server.sockets)
        console.print(f"lab: listening on {where} (MLLP port {s.lab_mllp_port or 'off'}, "
                      f"ASTM port {s.lab_astm_port or 'off'})", markup=False)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            if task is not None:
                loop.add_signal_handler(signum, task.cancel)
        await run(db, s, on_ready=ready)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        console.print("lab: stopped")
    except RDCError as e:
        raise fail(e) from e


@app.command("order")
def order(
    file: Annotated[Path, typer.Argument(help="An HL7 v2 message (OML^O21 or ORM^O01); "
                                              "LF, CRLF or CR between segments.")],
    host: Annotated[str, typer.Option(help="The lab listener's host.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(
        help="Its MLLP port (default: RDC_LAB_MLLP_PORT).", min=1, max=65535)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the ACK.",
                                           min=0.1)] = 30.0,
) -> None:
    """Send an HL7 order file over MLLP and print the ACK; exit 0 on AA, 1 on AE/AR."""
    from devkit.hl7_site import msa, send_message

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        err.print(f"[red]error:[/red] cannot read {escape(str(file))}: {e}")
        raise typer.Exit(2) from e
    message = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r") + "\r"
    if not message.startswith("MSH"):
        err.print(f"[red]error:[/red] {escape(str(file))} is not an HL7 v2 message (it does "
                  "not start with MSH)")
        raise typer.Exit(2)
    target = port or _settings().lab_mllp_port
    if not target:
        err.print("[red]error:[/red] no MLLP port: give --port (RDC_LAB_MLLP_PORT is 0)")
        raise typer.Exit(2)
    try:
        ack = send_message(host, target, message, timeout=timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        err.print(f"[red]error:[/red] no ACK from {host}:{target}: {e or type(e).__name__}")
        raise typer.Exit(1) from e
    code, control, reason = _read_ack(ack, msa)
    console.print(ack.replace("\r", "\n").rstrip(), markup=False)
    if code != "AA":
        err.print(f"[red]{code}[/red] for message {escape(control)}: {escape(reason)}")
        raise typer.Exit(1)


def _read_ack(ack: str, msa: Any) -> tuple[str, str, str]:
    try:
        code, control, reason = msa(ack)
    except ValueError:
        return "??", "", f"the answer has no MSA segment: {ack[:200]!r}"
    return str(code), str(control), str(reason)
