"""The lab part of ``rdc demo``: a county site orders over HL7, its tubes travel to the
center, the analyzers run them, and the results go back to the site over HL7.

1. A county site with an HL7 endpoint is registered; its endpoint is a test receiver
   (devkit.hl7_site.SiteReceiver) that ACKs every ORU and keeps it;
2. the site sends one OML^O21 per patient over MLLP to the lab listener (``rdc up``'s
   ``lab`` child): a serum tube (electrolytes, creatinine, glucose) and an EDTA tube
   (blood count) each;
3. the tubes are packed in a box, picked up by the courier and received at the center
   with the box logger's readings (lab.custody);
4. the simulated analyzers run them over their own protocols (devkit.analyzer_sim):
   the chemistry analyzer over ASTM with a failing potassium control (level 2 at
   +3.5 SD: every K of that run is held) and a critical glucose for one patient, the
   hematology analyzer as ORU^R01 over MLLP;
5. the worker's ``lab_run`` jobs do QC, autoverification, release and the critical
   notice; the ORUs the site received are shown with the ACK recorded on each message.

Every run uses new placer order numbers, so the demo can be run again on the same center.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from core import audit
from core.db import Database, get_database
from core.errors import ConfigurationError
from core.models import (
    AuditRecord,
    Job,
    LabCriticalNotice,
    LabOrder,
    LabResult,
    LabRun,
    LabSpecimen,
    OutboundMessage,
    Site,
)
from core.settings import Settings
from core.sites import SiteSpec, add_site
from devkit.analyzer_sim import ControlFault, CriticalValue, SimOptions, run_analyzer
from devkit.hl7_site import Patient, SiteReceiver, Tube, msa, oml_o21, send_messages
from lab import critical
from lab.catalog import get_catalog
from lab.custody import courier_pickup, pack_box, receive_box
from lab.results_out import format_value

#: The county site of the lab demo: its results come back over HL7 to the test receiver.
LAB_SITE_ID = "demo-lab-county"
LAB_SITE_AE = "DEMO_LAB"
PATIENTS = (
    Patient("LAB-P1", "ZHANG^Wei", "19580412", "M"),
    Patient("LAB-P2", "LI^Na", "19720903", "F"),
    Patient("LAB-P3", "WANG^Fang", "19901120", "F"),
    Patient("LAB-P4", "LIU^Yang", "20090615", "M"),
)
SERUM = ("K", "NA", "CL", "HCO3", "CREA", "GLU")
BLOOD = ("HGB", "WBC", "PLT")
#: The injected faults: the issue's failing control, and a critical value.
FAILING_CONTROL = ControlFault("K", 2, 3.5)
CRITICAL_TEST, CRITICAL_VALUE, CRITICAL_PATIENT = "GLU", 1.8, 1


@dataclass(frozen=True)
class PlacedOrder:
    placer: str
    patient: Patient
    control_id: str
    ack_code: str
    ack_text: str


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _ensure_site(db: Database, receiver_port: int, console: Console) -> None:
    """The lab demo site, its HL7 endpoint pointed at this run's receiver."""
    with db.session() as s:
        site = s.get(Site, LAB_SITE_ID)
        if site is None:
            add_site(s, SiteSpec(
                id=LAB_SITE_ID, name="Demo County Hospital (lab)", ae_title=LAB_SITE_AE,
                host="127.0.0.1", port=11114, allowed_addresses=("127.0.0.1/32", "::1"),
                accepts_results=True, hl7_host="127.0.0.1", hl7_port=receiver_port,
                result_formats=("hl7",)), actor="demo")
            console.print(f"lab: registered site {LAB_SITE_ID!r} with its HL7 endpoint "
                          f"127.0.0.1:{receiver_port} (the demo's receiver)")
            return
        if not site.enabled:
            raise ConfigurationError(f"site {LAB_SITE_ID!r} was removed; pick another home")
        # The receiver listens on a new port each run: point the site's endpoint at it.
        site.hl7_host, site.hl7_port = "127.0.0.1", receiver_port
        site.result_formats = sorted({*site.result_formats, "hl7"})
        audit.append(s, actor="demo", action="site.hl7_endpoint", object_type="site",
                     object_id=site.id, detail={"hl7_host": "127.0.0.1",
                                                "hl7_port": receiver_port})


def place_orders(settings: Settings, console: Console, stamp: str) -> list[PlacedOrder]:
    """One OML^O21 per patient over one MLLP connection; their ACKs."""
    collected = datetime.now(UTC) - timedelta(minutes=50)
    messages: list[tuple[str, Patient, str, str]] = []
    for n, patient in enumerate(PATIENTS, 1):
        placer = f"LD{stamp}-{n}"
        control = f"LDM{stamp}{n}"
        visit = Patient(patient.patient_id, patient.name, patient.birth_date, patient.sex,
                        visit=f"V{stamp}-{n}")
        raw = oml_o21(LAB_SITE_ID, placer, visit,
                      [Tube(f"{placer}-S", SERUM), Tube(f"{placer}-B", BLOOD, "whole blood",
                                                       spun=False)],
                      collected_at=collected, control_id=control, stat=n == CRITICAL_PATIENT)
        messages.append((placer, visit, control, raw))
    acks = send_messages("127.0.0.1", settings.lab_mllp_port, [m[3] for m in messages])
    placed = []
    for (placer, patient, control, _raw), ack in zip(messages, acks, strict=True):
        code, _, text = msa(ack)
        placed.append(PlacedOrder(placer, patient, control, code, text))
        console.print(f"lab: order {placer} for {patient.patient_id} over MLLP -> {code} "
                      f"{text}", markup=False)
    return placed


def ship_box(db: Database, console: Console, placers: list[str], stamp: str) -> list[str]:
    """Pack every tube of the orders in one box, courier, receive; the accessions."""
    with db.session() as s:
        accessions = list(s.scalars(
            select(LabSpecimen.accession).join(LabOrder, LabOrder.id == LabSpecimen.order_id)
            .where(LabOrder.site_id == LAB_SITE_ID, LabOrder.placer_order_number.in_(placers))
            .order_by(LabSpecimen.id)))
    box = f"BOX-{stamp}"
    packed = datetime.now(UTC)
    with db.session() as s:
        pack_box(s, site_id=LAB_SITE_ID, box_code=box, accessions=accessions,
                 condition="room", actor="demo:site", at=packed)
        courier_pickup(s, box, actor="demo:courier", courier="County courier 3",
                       at=packed + timedelta(seconds=1))
        received = datetime.now(UTC) + timedelta(seconds=2)
        receive_box(s, box, actor="demo:reception",
                    temperature_log=[(packed, 21.5), (packed + timedelta(seconds=1), 22.0),
                                     (received, 22.5)], at=received)
    console.print(f"lab: box {box} packed with {len(accessions)} tubes, carried and received "
                  "(logger 21.5-22.5 °C)")
    return accessions


def run_analyzers(db: Database, settings: Settings, console: Console, stamp: str,
                  critical_accession: str) -> list[str]:
    """The chemistry run (ASTM; failing K control, critical glucose) and the blood count
    run (ORU^R01 over MLLP); their run codes."""
    chem = run_analyzer(db, "CHEM1", "127.0.0.1", settings.lab_astm_port, SimOptions(
        fail_controls=(FAILING_CONTROL,),
        criticals=(CriticalValue(critical_accession, CRITICAL_TEST, CRITICAL_VALUE),),
        flag_rate=0.0, seed=7, run_code=f"CHEM1-{stamp}"))
    console.print(f"lab: CHEM1 sent run {chem.run.run_code} over ASTM: "
                  f"{len(chem.run.controls)} controls (K level 2 at "
                  f"+{FAILING_CONTROL.sd} SD), {len(chem.run.results)} results "
                  f"({CRITICAL_TEST} {CRITICAL_VALUE} on {critical_accession})")
    heme = run_analyzer(db, "HEME1", "127.0.0.1", settings.lab_mllp_port, SimOptions(
        flag_rate=0.0, seed=8, run_code=f"HEME1-{stamp}"))
    console.print(f"lab: HEME1 sent run {heme.run.run_code} as ORU^R01 over MLLP -> "
                  f"{heme.ack_code} {heme.ack_text}", markup=False)
    return [chem.run.run_code, heme.run.run_code]


def _runs_done(db: Database, run_codes: list[str]) -> tuple[bool, str]:
    with db.session() as s:
        runs = list(s.scalars(select(LabRun).where(LabRun.run_code.in_(run_codes))))
        jobs = list(s.scalars(select(Job).where(Job.kind == "lab_run")))
    ids = {r.id for r in runs}
    mine = [j for j in jobs if int((j.params or {}).get("run_id", -1)) in ids]
    failed = [j for j in mine if j.state in ("failed", "dead", "skipped")]
    if failed:
        return True, f"lab_run job {failed[0].id} {failed[0].state}: {failed[0].error}"
    done = len(runs) == len(run_codes) and all(r.state == "evaluated" for r in runs)
    return done, "" if done else f"{sum(r.state == 'evaluated' for r in runs)} of " \
                                 f"{len(run_codes)} runs evaluated"


def _messages(db: Database, order_ids: list[int]) -> list[OutboundMessage]:
    with db.session() as s:
        return list(s.scalars(select(OutboundMessage).where(
            OutboundMessage.subject.in_([f"lab_order:{i}" for i in order_ids]))
            .order_by(OutboundMessage.id)))


def run_lab_demo(settings: Settings, console: Console, *, timeout: float) -> int:
    """The whole lab story; 0 when the site received its results and critical value
    with every ACK recorded, 1 otherwise (the reason printed)."""
    if not settings.lab_mllp_port or not _listening(settings.lab_mllp_port):
        raise ConfigurationError(f"no lab listener on port {settings.lab_mllp_port}: start "
                                 "the center with `rdc up` first (RDC_LAB_MLLP_PORT)")
    if not settings.lab_astm_port or not _listening(settings.lab_astm_port):
        raise ConfigurationError(f"no ASTM listener on port {settings.lab_astm_port} "
                                 "(RDC_LAB_ASTM_PORT)")
    db = get_database(settings.database_url)
    stamp = datetime.now(UTC).strftime("%d%H%M%S")
    with SiteReceiver(facility=LAB_SITE_ID) as receiver:
        _ensure_site(db, receiver.port, console)
        placed = place_orders(settings, console, stamp)
        refused = [p for p in placed if p.ack_code != "AA"]
        if refused:
            console.print(f"[red]lab: the center refused order {refused[0].placer}[/red]: "
                          f"{refused[0].ack_text}")
            return 1
        placers = [p.placer for p in placed]
        accessions = ship_box(db, console, placers, stamp)
        with db.session() as s:
            orders = {o.placer_order_number: o.id for o in s.scalars(select(LabOrder).where(
                LabOrder.site_id == LAB_SITE_ID, LabOrder.placer_order_number.in_(placers)))}
            critical_accession = s.scalar(
                select(LabSpecimen.accession).where(
                    LabSpecimen.order_id == orders[placers[CRITICAL_PATIENT - 1]],
                    LabSpecimen.specimen_type == "serum"))
        assert critical_accession is not None and accessions
        run_codes = run_analyzers(db, settings, console, stamp, critical_accession)
        order_ids = list(orders.values())
        code = _wait(db, console, run_codes, order_ids, receiver, timeout)
        if code == 0:
            code = _acknowledge_critical(db, console, order_ids)
        _show(db, console, order_ids, receiver)
    return code


#: Who takes the critical value's call at the county site in the demo.
DEMO_NURSE = ("demo-county-nurse", "Nurse Wang (ward 3)")


def _acknowledge_critical(db: Database, console: Console, order_ids: list[int]) -> int:
    """The county site closes the loop: a nurse reads the critical value back (as the
    alert showed it), then the demo prints the site's result -> notification ->
    acknowledgement times and the closed-loop check, and the notice's audit trail."""
    with db.session() as s:
        notices = list(s.scalars(select(LabCriticalNotice).join(
            LabResult, LabResult.id == LabCriticalNotice.result_id).where(
            LabResult.order_id.in_(order_ids), LabCriticalNotice.state != "acknowledged")))
        for notice in notices:
            result = s.get(LabResult, notice.result_id)
            assert result is not None
            _kind, readback = format_value(result, get_catalog().test(result.test_code).decimals)
            critical.acknowledge(s, notice.id, actor=DEMO_NURSE[0], name=DEMO_NURSE[1],
                                 readback=readback)
            console.print(f"lab: {DEMO_NURSE[1]} at {LAB_SITE_ID} read back {readback} "
                          f"{result.units}: notice {notice.id} acknowledged", markup=False)
    with db.session() as s:
        first = s.scalar(select(LabResult.measured_at).where(
            LabResult.order_id.in_(order_ids), LabResult.measured_at.is_not(None))
            .order_by(LabResult.measured_at))
        rows = critical.dashboard(s, site_ids=frozenset({LAB_SITE_ID}),
                                  since=first or datetime.now(UTC))
        ids = [str(n) for n in s.scalars(select(LabCriticalNotice.id).join(
            LabResult, LabResult.id == LabCriticalNotice.result_id).where(
            LabResult.order_id.in_(order_ids)))]
        trail = [(a.action, a.actor) for a in s.scalars(select(AuditRecord).where(
            AuditRecord.object_type == "lab_critical_notice",
            AuditRecord.object_id.in_(ids)).order_by(AuditRecord.seq))]
    for row in rows:
        console.print(
            f"lab: critical values at {row['site_id']}: {row['count']}; median result -> "
            f"notification {row['median_result_to_notification_s']} s, notification -> "
            f"acknowledgement {row['median_notification_to_ack_s']} s; acknowledged "
            f"{row['acknowledged']}, escalated {row['escalated']}, open {row['open']}; "
            f"closed loop {row['closed_loop_pct']} %", markup=False)
    console.print("lab: audit of the critical notice: " + ", ".join(
        f"{action} ({actor})" for action, actor in trail), markup=False)
    return 0 if rows and all(r["closed_loop"] for r in rows) else 1


def _wait(db: Database, console: Console, run_codes: list[str], order_ids: list[int],
          receiver: SiteReceiver, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last_note = 0.0
    while True:
        done, why = _runs_done(db, run_codes)
        if done and why:
            console.print(f"[red]lab: {why}[/red]")
            return 1
        messages = _messages(db, order_ids) if done else []
        acked = [m for m in messages if m.ack_code]
        got = {r.control_id for r in receiver.received()}
        if done and messages and len(acked) == len(messages) and \
                {m.control_id for m in messages} <= got and \
                any(m.kind == "lab-critical" for m in messages):
            return 0
        if time.monotonic() > deadline:
            console.print(f"[yellow]lab: not finished in time[/yellow] ({why or 'runs done'}; "
                          f"{len(acked)} of {len(messages)} ORUs acknowledged by the site): "
                          "are the worker and the lab listener running?")
            return 1
        if time.monotonic() - last_note > 10:
            console.print(f"lab: waiting for QC, autoverification and delivery "
                          f"({why or f'{len(acked)} of {len(messages)} ORUs acknowledged'})")
            last_note = time.monotonic()
        time.sleep(0.5)


def _show(db: Database, console: Console, order_ids: list[int],
          receiver: SiteReceiver) -> None:
    with db.session() as s:
        results = list(s.scalars(select(LabResult).where(LabResult.order_id.in_(order_ids))
                                 .order_by(LabResult.id)))
        notices = list(s.scalars(select(LabCriticalNotice).where(
            LabCriticalNotice.result_id.in_([r.id for r in results]))))
        runs = {r.id: r for r in s.scalars(select(LabRun).where(
            LabRun.id.in_({r.run_id for r in results if r.run_id})))}
    states: dict[str, int] = {}
    for r in results:
        states[r.state] = states.get(r.state, 0) + 1
    console.print("lab: results " + ", ".join(f"{n} {k}" for k, n in sorted(states.items())))
    for run in runs.values():
        rejected = {t: v for t, v in (run.qc_status or {}).items()
                    if isinstance(v, dict) and v.get("status") == "reject"}
        for test, status in rejected.items():
            held = sum(1 for r in results if r.run_id == run.id and r.test_code == test
                       and r.qc_hold)
            console.print(f"lab: QC reject on {run.analyzer_id} run {run.run_code}: {test} "
                          f"({', '.join(status.get('rules', []))}); {held} patient results "
                          "held", markup=False)
    for notice in notices:
        result = next(r for r in results if r.id == notice.result_id)
        console.print(f"lab: critical {result.test_code} {result.value_text or result.value} "
                      f"{result.units} ({result.abnormal_flag}) -> notice {notice.id} "
                      f"{notice.state}, site told at "
                      f"{notice.notified_at.isoformat() if notice.notified_at else '-'}",
                      markup=False)
    table = Table(title=f"ORU^R01 received by the county site ({LAB_SITE_ID})")
    for column in ("control id", "kind", "order", "OBX", "site ACK recorded", "acked at"):
        table.add_column(column)
    got = {r.control_id: r for r in receiver.received()}
    for m in _messages(db, order_ids):
        body = got[m.control_id].raw if m.control_id in got else m.body
        table.add_row(m.control_id, m.kind, m.subject,
                      str(sum(1 for seg in body.replace("\n", "\r").split("\r")
                              if seg.startswith("OBX"))),
                      m.ack_code or "-", m.acked_at.isoformat() if m.acked_at else "-")
    console.print(table)
