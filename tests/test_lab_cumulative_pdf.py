"""The cumulative lab report of a visit: values, previous values, flags, Chinese text."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from lab_review_support import T0, Measured, make_order, make_site

from conftest import Center
from core.errors import InvalidInput, NotFound
from lab.cumulative_pdf import cumulative_pdf


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is missing: apt-get install poppler-utils"
    return path


def _run(tool: str, path: Path) -> str:
    done = subprocess.run([_poppler(tool), *(["-enc", "UTF-8"] if tool == "pdftotext" else []),
                           str(path), *(["-"] if tool == "pdftotext" else [])],
                          check=True, capture_output=True, timeout=60)
    return done.stdout.decode("utf-8")


def test_visit_report_has_the_values_previous_values_and_chinese_name(
        center: Center, tmp_path: Path) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        # An earlier visit: its released values are the "previous" columns.
        make_order(s, [Measured("K", 4.1, "verified", measured_at=T0 - timedelta(days=20)),
                       Measured("CREA", 88.0, "autoverified",
                                measured_at=T0 - timedelta(days=20))],
                   visit="V0", collected_at=T0 - timedelta(days=20), patient_name="张^三丰")
        # This visit: two draws, chemistry and hematology, a critical value, a held one.
        make_order(s, [Measured("K", 6.6, "autoverified", "HH", critical=True),
                       Measured("CREA", 140.0, "verified", "H"),
                       Measured("GLU", 7.7, "held", "H")],
                   visit="V7", collected_at=T0, patient_name="张^三丰")
        make_order(s, [Measured("K", 5.0, "verified"), Measured("HGB", 98.0, "autoverified", "L")],
                   visit="V7", collected_at=T0 + timedelta(hours=6), patient_name="张^三丰")
        # Another patient of the same visit number is not in the report.
        make_order(s, [Measured("K", 3.2, "autoverified", "L")], visit="V7", patient_id="P777")
        pdf = cumulative_pdf(s, site_id="county-a", patient_id="P001", visit_number="V7")

    assert pdf.startswith(b"%PDF-")
    path = tmp_path / "visit.pdf"
    path.write_bytes(pdf)
    text = _run("pdftotext", path)
    assert "张三丰" in text  # the Chinese name, rendered in the CJK font
    assert "Cumulative laboratory report" in text
    for expected in ("Chemistry", "Hematology", "Potassium", "Creatinine", "Hemoglobin",
                     "6.6 HH !", "140 H", "5.0", "98 L", "4.1", "88", "3.5-5.3", "mmol/L",
                     "pending", "V7"):
        assert expected in text, expected
    assert "3.2" not in text  # the other patient's value
    assert "7.7" not in text  # a held value is not shown to the site
    fonts = _run("pdffonts", path)
    cjk = [line for line in fonts.splitlines() if "WenQuanYiZenHei" in line]
    assert cjk, fonts
    assert all(" yes " in line for line in cjk)  # embedded (subset), not a substitute


def test_visit_report_refuses_an_unknown_visit(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        make_order(s, [Measured("K", 4.0, "autoverified")], visit="V1")
        with pytest.raises(NotFound, match="no lab order for patient 'P001' in visit 'V9'"):
            cumulative_pdf(s, site_id="county-a", patient_id="P001", visit_number="V9")
        with pytest.raises(NotFound):
            cumulative_pdf(s, site_id="county-b", patient_id="P001", visit_number="V1")
        with pytest.raises(InvalidInput, match="needs the site"):
            cumulative_pdf(s, site_id="county-a", patient_id="", visit_number="V1")
