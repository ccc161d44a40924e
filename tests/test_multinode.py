"""The center as several nodes, started from what ``rdc deploy systemd`` writes.

One topology for the module, on this machine, each node with its own home, spool and
ports: HAProxy in front, two gateways, two Orthancs on one PostgreSQL index and one
shared storage, two workers, two web apps, a scheduler, PostgreSQL, and a private
RabbitMQ node (so that the test may restart it).  County sites send through the
balancer from an address of their own (127.0.0.5), which reaches the gateways'
deny-by-default only through the PROXY protocol header.

The cases run in order on the one topology (each leaves it whole again): sharing and
completeness, kill -9 of a gateway mid-send, kill -9 of a worker mid-batch, a stopped
Orthanc, a restarted broker, the web app behind the balancer, late instances with two
gateways, and the metrics of every role.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import func, select

from conftest import _create_pg_database, _drop_pg_database
from core.models import AIResult, AuditRecord, Job, Study
from core.settings import METRICS_ROLE_OFFSETS
from devkit.multinode import (
    CENTER_AE,
    SITE_ADDRESS,
    SITE_AE,
    Cluster,
    SendResult,
    send,
    shutdown_cluster,
    start_cluster,
)
from devkit.ports import wait_port, wait_until
from devkit.samples import write_chest_radiograph, write_ct_series

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_admin: str) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("multinode")
    db_name, db_url = _create_pg_database(pg_admin)
    index_name, index_url = _create_pg_database(pg_admin)
    try:
        c = start_cluster(tmp, db_url, index_url)
        try:
            yield c
        except BaseException:
            print(c.topo.tails())
            raise
        finally:
            shutdown_cluster(c)
    finally:
        _drop_pg_database(pg_admin, db_name)
        _drop_pg_database(pg_admin, index_name)


def in_orthanc(c: Cluster, uid: str) -> bool:
    cfg = c.svc("n1", "orthanc").settings_file()
    r = httpx.post(f"http://127.0.0.1:{c.orthanc_port}/tools/lookup", content=uid,
                   auth=("rdc", str(cfg["orthanc_password"])), timeout=10)
    r.raise_for_status()
    return any(x.get("Type") == "Instance" for x in r.json())


def study_row(c: Cluster, study_uid: str) -> Study | None:
    with c.db.session() as s:
        return s.scalar(select(Study).where(Study.study_uid == study_uid))


def audit_count(c: Cluster, action: str, object_id: str) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == action, AuditRecord.object_id == object_id)) or 0)


# The cases --------------------------------------------------------------------------
def test_generated_files(cluster: Cluster) -> None:
    """The generator's files are what runs: units per role, a config HAProxy accepts."""
    out = cluster.topo.out_dir
    assert sorted(p.name for p in (out / "n2").iterdir()) == [
        "rdc-gateway.service", "rdc-orthanc.service", "rdc-web.service",
        "rdc-worker.service", "rdc.toml"]
    assert (out / "n1" / "rdc.toml").stat().st_mode & 0o077 == 0
    cfg = (out / "balancer" / "haproxy.cfg").read_text()
    assert "send-proxy-v2" in cfg and "ssl crt" in cfg


def test_two_gateways_share_the_sites(cluster: Cluster) -> None:
    """4 senders through the balancer: both gateways take associations, every
    acknowledged instance reaches Orthanc, every study completes once; one study's
    halves arrive through different gateways and it still completes once."""
    c = cluster
    sessions0 = c.backend_sessions("gateways")
    studies = [write_ct_series(c.tmp / f"share-{i}", slices=6, size=32, seed=100 + i)
               for i in range(8)]
    results = [SendResult() for _ in range(4)]
    threads = [threading.Thread(target=send, args=(c, [p for s in studies[i::4] for p in s.paths]),
                                kwargs={"per_association": 6, "result": results[i]})
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    acked = [u for r in results for u in r.acked]
    assert len(acked) == 48
    sessions = c.backend_sessions("gateways")
    assert all(sessions[n] > sessions0.get(n, 0) for n in ("n1", "n2")), sessions
    wait_until(lambda: c.stored_uids(acked) == set(acked), 120, "every instance stored")
    assert all(in_orthanc(c, u) for u in acked[::7])
    for st in studies:
        row = wait_until(lambda st=st: (r := study_row(c, st.study_uid)) and
                         r.state in ("complete", "routed", "reading") and r, 60, "complete")
        assert audit_count(c, "study.complete", str(row.id)) == 1

    # One study over two associations open at once: leastconn gives them different
    # gateways.
    split = write_ct_series(c.tmp / "split", slices=8, size=32, seed=200)
    before = c.backend_sessions("gateways")
    ae = AE(ae_title=SITE_AE)
    ae.requested_contexts = StoragePresentationContexts[:]
    a1 = ae.associate("127.0.0.1", c.dicom_port, ae_title=CENTER_AE,
                      bind_address=(SITE_ADDRESS, 0))
    a2 = ae.associate("127.0.0.1", c.dicom_port, ae_title=CENTER_AE,
                      bind_address=(SITE_ADDRESS, 0))
    assert a1.is_established and a2.is_established
    for i, p in enumerate(split.paths):
        st = (a1 if i % 2 else a2).send_c_store(pydicom.dcmread(p))
        assert st.Status == 0
    a1.release()
    a2.release()
    after = c.backend_sessions("gateways")
    assert all(after[n] == before[n] + 1 for n in ("n1", "n2")), (before, after)
    row = wait_until(lambda: (r := study_row(c, split.study_uid)) and r.state != "received"
                     and r, 60, "split study complete")
    time.sleep(2)  # another monitor round on each gateway
    assert audit_count(c, "study.complete", str(row.id)) == 1
    with c.db.session() as s:
        routes = s.scalars(select(Job.key).where(Job.study_id == row.id,
                                                 Job.kind == "route")).all()
    assert routes == [f"route:study-{row.id}:gen-1"]


def _radiographs(c: Cluster, name: str, n: int, seed: int) -> list[Any]:
    return [write_chest_radiograph(c.tmp / f"{name}-{i}", size=128, seed=seed + i)
            for i in range(n)]


def test_dicom_tls_through_the_balancer(cluster: Cluster) -> None:
    """A site that sends over mutual TLS: HAProxy passes TLS through (PROXY header
    first), each gateway checks the site's certificate, and the site's own address
    reaches deny-by-default."""
    c = cluster
    out = c.tmp / "county-t-tls"
    c.rdc("n1", "sites", "add", "county-t", "--name", "County T", "--ae-title", "COUNTY_T",
          "--host", "127.0.0.6", "--port", "11199", "--allow", "127.0.0.6", "--tls",
          "--tls-out", str(out))
    ctx = ssl.create_default_context(cafile=str(out / "ca-cert.pem"))
    ctx.load_cert_chain(str(out / "county-t-cert.pem"), str(out / "county-t-key.pem"))
    tls_port = c.dicom_tls_port
    study = write_ct_series(c.tmp / "tls-study", slices=4, size=32, seed=900)
    before = c.backend_sessions("gateways_tls")
    ae = AE(ae_title="COUNTY_T")
    ae.requested_contexts = StoragePresentationContexts[:]
    for _ in range(2):  # leastconn over both gateways' TLS ports
        assoc = ae.associate("127.0.0.1", tls_port, ae_title=CENTER_AE,
                             bind_address=("127.0.0.6", 0), tls_args=(ctx, "127.0.0.1"))
        assert assoc.is_established
        for p in study.paths:
            assert assoc.send_c_store(pydicom.dcmread(p)).Status == 0
        assoc.release()
    after = c.backend_sessions("gateways_tls")
    assert sum(after.values()) - sum(before.values()) == 2
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in study.paths]
    wait_until(lambda: c.stored_uids(uids) == set(uids), 60, "stored over TLS")
    # Without the site's certificate the TLS port refuses, balancer or not.
    plain = ssl.create_default_context(cafile=str(out / "ca-cert.pem"))
    assoc = ae.associate("127.0.0.1", tls_port, ae_title=CENTER_AE,
                         bind_address=("127.0.0.6", 0), tls_args=(plain, "127.0.0.1"))
    assert not assoc.is_established


def test_gateway_killed_mid_send(cluster: Cluster) -> None:
    """kill -9 of one gateway node while 4 sites send: nothing acknowledged is lost,
    the other node keeps taking studies, and the killed node resumes its spool."""
    c = cluster
    studies = [write_ct_series(c.tmp / f"kill-gw-{i}", slices=10, size=32, seed=300 + i)
               for i in range(8)]
    results = [SendResult() for _ in range(4)]
    threads = [threading.Thread(target=send, args=(c, [p for s in studies[i::4] for p in s.paths]),
                                kwargs={"per_association": 2, "result": results[i]})
               for i in range(4)]
    for t in threads:
        t.start()
    victim = c.svc("n1", "gateway")
    wait_until(lambda: sum(len(r.acked) for r in results) >= 12, 60, "sending under way")
    victim.kill()
    killed_at = c.backend_sessions("gateways")
    for t in threads:
        t.join(300)
    acked = [u for r in results for u in r.acked]
    assert len(set(acked)) == 80
    # The other node took what came after the kill.
    assert c.backend_sessions("gateways")["n2"] > killed_at["n2"]
    spooled_on_victim = list((victim.home / "spool" / "ready").iterdir())
    victim.start()
    wait_port(int(victim.settings_file()["gateway_port"]), 90, victim.proc, what=victim.name)
    wait_until(lambda: c.stored_uids(acked) == set(acked), 120,
               f"every acknowledged instance stored ({len(spooled_on_victim)} were in the "
               "killed node's spool)")
    wait_until(lambda: not list((victim.home / "spool" / "ready").iterdir()), 60,
               "the killed node's spool drained")
    assert all(in_orthanc(c, u) for u in acked[::9])
    wait_until(lambda: all(c.backend_up("gateways").values()), 30, "both gateways up")


def test_worker_killed_mid_batch(cluster: Cluster) -> None:
    """kill -9 of a worker while it runs a batch of pre-reads: the other worker finishes
    every job, each exactly once."""
    c = cluster
    c.rdc("n1", "models", "list")  # registers the shipped models (disabled in production)
    c.rdc("n1", "models", "enable", "cxr-triage")
    w1, w2 = c.svc("n1", "worker"), c.svc("n2", "worker")
    w2.stop()  # the batch must be w1's
    studies = _radiographs(c, "kill-worker", 12, 400)
    send(c, [p for s in studies for p in s.paths], per_association=12)
    uids = [s.study_uid for s in studies]

    def infer_jobs(states: tuple[str, ...]) -> list[Job]:
        with c.db.session() as s:
            return list(s.scalars(select(Job).join(Study, Study.id == Job.study_id).where(
                Study.study_uid.in_(uids), Job.kind == "ai_inference",
                Job.state.in_(states))))

    wait_until(lambda: infer_jobs(("running",)), 180, "a batch of pre-reads running on w1")
    w1.kill()
    w2.start()
    wait_until(lambda: len(infer_jobs(("succeeded",))) == 12, 240,
               "every pre-read done by the other worker")
    jobs = infer_jobs(("succeeded", "failed", "dead", "queued", "running"))
    assert len(jobs) == 12 and all(j.state == "succeeded" for j in jobs)
    for job in jobs:
        assert audit_count(c, "job.succeeded", str(job.id)) == 1, job.key
    with c.db.session() as s:
        per_series = Counter(s.scalars(select(AIResult.series_uid).join(
            Study, Study.id == AIResult.study_id).where(Study.study_uid.in_(uids))))
    assert len(per_series) == 12 and set(per_series.values()) == {1}
    w1.start()


def test_orthanc_stopped(cluster: Cluster) -> None:
    """One Orthanc stops: uploads and the web app go on with the other."""
    c = cluster
    o1 = c.svc("n1", "orthanc")
    o1.stop()
    try:
        study = write_ct_series(c.tmp / "orthanc-down", slices=6, size=32, seed=500)
        res = send(c, study.paths)
        wait_until(lambda: c.stored_uids(res.acked) == set(res.acked), 60,
                   "stored through the remaining Orthanc")
        assert in_orthanc(c, res.acked[0])
        web = _web_client(c, "orthanc-reader")
        row = study_row(c, study.study_uid)
        assert row is not None
        for _ in range(2):  # both web nodes
            r = web.get(f"/dicom-web/studies/{study.study_uid}/series")
            assert r.status_code == 200, r.text
    finally:
        o1.start()
        wait_until(lambda: c.backend_up("orthancs").get("n1"), 30, "Orthanc n1 back")


def test_broker_restarted(cluster: Cluster) -> None:
    """RabbitMQ restarts while studies complete: no job is lost; what the broker never
    got is re-queued from the database by the scheduler."""
    c = cluster
    c.broker.stop()
    try:
        study = write_ct_series(c.tmp / "broker-down", slices=4, size=32, seed=600)
        res = send(c, study.paths)
        wait_until(lambda: c.stored_uids(res.acked) == set(res.acked), 60, "stored")
        row = wait_until(lambda: (r := study_row(c, study.study_uid)) and r.state != "received"
                         and r, 60, "complete while the broker is down")
    finally:
        c.broker.start()

    def jobs() -> list[Job]:
        with c.db.session() as s:
            return list(s.scalars(select(Job).where(Job.study_id == row.id)))

    wait_until(lambda: (js := jobs()) and all(j.state in ("succeeded", "skipped") or
                                              j.queue == "reading" for j in js), 180,
               "every job of the study run after the broker came back")
    kinds = Counter(j.kind for j in jobs())
    assert kinds["route"] == 1


def _web_client(c: Cluster, username: str) -> httpx.Client:
    import pyotp

    from core.settings import Settings
    from viewer.accounts import add_user

    n1 = c.svc("n1", "web")
    settings = Settings(home=n1.home, **{k: v for k, v in n1.settings_file().items()
                                         if k in ("secrets_path", "database_url",
                                                  "center_name")})
    with c.db.session() as s:
        _, uri = add_user(s, settings, username=username, display_name=username,
                          password="correct horse battery staple 42", roles=["radiologist"],
                          all_sites=True, actor="test")
    trust = ssl.create_default_context(cafile=str(c.tmp / "balancer.pem"))
    client = httpx.Client(base_url=f"https://localhost:{c.web_port}", verify=trust,
                          timeout=30)
    r = client.post("/api/auth/login", json={"username": username,
                                             "password": "correct horse battery staple 42",
                                             "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client


def test_web_behind_the_balancer(cluster: Cluster) -> None:
    """Sessions and CSRF work whichever web node answers."""
    c = cluster
    web = _web_client(c, "lb-reader")
    nodes = Counter()
    for _ in range(6):
        r = web.get("/api/auth/me")
        assert r.status_code == 200, r.text
        nodes[r.headers["X-RDC-Node"]] += 1
    assert set(nodes) == {"n1", "n2"}, nodes
    # The CSRF token from sign-in (on one node) is checked on both; without it, refused.
    token = web.headers.pop("X-CSRF-Token")
    refused = Counter()
    for _ in range(2):
        r = web.post("/api/auth/logout")
        assert r.status_code == 403, r.text
        refused[r.headers["X-RDC-Node"]] += 1
    assert set(refused) == {"n1", "n2"}
    web.headers["X-CSRF-Token"] = token
    assert web.post("/api/auth/logout").status_code == 204
    assert web.get("/api/auth/me").status_code == 401
    assert web.get("/api/auth/me").status_code == 401  # on the other node too


def test_late_instances_with_two_gateways(cluster: Cluster) -> None:
    """A study completes, a late instance arrives through the other gateway and reopens
    it: it is routed again exactly once (generation 2), never twice in a generation."""
    c = cluster
    study = write_ct_series(c.tmp / "late", slices=6, size=32, seed=700, announce_count=False)
    send(c, study.paths[:5])
    row = wait_until(lambda: (r := study_row(c, study.study_uid)) and r.generation == 1
                     and r, 60, "first completion")
    send(c, study.paths[5:])
    row = wait_until(lambda: (r := study_row(c, study.study_uid)) and r.generation == 2
                     and r, 60, "reopened and completed again")
    time.sleep(2)
    with c.db.session() as s:
        routes = sorted(s.scalars(select(Job.key).where(Job.study_id == row.id,
                                                        Job.kind == "route")))
    assert routes == [f"route:study-{row.id}:gen-1", f"route:study-{row.id}:gen-2"]
    assert audit_count(c, "study.complete", str(row.id)) == 2
    assert audit_count(c, "study.reopen", str(row.id)) == 1


def test_every_role_exports_metrics(cluster: Cluster) -> None:
    """Prometheus scrapes every role of every node."""
    from prometheus_client.parser import text_string_to_metric_families

    c = cluster
    for svc in c.topo.services:
        if svc.role not in METRICS_ROLE_OFFSETS:
            continue
        port = c.metrics_port(svc.node, svc.role)
        r = wait_until(lambda port=port: _scrape(port), 30, f"metrics of {svc.name}")
        names = {f.name for f in text_string_to_metric_families(r)}
        assert any(n.startswith("rdc_") for n in names), (svc.name, sorted(names)[:20])
    # What the cases above did shows on both gateways and on the web nodes.
    for node in ("n1", "n2"):
        gw = _samples(_scrape(c.metrics_port(node, "gateway")) or "")
        stored = [v for name, labels, v in gw if name == "rdc_gateway_cstore_total"
                  and labels.get("site") == "county-a" and labels.get("status") == "0x0000"]
        assert stored and sum(stored) > 0, (node, gw[:20])
        web = _samples(_scrape(c.metrics_port(node, "web")) or "")
        assert any(name == "rdc_http_request_duration_seconds_count"
                   and labels.get("route") == "/api/auth/me" for name, labels, _ in web), node
    sched = _samples(_scrape(c.metrics_port("n1", "scheduler")) or "")
    assert any(name == "rdc_scheduler_runs_total" for name, _, _ in sched)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(smp.name, smp.labels, smp.value) for f in text_string_to_metric_families(text)
            for smp in f.samples]


def _scrape(port: int) -> str | None:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None


def test_rdc_status_shows_every_node(cluster: Cluster) -> None:
    """``rdc status`` on one node lists every role of every node, from the heartbeats
    in the center's database; a killed role turns silent, a stopped one says so."""
    c = cluster

    def table() -> dict[tuple[str, str], str]:
        out = c.rdc("n2", "status")
        states = {}
        for line in out.splitlines():
            cells = [x.strip() for x in line.split("│") if x.strip()]
            if len(cells) >= 5 and cells[0] in ("n1", "n2"):
                states[(cells[0], cells[1])] = cells[4]
        return states

    expected = {(svc.node, svc.role) for svc in c.topo.services}
    states = wait_until(lambda: (t := table()) and set(t) >= expected and t, 30,
                        "every role in rdc status")
    assert all(states[k] == "up" for k in expected), states
    web2 = c.svc("n2", "web")
    web2.stop()
    try:
        assert wait_until(lambda: table().get(("n2", "web")) == "stopped", 30, "stopped")
    finally:
        web2.start()
        wait_until(lambda: table().get(("n2", "web")) == "up", 60, "up again")
