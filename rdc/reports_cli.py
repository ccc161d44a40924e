"""``rdc keys``, ``rdc reports`` and ``rdc deliveries``: signing keys, report
verification and the delivery of results back to county sites."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from core.db import get_database
from core.errors import InvalidInput, RDCError
from rdc.console import console, err
from rdc.console import fail as _fail
from rdc.console import load_settings as _settings

keys_app = typer.Typer(help="Issue, list, revoke and export readers' signing keys.",
                       no_args_is_help=True)
reports_app = typer.Typer(help="Inspect and verify signed reports.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Deliveries of signed results to county sites.",
                             no_args_is_help=True)




def _passphrase(passphrase_file: Path | None, confirm: bool) -> str:
    """From a file, from ``RDC_KEY_PASSPHRASE`` (scripts), else asked without echo."""
    if passphrase_file is not None:
        return passphrase_file.read_text(encoding="utf-8").rstrip("\n")
    env = os.environ.get("RDC_KEY_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise InvalidInput("no passphrase: give --passphrase-file or RDC_KEY_PASSPHRASE")
    value: str = typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)
    return value


PassFile = Annotated[Path | None, typer.Option(
    "--passphrase-file", exists=True, dir_okay=False,
    help="File holding the passphrase (else RDC_KEY_PASSPHRASE, else asked).")]


# Keys -------------------------------------------------------------------------
@keys_app.command("issue")
def keys_issue(
    reader_id: Annotated[str, typer.Argument(help="The reader's account id, e.g. 'dr.li'.")],
    name: Annotated[str, typer.Option(help="Name shown in signatures, e.g. '李医生'.")],
    algorithm: Annotated[str | None, typer.Option(
        help="sm2, ed25519 or ecdsa-p256 (default: RDC_SIGNING_ALGORITHM).")] = None,
    passphrase_file: PassFile = None,
) -> None:
    """Issue a key pair and certificate from the center's CA; the private key is
    stored encrypted under the reader's passphrase."""
    from reports import keys

    s = _settings()
    try:
        passphrase = _passphrase(passphrase_file, confirm=True)
        with get_database(s.database_url).session() as sess:
            key = keys.issue_key(sess, s, reader_id=reader_id, display_name=name,
                                 passphrase=passphrase, algorithm=algorithm, actor="cli")
            console.print(f"key {key.id} issued to {key.reader_id} ({key.algorithm}); "
                          f"certificate serial {key.serial}, fingerprint {key.fingerprint}, "
                          f"valid until {key.not_after:%Y-%m-%d}")
    except RDCError as e:
        raise _fail(e) from e


@keys_app.command("list")
def keys_list(reader: Annotated[str | None, typer.Option(help="Only this reader.")] = None,
              ) -> None:
    """Readers' keys with their state (active, revoked, expired)."""
    from reports import keys

    s = _settings()
    table = Table("id", "reader", "name", "algorithm", "fingerprint", "issued", "valid until",
                  "state")
    with get_database(s.database_url).session() as sess:
        for k in keys.list_keys(sess, reader):
            table.add_row(str(k.id), k.reader_id, k.display_name, k.algorithm, k.fingerprint,
                          f"{k.issued_at:%Y-%m-%d %H:%M}", f"{k.not_after:%Y-%m-%d}",
                          keys.key_state(k))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id (see `rdc keys list`).")],
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "unspecified",
) -> None:
    """Revoke a key: it never signs again; earlier signatures still verify."""
    from reports import keys

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            k = keys.revoke_key(sess, key_id, reason=reason, actor="cli")
            console.print(f"key {k.id} of {k.reader_id} revoked at {k.revoked_at}")
    except RDCError as e:
        raise _fail(e) from e


@keys_app.command("export")
def keys_export(
    key_id: Annotated[int | None, typer.Argument(
        help="Key id; without it, the center's CA certificate.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
) -> None:
    """Export a reader's certificate (or the CA's) as PEM; never a private key."""
    from reports import keys

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            pem = keys.certificate_pem(sess, s, key_id)
    except RDCError as e:
        raise _fail(e) from e
    if out is None:
        sys.stdout.write(pem.decode())
    else:
        out.write_bytes(pem)
        console.print(f"wrote {out}")


# Reports ----------------------------------------------------------------------
@reports_app.command("verify")
def reports_verify(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False,
                                                help="Delivered SR, PDF or DICOM PDF.")],
    ca: Annotated[Path | None, typer.Option(
        help="CA certificate (PEM) to trust; default: this center's.")] = None,
) -> None:
    """Verify delivered report files on their own: signature, certificate chain to
    the center's CA, content hash, and for a DICOM-wrapped PDF the wrapper's patient,
    study and document attributes against the sealed ones.  Exit code 5 if any file
    fails."""
    from reports import keys
    from reports.verify import verify_bytes

    s = _settings()
    try:
        ca_pem = ca.read_bytes() if ca is not None else keys.ca_certificate_pem(s)
        revoked = keys.revocations_if_available(s)
    except RDCError as e:
        raise _fail(e) from e
    failed = 0
    for path in files:
        try:
            v = verify_bytes(path.read_bytes(), ca_pem, revoked)
        except RDCError as e:
            failed += 1
            # Escaped: the message quotes values from the file (rich would read "[...]").
            err.print(f"[red]FAILED[/red] {escape(str(path))}: {escape(str(e))}")
            continue
        r = v.result
        later = f"; certificate revoked later, at {r.revoked_at}" if r.revoked_at else ""
        subject = "" if v.subject is None else (
            f"; sealed for patient ID {v.subject.get('PatientID', '')!r}, study "
            f"{v.subject.get('StudyInstanceUID', '')}")
        console.print(escape(
            f"OK {path} ({v.kind}): signed by {r.signer_name} ({r.reader_id}) at "
            f"{r.signed_at.isoformat()} with {r.algorithm}/{r.hash_algorithm}; "
            f"content hash {r.content_hash}; certificate {r.fingerprint}{subject}{later}"))
    if failed:
        raise typer.Exit(5)


@reports_app.command("list")
def reports_list(state: Annotated[str | None, typer.Option(help="Only this state.")] = None,
                 ) -> None:
    """Reports with their current state and newest version."""
    from sqlalchemy import select

    from core.models import Report
    from reports import service

    s = _settings()
    table = Table("id", "study", "site", "template", "state", "version", "signed by",
                  "signed at")
    with get_database(s.database_url).session() as sess:
        q = select(Report).order_by(Report.id)
        if state:
            q = q.where(Report.state == state)
        for r in sess.scalars(q):
            v = service.current_version(sess, r)
            table.add_row(str(r.id), str(r.study_id), r.site_id,
                          f"{r.template_id}@{r.template_version}", r.state, str(v.number),
                          v.signed_by or "", str(v.signed_at or ""))
    console.print(table)


# Deliveries -------------------------------------------------------------------
@deliveries_app.command("list")
def deliveries_list(state: Annotated[str | None, typer.Option(
        help="Only this state; 'dead' is the dead-letter list.")] = None) -> None:
    """Deliveries of signed results to county sites, with attempts and errors."""
    from delivery.service import list_deliveries

    s = _settings()
    table = Table("id", "version", "site", "channel", "state", "attempts", "next attempt",
                  "last error")
    with get_database(s.database_url).session() as sess:
        for d in list_deliveries(sess, state):
            # Sent, storage commitment requested, the site's report not yet in (it may come
            # on an association of its own, to `rdc commitment`).
            shown = f"{d.state} (awaiting commitment)" if (
                d.state == "sent" and d.commitment_uid) else d.state
            table.add_row(str(d.id), str(d.report_version_id) if d.report_version_id is not None
                          else f"message {d.message_id}", d.site_id, d.channel, shown,
                          str(d.attempts), str(d.next_attempt_at or ""),
                          (d.last_error or "")[:120])
    console.print(table)


@deliveries_app.command("resend")
def deliveries_resend(
    delivery_id: Annotated[int, typer.Argument(help="Delivery id.")],
    force: Annotated[bool, typer.Option(help="Also resend one already delivered.")] = False,
) -> None:
    """Put a failed or dead-lettered delivery back in line."""
    from delivery.service import resend

    s = _settings()
    try:
        with get_database(s.database_url).session() as sess:
            d = resend(sess, delivery_id, "cli", force=force)
            console.print(f"delivery {d.id} to {d.site_id} is {d.state} again")
    except RDCError as e:
        raise _fail(e) from e
