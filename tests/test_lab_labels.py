"""Specimen labels: one page per label at the label's size, the accession in plain text,
and bars that decode to the accession.  The bars are read back from the PDF's own
drawing operators and decoded here with the Code 128 symbol table of ISO/IEC 15417
(written out below, not taken from the library that drew them), checksum included."""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import test_lab_custody as shared
from test_lab_custody import add_order

from core.db import Database
from core.errors import InvalidInput, NotFound
from core.models import LabOrder, LabSpecimen
from lab.labels import PRINTER_DPI, label_pdf, labels_for

#: ISO/IEC 15417 Code 128: bar/space widths (modules) of symbol values 0-105, then STOP.
PATTERNS = """212222 222122 222221 121223 121322 131222 122213 122312 132212 221213
221312 231212 112232 122132 122231 113222 123122 123221 223211 221132
221231 213212 223112 312131 311222 321122 321221 312212 322112 322211
212123 212321 232121 111323 131123 131321 112313 132113 132311 211313
231113 231311 112133 112331 132131 113123 113321 133121 313121 211331
231131 213113 213311 213131 311123 311321 331121 312113 312311 332111
314111 221411 431111 111224 111422 121124 121421 141122 141221 112214
112412 122114 122411 142112 142211 241211 221114 413111 241112 134111
111242 121142 121241 114212 124112 124211 411212 421112 421211 212141
214121 412121 111143 111341 131141 114113 114311 411113 411311 113141
114131 311141 411131 211412 211214 211232 2331112""".split()
VALUE_OF = {p: v for v, p in enumerate(PATTERNS[:106])}
START_A, START_B, START_C, STOP = 103, 104, 105, PATTERNS[106]


def decode_code128(widths: list[int]) -> str:
    """The text of a Code 128 symbol given its bar and space widths in modules."""
    symbols = ["".join(map(str, widths[i:i + 6])) for i in range(0, len(widths) - 7, 6)]
    assert "".join(map(str, widths[-7:])) == STOP, "no stop pattern"
    assert len(widths) == 6 * len(symbols) + 7, "stray bars"
    values = [VALUE_OF[s] for s in symbols]
    start, *data, check = values
    assert start in (START_A, START_B, START_C), f"not a start symbol: {start}"
    assert (start + sum(i * v for i, v in enumerate(data, 1))) % 103 == check, "checksum"
    code = {START_A: "A", START_B: "B", START_C: "C"}[start]
    text = ""
    for v in data:
        if code == "C" and v < 100:
            text += f"{v:02d}"
        elif v == 99 and code != "C":
            code = "C"
        elif v == 100 and code != "B":
            code = "B"
        elif v == 101 and code != "A":
            code = "A"
        elif code == "B" and v < 96:
            text += chr(v + 32)
        elif code == "A" and v < 64:
            text += chr(v + 32)
        elif code == "A" and v < 96:
            text += chr(v - 64)
        else:
            raise AssertionError(f"value {v} in code set {code} is not a character")
    return text


def page_streams(pdf: bytes) -> list[bytes]:
    """The decoded content streams that draw (every page has one), undoing the filters
    each stream names (ReportLab writes ASCII85 over Flate)."""
    found = []
    for m in re.finditer(rb"<<((?:(?!>>).)*?/Length (\d+)(?:(?!>>).)*?)>>\s*stream\r?\n",
                         pdf, re.S):
        head, data = m.group(1), pdf[m.end():m.end() + int(m.group(2))]
        if b"/ASCII85Decode" in head:
            data = base64.a85decode(data.strip().removesuffix(b"~>"), adobe=False)
        if b"/FlateDecode" in head:
            data = zlib.decompress(data)
        if b" re f" in data or b" Tj" in data:
            found.append(data)
    return found


def bars(stream: bytes) -> list[tuple[float, float]]:
    """The filled rectangles of the page (the barcode's bars): (x, width), drawn order."""
    return [(float(x), float(w)) for x, _y, w, _h in
            re.findall(rb"n ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) re f", stream)]


def widths_in_modules(rects: list[tuple[float, float]]) -> tuple[list[int], float]:
    module = min(w for _x, w in rects)
    widths: list[int] = []
    for i, (x, w) in enumerate(rects):
        if i:
            gap = x - (rects[i - 1][0] + rects[i - 1][1])
            widths.append(round(gap / module))
        widths.append(round(w / module))
    for (x, w), n in zip(rects, widths[::2], strict=True):
        assert abs(w - n * module) < 1e-3, (x, w, module)
    return widths, module


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from shared.make_db(request, tmp_path)


def test_one_page_per_label_with_the_accession_readable_and_in_the_bars(db: Database) -> None:
    accessions = add_order(db, tests=("K", "NA", "CREA"), specimens=3,
                           patient_name="王^芳", sex="F", birth_date="19700412")
    with db.session() as s:
        pdf = labels_for(s, accessions)
    assert pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type /Page\b(?!s)", pdf)) == 3
    # 50 x 25 mm pages.
    assert re.search(rb"/MediaBox \[ ?0 0 141\.7323 70\.86614 ?\]", pdf), "label size"
    streams = page_streams(pdf)
    assert len(streams) == 3
    for accession, stream in zip(accessions, streams, strict=True):
        assert f"({accession}) Tj".encode() in stream, "accession not in plain text"
        assert b"(K NA CREA  SST \\(gold top\\)) Tj" in stream
        assert b"(county-a  2026-12-01 08:00 UTC) Tj" in stream
        rects = bars(stream)
        widths, module = widths_in_modules(rects)
        assert decode_code128(widths) == accession
        # The narrowest bar is a whole number (>= 2) of 203 dpi printer dots, and the
        # symbol starts after a ten-module quiet zone.
        dots = module / (72 / PRINTER_DPI)
        assert abs(dots - round(dots)) < 1e-4 and round(dots) >= 2
        assert rects[0][0] == pytest.approx(10 * module)
    # The Chinese name is drawn with the CJK font the reports embed.
    assert b"FontFile2" in pdf and b"ZenHei" in pdf


def test_the_decoder_is_not_fooled_by_a_wrong_value() -> None:
    spec = LabSpecimen(id=1, order_id=7, accession="L12345678", container="EDTA",
                       collected_at=datetime(2026, 12, 1, 8, tzinfo=UTC))
    order = LabOrder(id=7, site_id="county-b", patient_name="DOE^JANE", patient_id="X",
                     sex="F", birth_date="", priority="stat")
    pdf = label_pdf([spec], {7: order}, width_mm=60, height_mm=30)
    (stream,) = page_streams(pdf)
    widths, _ = widths_in_modules(bars(stream))
    assert decode_code128(widths) == "L12345678"
    assert b"(STAT) Tj" in stream
    assert b"(county-b  2026-12-01 08:00 UTC) Tj" in stream
    flipped = widths.copy()
    flipped[7], flipped[8] = flipped[8], flipped[7]  # two widths of one symbol swapped
    with pytest.raises((AssertionError, KeyError)):
        decode_code128(flipped)


def test_bad_label_requests_are_refused(db: Database) -> None:
    order = LabOrder(id=1, site_id="county-a", patient_name="A", patient_id="P",
                     sex="M", birth_date="", priority="routine")
    tube = LabSpecimen(id=1, order_id=1, accession="L00000001", container="SST")
    with pytest.raises(InvalidInput, match="no specimens"):
        label_pdf([], {1: order})
    with pytest.raises(InvalidInput, match=r"label size 20 x 25 mm"):
        label_pdf([tube], {1: order}, width_mm=20)
    with pytest.raises(InvalidInput, match="its order 2 was not given"):
        label_pdf([LabSpecimen(id=2, order_id=2, accession="L2", container="")], {1: order})
    long_one = LabSpecimen(id=3, order_id=1, accession="LAB-" + "X7" * 14, container="")
    with pytest.raises(InvalidInput, match="does not fit a 27 mm wide barcode"):
        label_pdf([long_one], {1: order}, width_mm=30)
    with db.session() as s, pytest.raises(NotFound, match="no specimen with accession 'L404'"):
        labels_for(s, ["L404"])
