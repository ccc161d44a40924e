"""Rows for the autoverification tests (tests/test_lab_autoverify.py, test_lab_run_job.py):
a migrated SQLite database with two county sites, and orders/specimens/results made
directly, so each test sets exactly the values, flags, indices and history it judges."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.db import Database, get_database
from core.models.lab import LabOrder, LabResult, LabRun, LabSpecimen
from core.sites import SiteSpec, add_site
from lab.catalog import get_catalog

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SITES = ("county-a", "county-b")
_counter = iter(range(1, 10_000_000))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """SQLite, with the two sites."""
    yield from _database(f"sqlite:///{tmp_path / 'lab.sqlite3'}")


@pytest.fixture(params=["sqlite", "postgres"])
def db_any(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: str
           ) -> Iterator[Database]:
    """SQLite and PostgreSQL (the batch query's row-value IN on both)."""
    from conftest import _create_pg_database, _drop_pg_database

    if request.param == "sqlite":
        yield from _database(f"sqlite:///{tmp_path / 'lab.sqlite3'}")
        return
    name, url = _create_pg_database(pg_admin)
    try:
        yield from _database(url)
    finally:
        _drop_pg_database(pg_admin, name)


def _database(url: str) -> Iterator[Database]:
    database = get_database(url)
    with database.session() as s:
        for site in SITES:
            add_site(s, SiteSpec(id=site, name=f"{site} hospital", ae_title=site.upper(),
                                 host="127.0.0.1", port=104, allowed_addresses=("127.0.0.1",)),
                     actor="test")
    yield database
    database.dispose()
    get_database.cache_clear()


def add_run(s: object, analyzer: str = "CHEM1") -> LabRun:
    from sqlalchemy.orm import Session
    assert isinstance(s, Session)
    run = LabRun(analyzer_id=analyzer, run_code=f"R{next(_counter)}", state="received")
    s.add(run)
    s.flush()
    return run


def add_specimen(s: object, values: Mapping[str, float | None], *, patient: str = "P1",
                 site: str = "county-a", sex: str = "F", birth: str = "19700101",
                 state: str = "pending", run: LabRun | None = None,
                 at: datetime = NOW, hil: dict[str, float] | None = None,
                 hold: str = "", flags: dict[str, list[str]] | None = None,
                 ) -> list[LabResult]:
    """One order with one specimen and one result per test code, in ``state``."""
    from sqlalchemy.orm import Session
    assert isinstance(s, Session)
    n = next(_counter)
    catalog = get_catalog()
    order = LabOrder(site_id=site, placer_order_number=f"PO{n}", filler_order_number=f"F{n}",
                     patient_id=patient, patient_name=f"DOE^{patient}", sex=sex,
                     birth_date=birth, state="in_progress")
    s.add(order)
    s.flush()
    spec = LabSpecimen(order_id=order.id, accession=f"L{n:08d}", specimen_type="serum",
                       collected_at=at - timedelta(hours=1), hil=hil or {},
                       hold_reason=hold, state="on_analyzer")
    s.add(spec)
    s.flush()
    results = []
    for code, value in values.items():
        test = catalog.tests[code]
        r = LabResult(order_id=order.id, specimen_id=spec.id, site_id=site,
                      patient_id=patient, test_code=code, loinc=test.loinc, state=state,
                      value=value, value_text="" if value is not None else "****",
                      units=test.units, measured_at=at, analyzer_id="CHEM1",
                      run_id=run.id if run is not None else None,
                      instrument_flags=(flags or {}).get(code, []))
        s.add(r)
        results.append(r)
    s.flush()
    return results
