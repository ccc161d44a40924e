"""Prometheus metrics of every role, and the one exporter per role that serves them.

**Processes.**  A role runs several processes: the gateway N listeners on one port
(SO_REUSEPORT), the Celery worker a prefork pool, the web app several uvicorn workers.
So the metrics use prometheus_client's multiprocess mode: each process writes its
values to files in the role's directory ``$RDC_HOME/metrics/<role>``, and the role's
one exporter (an HTTP server on ``metrics_host`` at :meth:`Settings.metrics_port_for`)
adds them up at scrape time.  The role's parent process calls :func:`serve_role` first
thing, before it records anything or starts its children: it binds the port, empties
the directory (the files of an earlier run), and points ``PROMETHEUS_MULTIPROC_DIR``
at it, which the children inherit (listeners and uvicorn workers are new
interpreters, the Celery pool forks).  A counter of a process that exited stays in
its file and keeps counting in the sums, as Prometheus expects of a counter.

**Off, or the port taken.**  With metrics off (development by default) nothing is
served and the metrics below still count in memory, cheaply.  If the port cannot be
bound (a second ``rdc worker`` on one node, or another program), the role logs
``metrics.port_unavailable`` at ERROR and runs on without exporting: a center that
cannot be watched still takes in studies, and the error names the port to fix.  The
directory then stays as the process that owns the port left it.

**Labels** are bounded: site IDs, job kinds, model names, queues, DICOM status codes,
route templates (never a raw path), outcome words.  Never patient data or a UID.

**Gauges of shared state** (spool depth, queue depth, delivery backlog) are not
written by the processes but computed when Prometheus scrapes, by collectors that
the exporter's process owns (:class:`SpoolCollector`, :class:`JobQueueCollector`,
:class:`DeliveryCollector`): the spool and the database are the truth, and several
processes' gauges could only disagree about it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.db import Database
from core.settings import METRICS_ROLE_OFFSETS, Settings

log = logging.getLogger(__name__)

Role = Literal["gateway", "worker", "web", "scheduler"]
ROLES: tuple[Role, ...] = ("gateway", "worker", "web", "scheduler")
assert set(ROLES) == set(METRICS_ROLE_OFFSETS)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Every metric below has labels, so none holds a value before its first use: the one
# that :func:`serve_role` switches to files is then the only kind ever made (see
# _enable_multiprocess).  A new metric needs labels for the same reason.

# Gateway ------------------------------------------------------------------------------
GATEWAY_ASSOCIATIONS = Counter(
    "rdc_gateway_associations", "DICOM associations requested, by site and outcome "
    "(accepted, rejected; a rejected caller's site is 'unknown').", ["site", "outcome"])
GATEWAY_CSTORE = Counter(
    "rdc_gateway_cstore", "C-STORE responses sent, by site and DICOM status "
    "(0x0000 success, 0xA700 out of resources, 0xA900 mismatch, 0x0110 failure...).",
    ["site", "status"])
GATEWAY_REFUSALS = Counter(
    "rdc_gateway_refusals", "Connections and associations refused at the DICOM port, by "
    "category (connection, association) and kind (capacity, garbage, no-data, "
    "partial-pdu, rejected, tls_*).", ["category", "kind"])
GATEWAY_UPLOADS = Counter(
    "rdc_gateway_uploads", "Upload attempts from the spool to Orthanc, by outcome (stored, "
    "rejected by Orthanc, retry while Orthanc is down, missing spool file).", ["outcome"])
GATEWAY_UPLOAD_SECONDS = Histogram(
    "rdc_gateway_upload_seconds", "From an instance's arrival in the spool to Orthanc "
    "confirming it, by site.", ["site"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))

# Worker: jobs and models --------------------------------------------------------------
JOBS = Counter(
    "rdc_jobs", "Job runs finished by a worker, by kind and outcome (succeeded, failed, "
    "skipped, dead, queued = a transient failure that is tried again).", ["kind", "outcome"])
JOB_FAILURES = Counter(
    "rdc_job_failures", "Job runs that ended failed or dead, by kind.", ["kind"])
JOB_LATENCY_SECONDS = Histogram(
    "rdc_job_latency_seconds", "From a job's creation (queued) to its final outcome, by kind.",
    ["kind"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                       4 * 3600, 24 * 3600))
JOB_RUN_SECONDS = Histogram(
    "rdc_job_run_seconds", "How long a worker ran a job's handler, by kind.", ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
JOB_BATCH_SIZE = Histogram(
    "rdc_job_batch_size", "Jobs per inference batch, by model.", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
MODEL_SECONDS = Histogram(
    "rdc_model_inference_seconds", "One batch through a model (pre-processing, ONNX Runtime "
    "and post-processing), by model and execution provider.", ["model", "provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

# Delivery (counted by the worker that runs the deliver jobs) ---------------------------
DELIVERY_ATTEMPTS = Counter(
    "rdc_delivery_attempts", "Delivery attempts of results to sites, by channel (dicom, "
    "hl7), outcome (sent, failed, dead, superseded) and site.", ["channel", "outcome", "site"])
DELIVERY_DEAD_LETTERED = Counter(
    "rdc_delivery_dead_lettered", "Deliveries that ran out of retries (to the dead-letter "
    "list), by channel.", ["channel"])

# Web ----------------------------------------------------------------------------------
HTTP_REQUEST_SECONDS = Histogram(
    "rdc_http_request_duration_seconds", "Web requests by route template, method and status "
    "class (2xx...); 'unmatched' for paths no route serves.", ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SIGNIN_FAILURES = Counter(
    "rdc_web_signin_failures", "Refused sign-ins and operator tokens, by reason "
    "(bad_credentials, locked, disabled, replayed_code, invalid_token).", ["reason"])

# Scheduler ----------------------------------------------------------------------------
SCHEDULER_RUNS = Counter(
    "rdc_scheduler_runs", "Runs of the periodic tasks, by task and outcome (ok, failed).",
    ["task", "outcome"])
SCHEDULER_RUN_SECONDS = Histogram(
    "rdc_scheduler_run_seconds", "How long a periodic task's run took, by task.", ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
JOBS_REQUEUED_STALE = Counter(
    "rdc_jobs_requeued_stale", "Jobs queued again because they were queued or running for "
    "too long (a lost message or worker), by kind.", ["kind"])


#: Names of the gauges the collectors compute at scrape time.
SPOOL_INSTANCES = "rdc_gateway_spool_instances"
SPOOL_OLDEST_SECONDS = "rdc_gateway_spool_oldest_seconds"
QUEUE_DEPTH = "rdc_jobs_queue_depth"
QUEUE_OLDEST_SECONDS = "rdc_jobs_queue_oldest_seconds"
DELIVERY_BACKLOG = "rdc_delivery_backlog"
DELIVERY_DEAD_LETTERS = "rdc_delivery_dead_letters"
COLLECTOR_UP = "rdc_metrics_collector_up"


def metric_names() -> frozenset[str]:
    """Every metric family name this module defines (what a dashboard may query)."""
    recorded = [GATEWAY_ASSOCIATIONS, GATEWAY_CSTORE, GATEWAY_REFUSALS, GATEWAY_UPLOADS,
                GATEWAY_UPLOAD_SECONDS, JOBS, JOB_FAILURES, JOB_LATENCY_SECONDS,
                JOB_RUN_SECONDS, JOB_BATCH_SIZE, MODEL_SECONDS, DELIVERY_ATTEMPTS,
                DELIVERY_DEAD_LETTERED, HTTP_REQUEST_SECONDS, SIGNIN_FAILURES, SCHEDULER_RUNS,
                SCHEDULER_RUN_SECONDS, JOBS_REQUEUED_STALE]
    names = {family.name for metric in recorded for family in metric.describe()}
    return frozenset(names | {SPOOL_INSTANCES, SPOOL_OLDEST_SECONDS, QUEUE_DEPTH,
                              QUEUE_OLDEST_SECONDS, DELIVERY_BACKLOG, DELIVERY_DEAD_LETTERS,
                              COLLECTOR_UP})


# Small helpers for the recording sites --------------------------------------------------
def dicom_status(status: int) -> str:
    """A DIMSE status as the ``status`` label writes it: ``0xA700``."""
    return f"0x{status:04X}"


def status_class(code: int) -> str:
    """An HTTP status as its class: ``2xx``."""
    return f"{code // 100}xx"


def seconds_since(moment: datetime | None) -> float | None:
    """Seconds from ``moment`` (aware, or naive UTC) to now; None when unknown."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())


# Scrape-time collectors ---------------------------------------------------------------
#: (instances waiting in the spool, modification time of the oldest or None)
SpoolDepth = tuple[int, float | None]


class SpoolCollector(Collector):
    """The gateway's spool: instances waiting for upload and the age of the oldest."""

    def __init__(self, depth: Callable[[], SpoolDepth]) -> None:
        self._depth = depth

    def collect(self) -> Iterator[Metric]:
        count, oldest = self._depth()
        yield GaugeMetricFamily(SPOOL_INSTANCES, "Instances in the gateway's spool, waiting "
                                "for upload to Orthanc.", value=count)
        age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(SPOOL_OLDEST_SECONDS, "Age of the oldest instance in the "
                                "spool (0 when it is empty).", value=age)


class _DatabaseCollector(Collector):
    """A collector that asks the database at scrape time; a failure is logged and shows
    as ``rdc_metrics_collector_up{collector=...} 0`` instead of failing the scrape.

    Each scrape opens a connection of its own and closes it: the worker's parent process,
    where the exporter runs, forks pool processes, and a database connection open across
    a fork is two processes talking over one socket.
    """

    name = ""

    def __init__(self, database_url: str) -> None:
        self._url = database_url

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(COLLECTOR_UP, "Whether a scrape-time collector could read "
                               "its source (1) or not (0).", labels=["collector"])
        try:
            db = Database(self._url)
            try:
                families = list(self._families(db))
            finally:
                db.dispose()
        except Exception as e:
            log.warning("metrics.collector_failed collector=%s error=%s: %s", self.name,
                        type(e).__name__, e)
            up.add_metric([self.name], 0)
            yield up
            return
        up.add_metric([self.name], 1)
        yield up
        yield from families

    def _families(self, db: Database) -> Iterable[Metric]:
        raise NotImplementedError


class JobQueueCollector(_DatabaseCollector):
    """Jobs queued and running per queue, and the age of the oldest queued one, from the
    jobs table (one grouped query on its state index)."""

    name = "jobs"

    def _families(self, db: Database) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from core.models import Job
        from core.queue import QUEUES
        from core.states import JobState

        waiting = (JobState.QUEUED, JobState.RUNNING)
        depth = {(q, str(st)): 0 for q in QUEUES for st in waiting}
        oldest: dict[str, float] = {}
        with db.session() as s:
            rows = s.execute(select(Job.queue, Job.state, func.count(), func.min(Job.updated_at))
                             .where(Job.state.in_(waiting)).group_by(Job.queue, Job.state))
            for queue, state, count, first in rows:
                depth[(queue, str(state))] = int(count)
                age = seconds_since(first)
                if state == JobState.QUEUED and age is not None:
                    oldest[queue] = age
        g = GaugeMetricFamily(QUEUE_DEPTH, "Jobs per queue and state (queued, running), from "
                              "the jobs table; the 'reading' queue is people's worklist.",
                              labels=["queue", "state"])
        for (queue, state), count in sorted(depth.items()):
            g.add_metric([queue, state], count)
        yield g
        o = GaugeMetricFamily(QUEUE_OLDEST_SECONDS, "Seconds since the longest-waiting queued "
                              "job of each queue was queued (0: none waits).", labels=["queue"])
        for queue in sorted({q for q, _ in depth}):
            o.add_metric([queue], oldest.get(queue, 0.0))
        yield o


class DeliveryCollector(_DatabaseCollector):
    """Deliveries not yet sent (pending, failed and waiting for a retry) and dead letters."""

    name = "deliveries"

    def _families(self, db: Database) -> Iterable[Metric]:
        from sqlalchemy import func, select

        from core.models import Delivery
        from core.states import DeliveryState

        channels = ("dicom", "hl7")
        backlog = {(c, str(st)): 0 for c in channels
                   for st in (DeliveryState.PENDING, DeliveryState.FAILED)}
        dead = dict.fromkeys(channels, 0)
        with db.session() as s:
            rows = s.execute(select(Delivery.channel, Delivery.state, func.count())
                             .where(Delivery.state.in_([DeliveryState.PENDING,
                                                        DeliveryState.FAILED,
                                                        DeliveryState.DEAD]))
                             .group_by(Delivery.channel, Delivery.state))
            for channel, state, count in rows:
                if state == DeliveryState.DEAD:
                    dead[channel] = int(count)
                else:
                    backlog[(channel, str(state))] = int(count)
        b = GaugeMetricFamily(DELIVERY_BACKLOG, "Deliveries waiting to be sent, by channel and "
                              "state (pending, failed = waiting for its retry).",
                              labels=["channel", "state"])
        for (channel, state), count in sorted(backlog.items()):
            b.add_metric([channel, state], count)
        yield b
        d = GaugeMetricFamily(DELIVERY_DEAD_LETTERS, "Deliveries on the dead-letter list "
                              "(retries ran out; an operator resends them), by channel.",
                              labels=["channel"])
        for channel, count in sorted(dead.items()):
            d.add_metric([channel], count)
        yield d


def worker_collectors(settings: Settings) -> list[Collector]:
    """The worker role's scrape-time collectors: job queues and the delivery backlog."""
    return [JobQueueCollector(settings.database_url), DeliveryCollector(settings.database_url)]


# The exporter ---------------------------------------------------------------------------
@dataclass
class Exporter:
    """A role's metrics HTTP server (``GET /metrics``), running in a daemon thread."""

    role: str
    host: str
    port: int
    directory: Path
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def metrics_dir(settings: Settings, role: str) -> Path:
    """Where the processes of ``role`` write their values: ``$RDC_HOME/metrics/<role>``."""
    return settings.home / "metrics" / role


def serve_role(role: Role, settings: Settings,
               collectors: Sequence[Collector] = ()) -> Exporter | None:
    """Start ``role``'s exporter in this process, its parent, and switch the metrics to
    the role's multiprocess directory (see the module doc).

    Call it before this process records a metric or starts a child.  Returns None, and
    changes nothing, when the role's metrics are off; returns None after logging
    ``metrics.port_unavailable`` (ERROR) when the port cannot be bound: the role then
    runs on, unwatched, rather than not at all.  ``collectors`` are added to what the
    exporter serves (gauges computed at scrape time).
    """
    port = settings.metrics_port_for(role)
    if port is None:
        return None
    directory = metrics_dir(settings, role)
    directory.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    for collector in collectors:
        registry.register(collector)
    host = settings.metrics_host
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        log.error("metrics.port_unavailable role=%s host=%s port=%s error=%s: this process's "
                  "metrics are not exported (another process of this role on this node, or "
                  "another program, holds the port; set RDC_METRICS_PORT or RDC_METRICS_HOST)",
                  role, host, port, e.strerror or e)
        return None
    # The port is ours, so no live process of this role writes here: the files are an
    # earlier run's.  (Its counters start again from zero, which Prometheus expects.)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    _enable_multiprocess(directory)
    exporter = Exporter(role, host, port, directory, server, thread)
    log.info("metrics.serving role=%s url=%s dir=%s", role, exporter.url, directory)
    return exporter


def _enable_multiprocess(directory: Path) -> None:
    os.environ[MULTIPROC_ENV] = str(directory)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client picks its value class when it is first imported, which in a
        # role's parent happened before the role knew its directory.  The metrics here
        # all have labels, so no value exists yet; values made from now on are files.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def multiprocess_enabled() -> bool:
    """Whether this process writes its metrics to a role's directory."""
    return bool(getattr(values.ValueClass, "_multiprocess", False)) and bool(
        os.environ.get(MULTIPROC_ENV))


def process_exited(pid: int) -> None:
    """Tell the role's directory that child ``pid`` exited (drops its live gauges; its
    counters stay in the sums).  A no-op when metrics are not multiprocess."""
    if not multiprocess_enabled():
        return
    try:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except OSError:  # pragma: no cover - best effort
        log.debug("metrics.mark_dead_failed pid=%s", pid, exc_info=True)
