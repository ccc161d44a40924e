"""What the AI pre-read domain declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from ai_models.inference import run_inference_job
from ai_models.preread import fan_out
from core import jobs


def register() -> None:
    jobs.register_handler("ai_preread", fan_out)
    jobs.register_db_handler("ai_inference", run_inference_job)
