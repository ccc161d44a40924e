"""What the delivery service declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs


def register() -> None:
    from pacs_gateway import delivery as legacy  # moves into this package (issue 12)

    jobs.register_db_handler(legacy.JOB_KIND, legacy.run_delivery_job)
