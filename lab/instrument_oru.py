"""HL7 ORU^R01 from an HL7 analyzer (the hematology analyzer) → :class:`RunData`.

Why a module of its own: the MLLP server (lab/mllp_server.py) takes orders from sites and
results from analyzers on one port; an ORU whose MSH-4 names a catalog analyzer comes
here, and is then stored exactly as an ASTM run is (lab/results_in.py).

The layout read (and written by :func:`build_oru` for the simulator): MSH-10 is the run
code; each OBR is one specimen, OBR-3 its center accession, or ``QC^<lot>^<level>`` for a
control (the same convention as the ASTM O-3); the OBX that follow are its results:
OBX-3 the catalog test code (or a LOINC code with coding system ``LN``), OBX-5 the
value, OBX-6 the units, OBX-8 the instrument's flags (repeats), OBX-14 when measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import hl7

from core.errors import InvalidInput
from lab.catalog import Catalog, get_catalog
from lab.hl7_in import MalformedMessage, normalise, parse_dtm
from lab.results_in import ControlMeasurement, MeasuredResult, RunData

QC_PREFIX = "QC"


def _f(seg: Any, n: int) -> str:
    """Field ``n`` of a python-hl7 segment as text ("" when absent)."""
    try:
        return str(seg[n]).strip() if len(seg) > n else ""
    except (IndexError, TypeError):
        return ""


def _comp(text: str, n: int, sep: str = "^") -> str:
    parts = text.split("~", 1)[0].split(sep)
    return parts[n - 1].strip() if len(parts) >= n else ""


def _unescape(text: str) -> str:
    """HL7 escapes of a text value (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\)."""
    for code, char in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~")):
        text = text.replace(code, char)
    return text.replace("\\E\\", "\\")


def _test_code(catalog: Catalog, obx3: str, where: str) -> str:
    code, system = _comp(obx3, 1), _comp(obx3, 3).upper()
    if not code:
        raise InvalidInput(f"{where}: OBX-3 names no test")
    if system == "LN":
        test = catalog.by_loinc(code)
        if test is None:
            raise InvalidInput(f"{where}: OBX-3 LOINC {code!r} is not in the test catalog "
                               f"{catalog.version}")
        return test.code
    return code.upper()


def _number(text: str) -> float | None:
    """A finite number, or None for a text value (">400", "NaN", "CLOTTED")."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_oru(raw: str) -> RunData:
    """Read an instrument ORU^R01; InvalidInput (MalformedMessage when unreadable) names
    the segment and field at fault."""
    text = normalise(raw)
    if not text.startswith("MSH"):
        raise MalformedMessage("not an HL7 v2 message: it does not start with an MSH segment")
    try:
        msg = hl7.parse(text)
    except Exception as e:  # python-hl7 raises several types for bad text
        raise MalformedMessage(f"malformed HL7: {e}") from e
    msh = msg.segment("MSH")
    analyzer_id = _comp(_f(msh, 4), 1)
    run_code = _f(msh, 10)
    kind = _f(msh, 9)
    if "^".join(kind.split("^")[:2]) != "ORU^R01":
        raise InvalidInput(f"MSH-9: {kind!r} is not ORU^R01")
    if not analyzer_id or not run_code:
        raise InvalidInput("MSH-4 (analyzer) and MSH-10 (run code) are required")
    sent_at = parse_dtm(_f(msh, 7), "MSH-7") if _f(msh, 7) else datetime.now(UTC)
    catalog = get_catalog()
    results: list[MeasuredResult] = []
    controls: list[ControlMeasurement] = []
    obr: Any = None
    for n, seg in enumerate(msg, 1):
        name = str(seg[0])
        if name == "OBR":
            obr = seg
            if not _comp(_f(seg, 3), 1):
                raise InvalidInput(f"segment {n} (OBR): OBR-3 (specimen) is empty")
        elif name == "OBX":
            where = f"segment {n} (OBX)"
            if obr is None:
                raise InvalidInput(f"{where} comes before any OBR")
            code = _test_code(catalog, _f(seg, 3), where)
            value_text = _unescape(_f(seg, 5))
            at = (parse_dtm(_f(seg, 14), f"{where} OBX-14") if _f(seg, 14)
                  else parse_dtm(_f(obr, 7), "OBR-7") if _f(obr, 7) else sent_at)
            specimen = _f(obr, 3)
            if _comp(specimen, 1) == QC_PREFIX:
                lot, level, value = _comp(specimen, 2), _comp(specimen, 3), _number(value_text)
                if not lot or not level.isdigit() or value is None:
                    raise InvalidInput(f"{where}: a control needs OBR-3 QC^lot^level and a "
                                       f"numeric value, got {specimen!r} = {value_text!r}")
                controls.append(ControlMeasurement(lot=lot, test_code=code, level=int(level),
                                                   value=value, measured_at=at))
                continue
            flags = tuple(f for f in (_comp(r, 1) for r in _f(seg, 8).split("~"))
                          if f and f.upper() != "N")
            results.append(MeasuredResult(
                accession=_comp(specimen, 1), test_code=code, value=_number(value_text),
                value_text=value_text, units=_comp(_f(seg, 6), 1), flags=flags,
                measured_at=at))
    return RunData(analyzer_id=analyzer_id, run_code=run_code, results=tuple(results),
                   controls=tuple(controls))


def _esc(text: str) -> str:
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def build_oru(run: RunData, *, receiver: str = "RDC", at: datetime | None = None) -> str:
    """The ORU^R01 an HL7 analyzer sends for ``run`` (the simulator's side of parse_oru);
    MSH-10 is the run code."""
    when = at or datetime.now(UTC)
    segs = [f"MSH|^~\\&|{_esc(run.analyzer_id)}|{_esc(run.analyzer_id)}|{receiver}|LAB|"
            f"{_ts(when)}||ORU^R01^ORU_R01|{_esc(run.run_code)}|P|2.5.1"]
    n_obr = 0

    def group(specimen: str, rows: Sequence[tuple[str, str, str, Sequence[str], datetime]],
              ) -> None:
        nonlocal n_obr
        n_obr += 1
        first = min(r[4] for r in rows)
        segs.append(f"OBR|{n_obr}||{specimen}|{rows[0][0]}^^99RDC|||{_ts(first)}")
        for i, (code, value, units, flags, measured) in enumerate(rows, 1):
            kind = "NM" if _number(value) is not None else "ST"
            segs.append(f"OBX|{i}|{kind}|{_esc(code)}^^99RDC||{_esc(value)}|{_esc(units)}||"
                        f"{'~'.join(_esc(f) for f in flags) or 'N'}|||F|||{_ts(measured)}")

    by_control: dict[tuple[str, int], list[ControlMeasurement]] = {}
    for c in run.controls:
        by_control.setdefault((c.lot, c.level), []).append(c)
    for (lot, level), measured in by_control.items():
        group(f"{QC_PREFIX}^{_esc(lot)}^{level}",
              [(c.test_code, f"{c.value:.4g}", "", (), c.measured_at) for c in measured])
    by_specimen: dict[str, list[MeasuredResult]] = {}
    for m in run.results:
        by_specimen.setdefault(m.accession, []).append(m)
    for accession, items in by_specimen.items():
        group(_esc(accession), [(m.test_code, m.value_text, m.units, m.flags, m.measured_at)
                                for m in items])
    return "\r".join(segs) + "\r"
