"""The Celery application shared by every process that queues or runs work.

Work passes between stages as job IDs only.  Acknowledgement is late and a
task whose worker dies is rejected back to the queue, so a crash re-runs the
job instead of losing it; tasks are idempotent on the job's key, so a re-run
is harmless.  The embedded default broker is Kombu's filesystem transport
under ``$RDC_HOME/broker``: no server to start.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from core.settings import Settings, get_settings

QUEUES = ("routing", "reading", "inference", "delivery")


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_dir / "queue"
        processed = settings.broker_dir / "processed"
        folder.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(processed),
            "store_processed": False,
            "control_folder": str(settings.broker_dir / "control"),
            # Kombu polls the folder; its default of 1 s per empty poll would add a
            # second to every message that follows a batch's already-finished jobs.
            "polling_interval": 0.05,
        }
    if settings.broker_url.startswith(("redis", "rediss")):
        # A message not acknowledged within this time is delivered again.
        return {"visibility_timeout": settings.job_time_limit_s * 2,
                "queue_order_strategy": "priority"}
    return {}


def make_celery(settings: Settings) -> Celery:
    app = Celery("rdc", broker=settings.broker_url, include=["core.tasks"])
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=max(1, settings.job_time_limit_s - 30),
        task_ignore_result=True,
        task_default_queue="routing",
        task_queue_max_priority=9,
        task_default_priority=5,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


_app: Celery | None = None


def get_app() -> Celery:
    """The process's Celery app, configured from the current settings."""
    global _app
    if _app is None:
        _app = make_celery(get_settings())
    return _app


def enqueue_job(job_id: int, key: str, queue: str, priority: int = 5) -> None:
    """Hand a job to the queue by ID; a higher ``priority`` (0-9) runs first.

    The job's key travels with its ID so that a worker can tell a message meant
    for another center's database (a shared or reused broker) from its own.
    """
    get_app().send_task("rdc.run_job", args=[job_id, key], queue=queue,
                        priority=max(0, min(9, priority)))
