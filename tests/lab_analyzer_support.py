"""Rows the analyzer tests start from: a county site, orders with their tubes and ordered
results, as lab.orders would have stored them (written directly, so the analyzer tests
stand on the lab's tables alone)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Database
from core.models.lab import LabControlLot, LabOrder, LabResult, LabRun, LabSpecimen
from core.models.site import Site
from core.settings import Settings
from core.sites import SiteSpec, add_site
from devkit.ports import free_port
from lab import astm_server
from lab.catalog import get_catalog

SITE = "county-a"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def ensure_site(s: Session, site_id: str = SITE) -> None:
    if s.get(Site, site_id) is None:
        add_site(s, SiteSpec(id=site_id, name=site_id.title(), ae_title=site_id.upper()[:16]
                             .replace("-", "_"), host="127.0.0.1", port=11112,
                             allowed_addresses=("127.0.0.1/32",)), actor="test")


def make_order(s: Session, n: int, tests: tuple[str, ...], *, sex: str = "F",
               patient: str | None = None, specimen_type: str = "serum") -> LabSpecimen:
    """One order with one tube (accession L000000<n>) and an ordered result per test."""
    ensure_site(s)
    catalog = get_catalog()
    order = LabOrder(site_id=SITE, placer_order_number=f"P{n}", filler_order_number=f"F{n}",
                     patient_id=patient or f"PAT{n}", patient_name=f"Patient {n}", sex=sex,
                     birth_date="19700101", visit_number=f"V{n}", state="ordered")
    s.add(order)
    s.flush()
    spec = LabSpecimen(order_id=order.id, accession=f"L{n:08d}", specimen_type=specimen_type,
                       collected_at=T0 - timedelta(hours=1), condition="room", spun=True,
                       state="accessioned")
    s.add(spec)
    s.flush()
    for code in tests:
        test = catalog.test(code)
        s.add(LabResult(order_id=order.id, specimen_id=spec.id, site_id=SITE,
                        patient_id=order.patient_id, test_code=code, loinc=test.loinc,
                        units=test.units, state="ordered"))
    s.flush()
    return spec


def make_lot(s: Session, analyzer: str, lot: str, test: str, level: int, mean: float,
             sd: float) -> LabControlLot:
    row = LabControlLot(analyzer_id=analyzer, lot=lot, test_code=test, level=level,
                        mean=mean, sd=sd, active=True)
    s.add(row)
    s.flush()
    return row


@contextmanager
def astm_listener(db: Database, settings: Settings) -> Iterator[int]:
    """lab.astm_server on a free loopback port, in a thread with its own event loop."""
    with serving(lambda port: astm_server.start(db, settings, "127.0.0.1", port)) as port:
        yield port


@contextmanager
def serving(start: Callable[[int], Awaitable[asyncio.Server]]) -> Iterator[int]:
    """An asyncio server (``start(port)``) on a free loopback port, in a thread with its
    own event loop; yields the port."""
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(start(port))
        except BaseException as e:  # reported to the test below
            failure.append(e)
            started.set()
            return
        started.set()
        loop.run_forever()
        server.close()
        # Connections still open (an idle analyzer link) end with the test.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(asyncio.sleep(0.05))  # transports closing
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "the ASTM listener did not start"
    if failure:
        raise failure[0]
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def runs(db: Database) -> list[LabRun]:
    with db.session() as s:
        return list(s.scalars(select(LabRun).order_by(LabRun.id)))
