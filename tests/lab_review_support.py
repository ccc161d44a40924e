"""Rows for the lab review/sign/results-out tests: a site, an order, its specimen and
results, inserted directly (as lab.orders and lab.results_in would leave them), so the
tests of the results leg do not depend on the order intake's wire formats."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from conftest import Center
from core.models import LabOrder, LabResult, LabRun, LabSpecimen, Site
from core.sites import SiteSpec, add_site
from lab.catalog import get_catalog

PASSPHRASE = "lab reviewer passphrase 1"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
_serial = itertools.count(1)


def make_site(center: Center, site_id: str = "county-a", *, hl7_port: int | None = None,
              accepts_results: bool = True) -> None:
    """A county site; with ``hl7_port`` it takes results over HL7 at 127.0.0.1."""
    n = next(_serial)
    with center.db.session() as s:
        add_site(s, SiteSpec(
            id=site_id, name=f"{site_id} hospital", ae_title=f"LABSITE{n}", host="127.0.0.1",
            port=11199, allowed_addresses=("127.0.0.1/32",), accepts_results=accepts_results,
            hl7_host="127.0.0.1" if hl7_port else None, hl7_port=hl7_port,
            result_formats=("hl7",) if hl7_port else ()), actor="test")


@dataclass(frozen=True)
class Measured:
    """One result to create: test code, value (None: not measured) and its verdict."""

    code: str
    value: float | None
    state: str = "held"
    flag: str = ""
    critical: bool = False
    value_text: str = ""
    qc_hold: str = ""
    rules: tuple[str, ...] = ()
    measured_at: datetime | None = None


def make_order(s: Session, results: list[Measured], *, site_id: str = "county-a",
               patient_id: str = "P001", patient_name: str = "张^三", sex: str = "M",
               birth_date: str = "19600101", visit: str = "V1",
               collected_at: datetime = T0, run: LabRun | None = None,
               hil: dict[str, Any] | None = None, hold_reason: str = "",
               ) -> tuple[LabOrder, LabSpecimen, list[LabResult]]:
    """One order with one specimen and the given results, flushed."""
    n = next(_serial)
    catalog = get_catalog()
    order = LabOrder(site_id=site_id, placer_order_number=f"PO-{n}",
                     filler_order_number=f"LAB-F{n:06d}", patient_id=patient_id,
                     patient_name=patient_name, sex=sex, birth_date=birth_date,
                     visit_number=visit, ordering_provider="Dr. Li", priority="routine",
                     state="in_progress")
    s.add(order)
    s.flush()
    specimen = LabSpecimen(order_id=order.id, accession=f"L{n:08d}", site_specimen_id=f"S-{n}",
                           specimen_type="serum", collected_at=collected_at, condition="room",
                           spun=True, state="on_analyzer", hil=hil or {},
                           hold_reason=hold_reason)
    s.add(specimen)
    s.flush()
    rows = []
    for m in results:
        test = catalog.test(m.code)
        rng = test.reference_range(sex, 60.0)
        row = LabResult(
            order_id=order.id, specimen_id=specimen.id, site_id=site_id, patient_id=patient_id,
            test_code=m.code, loinc=test.loinc, state=m.state, value=m.value,
            value_text=m.value_text or ("" if m.value is None else str(m.value)),
            units=test.units, ref_low=rng.low if rng else None,
            ref_high=rng.high if rng else None, abnormal_flag=m.flag, critical=m.critical,
            analyzer_id="CHEM1", run_id=run.id if run is not None else None,
            measured_at=m.measured_at or collected_at + timedelta(hours=2),
            qc_hold=m.qc_hold, rule_set="autoverify-1",
            rules_fired=[{"rule": r, "message": f"{r} fired", "source": "test",
                          "severity": "hold"} for r in m.rules])
        s.add(row)
        rows.append(row)
    s.flush()
    return order, specimen, rows


def make_run(s: Session, qc_status: dict[str, Any], code: str | None = None) -> LabRun:
    run = LabRun(analyzer_id="CHEM1", run_code=code or f"R{next(_serial)}", state="evaluated",
                 qc_status=qc_status)
    s.add(run)
    s.flush()
    return run


def site_row(s: Session, site_id: str) -> Site:
    site = s.get(Site, site_id)
    assert site is not None
    return site
