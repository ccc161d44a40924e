"""What the AI pre-read domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from ai_models.inference import run_inference_job
from ai_models.preread import fan_out
from ai_models.report_prefill import PREFILL_KIND, ai_prefill
from core import jobs
from reports import registry as reports


def register() -> None:
    jobs.register_handler("ai_preread", fan_out)
    jobs.register_db_handler("ai_inference", run_inference_job)
    reports.register_prefill(PREFILL_KIND, ai_prefill)
