"""The chain of custody across institutions, on real SQLite and PostgreSQL databases: a
tube's whole timeline from collection to disposal, a box whose logger left its range
holds every tube in it, scans out of order (in state or in time) are refused with
nothing written, a coded rejection rejects the open results and goes back to the site as
an ORU, and the hash-chained audit holds every event and still verifies.

The helpers here (``db``, ``add_order``) insert orders, tubes and result rows directly,
as the order interface would; tests/test_lab_stability.py and test_lab_labels.py use them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import Center, _create_pg_database, _drop_pg_database
from core import audit
from core.db import Database, get_database
from core.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from core.models import (
    AuditRecord,
    LabCustodyEvent,
    LabOrder,
    LabResult,
    LabShipment,
    LabSpecimen,
    OutboundMessage,
)
from core.sites import SiteSpec, add_site
from lab import custody
from lab.catalog import get_catalog
from lab.states import CustodyStep

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SITES = ("county-a", "county-b")


def _fresh(path: Path | None, pg_admin: str | None) -> tuple[Database, str | None]:
    if pg_admin is None:
        assert path is not None
        return get_database(f"sqlite:///{path}"), None
    name, url = _create_pg_database(pg_admin)
    return get_database(url), name


def make_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database with two county sites (the parameter picks the engine)."""
    pg = request.getfixturevalue("pg_admin") if request.param == "postgres" else None
    database, name = _fresh(tmp_path / "lab.sqlite3", pg)
    with database.session() as s:
        for site in SITES:
            add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=site.upper(),
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="test")
    yield database
    database.dispose()
    get_database.cache_clear()
    if name is not None and pg is not None:
        _drop_pg_database(pg, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from make_db(request, tmp_path)


_counter = iter(range(1, 10**6))


def add_order(db: Database, *, site: str = "county-a", tests: Sequence[str] = ("K", "NA"),
              collected_at: datetime | None = NOW, condition: str = "room",
              spun: bool = True, patient_name: str = "WANG^FANG",
              patient_id: str = "P100", sex: str = "F", birth_date: str = "19700412",
              specimens: int = 1) -> list[str]:
    """An order with ``specimens`` tubes of ``tests`` as the order interface stores it
    (result rows ``ordered``, custody events ordered + collected); returns accessions."""
    catalog = get_catalog()
    n = next(_counter)
    accessions: list[str] = []
    with db.session() as s:
        order = LabOrder(site_id=site, placer_order_number=f"PO{n}",
                         filler_order_number=f"LO{n:08d}", patient_id=patient_id,
                         patient_name=patient_name, sex=sex, birth_date=birth_date,
                         visit_number=f"V{n}", ordering_provider="Dr Zhang",
                         priority="routine", created_at=NOW - timedelta(hours=1))
        s.add(order)
        s.flush()
        for i in range(specimens):
            first = catalog.test(tests[0])
            specimen = LabSpecimen(order_id=order.id, accession=f"L{n:05d}{i:03d}",
                                   specimen_type=first.specimen_type,
                                   container=first.container[:32], collected_at=collected_at,
                                   condition=condition, spun=spun, state="ordered")
            s.add(specimen)
            s.flush()
            for code in tests:
                t = catalog.test(code)
                s.add(LabResult(order_id=order.id, specimen_id=specimen.id, site_id=site,
                                patient_id=patient_id, test_code=code, loinc=t.loinc,
                                units=t.units, state="ordered"))
            custody.record_event(s, step=CustodyStep.ORDERED, actor="hl7:" + site,
                                 specimen=specimen, location=site, at=NOW - timedelta(hours=1))
            if collected_at is not None:
                specimen.state = CustodyStep.COLLECTED
                custody.record_event(s, step=CustodyStep.COLLECTED, actor="hl7:" + site,
                                     specimen=specimen, location=f"{site} ward 3",
                                     at=collected_at)
            accessions.append(specimen.accession)
    return accessions


def readings(start: datetime, temps: Sequence[float], every_min: int = 15,
             ) -> list[tuple[datetime, float]]:
    return [(start + timedelta(minutes=every_min * i), t) for i, t in enumerate(temps)]


def specimen(db: Database, accession: str) -> LabSpecimen:
    with db.session() as s:
        row = custody.find_specimen(s, accession)
        s.expunge(row)
        return row


def steps(db: Database, accession: str) -> list[str]:
    with db.session() as s:
        return [e["step"] for e in custody.specimen_timeline(s, custody.find_specimen(
            s, accession).id)]


def test_a_tube_from_collection_to_disposal(db: Database) -> None:
    acc, other = add_order(db, specimens=2)
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="BOX-A1", accessions=[acc, other],
                         condition="room", actor="nurse.li", at=NOW + timedelta(minutes=20))
    with db.session() as s:
        custody.courier_pickup(s, "BOX-A1", actor="driver.wu", courier="County Express",
                               at=NOW + timedelta(minutes=40))
    with db.session() as s:
        box = custody.receive_box(s, "BOX-A1", actor="tech.zhou",
                                  temperature_log=readings(NOW + timedelta(minutes=20),
                                                           [21.5, 22.0, 22.4, 21.9]),
                                  at=NOW + timedelta(hours=2))
        assert box.excursion == ""
    for i, (step, who, where) in enumerate([("aliquoted", "tech.zhou", "pre-analytics"),
                                            ("on_analyzer", "tech.zhou", "CHEM1"),
                                            ("stored", "tech.ma", "fridge 2 rack 4"),
                                            ("disposed", "tech.ma", "biohazard")]):
        with db.session() as s:
            custody.scan(s, acc, step, actor=who, location=where,
                         temperature_c=4.0 if step == "stored" else None,
                         at=NOW + timedelta(hours=3 + i))

    with db.session() as s:
        tube = custody.find_specimen(s, acc)
        timeline = custody.specimen_timeline(s, tube.id)
        assert tube.state == "disposed" and tube.hold_reason == ""
    assert [e["step"] for e in timeline] == [
        "ordered", "collected", "packed", "courier", "received", "accessioned", "aliquoted",
        "on_analyzer", "stored", "disposed"]
    by_step = {e["step"]: e for e in timeline}
    assert by_step["collected"]["at"] == NOW.isoformat()
    assert by_step["packed"]["actor"] == "nurse.li"
    assert by_step["packed"]["location"] == "county-a"
    assert by_step["packed"]["detail"] == {"box": "BOX-A1", "condition": "room"}
    assert by_step["courier"]["detail"] == {"courier": "County Express"}
    assert by_step["received"]["at"] == (NOW + timedelta(hours=2)).isoformat()
    assert by_step["received"]["location"] == "center"
    assert by_step["received"]["temperature_c"] == 21.9  # the box's last reading
    assert by_step["stored"] | {} == {
        "step": "stored", "at": (NOW + timedelta(hours=5)).isoformat(), "actor": "tech.ma",
        "location": "fridge 2 rack 4", "temperature_c": 4.0, "detail": {}}
    # The other tube of the box stops at accessioned.
    assert steps(db, other)[-1] == "accessioned"

    with db.session() as s:
        box = custody.find_shipment(s, "BOX-A1")
        view = custody.box_timeline(s, box.id)
    assert [e["step"] for e in view["events"]] == ["packed", "courier", "received"]
    assert view["events"][0]["detail"]["specimens"] == [acc, other]
    assert view["events"][2]["detail"]["readings"] == 4
    assert view["state"] == "received" and view["courier"] == "County Express"
    assert [r["temperature_c"] for r in view["temperature_log"]] == [21.5, 22.0, 22.4, 21.9]
    assert all(r["in_range"] for r in view["temperature_log"])
    assert [(t["accession"], t["state"]) for t in view["specimens"]] == [
        (acc, "disposed"), (other, "accessioned")]

    # Every event is in the hash-chained audit, in order, and the chain verifies.
    with db.session() as s:
        n_events = s.scalar(select(func.count()).select_from(LabCustodyEvent))
        records = s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.custody")
                            .order_by(AuditRecord.seq)).all()
        assert len(records) == n_events == 10 + 6 + 3  # acc, other (no scans), box
        mine = [r.detail["step"] for r in records if r.object_id == acc]
        assert mine == ["ordered", "collected", "packed", "courier", "received", "accessioned",
                        "aliquoted", "on_analyzer", "stored", "disposed"]
        assert {r.object_id for r in records if r.object_type == "lab_shipment"} == {"BOX-A1"}
        stored = next(r for r in records if r.detail["step"] == "stored")
        assert (stored.actor, stored.detail["location"], stored.detail["temperature_c"]) == (
            "tech.ma", "fridge 2 rack 4", 4.0)
        result = audit.verify(s)
        assert result.ok, result.reason


def test_a_box_out_of_range_holds_every_tube_in_it(db: Database) -> None:
    tubes = add_order(db, specimens=2, condition="refrigerated", spun=True)
    fine = add_order(db, condition="refrigerated", spun=True)
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="COLD-1", accessions=tubes,
                         condition="refrigerated", actor="nurse.li", at=NOW)
        custody.pack_box(s, site_id="county-a", box_code="COLD-2", accessions=fine,
                         condition="refrigerated", actor="nurse.li", at=NOW)
    log = readings(NOW, [4.0, 5.5, 9.5, 11.25, 7.0, 3.0])
    with db.session() as s:
        custody.courier_pickup(s, "COLD-1", actor="driver.wu", courier="County Express",
                               at=NOW + timedelta(minutes=10))
        box = custody.receive_box(s, "COLD-1", actor="tech.zhou", temperature_log=log,
                                  at=NOW + timedelta(hours=2))
        assert box.excursion == (
            f"2 of 6 readings outside 2 to 8 °C for a refrigerated box, from "
            f"{(NOW + timedelta(minutes=30)).isoformat()} to "
            f"{(NOW + timedelta(minutes=45)).isoformat()}; worst 11.25 °C at "
            f"{(NOW + timedelta(minutes=45)).isoformat()}")
        # Received without a courier scan (hand-carried box): allowed, in range.
        custody.receive_box(s, "COLD-2", actor="tech.zhou",
                            temperature_log=readings(NOW, [3.0, 4.0]),
                            at=NOW + timedelta(hours=2))
    for acc in tubes:
        tube = specimen(db, acc)
        assert tube.hold_reason == f"box COLD-1 temperature excursion: {box.excursion}"
        assert tube.state == "accessioned"
    assert specimen(db, fine[0]).hold_reason == ""
    with db.session() as s:
        view = custody.box_timeline(s, custody.find_shipment(s, "COLD-1").id)
        assert [r["in_range"] for r in view["temperature_log"]] == [
            True, True, False, False, True, True]
        assert view["excursion"] == box.excursion
        assert all(t["hold_reason"] for t in view["specimens"])
        holds = s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.specimen_hold")
                          ).all()
        assert sorted(r.object_id for r in holds) == sorted(tubes)
        assert audit.verify(s).ok


def test_a_cold_box_with_no_readings_cannot_show_its_cold_chain(db: Database) -> None:
    cold = add_order(db, condition="refrigerated")
    warm = add_order(db, condition="room")
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="F-1", accessions=cold,
                         condition="frozen", actor="nurse.li", at=NOW)
        custody.pack_box(s, site_id="county-a", box_code="R-1", accessions=warm,
                         condition="room", actor="nurse.li", at=NOW)
        f1 = custody.receive_box(s, "F-1", actor="tech", temperature_log=[],
                                 at=NOW + timedelta(hours=1))
        r1 = custody.receive_box(s, "R-1", actor="tech", temperature_log=[],
                                 at=NOW + timedelta(hours=1))
    assert f1.excursion == ("no temperature readings: the cold chain of a frozen box (at "
                            "most -15 °C) cannot be shown")
    assert r1.excursion == ""
    assert "F-1 temperature excursion" in specimen(db, cold[0]).hold_reason


def test_out_of_order_scans_are_refused_and_change_nothing(db: Database) -> None:
    (acc,) = add_order(db)
    (uncollected,) = add_order(db, collected_at=None)
    (b_tube,) = add_order(db, site="county-b")

    def events() -> int:
        with db.session() as s:
            return int(s.scalar(select(func.count()).select_from(LabCustodyEvent)) or 0)

    before = events()
    with db.session() as s, pytest.raises(InvalidTransition,
                                          match="collected -> on_analyzer is not allowed"):
        custody.scan(s, acc, "on_analyzer", actor="tech")
    with db.session() as s, pytest.raises(InvalidTransition, match="ordered -> packed"):
        custody.pack_box(s, site_id="county-a", box_code="B1",
                         accessions=[acc, uncollected], condition="room", actor="x", at=NOW)
    with db.session() as s, pytest.raises(InvalidInput, match=r"L\d+ is not from site county-a"):
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[acc, b_tube],
                         condition="room", actor="x", at=NOW)
    with db.session() as s, pytest.raises(InvalidInput, match="unknown storage condition"):
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[acc],
                         condition="warm", actor="x", at=NOW)
    with db.session() as s, pytest.raises(NotFound, match="no specimen with accession 'L9'"):
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[acc, "L9"],
                         condition="room", actor="x", at=NOW)
    with db.session() as s, pytest.raises(InvalidInput, match=r"'rejected' is not a step a "
                                                              r"scan records.*reject with a code"):
        custody.scan(s, acc, "rejected", actor="tech")
    with db.session() as s, pytest.raises(InvalidInput, match="'teleported' is not a step"):
        custody.scan(s, acc, "teleported", actor="tech")
    with db.session() as s, pytest.raises(InvalidInput, match="location is longer than 128"):
        custody.scan(s, acc, "received", actor="tech", location="x" * 129)
    with db.session() as s, pytest.raises(InvalidInput, match="temperature nan is not"):
        custody.scan(s, acc, "received", actor="tech", temperature_c=float("nan"))
    # Time order: a scan timed before the tube's last scan is refused.
    with db.session() as s, pytest.raises(Conflict, match=r"a received scan at .* is before its "
                                                          r"last scan"):
        custody.scan(s, acc, "received", actor="tech", at=NOW - timedelta(hours=2))
    assert events() == before
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LabShipment)) == 0
        assert custody.find_specimen(s, acc).shipment_id is None

    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[acc],
                         condition="room", actor="x", at=NOW + timedelta(minutes=5))
    with db.session() as s, pytest.raises(Conflict, match="box B1 already exists"):
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[b_tube],
                         condition="room", actor="x", at=NOW)
    with db.session() as s:
        custody.receive_box(s, "B1", actor="tech", temperature_log=readings(NOW, [20.0]),
                            at=NOW + timedelta(hours=1))
    with db.session() as s, pytest.raises(InvalidTransition, match="shipment: received -> "
                                                                   "in_transit"):
        custody.courier_pickup(s, "B1", actor="driver", courier="X")
    with db.session() as s, pytest.raises(InvalidTransition, match="received -> received"):
        custody.receive_box(s, "B1", actor="tech", temperature_log=[])
    with db.session() as s, pytest.raises(NotFound, match="no shipment box 'B2'"):
        custody.receive_box(s, "B2", actor="tech", temperature_log=[])
    with db.session() as s, pytest.raises(InvalidTransition, match="accessioned -> disposed"):
        custody.scan(s, acc, "disposed", actor="tech", at=NOW + timedelta(hours=2))
    with db.session() as s:
        custody.scan(s, acc, "stored", actor="tech", at=NOW + timedelta(hours=2))
        custody.scan(s, acc, "disposed", actor="tech", at=NOW + timedelta(hours=2))
    with db.session() as s, pytest.raises(InvalidTransition, match="disposed -> on_analyzer"):
        custody.scan(s, acc, "on_analyzer", actor="tech", at=NOW + timedelta(hours=3))


def test_a_bad_temperature_log_is_refused_whole(db: Database) -> None:
    (acc,) = add_order(db)
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="B1", accessions=[acc],
                         condition="room", actor="x", at=NOW)
    for log, message in [
        ([(NOW, 20.0), (NOW.replace(tzinfo=None), 21.0)], r"reading #2: time .* timezone"),
        ([(NOW, float("nan"))], r"reading #1 at .*: nan is not a temperature"),
        ([(NOW, 400.0)], r"reading #1 .*: 400.0 is not a temperature"),
        ([(NOW + timedelta(hours=5), 20.0)], r"reading at .* is after the receipt"),
    ]:
        with db.session() as s, pytest.raises(InvalidInput, match=message):
            custody.receive_box(s, "B1", actor="tech", temperature_log=log,
                                at=NOW + timedelta(hours=1))
    with db.session() as s:
        box = custody.find_shipment(s, "B1")
        assert (box.state, box.temperature_log, box.excursion) == ("packed", [], "")
    assert steps(db, acc)[-1] == "packed"


def test_a_coded_rejection_rejects_open_results_and_goes_back_to_the_site(
        db: Database) -> None:
    (acc,) = add_order(db, tests=("K", "NA", "GLU"))
    with db.session() as s:
        custody.scan(s, acc, "received", actor="tech", at=NOW + timedelta(hours=1))
        custody.scan(s, acc, "accessioned", actor="tech", at=NOW + timedelta(hours=1))
    with db.session() as s, pytest.raises(InvalidInput, match="unknown rejection code 'dirty': "
                                                              "use one of hemolysed, clotted"):
        custody.reject_specimen(s, acc, "dirty", actor="tech")
    with db.session() as s:
        custody.reject_specimen(s, acc, "hemolysed", actor="tech.zhou", note="pink serum",
                                at=NOW + timedelta(hours=1, minutes=5))
    with db.session() as s:
        tube = custody.find_specimen(s, acc)
        assert (tube.state, tube.rejection_code, tube.rejection_note) == (
            "rejected", "hemolysed", "pink serum")
        results = s.scalars(select(LabResult).where(LabResult.specimen_id == tube.id)).all()
        assert {r.state for r in results} == {"rejected"}
        assert {r.review_reason for r in results} == {
            custody.REJECTION_CODES["hemolysed"] + ": pink serum"}
        # The rejection went back to the site: an ORU with status X and the coded reason.
        message = s.get(OutboundMessage, results[0].message_id)
        assert message is not None and message.site_id == "county-a"
        assert message.kind == "lab-rejection"
        obx = [seg for seg in message.body.split("\r") if seg.startswith("OBX|")]
        assert len(obx) == 3 and all(seg.split("|")[11] == "X" for seg in obx)
        assert f"Specimen {acc} rejected (hemolysed): pink serum" in message.body
        timeline = custody.specimen_timeline(s, tube.id)
        assert timeline[-1]["step"] == "rejected"
        assert timeline[-1]["detail"] == {"code": "hemolysed",
                                          "reason": custody.REJECTION_CODES["hemolysed"],
                                          "note": "pink serum"}
        rejected = s.scalars(select(AuditRecord).where(
            AuditRecord.action == "lab.specimen_reject")).one()
        assert rejected.object_id == acc and rejected.detail["code"] == "hemolysed"
        assert sorted(rejected.detail["results"]) == sorted(r.id for r in results)
        assert audit.verify(s).ok
    # A rejected tube may only be disposed of.
    with db.session() as s, pytest.raises(InvalidTransition, match="rejected -> on_analyzer"):
        custody.scan(s, acc, "on_analyzer", actor="tech", at=NOW + timedelta(hours=2))
    with db.session() as s:
        custody.scan(s, acc, "disposed", actor="tech", at=NOW + timedelta(hours=2))


def test_a_tube_with_released_results_cannot_be_rejected(db: Database) -> None:
    (acc,) = add_order(db)
    with db.session() as s:
        custody.scan(s, acc, "received", actor="tech", at=NOW + timedelta(hours=1))
        custody.scan(s, acc, "accessioned", actor="tech", at=NOW + timedelta(hours=1))
        tube = custody.find_specimen(s, acc)
        k = s.scalars(select(LabResult).where(LabResult.specimen_id == tube.id,
                                              LabResult.test_code == "K")).one()
        k.state, k.value = "autoverified", 4.1
    with db.session() as s, pytest.raises(Conflict, match="results K were already released"):
        custody.reject_specimen(s, acc, "clotted", actor="tech")
    assert specimen(db, acc).state == "accessioned"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def rdc(*args: str) -> Ran:
    """``rdc ARGS`` in this process (the settings are the ``env_center``'s)."""
    from typer.testing import CliRunner

    from rdc.cli import app

    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    # stderr's console wraps at 80 columns: compare its words.
    return Ran(r.exit_code, r.stdout, " ".join(r.stderr.split()))


def test_the_custody_commands(env_center: Center, tmp_path: Path) -> None:
    center = env_center
    with center.db.session() as s:
        add_site(s, SiteSpec(id="county-a", name="A", ae_title="COUNTY_A", host="127.0.0.1",
                             port=104, allowed_addresses=("127.0.0.1",)), actor="test")
    a1, a2 = add_order(center.db, tests=("NA", "CREA"), specimens=2, condition="refrigerated")

    def at(hours: float) -> str:
        return (NOW + timedelta(hours=hours)).isoformat()

    r = rdc("lab", "box", "pack", "BX-9", a1, a2, "--site", "county-a",
                   "--condition", "refrigerated", "--by", "nurse.li", "--at", at(0.5))
    assert r.returncode == 0, r.stderr
    assert "box BX-9 packed (refrigerated) with 2 tube(s)" in r.stdout
    r = rdc("lab", "box", "pickup", "BX-9", "--courier", "County Express",
                   "--at", at(0.1))
    assert r.returncode == 4 and "before its last scan" in r.stderr, r.stderr
    r = rdc("lab", "box", "pickup", "BX-9", "--courier", "County Express",
                   "--by", "driver.wu", "--at", at(1))
    assert r.returncode == 0, r.stderr
    log = tmp_path / "logger.csv"
    log.write_text("time,temperature_c\n" + "".join(
        f"{at(1 + i / 4)},{t}\n" for i, t in enumerate([4.5, 5.0, 12.5, 6.0])), encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"time,temperature_c\n{at(1)},4.0\n2026-12-01 09:00,5.0\n", encoding="utf-8")
    r = rdc("lab", "box", "receive", "BX-9", "--log", str(bad), "--at", at(3))
    assert r.returncode == 2, r.stderr
    assert "bad.csv:3: time '2026-12-01 09:00' has no UTC offset" in r.stderr
    r = rdc("lab", "box", "receive", "BX-9", "--log", str(log), "--by", "tech.zhou",
                   "--at", at(3))
    assert r.returncode == 0, r.stderr
    assert "box BX-9 received: 4 reading(s), 2 tube(s)" in r.stdout
    assert "1 of 4 readings outside 2 to 8 °C" in r.stdout
    assert f"{a1}: HELD — box BX-9 temperature excursion" in r.stdout

    r = rdc("lab", "scan", a1, "disposed", "--at", at(4))
    assert r.returncode == 4 and "accessioned -> disposed is not allowed" in r.stderr
    r = rdc("lab", "scan", a1, "on_analyzer", "--location", "CHEM1", "--by", "tech.ma",
                   "--at", at(4))
    assert r.returncode == 0 and "held:" in r.stdout, r.stderr
    r = rdc("lab", "scan", a1, "stored", "--temperature", "4", "--at", at(5))
    assert r.returncode == 0, r.stderr
    r = rdc("lab", "reject", a2, "--code", "dirty")
    assert r.returncode == 2 and "unknown rejection code 'dirty'" in r.stderr
    r = rdc("lab", "reject", a2, "--code", "clotted", "--note", "clots seen",
                   "--at", at(4))
    assert r.returncode == 0 and f"{a2} rejected (clotted)" in r.stdout, r.stderr

    r = rdc("lab", "timeline", a1, "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert [e["step"] for e in view["events"]] == [
        "ordered", "collected", "packed", "courier", "received", "accessioned", "on_analyzer",
        "stored"]
    assert view["events"][-1]["temperature_c"] == 4.0
    assert view["hold_reason"].startswith("box BX-9 temperature excursion")
    r = rdc("lab", "timeline", a1)
    assert r.returncode == 0 and "tech.ma" in r.stdout and "CHEM1" in r.stdout
    r = rdc("lab", "box-timeline", "BX-9", "--json")
    box = json.loads(r.stdout)
    assert [x["in_range"] for x in box["temperature_log"]] == [True, True, False, True]
    assert [(t["accession"], t["rejection_code"]) for t in box["specimens"]] == [
        (a1, None), (a2, "clotted")]
    r = rdc("lab", "box-timeline", "BX-9")
    assert r.returncode == 0 and "out of range" in r.stdout and "rejected (clotted)" in r.stdout
    r = rdc("lab", "box-timeline", "NOPE")
    assert r.returncode == 3 and "no shipment box 'NOPE'" in r.stderr

    pdf = tmp_path / "labels.pdf"
    r = rdc("lab", "label", a1, a2, "--out", str(pdf))
    assert r.returncode == 0 and "2 label(s) written" in r.stdout, r.stderr
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.read_bytes().count(b"/Type /Page\n") == 2
    with center.db.session() as s:
        assert audit.verify(s).ok
