"""What the ECG reading domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs
from ecg import report_figures, report_prefill
from ecg.jobs import JOB_KIND, run_ecg_analysis
from reports import registry as reports


def register() -> None:
    jobs.register_handler(JOB_KIND, run_ecg_analysis)
    reports.register_prefill(report_prefill.PREFILL_KINDS, report_prefill.ecg_prefill)
    reports.register_templates(report_prefill.TEMPLATES_DIR)
    reports.register_figures(report_figures.ecg_figures)
