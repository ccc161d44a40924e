"""Stability timers with a fake clock: each window just inside and just past, unspun
against spun, frozen, a tube that travelled in a colder or warmer box than it was kept
in, a missing collection time (held with a clear reason), and the temperature ranges of
each box condition at their edges."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import test_lab_custody as shared
from sqlalchemy import select
from test_lab_custody import NOW, add_order, readings

from core.db import Database
from core.errors import InvalidInput
from core.models import AuditRecord, LabResult
from lab import custody
from lab.catalog import get_catalog
from lab.stability import (
    apply_holds,
    recheck_waiting,
    specimen_hold_reasons,
    stability_deadline,
    stability_hours,
    temperature_excursion,
)

CAT = get_catalog()
K, GLU, HGB, HCO3 = CAT.test("K"), CAT.test("GLU"), CAT.test("HGB"), CAT.test("HCO3")
SECOND = timedelta(seconds=1)


def until(hours: float) -> str:
    """The end of a past-stability reason for a tube collected at NOW."""
    return (f"; collected 2026-12-01 08:00 UTC, stable until "
            f"{NOW + timedelta(hours=hours):%Y-%m-%d %H:%M} UTC")


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from shared.make_db(request, tmp_path)


def reasons(db: Database, accession: str, at_h: float, *, extra: timedelta = timedelta(0),
            ) -> list[str]:
    with db.session() as s:
        tube = custody.find_specimen(s, accession)
        return specimen_hold_reasons(s, tube, NOW + timedelta(hours=at_h) + extra)


def test_hours_per_condition_and_separation() -> None:
    assert stability_hours(K, "room", spun=False) == 4
    assert stability_hours(K, "room", spun=True) == 168
    assert stability_hours(K, "refrigerated", spun=False) == 0  # cold unspun K leaks out
    assert stability_hours(K, "frozen", spun=True) == 8760
    # Serum must be separated before freezing: a frozen unspun tube is not stable.
    assert stability_hours(K, "frozen", spun=False) == 0
    assert stability_hours(HGB, "room", spun=False) == 48
    assert stability_hours(HGB, "room", spun=True) == 0
    assert stability_hours(HGB, "frozen", spun=True) == 0
    assert stability_deadline(GLU, NOW, "room", spun=False) == NOW + timedelta(hours=1)
    assert stability_deadline(K, NOW, "refrigerated", spun=True) == NOW + timedelta(hours=168)
    with pytest.raises(InvalidInput, match="unknown storage condition 'warm'"):
        stability_hours(K, "warm", spun=True)


def test_an_unspun_tube_just_inside_and_just_past_its_window(db: Database) -> None:
    (acc,) = add_order(db, tests=("K", "NA", "GLU"), spun=False)
    # Glucose keeps 1 h unspun at room temperature, potassium 4 h, sodium 8 h.
    assert reasons(db, acc, 1) == []
    assert reasons(db, acc, 1, extra=SECOND) == [
        "past stability: GLU (Glucose) keeps 1 h room, unspun" + until(1)]
    assert reasons(db, acc, 4) == [
        "past stability: GLU (Glucose) keeps 1 h room, unspun" + until(1)]
    assert reasons(db, acc, 4, extra=SECOND) == [
        "past stability: K (Potassium) keeps 4 h room, unspun" + until(4),
        "past stability: GLU (Glucose) keeps 1 h room, unspun" + until(1)]
    assert len(reasons(db, acc, 8)) == 2
    assert len(reasons(db, acc, 8, extra=SECOND)) == 3


def test_a_spun_tube_keeps_far_longer(db: Database) -> None:
    (acc,) = add_order(db, tests=("K", "NA", "GLU"), spun=True)
    assert reasons(db, acc, 48) == []
    assert reasons(db, acc, 48, extra=SECOND) == [
        "past stability: GLU (Glucose) keeps 48 h room, spun" + until(48)]
    assert len(reasons(db, acc, 168)) == 1
    assert reasons(db, acc, 168, extra=SECOND)[:2] == [
        "past stability: K (Potassium) keeps 168 h room, spun" + until(168),
        "past stability: NA (Sodium) keeps 168 h room, spun" + until(168)]


def test_frozen_and_refrigerated_tubes(db: Database) -> None:
    (frozen,) = add_order(db, tests=("K", "CREA"), condition="frozen", spun=True)
    assert reasons(db, frozen, 8760) == []
    assert reasons(db, frozen, 8760, extra=SECOND) == [
        "past stability: K (Potassium) keeps 8760 h frozen, spun" + until(8760),
        "past stability: CREA (Creatinine) keeps 8760 h frozen, spun" + until(8760)]
    (unspun_frozen,) = add_order(db, tests=("K",), condition="frozen", spun=False)
    assert reasons(db, unspun_frozen, 0) == ["K (Potassium) is not stable frozen, unspun"]
    (cold_unspun,) = add_order(db, tests=("K", "NA"), condition="refrigerated", spun=False)
    # Refrigerated unspun: potassium not at all, sodium 24 h.
    assert reasons(db, cold_unspun, 24) == [
        "K (Potassium) is not stable refrigerated, unspun"]
    assert reasons(db, cold_unspun, 24, extra=SECOND)[1] == (
        "past stability: NA (Sodium) keeps 24 h refrigerated, unspun" + until(24))
    (spun_blood,) = add_order(db, tests=("HGB",), spun=True)
    assert reasons(db, spun_blood, 0) == ["HGB (Hemoglobin) is not stable room, spun"]


def test_a_tube_shipped_in_another_condition_gets_the_shorter_window(db: Database) -> None:
    # Kept at room temperature (HCO3 24 h spun), shipped refrigerated (72 h): 24 h counts.
    (acc,) = add_order(db, tests=("HCO3",), condition="room", spun=True)
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="C1", accessions=[acc],
                         condition="refrigerated", actor="nurse", at=NOW)
        custody.receive_box(s, "C1", actor="tech", temperature_log=readings(NOW, [4.0, 5.0]),
                            at=NOW + timedelta(hours=1))
    assert reasons(db, acc, 24) == []
    assert reasons(db, acc, 24, extra=SECOND) == [
        "past stability: HCO3 (Carbon dioxide, total (bicarbonate)) keeps 24 h room, spun"
        + until(24)]


def test_a_test_the_catalog_no_longer_has_is_held_not_crashed(db: Database) -> None:
    (acc,) = add_order(db, tests=("K",))
    with db.session() as s:
        tube = custody.find_specimen(s, acc)
        s.add(LabResult(order_id=tube.order_id, specimen_id=tube.id, site_id="county-a",
                        patient_id="P100", test_code="OLDX", state="ordered"))
        s.flush()
        assert specimen_hold_reasons(s, tube, NOW) == [
            f"OLDX is not in the lab catalog {CAT.version}: its stability cannot be judged"]


def test_a_tube_its_box_does_not_keep_is_held_when_packed(db: Database) -> None:
    (acc,) = add_order(db, tests=("K", "NA"), condition="room", spun=False)
    with db.session() as s:
        custody.pack_box(s, site_id="county-a", box_code="COLD", accessions=[acc],
                         condition="refrigerated", actor="nurse", at=NOW)
        assert custody.find_specimen(s, acc).hold_reason == (
            "K (Potassium) is not stable refrigerated, unspun")


def test_a_tube_without_collection_time_is_held(db: Database) -> None:
    (acc,) = add_order(db, collected_at=None)
    assert reasons(db, acc, 0) == [
        "no collection time: the stability of the specimen cannot be judged"]
    with db.session() as s:
        tube = custody.find_specimen(s, acc)
        assert apply_holds(s, tube, NOW, actor="tech").startswith("no collection time")
    # The collection scan at the bedside gives the time; the timers run from it.
    with db.session() as s:
        custody.scan(s, acc, "collected", actor="nurse", at=NOW + timedelta(minutes=5))
        tube = custody.find_specimen(s, acc)
        assert tube.collected_at == NOW + timedelta(minutes=5)
        custody.scan(s, acc, "received", actor="tech", at=NOW + timedelta(hours=1))
        assert tube.hold_reason == ""
    assert reasons(db, acc, 168, extra=timedelta(minutes=5)) == []
    assert reasons(db, acc, 168, extra=timedelta(minutes=5) + SECOND)[0].startswith(
        "past stability: K (Potassium) keeps 168 h room, spun")


def test_apply_holds_sets_clears_and_audits_each_change(db: Database) -> None:
    (acc,) = add_order(db, tests=("K", "GLU"), spun=False)
    with db.session() as s:
        tube = custody.find_specimen(s, acc)
        assert apply_holds(s, tube, NOW + timedelta(minutes=30), actor="tech") == ""
        held = apply_holds(s, tube, NOW + timedelta(hours=2), actor="tech")
        assert held == "past stability: GLU (Glucose) keeps 1 h room, unspun" + until(1)
        assert tube.hold_reason == held
        # Same verdict: no new audit record.
        assert apply_holds(s, tube, NOW + timedelta(hours=2), actor="tech") == held
        # The glucose is rejected (not measured): the potassium alone is judged.
        s.scalars(select(LabResult).where(LabResult.specimen_id == tube.id,
                                          LabResult.test_code == "GLU")).one().state = "rejected"
        assert apply_holds(s, tube, NOW + timedelta(hours=2), actor="tech") == ""
        records = s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.specimen_hold",
                                                      AuditRecord.object_id == acc)
                            .order_by(AuditRecord.seq)).all()
        assert [(r.detail["hold_reason"], r.detail["previous"]) for r in records] == [
            (held, ""), ("", held)]


def test_a_scan_onto_the_analyzer_checks_the_window_again(db: Database) -> None:
    (acc,) = add_order(db, tests=("K",), spun=False)
    with db.session() as s:
        custody.scan(s, acc, "received", actor="tech", at=NOW + timedelta(hours=1))
        custody.scan(s, acc, "accessioned", actor="tech", at=NOW + timedelta(hours=1))
        assert custody.find_specimen(s, acc).hold_reason == ""
        custody.scan(s, acc, "on_analyzer", actor="tech", location="CHEM1",
                     at=NOW + timedelta(hours=5))
        assert custody.find_specimen(s, acc).hold_reason == (
            "past stability: K (Potassium) keeps 4 h room, unspun" + until(4))


@pytest.mark.parametrize(("condition", "temps", "outside"), [
    ("room", [15.0, 25.0], 0), ("room", [14.9, 20.0], 1), ("room", [25.1], 1),
    ("refrigerated", [2.0, 8.0], 0), ("refrigerated", [1.9, 8.1, 5.0], 2),
    ("frozen", [-80.0, -15.0], 0), ("frozen", [-20.0, -14.5], 1),
])
def test_temperature_ranges_at_their_edges(condition: str, temps: list[float],
                                           outside: int) -> None:
    found = temperature_excursion(condition, readings(NOW, temps))
    if outside:
        assert found.startswith(f"{outside} of {len(temps)} readings outside "), found
    else:
        assert found == ""


def test_the_periodic_recheck_holds_a_tube_that_expires_while_it_waits(db: Database) -> None:
    (waiting,) = add_order(db, tests=("K",), spun=False)
    (measured,) = add_order(db, tests=("K",), spun=False)
    (at_site,) = add_order(db, tests=("K",), spun=False)
    with db.session() as s:
        for acc in (waiting, measured):
            custody.scan(s, acc, "received", actor="tech", at=NOW + timedelta(hours=1))
            custody.scan(s, acc, "accessioned", actor="tech", at=NOW + timedelta(hours=1))
        tube = custody.find_specimen(s, measured)
        s.scalars(select(LabResult).where(LabResult.specimen_id == tube.id)).one().state = (
            "autoverified")
    with db.session() as s:
        assert recheck_waiting(s, None, NOW + timedelta(hours=4)) == []
    with db.session() as s:
        assert recheck_waiting(s, None, NOW + timedelta(hours=4) + SECOND) == [waiting]
        # Run again: nothing new to say.
        assert recheck_waiting(s, None, NOW + timedelta(hours=5)) == []
    with db.session() as s:
        assert custody.find_specimen(s, waiting).hold_reason == (
            "past stability: K (Potassium) keeps 4 h room, unspun" + until(4))
        assert custody.find_specimen(s, measured).hold_reason == ""
        assert custody.find_specimen(s, at_site).hold_reason == ""
        record = s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.specimen_hold",
                                                     AuditRecord.object_id == waiting)).one()
        assert record.actor == "scheduler"
