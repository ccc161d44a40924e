"""Specimen labels: one Code 128 barcode label per page, as PDF for label printers.

The barcode is the center's accession (what every analyzer and scanner reads), drawn by
reportlab's maintained Code 128 encoder (``reportlab.graphics.barcode.code128``, which
picks code sets B/C to keep the symbol short).  Thermal label printers print at 203 dpi:
the narrowest bar is a whole number of printer dots (at least two), so every bar of the
same width prints with the same number of dots, and the quiet zones are the standard ten
modules.  Under it: the accession in plain text (a tube must be identifiable by eye when
a scanner fails), the patient (Chinese names drawn with the CJK font the reports use),
the tests, the tube and the collection time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from reportlab.graphics.barcode.code128 import Code128
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput
from core.models import LabOrder, LabResult, LabSpecimen
from core.timeutil import as_utc
from lab.custody import find_specimen
from reports.pdf import display_person_name
from reports.pdf import register_font as register_cjk_font

#: Thermal label printers' resolution: bars are whole dots of it.
PRINTER_DPI = 203
_DOT = 72.0 / PRINTER_DPI  # one printer dot in points
_MARGIN = 1.5 * mm
_MONO_FONT = "Helvetica-Bold"
_TEXT_FONT = "Helvetica"


def _fit(text: str, font: str, size: float, width: float) -> str:
    """``text`` cut (with an ellipsis) to ``width`` points."""
    if stringWidth(text, font, size) <= width:
        return text
    while text and stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


def _barcode(value: str, width: float, height: float) -> Code128:
    """The Code 128 symbol of ``value``, its narrowest bar a whole number of dots."""
    probe = Code128(value, barWidth=1, quiet=0)
    probe.validate()
    probe.encode()
    modules = sum(int(c, 36) - 9 for c in probe.decompose())  # 'A'/'a' = 1 module ...
    dots = math.floor(width / ((modules + 20) * _DOT))
    if dots < 2:
        raise InvalidInput(f"accession {value!r} does not fit a {width / mm:.0f} mm wide "
                           "barcode at two printer dots a bar: use a wider label")
    bar = dots * _DOT
    return Code128(value, barWidth=bar, barHeight=height, quiet=1, lquiet=10 * bar,
                   rquiet=10 * bar, humanReadable=False)


def label_pdf(specimens: Sequence[LabSpecimen], orders: Mapping[int, LabOrder], *,
              width_mm: float = 50, height_mm: float = 25,
              tests: Mapping[int, Sequence[str]] | None = None) -> bytes:
    """One label per page for each specimen (``orders`` by order id; ``tests`` by
    specimen id, optional)."""
    if not specimens:
        raise InvalidInput("no specimens to print labels for")
    if not (30 <= width_mm <= 120 and 15 <= height_mm <= 80):
        raise InvalidInput(f"label size {width_mm:g} x {height_mm:g} mm: width 30-120 mm, "
                           "height 15-80 mm")
    for specimen in specimens:
        if specimen.order_id not in orders:
            raise InvalidInput(f"specimen {specimen.accession}: its order "
                               f"{specimen.order_id} was not given")
    cjk = register_cjk_font()
    page_w, page_h = width_mm * mm, height_mm * mm
    inner = page_w - 2 * _MARGIN
    line = min(2.6 * mm, page_h / 9)
    buf = io.BytesIO()
    pdf = Canvas(buf, pagesize=(page_w, page_h), pageCompression=1)
    pdf.setTitle("Specimen labels")
    pdf.setAuthor("Regional diagnostic center lab")
    for specimen in specimens:
        order = orders[specimen.order_id]
        bar_h = page_h - 2 * _MARGIN - 4.2 * line
        code = _barcode(specimen.accession, inner, bar_h)
        code.drawOn(pdf, _MARGIN + (inner - code.width) / 2, page_h - _MARGIN - bar_h)
        y = page_h - _MARGIN - bar_h - line * 1.05
        size = line * 0.95
        pdf.setFont(_MONO_FONT, size)
        pdf.drawString(_MARGIN, y, specimen.accession)
        if order.priority == "stat":
            pdf.drawRightString(page_w - _MARGIN, y, "STAT")
        y -= line
        sex = order.sex or "U"
        born = order.birth_date
        who = (f"{display_person_name(order.patient_name) or '?'}  {order.patient_id}  {sex}"
               + (f"  {born[:4]}-{born[4:6]}-{born[6:8]}" if len(born) >= 8 else ""))
        pdf.setFont(cjk, size * 0.9)
        pdf.drawString(_MARGIN, y, _fit(who, cjk, size * 0.9, inner))
        y -= line
        codes = list((tests or {}).get(specimen.id, ()))
        what = " ".join(codes) + ("  " if codes else "") + specimen.container
        pdf.setFont(_TEXT_FONT, size * 0.85)
        pdf.drawString(_MARGIN, y, _fit(what, _TEXT_FONT, size * 0.85, inner))
        y -= line
        collected = collected_text(specimen.collected_at)
        pdf.drawString(_MARGIN, y, _fit(f"{order.site_id}  {collected}", _TEXT_FONT,
                                        size * 0.85, inner))
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def labels_for(session: Session, accessions: Sequence[str], *, width_mm: float = 50,
               height_mm: float = 25) -> bytes:
    """The labels of these accessions, read from the database (NotFound names one)."""
    if not accessions:
        raise InvalidInput("no accessions to print labels for")
    specimens = [find_specimen(session, a) for a in accessions]
    orders = {s.order_id: session.get(LabOrder, s.order_id) for s in specimens}
    found = {k: v for k, v in orders.items() if v is not None}
    tests: dict[int, list[str]] = {}
    for specimen_id, code in session.execute(
            select(LabResult.specimen_id, LabResult.test_code)
            .where(LabResult.specimen_id.in_([s.id for s in specimens]))
            .order_by(LabResult.id)):
        tests.setdefault(specimen_id, []).append(code)
    return label_pdf(specimens, found, width_mm=width_mm, height_mm=height_mm, tests=tests)


def collected_text(moment: datetime | None) -> str:
    """The collection time as the label prints it."""
    if moment is None:
        return "collection time not given"
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")
