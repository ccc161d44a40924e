"""The ECG's figures for a signed report: the 12-lead tracing of each of the study's ECGs.

Registered with :func:`reports.registry.register_figures` by :func:`ecg.plugin.register`;
the caller (the web app's signing endpoint) passes how archived files are read, so that
a waveform missing from the archive is answered as the caller answers it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ECGAnalysis, Study
from ecg.readers import read_ecg
from reports.document import Figure
from reports.registry import ArchivedFile

TRACING_TITLE = "12-lead ECG (25 mm/s, 10 mm/mV)"


def ecg_figures(session: Session, study: Study, archived: ArchivedFile) -> tuple[Figure, ...]:
    """The 12-lead tracing of each of the study's ECGs, for its signed report's PDF."""
    # Drawing needs matplotlib; only signing does, not every process that loads the domain.
    from ecg.render import tracing_png

    rows = session.scalars(select(ECGAnalysis).where(ECGAnalysis.study_id == study.id)
                           .order_by(ECGAnalysis.id))
    return tuple(Figure(TRACING_TITLE,
                        tracing_png(read_ecg(archived(row.sop_instance_uid, "waveform"))),
                        width_mm=180.0)
                 for row in rows)
