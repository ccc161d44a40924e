"""``rdc audit``: verify the chain against its signed checkpoints, write a checkpoint,
and send the audit trail to the hospital's audit repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.db import get_database
from core.errors import RDCError
from rdc.console import console, err, fail
from rdc.console import load_settings as _settings

audit_app = typer.Typer(help="Inspect, anchor and export the hash-chained audit log.",
                        no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    ca_cert: Annotated[Path | None, typer.Option(
        "--ca-cert", exists=True, dir_okay=False,
        help="Check checkpoint signatures against this copy of the center CA's "
             "certificate (kept away from the center) instead of the one on disk.")] = None,
    all_signatures: Annotated[bool, typer.Option(
        "--all-signatures", help="Verify every checkpoint's signature, not only the last "
                                 "one's (which covers the others; SM2 is slow).")] = False,
) -> None:
    """Check the audit chain and every signed checkpoint; report the first broken record,
    a rewritten or cut chain, and an edited checkpoint file (exit code 1)."""
    from core.audit_checkpoints import verify_anchored

    s = _settings()
    db = get_database(s.database_url)
    try:
        report = verify_anchored(s, db, ca_cert=ca_cert.read_bytes() if ca_cert else None,
                                 all_signatures=all_signatures)
    except RDCError as e:
        raise fail(e) from e
    chain = report.chain
    if chain.ok:
        console.print(f"audit log intact: {chain.checked} records verified")
    else:
        err.print(f"[red]audit log broken at record {chain.first_broken_seq}:[/red] "
                  f"{chain.reason} ({chain.checked} records before it verified)")
    last = report.last_checkpoint
    where = (f" (up to record {report.anchored}; last checkpoint line {last.n}, record "
             f"{last.seq}, made {last.made_at})" if last else "")
    console.print(f"checkpoints: {report.checkpoints} valid; {report.anchored} records "
                  f"anchored{where}; {report.unanchored} after the last checkpoint "
                  "(unanchored)")
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    for problem in report.problems:
        err.print(f"[red]{problem.kind}:[/red] {problem.message}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's head with the center CA now and append it to
    $RDC_HOME/audit/checkpoints.jsonl (the gateway does this every
    RDC_AUDIT_CHECKPOINT_S)."""
    from core.audit_checkpoints import checkpoints_path, make_checkpoint

    s = _settings()
    db = get_database(s.database_url)
    try:
        cp = make_checkpoint(s, db)
    except RDCError as e:
        raise fail(e) from e
    if cp is None:
        console.print("no records since the last checkpoint; nothing to sign")
        return
    console.print(f"checkpoint line {cp.n}: record {cp.seq}, hash {cp.hash[:16]}…, signed "
                  f"{cp.alg} by CA {cp.ca[:16]}… in {checkpoints_path(s)}")


@audit_app.command("export-atna")
def audit_export_atna(
    url: Annotated[str | None, typer.Option(
        help="Syslog URL (udp://, tcp://, tls://); default RDC_ATNA_SYSLOG_URL.")] = None,
) -> None:
    """Send the audit records not yet sent to the audit repository as DICOM audit
    messages (catching up after an outage); exit code 7 if it cannot be reached."""
    from core.atna_export import (
        AtnaExporter,
        export_lock,
        read_cursor,
        sender_from_settings,
    )

    s = _settings()
    if url:
        s = s.model_copy(update={"atna_syslog_url": url})
    db = get_database(s.database_url)
    try:
        sender = sender_from_settings(s)
        if sender is None:
            err.print("[red]error:[/red] no audit repository: set RDC_ATNA_SYSLOG_URL "
                      "(e.g. tls://audit.hospital.example:6514) or pass --url")
            raise typer.Exit(2)
        with export_lock(s, wait=True):
            result = AtnaExporter(s, db, sender).export_available()
    except RDCError as e:
        cursor = read_cursor(s).seq
        err.print(f"[red]error:[/red] {e}")
        err.print(f"records up to {cursor} were sent; run this again when the repository "
                  "is reachable (nothing is skipped)")
        raise typer.Exit(e.exit_code) from e
    console.print(f"sent {result.sent} audit records to {sender.target}; the repository "
                  f"has records up to {result.cursor} of {result.head}")
