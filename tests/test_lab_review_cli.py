"""``rdc lab held / review / sign / visit-report / fhir`` as an operator runs them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lab_review_support import PASSPHRASE, Measured, make_order, make_site
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import Center
from core.models import LabResult
from rdc.lab_cli import lab_app
from reports.keys import issue_key

QC_HOLD = "QC reject on CHEM1 run R3: 1-3s"


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def rdc_lab(*args: str) -> Ran:
    """``rdc lab ARGS`` in this process (the center's settings are this process's)."""
    result = CliRunner().invoke(lab_app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def test_review_commands_end_to_end(env_center: Center, tmp_path: Path) -> None:
    c = env_center
    make_site(c, "county-a")
    with c.db.session() as s:
        issue_key(s, c.settings, reader_id="rev.cli", display_name="Reviewer CLI",
                  passphrase=PASSPHRASE, actor="test")
        order, _, rows = make_order(s, [Measured("K", 5.9, "held", "H", qc_hold=QC_HOLD),
                                        Measured("NA", 165.0, "held", "HH", critical=True)])
        k, na = rows[0].id, rows[1].id
        order_id = order.id

    held = rdc_lab("held", "--json")
    assert held.returncode == 0, held.stderr
    assert [i["id"] for i in json.loads(held.stdout)] == [na, k]  # critical first
    table = rdc_lab("held", "--site", "county-a")
    assert table.returncode == 0 and "2 held result(s)" in table.stdout

    no_reason = rdc_lab("review", str(k), "--action", "release", "--reason", " ")
    assert no_reason.returncode != 0 and "a reason is required" in no_reason.stderr
    bad = rdc_lab("review", str(k), "--action", "approve", "--reason", "x")
    assert bad.returncode != 0 and "unknown review action 'approve'" in bad.stderr

    passfile = tmp_path / "pass.txt"
    passfile.write_text(PASSPHRASE + "\n", encoding="utf-8")
    refused = rdc_lab("sign", str(k), str(na), "--reader", "rev.cli",
                    "--passphrase-file", str(passfile))
    assert refused.returncode != 0 and "QC hold" in refused.stderr
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it\n", encoding="utf-8")
    denied = rdc_lab("sign", str(na), "--reader", "rev.cli", "--passphrase-file",
                   str(wrong))
    assert denied.returncode != 0
    missing = rdc_lab("sign", str(na), "--reader", "rev.cli", "--passphrase-file",
                    str(tmp_path / "nope.txt"))
    assert missing.returncode != 0 and "cannot read the passphrase file" in missing.stderr

    ok = rdc_lab("review", str(k), "--action", "release", "--reason",
               "repeat control in range", "--actor", "rev.cli")
    assert ok.returncode == 0, ok.stderr
    assert f"result {k}: release -> held" in ok.stdout
    signed = rdc_lab("sign", str(k), str(na), "--reader", "rev.cli",
                   "--passphrase-file", str(passfile))
    assert signed.returncode == 0, signed.stderr
    assert f"result {k}: signed (verified)" in signed.stdout
    with c.db.session() as s:
        states = {r.id: r.state for r in s.scalars(select(LabResult))}
    assert states == {k: "verified", na: "verified"}

    fhir = rdc_lab("fhir", str(order_id))
    assert fhir.returncode == 0, fhir.stderr
    report = json.loads(fhir.stdout)
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "final"
    assert rdc_lab("fhir", "99999").returncode != 0

    out = tmp_path / "visit.pdf"
    pdf = rdc_lab("visit-report", "--site", "county-a", "--patient", "P001", "--visit",
                "V1", "--out", str(out))
    assert pdf.returncode == 0, pdf.stderr
    assert out.read_bytes().startswith(b"%PDF-")
    unknown = rdc_lab("visit-report", "--site", "county-a", "--patient", "P001",
                    "--visit", "V9", "--out", str(tmp_path / "x.pdf"))
    assert unknown.returncode != 0 and "no lab order" in unknown.stderr
    assert not (tmp_path / "x.pdf").exists()
