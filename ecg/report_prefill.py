"""What the ECG analysis puts into a report: the ECG template's prefilled fields.

Registered with :mod:`reports.registry` by :func:`ecg.plugin.register` for every
prefill kind that starts with ``ecg_``, and the ECG report template (``report_templates/``)
with it.  The text is the analysis as the cardiologist has edited it, so that a signed
report says what the cardiologist saw on the queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ECGAnalysis, Study

#: The ECG report template(s), registered with reports.registry.register_templates.
TEMPLATES_DIR = Path(__file__).resolve().parent / "report_templates"
#: The prefill kinds the ECG template uses (``prefill = "ecg_rhythm"``, ...).
PREFILL_KINDS = "ecg_*"

#: The statement codes (:mod:`ecg.interpret`) that make up the report's rhythm field.
RHYTHM_CODES = frozenset({"sinus_rhythm", "bradycardia", "tachycardia", "irregular_rhythm",
                          "atrial_fibrillation_suspected"})


def ecg_prefill(session: Session, study: Study, kind: str) -> str:
    """The study's ECG analyses, as the cardiologist has edited them, as text."""
    rows = list(session.scalars(select(ECGAnalysis).where(ECGAnalysis.study_id == study.id)
                                .order_by(ECGAnalysis.id)))
    parts = []
    for row in rows:
        m = row.measurements or {}
        statements = [st for st in row.statements if st.get("text")]
        if kind == "ecg_rhythm":
            rhythm = [st["text"] for st in statements if st.get("code") in RHYTHM_CODES]
            parts.append("; ".join(rhythm))
        elif kind == "ecg_measurements":
            def v(key: str, unit: str, m: dict[str, Any] = m) -> str:
                value = m.get(key)
                return f"{value:g} {unit}" if isinstance(value, int | float) else "n/a"
            parts.append(
                f"HR {v('heart_rate_bpm', 'bpm')}, PR {v('pr_ms', 'ms')}, "
                f"QRS {v('qrs_ms', 'ms')}, QT {v('qt_ms', 'ms')}, "
                f"QTc {v('qtc_bazett_ms', 'ms')} (Bazett) / "
                f"{v('qtc_fridericia_ms', 'ms')} (Fridericia), axes P/QRS/T "
                f"{v('p_axis_deg', '°')}/{v('qrs_axis_deg', '°')}/{v('t_axis_deg', '°')}; "
                f"quality {row.quality}")
        elif kind == "ecg_statements":
            parts.append("\n".join(("CRITICAL: " if st.get("critical") else "") + st["text"]
                                    for st in statements))
    return "\n".join(p for p in parts if p)
