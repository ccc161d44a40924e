"""What the delivery service declares to the center (loaded by ``rdc/domains.py``)."""

from __future__ import annotations

from core import jobs, scheduler


def register() -> None:
    from delivery import service, tasks

    jobs.register_db_handler(service.JOB_KIND, tasks.run_delivery_job)
    # Failed deliveries whose backoff has run out, and attempts whose lease ran out,
    # get their next attempt from the center's scheduler (every RDC_MONITOR_INTERVAL_S).
    scheduler.register_periodic("delivery.requeue_due", None,
                                lambda session, _settings: service.requeue_due(session))
