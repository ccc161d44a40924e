"""Stability timers and temperature excursions: may this tube still be analysed?

A specimen is stable for the catalog's hours from *collection*, per storage condition and
whether it was spun (separated).  A tube that spent time in more than one condition (kept
at room temperature at the site, then shipped in a refrigerated box) gets the shortest of
their windows: the lab cannot know how long each leg took, and a result from a tube past
its window is wrong in a way no rule on the value can see (an unspun potassium rises, an
unspun glucose falls).  Serum or plasma must be separated before it is frozen, so a frozen
unspun tube is not stable at all.

A shipment box's logger readings are checked against its condition's range; a box that
left it holds every specimen in it.  The holds are written on the specimen
(``hold_reason``); the autoverification engine holds the results of such a specimen.
Every time function takes ``now`` so tests drive a fake clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import InvalidInput
from core.models import LabResult, LabShipment, LabSpecimen
from core.settings import Settings
from lab.catalog import CONDITIONS, Test, get_catalog
from lab.states import CustodyStep, ResultState

#: The temperature each box condition must stay within (°C; None: no bound).
TEMPERATURE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "room": (15.0, 25.0),
    "refrigerated": (2.0, 8.0),
    "frozen": (None, -15.0),
}


def check_condition(condition: str) -> str:
    if condition not in CONDITIONS:
        raise InvalidInput(f"unknown storage condition {condition!r}: use one of "
                           f"{', '.join(CONDITIONS)}")
    return condition


def stability_hours(test: Test, condition: str, spun: bool) -> float:
    """Hours the specimen for ``test`` keeps in ``condition``; 0 = not stable that way."""
    check_condition(condition)
    if condition == "frozen":
        return test.stability["frozen"] if spun else 0.0
    return test.stability[f"{condition}_{'spun' if spun else 'unspun'}"]


def stability_deadline(test: Test, collected_at: datetime, condition: str,
                       spun: bool) -> datetime:
    """The last moment the specimen may be analysed (collection + the window)."""
    return collected_at + timedelta(hours=stability_hours(test, condition, spun))


def _minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _how(condition: str, spun: bool) -> str:
    return f"{condition}, {'spun' if spun else 'unspun'}"


def temperature_excursion(condition: str, readings: Sequence[tuple[datetime, float]]) -> str:
    """"" when every reading is within the condition's range, else what went wrong.

    No readings at all is fine for a room-temperature box (sites do not log those) but an
    excursion for a refrigerated or frozen one: its cold chain cannot be shown.
    """
    low, high = TEMPERATURE_RANGES[check_condition(condition)]
    span = (f"{low:g} to {high:g} °C" if low is not None and high is not None
            else f"at most {high:g} °C")
    if not readings:
        return "" if condition == "room" else (
            f"no temperature readings: the cold chain of a {condition} box ({span}) "
            "cannot be shown")
    outside = [(at, t) for at, t in sorted(readings)
               if (low is not None and t < low) or (high is not None and t > high)]
    if not outside:
        return ""
    def how_far(reading: tuple[datetime, float]) -> float:
        below = low - reading[1] if low is not None else 0.0
        above = reading[1] - high if high is not None else 0.0
        return max(below, above)

    worst = max(outside, key=how_far)
    return (f"{len(outside)} of {len(readings)} readings outside {span} for a {condition} "
            f"box, from {outside[0][0].isoformat()} to {outside[-1][0].isoformat()}; "
            f"worst {worst[1]:g} °C at {worst[0].isoformat()}")


def specimen_hold_reasons(session: Session, specimen: LabSpecimen,
                          now: datetime | None = None) -> list[str]:
    """Why the specimen may not be analysed as it is: no collection time, a test past
    its window (naming the test and the hours), or its box's temperature excursion."""
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    shipment = (session.get(LabShipment, specimen.shipment_id)
                if specimen.shipment_id is not None else None)
    if specimen.collected_at is None:
        reasons.append("no collection time: the stability of the specimen cannot be judged")
    else:
        conditions = [specimen.condition]
        if shipment is not None and shipment.condition != specimen.condition:
            conditions.append(shipment.condition)
        catalog = get_catalog()
        codes = session.scalars(
            select(LabResult.test_code).where(LabResult.specimen_id == specimen.id,
                                              LabResult.state != ResultState.REJECTED)
            .order_by(LabResult.id)).all()
        elapsed_h = (now - specimen.collected_at).total_seconds() / 3600
        for code in codes:
            test = catalog.tests.get(code)
            if test is None:  # the catalog changed since the order: nothing to judge by
                reasons.append(f"{code} is not in the lab catalog {catalog.version}: its "
                               "stability cannot be judged")
                continue
            hours, condition = min((stability_hours(test, c, specimen.spun), c)
                                   for c in conditions)
            how = _how(condition, specimen.spun)
            if hours <= 0:
                reasons.append(f"{code} ({test.name}) is not stable {how}")
            elif elapsed_h > hours:
                # Fixed facts, not the time since: the reason does not change (and is not
                # audited again) each time it is recomputed.
                until = specimen.collected_at + timedelta(hours=hours)
                reasons.append(f"past stability: {code} ({test.name}) keeps {hours:g} h "
                               f"{how}; collected {_minute(specimen.collected_at)}, stable "
                               f"until {_minute(until)}")
    if shipment is not None and shipment.excursion:
        reasons.append(f"box {shipment.box_code} temperature excursion: {shipment.excursion}")
    return reasons


def apply_holds(session: Session, specimen: LabSpecimen, now: datetime | None = None,
                *, actor: str = "lab") -> str:
    """Set ``specimen.hold_reason`` ("" when the specimen is fine); audit a change."""
    reason = "; ".join(specimen_hold_reasons(session, specimen, now))
    if reason != specimen.hold_reason:
        previous = specimen.hold_reason
        specimen.hold_reason = reason
        session.flush()
        audit.append(session, actor=actor, action="lab.specimen_hold", object_type="lab_specimen",
                     object_id=specimen.accession,
                     detail={"hold_reason": reason, "previous": previous,
                             "at": (now or datetime.now(UTC)).isoformat()})
    return reason


#: The periodic re-check's name and interval (core.scheduler.register_periodic).
RECHECK_TASK = "lab.stability_recheck"
RECHECK_S = 300.0
#: Tubes at the center that may still be put on an analyzer.
_WAITING = (CustodyStep.RECEIVED, CustodyStep.ACCESSIONED, CustodyStep.ALIQUOTED,
            CustodyStep.STORED, CustodyStep.ON_ANALYZER)


def recheck_waiting(session: Session, settings: Settings | None = None,
                    now: datetime | None = None) -> list[str]:
    """Periodic: a tube waiting at the center passes its window while it waits, with no
    scan to notice; hold it before it is analysed.  Only tubes with a test still to
    measure (ordered or rerun) are looked at.  Returns the accessions whose hold changed."""
    del settings  # the scheduler's signature; the catalog is read through get_catalog()
    now = now or datetime.now(UTC)
    waiting = session.scalars(
        select(LabSpecimen).where(
            LabSpecimen.state.in_([str(s) for s in _WAITING]),
            LabSpecimen.id.in_(select(LabResult.specimen_id).where(
                LabResult.state.in_([ResultState.ORDERED, ResultState.RERUN]))))
        .order_by(LabSpecimen.id)).all()
    changed: list[str] = []
    for specimen in waiting:
        before = specimen.hold_reason
        if apply_holds(session, specimen, now, actor="scheduler") != before:
            changed.append(specimen.accession)
    return changed
