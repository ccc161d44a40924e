"""The cumulative lab report of one patient visit, as PDF.

A clinician reads lab results as a trend, not one number: the report lists every test
of the visit's orders by section (chemistry, cardiac, hematology, coagulation), one
row per test, with the draws of this visit in columns (newest first) and then the
patient's previous released values of the same test before the visit, each with its
abnormal flag.  Only what the site may see is shown: released values, rejected ones
marked as such, and "pending" for a test that has no released value yet.

Chinese text (names, notes) renders exactly as in the imaging reports: the same CJK
font, registered by :mod:`reports.pdf`'s own function (never a second copy of it), and
the same CJK line breaking.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound
from core.models import LabOrder, LabResult, LabSpecimen, Site
from core.settings import get_settings
from lab.catalog import Test, get_catalog
from lab.results_out import format_range, format_value
from lab.states import RELEASED_RESULT_STATES, ResultState
from reports.pdf import display_date, display_person_name, register_font

__all__ = ["cumulative_pdf"]

#: Columns of earlier values (before the visit) shown after the visit's draws.
PREVIOUS: Final = 3
#: At most this many draws of the visit get a column (the newest).
VISIT_COLUMNS: Final = 5
_SECTIONS: Final = ("chemistry", "cardiac", "hematology", "coagulation")


@dataclass(frozen=True)
class _Cell:
    text: str
    flag: str = ""
    critical: bool = False


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "?"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _cell(result: LabResult, test: Test | None) -> _Cell:
    if result.state == ResultState.REJECTED:
        return _Cell("rejected")
    if result.state not in RELEASED_RESULT_STATES:
        return _Cell("pending")
    _, value = format_value(result, test.decimals if test is not None else 2)
    return _Cell(value or "-", result.abnormal_flag, result.critical)


def _styles(font: str) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("lab-body", fontName=font, fontSize=9.5, leading=13, wordWrap="CJK")
    return {
        "title": ParagraphStyle("lab-title", parent=base, fontSize=15, leading=20, alignment=1),
        "center": ParagraphStyle("lab-center", parent=base, fontSize=11, leading=15,
                                 alignment=1),
        "heading": ParagraphStyle("lab-heading", parent=base, fontSize=11.5, leading=16,
                                  spaceBefore=8, spaceAfter=3),
        "body": base,
        "cell": ParagraphStyle("lab-cell", parent=base, fontSize=8.5, leading=11),
        "note": ParagraphStyle("lab-note", parent=base, fontSize=7.5, leading=10,
                               textColor=colors.grey),
    }


def _p(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(text), style)


def cumulative_pdf(session: Session, *, site_id: str, patient_id: str,
                   visit_number: str) -> bytes:
    """The visit's cumulative report.  :class:`NotFound` when the site has no order of
    that patient and visit."""
    if not site_id or not patient_id or not visit_number:
        raise InvalidInput("a visit report needs the site, the patient id and the visit number")
    orders = list(session.scalars(select(LabOrder).where(
        LabOrder.site_id == site_id, LabOrder.patient_id == patient_id,
        LabOrder.visit_number == visit_number).order_by(LabOrder.id)))
    if not orders:
        raise NotFound(f"site {site_id!r} has no lab order for patient {patient_id!r} in "
                       f"visit {visit_number!r}")
    order_ids = {o.id for o in orders}
    visit_results = list(session.scalars(select(LabResult).where(
        LabResult.order_id.in_(order_ids)).order_by(LabResult.id)))
    specimens = {s.id: s for s in session.scalars(select(LabSpecimen).where(
        LabSpecimen.order_id.in_(order_ids)))}
    codes = {r.test_code for r in visit_results}
    catalog = get_catalog()

    def drawn(r: LabResult) -> datetime:
        spec = specimens.get(r.specimen_id)
        moment = (spec.collected_at if spec is not None else None) or r.measured_at \
            or r.created_at
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    # The visit's draws (specimens), newest first: one column each.
    draws = sorted({r.specimen_id for r in visit_results},
                   key=lambda sid: (_draw_time(specimens.get(sid)), sid), reverse=True)
    draws = draws[:VISIT_COLUMNS]
    first_draw = min((drawn(r) for r in visit_results), default=None)
    earlier = list(session.scalars(select(LabResult).where(
        LabResult.site_id == site_id, LabResult.patient_id == patient_id,
        LabResult.test_code.in_(codes), LabResult.order_id.not_in(order_ids),
        LabResult.state.in_([s.value for s in RELEASED_RESULT_STATES]))
        .order_by(LabResult.measured_at.desc(), LabResult.id.desc())))
    previous: dict[str, list[LabResult]] = defaultdict(list)
    for r in earlier:
        measured = r.measured_at
        if measured is not None and measured.tzinfo is None:
            measured = measured.replace(tzinfo=UTC)
        if first_draw is None or measured is None or measured < first_draw:
            previous[r.test_code].append(r)

    grid: dict[str, dict[int, LabResult]] = defaultdict(dict)
    for r in visit_results:
        grid[r.test_code][r.specimen_id] = r

    font = register_font()
    st = _styles(font)
    order = orders[-1]
    site = session.get(Site, site_id)
    story: list[Any] = [
        _p(get_settings().center_name, st["center"]),
        _p("Cumulative laboratory report", st["title"]),
        Spacer(1, 3 * mm),
        _p(f"Patient: {display_person_name(order.patient_name)}   ID: {patient_id}   "
           f"Sex: {order.sex}   Born: {display_date(order.birth_date)}", st["body"]),
        _p(f"Site: {site.name if site is not None else site_id} ({site_id})   "
           f"Visit: {visit_number}   Orders: "
           f"{', '.join(o.placer_order_number for o in orders)}", st["body"]),
        _p(f"Printed {_when(datetime.now(UTC))} UTC", st["note"]),
    ]
    header = ["Test", "Units", "Reference"]
    header += [f"{_when(_draw_time(specimens.get(sid)))}\n{specimens[sid].accession}"
               for sid in draws]
    header += [f"Previous {i}" for i in range(1, PREVIOUS + 1)]
    sections = sorted({(catalog.tests[c].section if c in catalog.tests else "other")
                       for c in codes}, key=lambda s: (_SECTIONS.index(s)
                                                       if s in _SECTIONS else 99, s))
    for section in sections:
        rows: list[list[Any]] = [[_p(h, st["cell"]) for h in header]]
        marks: list[tuple[int, int, str, bool]] = []
        section_codes = sorted((c for c in codes if (catalog.tests[c].section if c in
                                                     catalog.tests else "other") == section),
                               key=lambda c: catalog.tests[c].name if c in catalog.tests else c)
        for code in section_codes:
            test = catalog.tests.get(code)
            any_row = next(iter(grid[code].values()))
            row: list[Any] = [
                _p(test.name if test is not None else code, st["cell"]),
                _p(any_row.units, st["cell"]),
                _p(format_range(any_row.ref_low, any_row.ref_high,
                                test.decimals if test is not None else 2), st["cell"])]
            cells: list[_Cell | None] = [
                _cell(grid[code][sid], test) if sid in grid[code] else None for sid in draws]
            cells += [_cell(p, test) for p in previous[code][:PREVIOUS]]
            cells += [None] * (len(header) - 3 - len(cells))
            for col, c in enumerate(cells, start=3):
                if c is None:
                    row.append("")
                    continue
                shown = f"{c.text} {c.flag}".strip() + (" !" if c.critical else "")
                if col >= 3 + len(draws):
                    when = previous[code][col - 3 - len(draws)].measured_at
                    shown += f"\n({_when(when)})"
                row.append(_p(shown, st["cell"]))
                if c.flag:
                    marks.append((col, len(rows), c.flag, c.critical))
            rows.append(row)
        table = Table(rows, repeatRows=1, hAlign="LEFT",
                      colWidths=[42 * mm, 18 * mm, 22 * mm] + [None] * (len(header) - 3))
        style = [("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                 ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                 ("VALIGN", (0, 0), (-1, -1), "TOP")]
        for col, row_no, _flag, critical in marks:
            style.append(("BACKGROUND", (col, row_no), (col, row_no),
                          colors.HexColor("#f8c8c8" if critical else "#fff1c2")))
        table.setStyle(TableStyle(style))
        story += [_p(section.capitalize(), st["heading"]), table]
    notes = [f"{s.accession}: rejected ({s.rejection_code})"
             + (f" {s.rejection_note}" if s.rejection_note else "")
             for s in specimens.values() if s.rejection_code]
    story.append(Spacer(1, 4 * mm))
    story.append(_p("Flags: H high, L low, HH/LL critical, A abnormal; ! critical value "
                    "(the site was called). Previous: the patient's released values before "
                    "this visit, newest first.", st["note"]))
    for note in notes:
        story.append(_p(note, st["note"]))
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=landscape(A4), leftMargin=12 * mm,
                            rightMargin=12 * mm, topMargin=12 * mm, bottomMargin=12 * mm,
                            title=f"Cumulative lab report {patient_id} {visit_number}",
                            author=get_settings().center_name)
    doc.build(story)
    return buf.getvalue()


def _draw_time(specimen: LabSpecimen | None) -> datetime:
    moment = specimen.collected_at if specimen is not None else None
    if moment is None:
        moment = specimen.created_at if specimen is not None else datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
