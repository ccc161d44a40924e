"""Prometheus metrics (core/metrics.py): recorded on the real code paths, served over HTTP.

In-process tests scrape this process's default registry over a real HTTP exporter:
the web app through FastAPI's TestClient, sign-in failures, jobs and a delivery run as
the worker runs them, and the scrape-time collectors on the center's database.  The
roles' own exporters (multiprocess mode: several processes, one port per role) run as
the real processes: ``rdc web`` with two workers, ``rdc scheduler``, and the gateway
with a listener process beside its primary.  Then the Grafana dashboard, whose every
expression must name metrics that exist.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from conftest import REPO, SENDER_AE, Center, free_port, wait_port, wait_until
from core import jobs, metrics
from core.models import Delivery, Job, OutboundMessage
from core.settings import Settings, get_settings
from core.states import JobState
from devkit.dcmtk import echoscu, storescu
from pacs_gateway.spool import Spool
from viewer.app import create_app
from viewer.auth import api_token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# Scraping ---------------------------------------------------------------------------------
def scrape(url: str) -> Samples:
    """Every sample the exporter at ``url`` serves, parsed as Prometheus parses it."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(lbl)[label] for (n, lbl) in samples if n == name and label in dict(lbl)}


@pytest.fixture(scope="module")
def local_metrics() -> Iterator[Callable[[], Samples]]:
    """This process's metrics (single-process mode) served over HTTP on a free port."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    try:
        yield lambda: scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def client(env_center: Center) -> Iterator[TestClient]:
    env_center.add_site()
    with TestClient(create_app()) as c:
        yield c


# Settings -------------------------------------------------------------------------------
def test_each_role_has_its_port_off_in_development_and_on_in_production(tmp_path: Path) -> None:
    dev = Settings(home=tmp_path)
    assert [dev.metrics_port_for(r) for r in metrics.ROLES] == [None] * 4
    prod = Settings(home=tmp_path, environment="production",
                    database_url="postgresql://rdc@db/rdc", broker_url="redis://broker:6379/0")
    assert [prod.metrics_port_for(r) for r in metrics.ROLES] == [9410, 9411, 9412, 9413]
    assert Settings(home=tmp_path, metrics_port=9500).metrics_port_for("web") == 9502
    off = Settings(home=tmp_path, environment="production", metrics_port=0,
                   database_url="postgresql://rdc@db/rdc", broker_url="redis://broker:6379/0")
    assert off.metrics_port_for("gateway") is None
    with pytest.raises(KeyError):
        dev.metrics_port_for("orthanc")
    # Off: serving does nothing, and nothing switches to multiprocess files.
    assert metrics.serve_role("worker", dev) is None
    assert not metrics.multiprocess_enabled()


# Web ------------------------------------------------------------------------------------
def test_web_requests_are_timed_by_route_template_and_status_class(
        client: TestClient, local_metrics: Callable[[], Samples]) -> None:
    name = "rdc_http_request_duration_seconds_count"
    before = local_metrics()
    assert client.get("/healthz").status_code == 200
    for token in ("first-secret-token", "second-secret-token"):
        assert client.get(f"/share/{token}").status_code == 404
    assert client.get("/api/no-such-route-here").status_code == 404
    assert client.request("BREW", "/healthz").status_code == 405
    after = local_metrics()

    def delta(**labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(route="/healthz", method="GET", status="2xx") == 1
    # Two share links are one series: the template, never the token in the path.
    assert delta(route="/share/{token}", method="GET", status="4xx") == 2
    assert delta(route="unmatched", method="GET", status="4xx") == 1
    assert delta(route="/healthz", method="other", status="4xx") == 1
    routes = label_values(after, name, "route")
    assert not any("secret" in r or "no-such" in r for r in routes), routes
    # The histogram's buckets and sum come with it.
    assert value(after, "rdc_http_request_duration_seconds_bucket", route="/healthz",
                 le="+Inf") >= 1
    assert value(after, "rdc_http_request_duration_seconds_sum", route="/healthz") > 0


def test_a_failed_sign_in_and_a_wrong_operator_token_are_counted(
        client: TestClient, local_metrics: Callable[[], Samples]) -> None:
    name = "rdc_web_signin_failures_total"
    before = local_metrics()
    r = client.post("/api/auth/login", json={"username": "nobody", "password": "wrong password!",
                                             "totp": "123456"})
    assert r.status_code == 401, r.text
    r = client.get("/api/status", headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 401
    r = client.get("/api/status", headers={"Authorization": f"Bearer {api_token(get_settings())}"})
    assert r.status_code == 200
    after = local_metrics()
    assert value(after, name, reason="bad_credentials") - \
        value(before, name, reason="bad_credentials") == 1
    assert value(after, name, reason="invalid_token") - \
        value(before, name, reason="invalid_token") == 1


# Worker: jobs, delivery and the scrape-time gauges ----------------------------------------
def _ok(_s: Any, _job: Job) -> None:
    time.sleep(0.01)


def _broken(_s: Any, _job: Job) -> None:
    raise RuntimeError("the handler broke")


def _make_job(c: Center, kind: str, queue: str = "routing", age_s: float = 0.0) -> int:
    with c.db.session() as s:
        job, created = jobs.create_job(s, jobs.NewJob(key=f"{kind}:{time.time_ns()}",
                                                      kind=kind, queue=queue))
        assert created
        if age_s:
            job.created_at = job.updated_at = datetime.now(UTC) - timedelta(seconds=age_s)
        s.flush()
        return job.id


def test_a_job_run_as_the_worker_runs_it_counts_its_outcome_and_latencies(
        env_center: Center, local_metrics: Callable[[], Samples]) -> None:
    c = env_center
    jobs.register_handler("metrics_test_ok", _ok)
    jobs.register_handler("metrics_test_broken", _broken)
    before = local_metrics()
    ok = _make_job(c, "metrics_test_ok", age_s=30)
    broken = _make_job(c, "metrics_test_broken")
    assert jobs.execute(c.db, ok) == JobState.SUCCEEDED
    assert jobs.execute(c.db, broken) == JobState.FAILED
    assert jobs.execute(c.db, ok) == JobState.SUCCEEDED  # a second message: skipped, not counted
    after = local_metrics()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rdc_jobs_total", kind="metrics_test_ok", outcome="succeeded") == 1
    assert delta("rdc_jobs_total", kind="metrics_test_broken", outcome="failed") == 1
    assert delta("rdc_job_failures_total", kind="metrics_test_broken") == 1
    assert delta("rdc_job_failures_total", kind="metrics_test_ok") == 0
    assert delta("rdc_job_run_seconds_count", kind="metrics_test_ok") == 1
    assert delta("rdc_job_run_seconds_sum", kind="metrics_test_ok") >= 0.01
    # Queued to finished: the job was created 30 s ago.
    assert delta("rdc_job_latency_seconds_count", kind="metrics_test_ok") == 1
    assert delta("rdc_job_latency_seconds_sum", kind="metrics_test_ok") >= 30
    assert delta("rdc_job_latency_seconds_bucket", kind="metrics_test_ok", le="10.0") == 0


def test_a_failed_delivery_counts_its_attempt_and_shows_in_the_backlog(
        env_center: Center, local_metrics: Callable[[], Samples]) -> None:
    from delivery.service import schedule_message

    c = env_center
    closed = free_port()  # the site's HL7 endpoint is down
    c.add_site("county-m", "COUNTY_M", accepts_results=True, hl7_host="127.0.0.1",
               hl7_port=closed, result_formats=("hl7",))
    with c.db.session() as s:
        message = OutboundMessage(site_id="county-m", kind="lab-result", subject="test",
                                  control_id=f"MSG{time.time_ns()}",
                                  body="MSH|^~\\&|RDC|CENTER|LIS|COUNTY|20240101||ORU^R01|1|P|2.5")
        s.add(message)
        s.flush()
        delivery_id = schedule_message(s, message).id
    with c.db.session() as s:
        delivery = s.get(Delivery, delivery_id)
        assert delivery is not None and delivery.job_id is not None
        job_id = delivery.job_id
    before = local_metrics()
    assert jobs.execute(c.db, job_id) == JobState.FAILED
    after = local_metrics()
    assert value(after, "rdc_delivery_attempts_total", channel="hl7", outcome="failed",
                 site="county-m") - value(before, "rdc_delivery_attempts_total", channel="hl7",
                                          outcome="failed", site="county-m") == 1
    assert value(after, "rdc_jobs_total", kind="deliver", outcome="failed") - \
        value(before, "rdc_jobs_total", kind="deliver", outcome="failed") == 1

    # What the worker's exporter computes from the database when scraped.
    dead_id = None
    with c.db.session() as s:
        dead = Delivery(site_id="county-m", channel="dicom", state="dead", attempts=9)
        s.add(dead)
        s.flush()
        dead_id = dead.id
    waiting = [_make_job(c, "metrics_test_ok", queue="reading") for _ in range(3)]
    _make_job(c, "metrics_test_ok", queue="inference", age_s=120)
    samples = _serve_collectors(metrics.worker_collectors(c.settings))
    assert value(samples, "rdc_delivery_backlog", channel="hl7", state="failed") == 1
    assert value(samples, "rdc_delivery_backlog", channel="dicom", state="pending") == 0
    assert value(samples, "rdc_delivery_dead_letters", channel="dicom") == 1
    assert value(samples, "rdc_jobs_queue_depth", queue="reading", state="queued") == len(waiting)
    assert value(samples, "rdc_jobs_queue_depth", queue="inference", state="queued") == 1
    assert value(samples, "rdc_jobs_queue_depth", queue="delivery", state="running") == 0
    assert value(samples, "rdc_jobs_queue_oldest_seconds", queue="inference") >= 120
    assert value(samples, "rdc_metrics_collector_up", collector="jobs") == 1
    assert value(samples, "rdc_metrics_collector_up", collector="deliveries") == 1
    assert dead_id is not None


def _serve_collectors(collectors: list[Any]) -> Samples:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        return scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_collector_whose_database_is_down_says_so_and_the_scrape_still_works() -> None:
    unreachable = f"postgresql://rdc@127.0.0.1:{free_port()}/rdc"
    samples = _serve_collectors([metrics.JobQueueCollector(unreachable),
                                 metrics.SpoolCollector(lambda: (0, None))])
    assert value(samples, "rdc_metrics_collector_up", collector="jobs") == 0
    assert ("rdc_gateway_spool_instances", frozenset()) in samples


def test_the_spool_gauges_count_waiting_instances_and_the_oldest_age(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 0)
    assert spool.depth() == (0, None)
    ids = [spool.write(b"x" * 10) for _ in range(3)]
    (spool.tmp / "partial.part").write_bytes(b"never acknowledged")
    old = time.time() - 600
    import os
    os.utime(spool.path(ids[0]), (old, old))
    samples = _serve_collectors([metrics.SpoolCollector(spool.depth)])
    assert value(samples, "rdc_gateway_spool_instances") == 3
    assert 590 <= value(samples, "rdc_gateway_spool_oldest_seconds") <= 700


# The roles' exporters: several processes, one port each -----------------------------------
def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_web_role_adds_up_its_workers_on_one_port(env_center: Center) -> None:
    c = env_center
    port = free_port()
    c.extra_settings.update(metrics_port=str(port - 2), web_workers="2")
    stale = c.home / "metrics" / "web" / "counter_99999999.db"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an earlier run's file")
    log_path = c.home / "web.metrics.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rdc", "web"], env=c.env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(c.web_port, 90, proc)
        wait_port(port, 30, proc)
        assert not stale.exists(), "the role's parent empties its directory at start"
        base = f"http://127.0.0.1:{c.web_port}"
        n = 24
        for _ in range(n):  # a connection each, so that both workers take some
            assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "rdc_http_request_duration_seconds_count", route="/healthz",
                     status="2xx") == n, log_path.read_text()[-3000:]
        files = list((c.home / "metrics" / "web").glob("histogram_*.db"))
        assert files, "the workers write to the role's directory"
        # The log is JSON lines, uvicorn's own lines included.
        lines = [json.loads(line) for line in log_path.read_text().splitlines()
                 if line.startswith("{")]
        assert any(x["msg"].startswith("Application startup complete") and x["proc"] == "web"
                   for x in lines), log_path.read_text()[-3000:]
        assert any("metrics.serving role=web" in x["msg"] for x in lines)
    finally:
        _stop(proc)


def test_the_scheduler_counts_its_runs_and_requeued_jobs(env_center: Center) -> None:
    c = env_center
    port = free_port()
    c.extra_settings.update(metrics_port=str(port - 3), job_stale_after_s="60")
    stale_job = _make_job(c, "route", age_s=3600)
    proc = c._rdc("scheduler", log="scheduler")
    try:
        wait_port(port, 90, proc)

        def counted() -> Samples | None:
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
            # The run's own count comes when the run ends, after the jobs it re-queued.
            done = value(samples, "rdc_jobs_requeued_stale_total", kind="route") >= 1 and \
                value(samples, "rdc_scheduler_runs_total", task="jobs.recover_stale",
                      outcome="ok") >= 1 and \
                value(samples, "rdc_scheduler_runs_total", task="delivery.requeue_due",
                      outcome="ok") >= 1
            return samples if done else None

        samples = wait_until(counted, 60, f"the stale job requeued\n{c.logs()}")
        assert value(samples, "rdc_scheduler_runs_total", task="jobs.recover_stale",
                     outcome="ok") >= 1
        assert value(samples, "rdc_scheduler_runs_total", task="delivery.requeue_due",
                     outcome="ok") >= 1
        assert value(samples, "rdc_scheduler_run_seconds_count", task="jobs.recover_stale") >= 1
        with c.db.session() as s:
            job = s.get(Job, stale_job)
            assert job is not None and job.updated_at > datetime.now(UTC) - timedelta(minutes=5)
    finally:
        _stop(proc)


def test_a_taken_metrics_port_is_logged_and_the_role_runs_on(env_center: Center) -> None:
    c = env_center
    port = free_port()
    c.extra_settings.update(metrics_port=str(port - 3))
    blocker = _listen(port)
    proc = c._rdc("scheduler", log="scheduler")
    try:
        log_file = c.home / "logs" / "scheduler.log"

        def lines() -> list[dict[str, Any]]:
            text = log_file.read_text() if log_file.exists() else ""
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

        wait_until(lambda: any(x["msg"].startswith("scheduler.active") for x in lines()), 90,
                   f"the scheduler active\n{c.logs()}")
        refused = [x for x in lines() if x["msg"].startswith("metrics.port_unavailable")]
        assert refused and refused[0]["level"] == "ERROR", c.logs()
        assert f"port={port}" in refused[0]["msg"] and "role=scheduler" in refused[0]["msg"]
        assert proc.poll() is None, "the role keeps running without its exporter"
    finally:
        _stop(proc)
        blocker.close()


def test_the_gateway_counts_associations_stores_refusals_and_uploads(center: Center) -> None:
    c = center
    port = free_port()
    c.extra_settings.update(metrics_port=str(port), gateway_processes="2")
    c.start_orthanc()
    c.add_site()
    c.start_gateway()
    wait_port(port, 60, c.gateway_proc)
    url = f"http://127.0.0.1:{port}/metrics"
    ct = Path(get_testdata_file("CT_small.dcm"))
    mr = Path(get_testdata_file("MR_small.dcm"))
    for path in (ct, mr):  # two associations, spread over the two processes by the kernel
        result = storescu([path], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                          called_ae=c.gateway_ae)
        assert result.succeeded == [path], result.output
    rc, _ = echoscu(host="127.0.0.1", port=c.gateway_port, calling_ae="STRANGER",
                    called_ae=c.gateway_ae)
    assert rc != 0
    with socket.create_connection(("127.0.0.1", c.gateway_port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # garbage at the DICOM port
        sock.settimeout(10)
        try:
            sock.recv(100)
        except OSError:
            pass

    def uploaded() -> Samples | None:
        samples = scrape(url)
        return samples if value(samples, "rdc_gateway_uploads_total", outcome="stored") >= 2 \
            and value(samples, "rdc_gateway_refusals_total", kind="garbage") >= 1 else None

    samples = wait_until(uploaded, 60, f"both instances uploaded\n{c.logs()}")
    assert value(samples, "rdc_gateway_associations_total", site="county-a",
                 outcome="accepted") == 2
    assert value(samples, "rdc_gateway_associations_total", site="unknown",
                 outcome="rejected") == 1
    assert value(samples, "rdc_gateway_cstore_total", site="county-a", status="0x0000") == 2
    assert value(samples, "rdc_gateway_refusals_total", category="association",
                 kind="rejected") == 1
    assert value(samples, "rdc_gateway_upload_seconds_count", site="county-a") == 2
    wait_until(lambda: value(scrape(url), "rdc_gateway_spool_instances") == 0, 30,
               "the spool emptied")
    assert value(scrape(url), "rdc_gateway_spool_oldest_seconds") == 0
    # Labels carry no DICOM UIDs or patient data.
    text = httpx.get(url, timeout=10).text
    assert not re.search(r'"\d+(\.\d+){4,}"', text), "a UID in a label"


# The dashboard --------------------------------------------------------------------------
DASHBOARD = REPO / "deploy" / "grafana" / "rdc-center.json"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
#: What PromQL writes that is not a metric name.
_PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "histogram_quantile", "by", "without", "max", "min",
    "avg", "count", "topk", "bottomk", "clamp_min", "clamp_max", "le", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "time", "vector", "abs", "label_replace",
    "offset", "bool", "delta", "deriv", "sort", "sort_desc", "absent", "job", "instance",
}
#: Series Prometheus itself makes for every target.
_PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "expr" and isinstance(item, str):
                yield item
            else:
                yield from _expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)   # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)   # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\$\w+", "", expr)       # dashboard variables
    return {w for w in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr)
            if w not in _PROMQL_WORDS and not re.fullmatch(r"\d.*", w)}


def _family(sample_name: str) -> str:
    defined = metrics.metric_names()
    if sample_name in defined:
        return sample_name
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in defined:
            return sample_name.removesuffix(suffix)
    return sample_name


def test_every_metric_on_the_dashboard_is_one_the_code_defines() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert any(v.get("name") == "DS_PROMETHEUS" or v.get("type") == "datasource"
               for v in board["templating"]["list"])
    panels = [p for p in board["panels"] if p.get("type") != "row"]
    rows = [p["title"] for p in board["panels"] if p.get("type") == "row"]
    assert rows == ["Gateway", "Worker", "Delivery", "Web", "Scheduler"], rows
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        exprs = list(_expressions(panel["targets"]))
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = _metric_names(expr)
            assert names, (panel["title"], expr)
            unknown = {n for n in names - _PROMETHEUS_OWN
                       if _family(n) not in metrics.metric_names()}
            assert not unknown, f"panel {panel['title']!r} queries {unknown}: {expr}"
            for n in names - _PROMETHEUS_OWN:
                fam = _family(n)
                used.add(fam)
                if n.endswith("_bucket"):
                    assert "histogram_quantile" in expr, expr
    # Every metric the code records is on the dashboard somewhere.
    missing = metrics.metric_names() - used - {metrics.COLLECTOR_UP}
    assert not missing, f"not on the dashboard: {sorted(missing)}"
    # The scrape config has a job per role.
    jobs_in_config = re.findall(r"job_name:\s*['\"]?([\w-]+)", PROMETHEUS.read_text())
    assert {"rdc-gateway", "rdc-worker", "rdc-web", "rdc-scheduler"} <= set(jobs_in_config)
