"""What the ECG reading domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs
from ecg.jobs import JOB_KIND, run_ecg_analysis


def register() -> None:
    jobs.register_handler(JOB_KIND, run_ecg_analysis)
