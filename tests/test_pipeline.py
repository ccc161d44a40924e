"""From C-STORE to jobs: completeness, routing through the real broker, reopening."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from conftest import SENDER_AE, Center, wait_until
from core import audit
from core.models import AuditRecord, Job, Study
from core.settings import Settings
from devkit.dcmtk import storescu
from devkit.samples import write_chest_radiograph, write_ct_series
from pacs_gateway.routing import load_rules


def _send(c: Center, paths: list[Path]) -> None:
    result = storescu(paths, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert len(result.succeeded) == len(paths), result.output[-2000:]


def _study(c: Center, uid: str) -> Study | None:
    with c.db.session() as s:
        return s.scalar(select(Study).where(Study.study_uid == uid))


def _jobs(c: Center, study_id: int) -> list[Job]:
    with c.db.session() as s:
        return list(s.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)))


def test_complete_study_is_routed_by_a_worker_and_reopened_by_a_late_instance(
        running: Center, tmp_path: Path) -> None:
    c = running
    c.start_worker()
    ct = write_ct_series(tmp_path / "ct", slices=6, size=64, announce_count=True)
    _send(c, ct.paths[:5])
    study = wait_until(lambda: _study(c, ct.study_uid), 20, "the study row")
    assert study.state == "received" and study.expected_instances == 6

    # The announced count is not reached yet, and the inactivity window is 3 s:
    # nothing may complete while the last slice is still to come.
    _send(c, ct.paths[5:])
    done = wait_until(lambda: (s := _study(c, ct.study_uid)) and s.state == "complete" and s,
                      20, "completion by announced count")
    assert done.generation == 1 and done.stored_instances == 6

    def routed(n: int) -> list[Job] | None:
        jobs = _jobs(c, done.id)
        kinds = [(j.kind, j.state) for j in jobs]
        return jobs if kinds.count(("route", "succeeded")) == n and \
            sum(1 for j in jobs if j.kind == "human_read") == n else None

    jobs = wait_until(lambda: routed(1), 60, "the worker to route the study")
    human = next(j for j in jobs if j.kind == "human_read")
    assert human.queue == "reading" and human.state == "queued"
    version = load_rules(Settings().routing_rules_path()).version
    assert human.rule == f"human-read-images@v{version}"  # the rule and the file's version

    # A late instance of another series reopens the study; it completes again
    # after the inactivity window and is routed once more (generation 2).
    late = write_ct_series(tmp_path / "late", slices=1, size=64, seed=99, announce_count=False)
    from pydicom import dcmread

    ds = dcmread(late.paths[0])
    ds.StudyInstanceUID = ct.study_uid
    ds.save_as(late.paths[0])
    _send(c, late.paths)
    wait_until(lambda: (s := _study(c, ct.study_uid)) and s.state == "reopened", 10,
               "the study to reopen")
    again = wait_until(lambda: (s := _study(c, ct.study_uid)) and s.generation == 2 and s,
                       30, "completion after inactivity")
    assert again.state == "complete" and again.stored_instances == 7
    wait_until(lambda: routed(2), 60, "the second routing")
    with c.db.session() as s:
        actions = list(s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))
        assert actions.count("study.complete") == 2 and "study.reopen" in actions
        assert actions.count("study.route") == 2
        assert audit.verify(s).ok


def test_study_without_announced_count_completes_after_inactivity(
        running: Center, tmp_path: Path) -> None:
    c = running
    dx = write_chest_radiograph(tmp_path / "dx", size=128)
    _send(c, dx.paths)
    study = wait_until(lambda: _study(c, dx.study_uid), 20, "the study row")
    assert study.state == "received" and study.expected_instances is None
    done = wait_until(lambda: (s := _study(c, dx.study_uid)) and s.state == "complete" and s,
                      20, "completion by inactivity")
    # No worker runs here: the route job waits, queued, in the broker and the database.
    route = wait_until(lambda: _jobs(c, done.id), 10, "the route job")
    assert [(j.kind, j.state) for j in route] == [("route", "queued")]
    c.start_worker()
    wait_until(lambda: any(j.kind == "human_read" for j in _jobs(c, done.id)), 60,
               "the queued route job to run once a worker starts")


def test_high_priority_store_makes_a_stat_read(running: Center, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    c = running
    c.start_worker()
    ct = write_ct_series(tmp_path / "stat", slices=2, size=32, seed=7, announce_count=True)
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established
    for p in ct.paths:
        status = assoc.send_c_store(p, priority=1)
        assert status.Status == 0x0000
    assoc.release()
    study = wait_until(lambda: (s := _study(c, ct.study_uid)) and s.state == "complete" and s,
                       20, "completion")
    assert study.priority == 9
    reads = wait_until(lambda: [j for j in _jobs(c, study.id) if j.kind == "human_read"], 60,
                       "the STAT read job")
    assert reads[0].priority == 9


def test_rabbitmq_broker_by_url(tmp_path: Path) -> None:
    """Redis is the tests' broker; RabbitMQ works by URL too."""
    import socket

    from conftest import _make_center

    with socket.socket() as s:
        s.settimeout(3)
        assert s.connect_ex(("127.0.0.1", 5672)) == 0, "RabbitMQ is required on 127.0.0.1:5672"
    gen = _make_center(tmp_path, "sqlite", "amqp://guest:guest@127.0.0.1:5672//", None)
    c = next(gen)
    try:
        c.start_orthanc()
        c.add_site()
        c.start_gateway()
        c.start_worker()
        ct = write_ct_series(tmp_path / "ct", slices=3, size=32, seed=11, announce_count=True)
        _send(c, ct.paths)
        study = wait_until(lambda: (s := _study(c, ct.study_uid)) and s.state == "complete"
                           and s, 20, "completion")
        wait_until(lambda: any(j.kind == "human_read" and j.state == "queued"
                               for j in _jobs(c, study.id)), 90,
                   "routing through RabbitMQ")
    finally:
        next(gen, None)
