"""``rdc lab`` commands: review and results out (merged into ``rdc lab`` by rdc/lab_cli.py).

``held`` lists the reviewers' worklist, ``review`` applies a decision (rerun, reject,
release of a QC hold) with its reason, ``sign`` signs results with the reader's own key
(each result its own signature), ``visit-report`` writes a visit's cumulative PDF and
``fhir`` prints an order's DiagnosticReport.  Every refusal is one line on stderr and
an exit code other than 0.
"""

from __future__ import annotations

import json
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

app = typer.Typer()


@app.command("held")
def held_cmd(
    site: Annotated[list[str] | None, typer.Option(
        "--site", help="Only these sites (repeat); default every site.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many results.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Held results, critical first then oldest, with QC, HIL and the rules that fired."""
    from lab.review import held_worklist

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            items = held_worklist(session, site_ids=frozenset(site) if site else None,
                                  limit=limit)
    except RDCError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(items, default=str))
        return
    table = Table("id", "site", "patient", "accession", "test", "value", "flag", "critical",
                  "qc", "rules", title=f"{len(items)} held result(s)")
    for i in items:
        qc = i["qc"] or {}
        table.add_row(str(i["id"]), i["site_id"], i["patient_id"], i["accession"],
                      i["test_code"], escape(f"{i['value_text'] or i['value']} {i['units']}"),
                      i["flag"], "yes" if i["critical"] else "",
                      escape(f"{qc.get('status', '')} {' '.join(qc.get('rules', []))}".strip()),
                      escape(", ".join(str(r.get("rule")) for r in i["rules_fired"])))
    console.print(table)


@app.command("review")
def review_cmd(
    result_id: Annotated[int, typer.Argument(help="The held result.")],
    action: Annotated[str, typer.Option("--action", help="rerun, reject or release "
                                                         "(a QC hold).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required).")],
    actor: Annotated[str, typer.Option("--actor", help="Who decides.")] = "cli",
) -> None:
    """Apply a reviewer's decision to one result, with its reason."""
    from lab.review import review

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            result = review(session, result_id, action, actor=actor, reason=reason)
            state, hold = result.state, result.qc_hold
    except RDCError as e:
        raise _fail(e) from e
    console.print(f"result {result_id}: {action} -> {state}"
                  f"{' (QC hold: ' + hold + ')' if hold else ''}", markup=False)


@app.command("sign")
def sign_cmd(
    result_ids: Annotated[list[int], typer.Argument(help="Results to sign (each one gets "
                                                         "its own signature).")],
    reader: Annotated[str, typer.Option("--reader", help="The reviewer whose key signs.")],
    passphrase_file: Annotated[Path, typer.Option(
        "--passphrase-file", help="File holding the key's passphrase (first line).")],
    key_id: Annotated[int | None, typer.Option("--key-id", help="A key of the reader's "
                                                                "(default: the active one).")]
    = None,
) -> None:
    """Sign results with the reader's own key; all or nothing; then release them."""
    from lab.signing import sign_results

    s = _settings()
    try:
        try:
            lines = passphrase_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise InvalidInput(f"cannot read the passphrase file {passphrase_file}: "
                               f"{e.strerror or e}") from e
        if not lines or not lines[0]:
            raise InvalidInput(f"the passphrase file {passphrase_file} is empty")
        with get_database(s.database_url).session() as session:
            results = sign_results(session, s, result_ids, reader_id=reader,
                                   passphrase=lines[0], key_id=key_id, actor=reader)
            done = [(r.id, r.state, r.content_hash, r.message_id) for r in results]
    except RDCError as e:
        raise _fail(e) from e
    for rid, state, content_hash, message_id in done:
        console.print(f"result {rid}: signed ({state}), hash {content_hash}"
                      f"{f', message {message_id}' if message_id else ''}", markup=False)


@app.command("visit-report")
def visit_report_cmd(
    site: Annotated[str, typer.Option("--site", help="The site.")],
    patient: Annotated[str, typer.Option("--patient", help="The site's patient id.")],
    visit: Annotated[str, typer.Option("--visit", help="The visit number (PV1-19).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the PDF.")],
) -> None:
    """Write the visit's cumulative lab report (PDF)."""
    from lab.cumulative_pdf import cumulative_pdf

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            pdf = cumulative_pdf(session, site_id=site, patient_id=patient,
                                 visit_number=visit)
    except RDCError as e:
        raise _fail(e) from e
    try:
        out.write_bytes(pdf)
    except OSError as e:
        err.print(f"[red]error:[/red] cannot write {escape(str(out))}: {escape(str(e))}")
        raise typer.Exit(1) from e
    console.print(f"wrote {out} ({len(pdf)} bytes)", markup=False)


@app.command("fhir")
def fhir_cmd(
    order_id: Annotated[int, typer.Argument(help="The lab order.")],
) -> None:
    """Print the order's FHIR R4 DiagnosticReport (JSON)."""
    from lab.fhir_out import diagnostic_report

    s = _settings()
    try:
        with get_database(s.database_url).session() as session:
            report = diagnostic_report(session, order_id)
    except RDCError as e:
        raise _fail(e) from e
    typer.echo(json.dumps(report, ensure_ascii=False, indent=2))
