"""The closed loop of critical values with a fake clock, on real databases.

A critical potassium notifies its site at once (a preliminary ORU with the HH flag
delivered over real MLLP to a county HIS, the in-app notice listed to the site's
accounts, the webhook POSTed to a real HTTP server); unacknowledged it escalates through
the tiers exactly on time, and past the last one keeps re-notifying; a wrong read-back is
refused and stays on the record, the right one closes the loop; every step is audited;
the dashboard's medians come out as computed by hand; and the CLI does the same.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_notify import Receiver
from typer.testing import CliRunner

from conftest import Center, _create_pg_database, _drop_pg_database, free_port
from core import jobs
from core.db import Database, get_database
from core.errors import ConfigurationError, Conflict, InvalidInput, NotFound
from core.models import (
    AuditRecord,
    Delivery,
    LabCriticalNotice,
    LabOrder,
    LabResult,
    LabSpecimen,
    OutboundMessage,
    User,
    UserSite,
)
from core.settings import Settings
from core.sites import SiteSpec, add_site
from lab import critical
from rdc.cli import app as cli_app
from test_delivery import MLLPServer

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
PERIOD_S = 300.0
_serial = itertools.count(1)


def conf(**kw: Any) -> Settings:
    kw.setdefault("lab_critical_tiers", ["site", "site", "center"])
    return Settings(lab_critical_escalation_s=PERIOD_S, **kw)


# Rows ---------------------------------------------------------------------------------
def add_county(db: Database, site_id: str, **extra: Any) -> None:
    with db.session() as s:
        site = add_site(s, SiteSpec(id=site_id, name=f"{site_id} hospital",
                                    ae_title=site_id.upper().replace("-", "_"),
                                    host="127.0.0.1", port=104,
                                    allowed_addresses=("127.0.0.1/32",),
                                    accepts_results=extra.pop("accepts_results", False)),
                        actor="test")
        for key, value in extra.items():
            setattr(site, key, value)


def add_account(db: Database, username: str, roles: tuple[str, ...], sites: tuple[str, ...] = (),
                *, all_sites: bool = False, enabled: bool = True) -> None:
    with db.session() as s:
        user = User(username=username, display_name=username, password_hash="x",
                    totp_secret="x", roles=list(roles), all_sites=all_sites, enabled=enabled)
        s.add(user)
        s.flush()
        for site in sites:
            s.add(UserSite(user_id=user.id, site_id=site))


def add_result(db: Database, site_id: str, *, test: str = "K", value: float = 7.1,
               value_text: str = "", units: str = "mmol/L", flag: str = "HH",
               critical_value: bool = True, measured_at: datetime | None = None) -> int:
    """An order with one serum specimen and one measured, held result (lab.orders builds
    these from an OML; written directly here so the loop is tested on its own)."""
    n = next(_serial)
    with db.session() as s:
        order = LabOrder(site_id=site_id, placer_order_number=f"PO{n}",
                         filler_order_number=f"F{n:08d}", patient_id=f"P{n}",
                         patient_name="WANG^FANG", sex="F", birth_date="19700101",
                         visit_number=f"V{n}", ordering_provider="ZHAO^LEI", priority="stat")
        s.add(order)
        s.flush()
        specimen = LabSpecimen(order_id=order.id, accession=f"L{n:08d}",
                               specimen_type="serum", container="SST",
                               collected_at=NOW - timedelta(hours=2), state="on_analyzer")
        s.add(specimen)
        s.flush()
        result = LabResult(order_id=order.id, specimen_id=specimen.id, site_id=site_id,
                           patient_id=order.patient_id, test_code=test, loinc="2823-3",
                           state="held", value=value, value_text=value_text or str(value),
                           units=units, ref_low=3.5, ref_high=5.3, abnormal_flag=flag,
                           critical=critical_value, analyzer_id="CHEM1",
                           measured_at=measured_at or NOW - timedelta(seconds=30))
        s.add(result)
        s.flush()
        return int(result.id)


def open_for(db: Database, result_id: int, settings: Settings,
             now: datetime = NOW) -> int:
    with db.session() as s:
        result = s.get(LabResult, result_id)
        assert result is not None
        return int(critical.open_notice(s, result, now=now, settings=settings).id)


def escalate(db: Database, settings: Settings, after_s: float) -> list[int]:
    with db.session() as s:
        return critical.escalate_due(s, settings, now=NOW + timedelta(seconds=after_s))


def notice(db: Database, notice_id: int) -> LabCriticalNotice:
    with db.session() as s:
        row = s.get(LabCriticalNotice, notice_id)
        assert row is not None
        s.expunge(row)
        return row


def audits(db: Database, notice_id: int) -> list[AuditRecord]:
    with db.session() as s:
        rows = list(s.scalars(select(AuditRecord).where(
            AuditRecord.object_type == "lab_critical_notice",
            AuditRecord.object_id == str(notice_id)).order_by(AuditRecord.seq)))
        for r in rows:
            s.expunge(r)
        return rows


def by_channel(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["channel"]: s for s in steps}


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str) -> Iterator[Database]:
    """A migrated database with two county sites that take no HL7 results, a nurse
    account at each, a lab reviewer for every site and one disabled site account."""
    if request.param == "sqlite":
        database, name = get_database(f"sqlite:///{tmp_path / 'lab.sqlite3'}"), None
    else:
        name, url = _create_pg_database(pg_admin)
        database = get_database(url)
    for site in ("county-a", "county-b"):
        add_county(database, site)
    add_account(database, "nurse-a", ("site_user",), ("county-a",))
    add_account(database, "nurse-b", ("site_user",), ("county-b",))
    add_account(database, "gone-a", ("site_user",), ("county-a",), enabled=False)
    add_account(database, "reviewer", ("lab_reviewer",), all_sites=True)
    yield database
    database.dispose()
    get_database.cache_clear()
    if name is not None:
        _drop_pg_database(pg_admin, name)


# The whole loop over real MLLP and HTTP ----------------------------------------------
def test_critical_value_is_sent_escalates_on_time_and_closes_on_read_back(
        env_center: Center, hook: Receiver) -> None:
    db = env_center.db
    his = MLLPServer([])
    try:
        add_county(db, "county-a", accepts_results=True, result_formats=["hl7"],
                   hl7_host="127.0.0.1", hl7_port=his.port)
        add_account(db, "nurse-a", ("site_user",), ("county-a",))
        add_account(db, "reviewer", ("lab_reviewer",), all_sites=True)
        settings = conf(notify_webhook_url=hook.url)
        rid = add_result(db, "county-a")
        nid = open_for(db, rid, settings)

        # At once: the ORU is scheduled, the notice listed to the site, the pager POSTed.
        row = notice(db, nid)
        assert (row.state, row.tier, row.notified_at) == ("notified", 0, NOW)
        assert row.result_at == NOW - timedelta(seconds=30)
        assert row.next_escalation_at == NOW + timedelta(seconds=PERIOD_S)
        steps = by_channel(row.steps)
        assert steps["hl7"]["outcome"].startswith("scheduled (delivery ")
        assert steps["in-app"]["to"] == ["nurse-a"] and steps["in-app"]["outcome"] == "listed"
        assert steps["webhook"]["outcome"] == "ok 200"
        assert hook.bodies == [{
            "kind": "lab.critical", "step": "notify", "site": "county-a", "notice_id": nid,
            "result_id": rid, "test": "K", "value": 7.1, "value_text": "7.1",
            "units": "mmol/L", "flag": "HH", "tier": 0, "tier_name": "site",
            "at": NOW.isoformat()}]
        # Idempotent: the run job running again opens nothing and pages nobody.
        assert open_for(db, rid, settings, now=NOW + timedelta(seconds=5)) == nid
        assert len(hook.bodies) == 1
        with db.session() as s:
            assert len(s.scalars(select(OutboundMessage)).all()) == 1
            delivery = s.scalar(select(Delivery).where(Delivery.message_id == row.message_id))
            assert delivery is not None
            job_id = delivery.job_id
        assert job_id is not None
        assert jobs.execute(db, job_id) == "succeeded"
        [oru] = his.messages
        obx = next(seg for seg in oru.split("\r") if seg.startswith("OBX")).split("|")
        assert (obx[2], obx[5], obx[8], obx[11]) == ("NM", "7.1", "HH", "P")
        assert obx[3].startswith("2823-3^")
        with db.session() as s:
            message = s.get(OutboundMessage, row.message_id)
            assert message is not None and message.kind == "lab-critical"
            assert message.ack_code == "AA"

        # Nobody acknowledges: nothing before the timer, then one tier per period.
        assert escalate(db, settings, PERIOD_S - 1) == []
        assert escalate(db, settings, PERIOD_S) == [nid]
        assert escalate(db, settings, 2 * PERIOD_S - 1) == []
        assert escalate(db, settings, 2 * PERIOD_S) == [nid]
        assert escalate(db, settings, 3 * PERIOD_S) == [nid]  # past the last tier: again
        row = notice(db, nid)
        assert (row.state, row.tier) == ("escalated", 2)
        assert row.next_escalation_at == NOW + timedelta(seconds=4 * PERIOD_S)
        assert [(b["step"], b["tier"], b["tier_name"]) for b in hook.bodies] == [
            ("notify", 0, "site"), ("escalate", 1, "site"), ("escalate", 2, "center"),
            ("escalate", 2, "center")]
        escalations = [s for s in row.steps if s["step"] == "escalate"]
        site_again = [s for s in escalations if s["tier"] == 1]
        assert by_channel(site_again)["hl7"]["outcome"].endswith("sent, ACK AA")
        assert by_channel(site_again)["in-app"]["to"] == ["nurse-a"]
        center_steps = [s for s in escalations if s["tier_name"] == "center"]
        assert [s["to"] for s in center_steps if s["channel"] == "in-app"] \
            == [["reviewer"], ["reviewer"]]

        # A wrong read-back is refused, kept on the record, and the loop stays open.
        with db.session() as s, pytest.raises(Conflict, match="does not match"):
            critical.acknowledge(s, nid, actor="nurse-a", name="Nurse Li", readback="1.7",
                                 now=NOW + timedelta(seconds=950), settings=settings)
        row = notice(db, nid)
        assert row.state == "escalated" and row.ack_at is None
        assert row.steps[-1]["outcome"] == "mismatch: heard '1.7', sent '7.1'"
        assert escalate(db, settings, 4 * PERIOD_S) == [nid]
        # The right one closes it: who, the name, what was heard, when.
        with db.session() as s:
            done = critical.acknowledge(s, nid, actor="nurse-a", name=" Nurse  Li ",
                                        readback="7,1", now=NOW + timedelta(seconds=1300),
                                        settings=settings)
            assert (done.state, done.ack_by, done.ack_name, done.ack_readback,
                    done.ack_matches) == ("acknowledged", "nurse-a", "Nurse Li", "7,1", True)
        assert escalate(db, settings, 100 * PERIOD_S) == []
        with db.session() as s, pytest.raises(Conflict, match="already acknowledged"):
            critical.acknowledge(s, nid, actor="nurse-a", name="Li", readback="7.1",
                                 settings=settings)

        records = audits(db, nid)
        assert [r.action for r in records] == [
            "lab.critical_notify", "lab.critical_escalate", "lab.critical_escalate",
            "lab.critical_escalate", "lab.critical_readback_mismatch",
            "lab.critical_escalate", "lab.critical_ack"]
        assert [r.detail.get("repeated_last_tier") for r in records
                if r.action == "lab.critical_escalate"] == [False, False, True, True]
        assert records[4].actor == "nurse-a" and records[4].detail["readback"] == "1.7"
        assert records[-1].detail["ack_at"] == (NOW + timedelta(seconds=1300)).isoformat()
    finally:
        his.close()


# The loop on both databases, without HL7 ---------------------------------------------
def test_site_without_hl7_is_still_told_in_app_and_by_webhook(db: Database,
                                                              hook: Receiver) -> None:
    settings = conf(notify_webhook_url=hook.url)
    nid = open_for(db, add_result(db, "county-a"), settings)
    steps = by_channel(notice(db, nid).steps)
    assert steps["hl7"]["outcome"] == "stored, not sent: the site takes no HL7 results"
    assert steps["in-app"]["to"] == ["nurse-a"]  # not the disabled account, not county-b
    assert steps["webhook"]["outcome"] == "ok 200"
    with db.session() as s:
        assert s.scalar(select(Delivery)) is None
        listed = critical.notices(s, site_ids=frozenset({"county-a"}))
        assert [(n["id"], n["test_code"], n["value"], n["flag"], n["state"])
                for n in listed] == [(nid, "K", 7.1, "HH", "notified")]
        assert listed[0]["patient_name"] == "WANG^FANG"
        assert listed[0]["value_sent"] == "7.1" and listed[0]["accession"].startswith("L")
        assert critical.notices(s, site_ids=frozenset({"county-b"})) == []
        assert [n["id"] for n in critical.notices(s, site_ids=None, open_only=True)] == [nid]
        critical.acknowledge(s, nid, actor="nurse-a", name="Li", readback="7.10",
                             now=NOW + timedelta(seconds=60), settings=settings)
        assert critical.notices(s, site_ids=None, open_only=True) == []
        assert critical.notices(s, site_ids=None)[0]["ack_readback"] == "7.10"


def test_a_pager_that_is_down_or_unset_never_stops_the_notice(db: Database) -> None:
    down = conf(notify_webhook_url=f"http://127.0.0.1:{free_port()}/none")
    nid = open_for(db, add_result(db, "county-a"), down)
    outcome = by_channel(notice(db, nid).steps)["webhook"]["outcome"]
    assert outcome.startswith("failed: ConnectError")
    assert escalate(db, down, PERIOD_S) == [nid]
    quiet = conf()
    other = open_for(db, add_result(db, "county-b"), quiet)
    assert by_channel(notice(db, other).steps)["webhook"]["outcome"] == "not configured"
    [record] = audits(db, other)
    assert record.action == "lab.critical_notify"
    assert {s["channel"] for s in record.detail["steps"]} == {"hl7", "in-app", "webhook"}


def test_no_site_account_is_recorded_and_a_center_first_ladder_tells_reviewers(
        db: Database) -> None:
    add_county(db, "county-c")
    nid = open_for(db, add_result(db, "county-c"), conf(lab_critical_tiers=["center"]))
    row = notice(db, nid)
    in_app = [s for s in row.steps if s["channel"] == "in-app"]
    assert [(s["tier_name"], s["to"], s["outcome"]) for s in in_app] == [
        ("site", [], "no enabled site_user account can see site county-c"),
        ("center", ["reviewer"], "listed")]
    # One tier only: every period re-notifies it, the notice never goes quiet.
    one = conf(lab_critical_tiers=["center"])
    assert escalate(db, one, PERIOD_S) == [nid]
    assert escalate(db, one, 2 * PERIOD_S) == [nid]
    assert notice(db, nid).tier == 0


def test_open_notice_refuses_what_cannot_be_read_back(db: Database) -> None:
    normal_id = add_result(db, "county-a", value=4.1, flag="", critical_value=False)
    blank_id = add_result(db, "county-a")
    with db.session() as s:
        normal = s.get(LabResult, normal_id)
        assert normal is not None
        with pytest.raises(InvalidInput, match="not a critical value"):
            critical.open_notice(s, normal, now=NOW, settings=conf())
        blank = s.get(LabResult, blank_id)
        assert blank is not None
        blank.value, blank.value_text = None, "hemolysed"
        with pytest.raises(InvalidInput, match="has no value to notify"):
            critical.open_notice(s, blank, now=NOW, settings=conf())
    with db.session() as s:
        assert s.scalar(select(LabCriticalNotice)) is None


def test_acknowledge_refuses_bad_input_precisely(db: Database) -> None:
    nid = open_for(db, add_result(db, "county-a"), conf())
    with db.session() as s:
        with pytest.raises(InvalidInput, match="name of the person"):
            critical.acknowledge(s, nid, actor="nurse-a", name="  ", readback="7.1")
        with pytest.raises(InvalidInput, match="read-back"):
            critical.acknowledge(s, nid, actor="nurse-a", name="Li", readback=" ")
        with pytest.raises(NotFound, match="critical notice 999"):
            critical.acknowledge(s, 999, actor="nurse-a", name="Li", readback="7.1")
    assert [r.action for r in audits(db, nid)] == ["lab.critical_notify"]


@pytest.mark.parametrize("tiers", [[], ["site", "pager"]])
def test_a_ladder_nobody_understands_stops_the_center(db: Database, tiers: list[str]) -> None:
    with db.session() as s, pytest.raises(ConfigurationError, match="RDC_LAB_CRITICAL_TIERS"):
        critical.escalate_due(s, conf(lab_critical_tiers=tiers), now=NOW)


def test_an_acknowledgement_racing_the_escalation_is_never_overwritten(
        db: Database) -> None:
    """The scheduler escalating while a nurse acknowledges: escalation waits for the
    acknowledgement's row lock (PostgreSQL's FOR UPDATE; SQLite's write lock) and then
    finds nothing due, instead of writing "escalated" over "acknowledged"."""
    settings = conf()
    nid = open_for(db, add_result(db, "county-a"), settings)
    outcome: dict[str, Any] = {}
    locked = threading.Event()

    def scheduler() -> None:
        locked.wait(10)
        outcome["escalated"] = escalate(db, settings, PERIOD_S + 1)

    thread = threading.Thread(target=scheduler)
    thread.start()
    with db.session() as s:
        critical.acknowledge(s, nid, actor="nurse-a", name="Li", readback="7.1",
                             now=NOW + timedelta(seconds=PERIOD_S), settings=settings)
        locked.set()
        time.sleep(0.5)  # the scheduler is now waiting on the lock
        assert "escalated" not in outcome
    thread.join(30)
    assert outcome["escalated"] == []
    row = notice(db, nid)
    assert (row.state, row.tier, row.next_escalation_at) == ("acknowledged", 0, None)


# Read-back rules ----------------------------------------------------------------------
def _result(value: float, text: str = "", units: str = "mmol/L") -> LabResult:
    return LabResult(value=value, value_text=text or str(value), units=units)


@pytest.mark.parametrize(("value", "text", "decimals", "heard", "ok"), [
    (7.1, "", 1, "7.1", True),
    (7.1, "", 1, "7.10", True),
    (7.1, "", 1, "7,1", True),
    (7.1, "", 1, " 7.1 mmol/L ", True),
    (7.1, "", 1, "7.1 MMOL/L", True),
    (7.1, "", 1, "+7.1", True),
    (7.1, "", 1, "7.14", False),   # rounds to the value, but is not what was sent
    (7.1, "", 1, "7", False),
    (7.1, "", 1, "71", False),
    (7.1, "", 1, "1.7", False),
    (7.1, "", 1, "-7.1", False),
    (7.1, "", 1, "7.1.1", False),
    (7.1, "", 1, "seven", False),
    (7.1, "", 1, "7.1 mg/dL", False),
    (7.14, "", 1, "7.1", True),     # the site was sent 7.1 ...
    (7.14, "", 1, "7.14", True),    # ... or read the analyzer's own figure
    (7.14, "", 1, "7.2", False),
    (1234.0, "", 0, "1,234", False),  # a comma is a decimal comma, never thousands
    (1234.0, "", 0, "1234", True),
    (118.0, "", 0, "118.0", True),
    (0.04, "", 2, "0.04", True),
    (70.0, ">70.0", 1, ">70.0", True),
    (70.0, ">70.0", 1, ">70", True),
    (70.0, ">70.0", 1, "70", False),
    (70.0, ">70.0", 1, "<70", False),
])
def test_readback_matches_the_value_as_sent(value: float, text: str, decimals: int,
                                            heard: str, ok: bool) -> None:
    assert critical.readback_matches(heard, _result(value, text), decimals)[0] is ok


# Dashboard ----------------------------------------------------------------------------
def test_dashboard_medians_and_closed_loop_on_known_times(db: Database) -> None:
    settings = conf()
    # county-a: result → notified 10, 20, 60 s; notified → acknowledged 100, 300 s; the
    # third is escalated and still open.  An older one is outside the window.
    times = [(10, 100), (20, 300), (60, None)]
    ids = []
    for delay, ack in times:
        rid = add_result(db, "county-a", measured_at=NOW)
        nid = open_for(db, rid, settings, now=NOW + timedelta(seconds=delay))
        ids.append(nid)
        if ack is not None:
            with db.session() as s:
                critical.acknowledge(s, nid, actor="nurse-a", name="Li", readback="7.1",
                                     now=NOW + timedelta(seconds=delay + ack),
                                     settings=settings)
    assert escalate(db, settings, 60 + PERIOD_S) == [ids[2]]
    old = add_result(db, "county-a", measured_at=NOW - timedelta(days=3))
    open_for(db, old, settings, now=NOW - timedelta(days=3))
    # county-b: one notice acknowledged after it escalated, one still inside its first
    # timer, and one critical result nobody opened a notice for.
    b1 = open_for(db, add_result(db, "county-b", measured_at=NOW), settings,
                  now=NOW + timedelta(seconds=4))
    escalate(db, settings, 4 + PERIOD_S)
    with db.session() as s:
        critical.acknowledge(s, b1, actor="nurse-b", name="Zhou", readback="7.1",
                             now=NOW + timedelta(seconds=4 + PERIOD_S + 40), settings=settings)
    open_for(db, add_result(db, "county-b", measured_at=NOW), settings,
             now=NOW + timedelta(seconds=PERIOD_S + 100))
    add_result(db, "county-b", measured_at=NOW)

    with db.session() as s:
        rows = critical.dashboard(s, site_ids=None, since=NOW - timedelta(hours=1))
        only_a = critical.dashboard(s, site_ids=frozenset({"county-a"}),
                                    since=NOW - timedelta(hours=1))
    a, b = rows
    assert a == only_a[0]
    assert a == {"site_id": "county-a", "count": 3, "notices": 3,
                 "median_result_to_notification_s": 20.0,
                 "median_notification_to_ack_s": 200.0, "acknowledged": 2, "escalated": 1,
                 "open": 1, "pending_first_contact": 0, "without_notice": 0,
                 "closed_loop_pct": 100.0, "closed_loop": True}
    assert b == {"site_id": "county-b", "count": 3, "notices": 2,
                 "median_result_to_notification_s": (4 + PERIOD_S + 100) / 2,
                 "median_notification_to_ack_s": PERIOD_S + 40, "acknowledged": 1,
                 "escalated": 1, "open": 1, "pending_first_contact": 1, "without_notice": 1,
                 "closed_loop_pct": 33.3, "closed_loop": False}


# CLI ----------------------------------------------------------------------------------
def test_cli_lists_acknowledges_and_shows_the_dashboard(env_center: Center) -> None:
    center, db = env_center, env_center.db
    add_county(db, "county-a")
    add_county(db, "county-b")
    add_account(db, "nurse-a", ("site_user",), ("county-a",))
    add_account(db, "nurse-b", ("site_user",), ("county-b",))
    add_account(db, "rad", ("radiologist",), all_sites=True)
    now = datetime.now(UTC)
    nid = open_for(db, add_result(db, "county-a", measured_at=now), conf(), now=now)

    # Once through the real entry point; the rest in-process (the same typer app).
    listed = center.rdc("lab", "critical", "list", "--open", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(n["id"], n["state"], n["test_code"]) for n in json.loads(listed.stdout)] \
        == [(nid, "notified", "K")]
    runner = CliRunner()

    def rdc(*args: str) -> Any:
        return runner.invoke(cli_app, ["lab", "critical", *args])

    table = rdc("list")
    assert table.exit_code == 0 and "7.1 mmol/L" in table.stdout

    def ack(user: str, readback: str, notice_id: int = nid) -> Any:
        return rdc("ack", str(notice_id), "--name", "Dr Li", "--readback", readback,
                   "--as", user)

    wrong_site = ack("nurse-b", "7.1")
    assert wrong_site.exit_code == 6 and "may not see site 'county-a'" in wrong_site.stderr
    wrong_role = ack("rad", "7.1")
    assert wrong_role.exit_code == 6 and "none of the roles" in wrong_role.stderr
    assert ack("nobody", "7.1").exit_code == 3
    missing = ack("nurse-a", "7.1", notice_id=999)
    assert missing.exit_code == 3 and "critical notice 999 not found" in missing.stderr
    wrong = ack("nurse-a", "1.7")
    assert wrong.exit_code == 4 and "does not match" in wrong.stderr
    assert "lab.critical_readback_mismatch" in [r.action for r in audits(db, nid)]
    # Neither acknowledged nor escalated yet: the loop is not closed, exit 1.
    assert rdc("dashboard", "--json").exit_code == 1
    right = ack("nurse-a", "7.1")
    assert right.exit_code == 0, right.output
    assert "acknowledged by Dr Li (nurse-a)" in right.stdout
    assert notice(db, nid).state == "acknowledged"
    board = rdc("dashboard", "--json")
    assert board.exit_code == 0, board.output
    [row] = json.loads(board.stdout)
    assert (row["site_id"], row["acknowledged"], row["closed_loop"]) == ("county-a", 1, True)
    assert "county-a" in rdc("dashboard").stdout
    assert rdc("escalate").stdout.strip() == "nothing due"
