"""core/heartbeat.py: the rows ``rdc status`` reads to show every node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import Center
from core.heartbeat import Heartbeat, beat, node_states
from core.models import NodeHeartbeat
from devkit.ports import wait_until


def test_up_stopped_and_silent(center: Center) -> None:
    db = center.db
    hb = Heartbeat(center.settings.database_url, "gw1", "gateway", {"port": 104},
                   interval_s=0.2).start()
    states = wait_until(lambda: node_states(db), 10, "the first beat")
    assert [(n.node, n.role, n.state, n.detail) for n in states] == [
        ("gw1", "gateway", "up", {"port": 104})]
    first = states[0].seen_at
    wait_until(lambda: node_states(db)[0].seen_at > first, 10, "a later beat")
    hb.stop()
    assert node_states(db)[0].state == "stopped"

    beat(db, "w1", "worker", detail={"queues": "inference"})
    later = datetime.now(UTC) + timedelta(seconds=31)
    by_key = {(n.node, n.role): n for n in node_states(db, now=later, interval_s=10)}
    assert by_key[("w1", "worker")].state == "silent"  # three beats missed
    assert by_key[("gw1", "gateway")].state == "stopped"  # stopped stays stopped
    beat(db, "gw1", "gateway")  # started again: up, and no longer stopped
    with db.session() as s:
        row = s.get(NodeHeartbeat, ("gw1", "gateway"))
        assert row is not None and row.stopped_at is None


def test_a_database_that_is_down_never_stops_the_role() -> None:
    hb = Heartbeat("postgresql://nobody@127.0.0.1:1/none", "n", "web", {},
                   interval_s=0.1).start()
    hb.stop()  # no exception: the failure is logged and the role goes on
