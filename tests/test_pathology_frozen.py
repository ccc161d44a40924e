"""The frozen-section path with a fake clock: the on-duty pathologist is paged at once
(in the app and through a real webhook server), the page escalates along the rota after
the configured time and not before, stops once a slide is viewed, a case nobody can be
paged for is shown to admins, and the dashboard's medians and 90th percentiles per
site come out exactly as computed by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import test_pathology_cases as shared
from sqlalchemy import select
from test_notify import Receiver as Webhook
from test_pathology_cases import NOW, add_case, add_user

from conftest import free_port
from core import scheduler
from core.db import Database
from core.errors import InvalidInput
from core.models import AuditRecord, PathologyEvent
from core.settings import Settings
from pathology import cases, dashboard, frozen, paging

#: The shared database fixture (two sites, SQLite and PostgreSQL).
db = shared.db
ESCALATE_S = 600.0


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def settings(**kw: Any) -> Settings:
    return Settings(pathology_frozen_escalation_s=ESCALATE_S, **kw)


def staff(db: Database) -> dict[str, int]:
    """County A's rota by username: chen (every site), li, wang.  Not on it: zhao (county
    B only), a disabled pathologist, a radiologist."""
    return {
        "admin": add_user(db, "admin", roles=("admin",), all_sites=True),
        "chen": add_user(db, "chen", all_sites=True),
        "li": add_user(db, "li", sites=("county-a",)),
        "wang": add_user(db, "wang", sites=("county-a", "county-b")),
        "zhao": add_user(db, "zhao", sites=("county-b",)),
        "aaron": add_user(db, "aaron", sites=("county-a",), enabled=False),
        "rad": add_user(db, "rad", roles=("radiologist",), sites=("county-a",)),
    }


def actions(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def paged_users(db: Database, case_id: int) -> list[str]:
    with db.session() as s:
        return [e.detail["username"] for e in s.scalars(
            select(PathologyEvent).where(PathologyEvent.case_id == case_id,
                                         PathologyEvent.step == "paged")
            .order_by(PathologyEvent.id))]


def test_frozen_case_pages_on_duty_at_once_and_escalates_after_the_set_time(
        db: Database, webhook: Webhook) -> None:
    u = staff(db)
    conf = settings(notify_webhook_url=webhook.url)
    cid = add_case(db, "county-a", "F1", urgency="frozen", received_ago_min=0)
    with db.session() as s:
        assert [x.username for x in frozen.rota(s, cases.get_case(s, cid), conf)] \
            == ["chen", "li", "wang"]
        who = frozen.page_on_duty(s, cases.get_case(s, cid), NOW, settings=conf)
        assert who is not None and who.username == "chen"
    with db.session() as s:  # intake re-run: no second page
        assert frozen.page_on_duty(s, cases.get_case(s, cid), NOW, settings=conf) is None
        pages = paging.open_pages(s, u["chen"])
        assert [(p.case_id, p.accession_number, p.at, p.kind) for p in pages] \
            == [(cid, "F1", NOW, "page")]
        assert pages[0].reason == "frozen section received"
        assert paging.open_pages(s, u["li"]) == []
    assert paged_users(db, cid) == ["chen"]
    assert [(b["user"], b["case_id"], b["urgency"], b["accession_number"])
            for b in webhook.bodies] == [("chen", cid, "frozen", "F1")]
    assert actions(db).count("pathology.page") == 1

    def tick(seconds: float) -> list[int]:
        with db.session() as s:
            return frozen.escalate_unanswered(s, conf, NOW + timedelta(seconds=seconds))

    assert tick(ESCALATE_S - 1) == []  # not before the configured time
    assert tick(ESCALATE_S) == [cid]
    assert tick(ESCALATE_S + 1) == []  # the new page's own clock starts now
    assert tick(2 * ESCALATE_S) == [cid]
    assert tick(3 * ESCALATE_S) == [cid]  # wraps around to the first on the rota
    assert paged_users(db, cid) == ["chen", "li", "wang", "chen"]
    with db.session() as s:
        row = cases.get_case(s, cid)
        assert row.escalations == 3 and row.paged_user_id == u["chen"]
        assert row.paged_at == NOW + timedelta(seconds=3 * ESCALATE_S)
        escalated = [e.detail for e in s.scalars(select(PathologyEvent).where(
            PathologyEvent.step == "escalated").order_by(PathologyEvent.id))]
        assert [(d["from_user_id"], d["to_username"], d["escalation"]) for d in escalated] \
            == [(u["chen"], "li", 1), (u["li"], "wang", 2), (u["wang"], "chen", 3)]
        assert paging.open_pages(s, u["wang"]) == []
        assert [p.case_id for p in paging.open_pages(s, u["chen"])] == [cid]
        # Chen opens a slide: the page is answered, escalation stops.
        cases.record_event(s, cid, "first_tile", "chen",
                           NOW + timedelta(seconds=3 * ESCALATE_S + 30))
    assert tick(10 * ESCALATE_S) == []
    with db.session() as s:
        assert paging.open_pages(s, u["chen"]) == []
    assert len(webhook.bodies) == 4


def test_escalation_stops_once_signed_and_follows_the_configured_rota(db: Database) -> None:
    staff(db)
    conf = settings(pathology_on_duty=["wang", "ghost", "aaron", "li"])
    signed = add_case(db, "county-a", "F1", urgency="frozen")
    cid = add_case(db, "county-a", "F2", urgency="frozen")
    routine = add_case(db, "county-a", "R1")
    with db.session() as s:
        assert [x.username for x in frozen.rota(s, cases.get_case(s, cid), conf)] \
            == ["wang", "li"]  # unknown and disabled names are skipped
        for c in (signed, cid):
            frozen.page_on_duty(s, cases.get_case(s, c), NOW, settings=conf)
        cases.get_case(s, signed).state = "signed"
    with db.session() as s:
        assert frozen.escalate_unanswered(s, conf, NOW + timedelta(hours=1)) == [cid]
    assert paged_users(db, cid) == ["wang", "li"]
    assert paged_users(db, signed) == ["wang"]
    assert paged_users(db, routine) == []


def test_nobody_to_page_is_recorded_and_shown_to_admins(db: Database,
                                                        webhook: Webhook) -> None:
    u = staff(db)
    nobody = settings(pathology_on_duty=["ghost", "aaron"])
    cid = add_case(db, "county-b", "F1", urgency="frozen")
    with db.session() as s:
        assert frozen.page_on_duty(s, cases.get_case(s, cid), NOW, settings=nobody) is None
    with db.session() as s:  # the scheduler retries: still nobody, recorded once
        assert frozen.escalate_unanswered(s, nobody, NOW + timedelta(minutes=1)) == []
        failed = list(s.scalars(select(PathologyEvent).where(
            PathologyEvent.step == "page_failed")))
        assert len(failed) == 1 and "no enabled user" in failed[0].detail["reason"]
        admin_pages = paging.open_pages(s, u["admin"], admin=True)
        assert [(p.case_id, p.kind) for p in admin_pages] == [(cid, "page_failed")]
        assert "no enabled user" in admin_pages[0].reason
        assert paging.open_pages(s, u["admin"]) == []  # not an admin's view: nothing
    assert actions(db).count("pathology.page_failed") == 1
    # Someone is on duty again: the next run pages them and the alert is answered.
    back = settings(pathology_on_duty=["zhao"], notify_webhook_url=webhook.url)
    with db.session() as s:
        assert frozen.escalate_unanswered(s, back, NOW + timedelta(minutes=2)) == [cid]
        assert paging.open_pages(s, u["admin"], admin=True) == []
        assert [p.case_id for p in paging.open_pages(s, u["zhao"])] == [cid]
    assert webhook.bodies and webhook.bodies[-1]["user"] == "zhao"


def test_default_rota_empty_names_the_site(db: Database) -> None:
    add_user(db, "li", sites=("county-a",))
    cid = add_case(db, "county-b", "F1", urgency="frozen")
    with db.session() as s:
        assert frozen.page_on_duty(s, cases.get_case(s, cid), NOW, settings=settings()) is None
        reasons = [e.detail["reason"] for e in s.scalars(select(PathologyEvent).where(
            PathologyEvent.step == "page_failed"))]
    assert reasons == ["no enabled pathologist may read site county-b"]


@pytest.mark.parametrize("status", [500, None])
def test_a_failing_webhook_never_loses_the_in_app_page(db: Database, status: int | None) -> None:
    u = staff(db)
    hook = Webhook(status=status) if status else None
    url = hook.url if hook else f"http://127.0.0.1:{free_port()}/nobody-listens"
    try:
        cid = add_case(db, "county-a", "F1", urgency="frozen")
        with db.session() as s:
            frozen.page_on_duty(s, cases.get_case(s, cid), NOW,
                                settings=settings(notify_webhook_url=url))
        with db.session() as s:
            assert [p.case_id for p in paging.open_pages(s, u["chen"])] == [cid]
            failure = s.scalar(select(AuditRecord).where(
                AuditRecord.action == "pathology.page_webhook_failed"))
        assert failure is not None and failure.detail["user"] == "chen"
        assert ("500" if status else "Connect") in failure.detail["error"]
    finally:
        if hook:
            hook.close()


def test_call_and_timeline(db: Database) -> None:
    cid = add_case(db, "county-a", "F1", urgency="frozen")
    t = [NOW + timedelta(seconds=x) for x in (0, 40, 200, 500, 620)]
    with db.session() as s:
        for step, at in zip(("received", "qc", "first_tile"), t, strict=False):
            cases.record_event(s, cid, step, "system", at)
        row = cases.get_case(s, cid)
        with pytest.raises(InvalidInput, match="must not be empty"):
            frozen.record_call(s, row, "li", "  ", t[3])
        first = frozen.record_call(s, row, "li", "Benign, margins clear", t[3])
        later = frozen.record_call(s, row, "li", "Correction: margin close", t[4])
        assert first is not None and first.step == "call"
        assert later is not None and later.step == "call_update"
        cases.record_event(s, cid, "first_tile", "wang", t[4])  # not the first: ignored
        line = frozen.timeline(s, cid)
    assert line == {"received": t[0], "qc": t[1], "first_tile": t[2], "call": t[3],
                    "call_update": t[4]}


def _frozen_case(db: Database, site: str, accession: str,
                 gaps: tuple[float | None, ...]) -> int:
    """A frozen case whose timeline steps follow each other by ``gaps`` seconds
    (None: the step never happened, nor any after it)."""
    cid = add_case(db, site, accession, urgency="frozen")
    at: datetime = NOW
    with db.session() as s:
        cases.record_event(s, cid, "received", "system", at)
        for step, gap in zip(frozen.TIMELINE_STEPS[1:], gaps, strict=False):
            if gap is None:
                break
            at += timedelta(seconds=gap)
            cases.record_event(s, cid, step, "x", at)
    return cid


def test_dashboard_medians_and_90th_percentiles_per_site(db: Database) -> None:
    # gaps: received→qc, qc→first_tile, first_tile→call, call→signed
    _frozen_case(db, "county-a", "F1", (30, 120, 300, 100))
    _frozen_case(db, "county-a", "F2", (60, 240, 500, 200))
    _frozen_case(db, "county-a", "F3", (90, 600, None))
    _frozen_case(db, "county-b", "F4", (45, None))
    routine = add_case(db, "county-a", "R1")  # not frozen: not counted
    with db.session() as s:
        cases.record_event(s, routine, "received", "system", NOW)
        cases.record_event(s, routine, "qc", "system", NOW + timedelta(hours=5))
        stats = dashboard.frozen_step_stats(s, None)
        only_b = dashboard.frozen_step_stats(s, {"county-b"})
    # By hand, numpy's "linear" method: p at rank (n-1)*q between the sorted values.
    assert stats["county-a"] == {
        "received_to_qc": {"n": 3, "p50_s": 60.0, "p90_s": 84.0},  # 30 60 90
        "qc_to_first_tile": {"n": 3, "p50_s": 240.0, "p90_s": 528.0},  # 120 240 600
        "first_tile_to_call": {"n": 2, "p50_s": 400.0, "p90_s": 480.0},  # 300 500
        "call_to_signed": {"n": 2, "p50_s": 150.0, "p90_s": 190.0},  # 100 200
        "received_to_signed": {"n": 2, "p50_s": 775.0, "p90_s": 955.0},  # 550 1000
    }
    empty = {"n": 0, "p50_s": None, "p90_s": None}
    assert stats["county-b"] == {"received_to_qc": {"n": 1, "p50_s": 45.0, "p90_s": 45.0},
                                 "qc_to_first_tile": empty, "first_tile_to_call": empty,
                                 "call_to_signed": empty, "received_to_signed": empty}
    assert list(only_b) == ["county-b"]


def test_escalation_is_a_registered_periodic_task() -> None:
    task = next(t for t in scheduler.periodic_tasks() if t.name == "pathology.frozen_escalation")
    assert task.fn is frozen.escalate_unanswered and task.interval_s == 30.0
