"""A simulated analyzer: realistic runs sent to the center over the real protocols.

Why: the demo and the tests need runs that look like an analyzer's, through the same
wire the real instruments use (ASTM E1381/E1394 over TCP for CHEM1, HL7 ORU^R01 over
MLLP for HEME1), so that the listener, QC and autoverification are exercised end to end.

A run is: two control levels per analyte at its start (from the analyzer's control lots;
default lots with realistic targets are created when it has none), then every tube with
a pending test of this analyzer (result state ``ordered`` or ``rerun``).  A patient's
value is drawn around a value plausible for that patient (stable per patient and test,
so that reruns and later visits agree), with the analyte's within-subject and analytical
variation; serum tubes get HIL indices, and a few results an instrument flag.  Faults are
injected on demand: a failing control (``K:2:+3.5``: K level 2 at +3.5 SD), a critical
value for one tube, an analyzer shift (every measurement of an analyte off by n SD),
a hemolysed tube, frames with bad checksums.
"""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import hl7
from hl7.client import MLLPClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import InvalidInput
from core.models.lab import LabControlLot, LabOrder, LabResult, LabSpecimen
from lab import astm
from lab.catalog import Analyzer, Catalog, Test, get_catalog
from lab.instrument_oru import build_oru
from lab.results_in import ControlMeasurement, MeasuredResult, RunData

#: Analytical CV (%) per test: typical imprecision of a current analyzer (CLIA/Westgard
#: desirable-specification tables), used for patient noise and default control SDs.
ANALYTICAL_CV: Mapping[str, float] = {
    "K": 1.5, "NA": 0.7, "CL": 1.0, "HCO3": 3.0, "CREA": 3.0, "GLU": 2.0, "TNI": 6.0,
    "HGB": 1.2, "WBC": 2.5, "PLT": 3.5, "MCV": 1.0, "INR": 3.0,
}
#: Within-subject biological CV (%) (Ricos et al. biological variation database).
WITHIN_SUBJECT_CV: Mapping[str, float] = {
    "K": 4.8, "NA": 0.7, "CL": 1.2, "HCO3": 4.8, "CREA": 5.3, "GLU": 5.7, "TNI": 14.0,
    "HGB": 2.8, "WBC": 10.9, "PLT": 9.1, "MCV": 1.3, "INR": 4.0,
}
#: Default control material targets per test: (level 1 mean, level 2 mean); the SD is
#: the analytical CV of the mean.  Level 1 near normal, level 2 abnormal.
DEFAULT_CONTROL_MEANS: Mapping[str, tuple[float, float]] = {
    "K": (4.0, 6.5), "NA": (135.0, 155.0), "CL": (95.0, 115.0), "HCO3": (20.0, 32.0),
    "CREA": (90.0, 500.0), "GLU": (5.0, 16.0), "TNI": (30.0, 2000.0),
    "HGB": (130.0, 70.0), "WBC": (7.0, 18.0), "PLT": (220.0, 60.0), "MCV": (88.0, 105.0),
    "INR": (1.0, 3.0),
}
DEFAULT_LOT = "SIM-{analyzer}-2026A"
#: Seconds between two measurements on the analyzer (throughput ~ 180 tests/h per line).
STEP_S = 20.0


@dataclass(frozen=True)
class ControlFault:
    """Control ``test`` level ``level`` measured at ``sd`` SD from its target."""

    test: str
    level: int
    sd: float

    @classmethod
    def parse(cls, text: str) -> ControlFault:
        """``K:2:+3.5``."""
        try:
            test, level, sd = text.split(":")
            return cls(test.strip().upper(), int(level), float(sd))
        except ValueError as e:
            raise InvalidInput(f"bad control fault {text!r}: TEST:LEVEL:SD expected, "
                               f"e.g. K:2:+3.5") from e


@dataclass(frozen=True)
class CriticalValue:
    """Report ``value`` for ``test`` of tube ``accession`` (a critical value)."""

    accession: str
    test: str
    value: float

    @classmethod
    def parse(cls, text: str) -> CriticalValue:
        """``L00000042:K:7.1``."""
        try:
            accession, test, value = text.split(":")
            return cls(accession.strip(), test.strip().upper(), float(value))
        except ValueError as e:
            raise InvalidInput(f"bad critical value {text!r}: ACCESSION:TEST:VALUE expected, "
                               f"e.g. L00000042:K:7.1") from e


@dataclass(frozen=True)
class SimOptions:
    fail_controls: tuple[ControlFault, ...] = ()
    criticals: tuple[CriticalValue, ...] = ()
    #: Analyzer shift: test -> SD (of the control lot; patients by the analytical SD).
    shift: Mapping[str, float] = field(default_factory=dict)
    hemolysed: tuple[str, ...] = ()
    #: The share of patient results that carry an instrument warning flag ("W").
    flag_rate: float = 0.02
    seed: int | None = None
    run_code: str | None = None
    #: Send no patient tubes (a QC-only run).
    controls_only: bool = False


def parse_shift(text: str) -> tuple[str, float]:
    """``K:+2`` -> ("K", 2.0)."""
    try:
        test, sd = text.split(":")
        return test.strip().upper(), float(sd)
    except ValueError as e:
        raise InvalidInput(f"bad shift {text!r}: TEST:SD expected, e.g. K:+2") from e


def analyzer_of(catalog: Catalog, analyzer_id: str) -> Analyzer:
    analyzer = catalog.analyzers.get(analyzer_id)
    if analyzer is None:
        raise InvalidInput(f"unknown analyzer {analyzer_id!r}: the catalog has "
                           f"{', '.join(sorted(catalog.analyzers))}")
    return analyzer


def ensure_control_lots(session: Session, analyzer: Analyzer) -> list[LabControlLot]:
    """The analyzer's active lots, two levels per test; default lots are created for a
    test/level that has none (the targets of :data:`DEFAULT_CONTROL_MEANS`)."""
    lots = list(session.scalars(select(LabControlLot).where(
        LabControlLot.analyzer_id == analyzer.id, LabControlLot.active.is_(True))
        .order_by(LabControlLot.test_code, LabControlLot.level, LabControlLot.id)))
    have = {(lot.test_code, lot.level) for lot in lots}
    for code in analyzer.tests:
        means = DEFAULT_CONTROL_MEANS.get(code)
        for level in (1, 2):
            if (code, level) in have or means is None:
                continue
            mean = means[level - 1]
            sd = round(mean * ANALYTICAL_CV.get(code, 3.0) / 100, 4)
            lot = LabControlLot(analyzer_id=analyzer.id, test_code=code, level=level,
                                lot=DEFAULT_LOT.format(analyzer=analyzer.id),
                                mean=mean, sd=sd, active=True)
            session.add(lot)
            lots.append(lot)
    session.flush()
    return lots


def _stable_uniform(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts`` (a patient's own value, run after run)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def plausible_value(test: Test, patient_id: str, sex: str,
                    catalog: Catalog | None = None) -> float:
    """A value plausible for this patient: inside the reference range, stable per patient
    and test (the patient's set point).  Chloride follows the patient's sodium and
    bicarbonate so that the anion gap Na - (Cl + HCO3) is a physiological 9-15 mmol/L
    (independent draws would put a fifth of the tubes outside 3-20 and hold them)."""
    if test.code == "CL" and catalog is not None and {"NA", "HCO3"} <= set(catalog.tests):
        na = plausible_value(catalog.tests["NA"], patient_id, sex)
        hco3 = plausible_value(catalog.tests["HCO3"], patient_id, sex)
        return na - hco3 - (9.0 + 6.0 * _stable_uniform(patient_id, "anion-gap"))
    ref = test.reference_range(sex, 45.0)
    low = ref.low if ref is not None and ref.low is not None else None
    high = ref.high if ref is not None and ref.high is not None else None
    if low is None and high is not None:
        low = high * 0.2
    if high is None and low is not None:
        high = low * 2
    if low is None or high is None:
        low, high = 1.0, 2.0
    u = _stable_uniform(patient_id, test.code)
    return low + (high - low) * (0.15 + 0.7 * u)


def _fmt(test: Test, value: float) -> tuple[float | None, str, tuple[str, ...]]:
    """The value as the analyzer reports it: rounded to the test's decimals, or "<low" /
    ">high" (with that flag) outside the measuring range."""
    if test.measuring_high is not None and value > test.measuring_high:
        return None, f">{test.measuring_high:g}", (">",)
    if test.measuring_low is not None and value < test.measuring_low:
        return None, f"<{test.measuring_low:g}", ("<",)
    v = round(value, test.decimals)
    return v, f"{v:.{test.decimals}f}", ()


def pending_tubes(session: Session, analyzer: Analyzer) -> list[tuple[LabSpecimen,
                                                                      list[LabResult]]]:
    """Tubes with results of this analyzer awaiting a measurement, oldest first."""
    rows = session.execute(
        select(LabSpecimen, LabResult).join(LabResult, LabResult.specimen_id == LabSpecimen.id)
        .where(LabResult.state.in_(("ordered", "rerun")),
               LabResult.test_code.in_(analyzer.tests),
               LabSpecimen.rejection_code.is_(None))
        .order_by(LabSpecimen.id, LabResult.id)).all()
    tubes: dict[int, tuple[LabSpecimen, list[LabResult]]] = {}
    for spec, result in rows:
        tubes.setdefault(spec.id, (spec, []))[1].append(result)
    return list(tubes.values())


def plan_run(db: Database, analyzer_id: str, options: SimOptions | None = None, *,
             now: datetime | None = None) -> RunData:
    """The run the analyzer would report now: controls, then the pending tubes."""
    opts = options or SimOptions()
    catalog = get_catalog()
    analyzer = analyzer_of(catalog, analyzer_id)
    for f in opts.fail_controls:
        if f.test not in analyzer.tests or f.level not in (1, 2):
            raise InvalidInput(f"control fault {f.test}:{f.level}: {analyzer.id} runs "
                               f"levels 1 and 2 of {', '.join(analyzer.tests)}")
    for code in opts.shift:
        if code not in analyzer.tests:
            raise InvalidInput(f"shift on {code}: {analyzer.id} does not measure it")
    rng = random.Random(opts.seed)
    start = now or datetime.now(UTC)
    run_code = opts.run_code or f"{analyzer.id}-{start:%Y%m%d%H%M%S}-{rng.randrange(1000):03d}"
    with db.session() as s:
        lots = ensure_control_lots(s, analyzer)
        controls = _controls(lots, opts, rng, start)
        tubes = [] if opts.controls_only else pending_tubes(s, analyzer)
        orders = {o.id: o for o in s.scalars(select(LabOrder).where(
            LabOrder.id.in_({spec.order_id for spec, _ in tubes})))}
        results: list[MeasuredResult] = []
        at = start + timedelta(seconds=STEP_S * (len(controls) + 1))
        for spec, pending in tubes:
            order = orders[spec.order_id]
            hil = _hil(spec, opts, rng) if spec.specimen_type in ("serum", "plasma") else None
            for r in pending:
                test = catalog.test(r.test_code)
                value = _patient_value(catalog, test, order.patient_id, order.sex, opts, rng)
                crit = next((c for c in opts.criticals if c.accession == spec.accession
                             and c.test == r.test_code), None)
                if crit is not None:
                    value = crit.value
                number, text, flags = _fmt(test, value)
                if crit is None and not flags and rng.random() < opts.flag_rate:
                    flags = ("W",)
                results.append(MeasuredResult(
                    accession=spec.accession, test_code=r.test_code, value=number,
                    value_text=text, units=test.units, flags=flags, measured_at=at, hil=hil))
                at += timedelta(seconds=STEP_S)
    missing = {c.accession for c in opts.criticals} - {m.accession for m in results}
    if missing:
        raise InvalidInput(f"critical value for {', '.join(sorted(missing))}: no pending "
                           f"test of {analyzer.id} on that tube")
    return RunData(analyzer_id=analyzer.id, run_code=run_code, results=tuple(results),
                   controls=tuple(controls))


def _controls(lots: Sequence[LabControlLot], opts: SimOptions, rng: random.Random,
              start: datetime) -> list[ControlMeasurement]:
    out: list[ControlMeasurement] = []
    seen: set[tuple[str, int]] = set()
    for lot in lots:
        if (lot.test_code, lot.level) in seen:
            continue  # one lot per analyte and level a run
        seen.add((lot.test_code, lot.level))
        fault = next((f for f in opts.fail_controls
                      if f.test == lot.test_code and f.level == lot.level), None)
        if fault is not None:
            z = fault.sd
        else:
            # An in-control analyzer: within +-1.8 SD, so that only injected faults fail.
            z = max(-1.8, min(1.8, rng.gauss(0.0, 0.7))) + opts.shift.get(lot.test_code, 0.0)
        at = start + timedelta(seconds=STEP_S * len(out))
        out.append(ControlMeasurement(lot=lot.lot, test_code=lot.test_code, level=lot.level,
                                      value=round(lot.mean + z * lot.sd, 4), measured_at=at))
    return out


def _patient_value(catalog: Catalog, test: Test, patient_id: str, sex: str,
                   opts: SimOptions, rng: random.Random) -> float:
    base = plausible_value(test, patient_id, sex, catalog)
    cv_i = WITHIN_SUBJECT_CV.get(test.code, 5.0) / 100
    cv_a = ANALYTICAL_CV.get(test.code, 3.0) / 100
    value = base * (1 + rng.gauss(0.0, cv_i * 0.5)) * (1 + rng.gauss(0.0, cv_a))
    value += opts.shift.get(test.code, 0.0) * cv_a * base
    return max(value, 0.0)


def _hil(spec: LabSpecimen, opts: SimOptions, rng: random.Random) -> dict[str, float]:
    if spec.accession in opts.hemolysed:
        h = float(rng.randrange(250, 600))
    else:
        h = float(rng.randrange(2, 30))
    return {"H": h, "I": float(rng.randrange(0, 8)), "L": float(rng.randrange(2, 40))}


def send_astm(run: RunData, host: str, port: int, *, bad_checksums: int = 0,
              timeout_s: float = astm.SENDER_TIMEOUT_S) -> int:
    """Send ``run`` as one ASTM transfer; the first frame goes with a bad checksum
    ``bad_checksums`` times first (6 or more: the transfer is given up, TransferError).
    Returns the NAKs received."""
    records = astm.build_run(run)

    def corrupt(index: int, attempt: int) -> bool:
        return index == 0 and attempt <= bad_checksums

    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sender = astm.Sender(sock, timeout_s=timeout_s, corrupt=corrupt)
        sender.send(records)
        # Wait for the listener to close or stay: the run is stored after EOT.
        return sender.naks


def send_oru(run: RunData, host: str, port: int) -> tuple[str, str]:
    """Send ``run`` as one ORU^R01 over MLLP; returns (MSA-1, MSA-3) of the ACK."""
    with MLLPClient(host, port) as client:
        raw = client.send_message(build_oru(run))
    text = raw.decode("utf-8", errors="replace").strip("\x0b\x1c\r\n")
    msa = hl7.parse(text).segment("MSA")
    return str(msa[1]), str(msa[3]) if len(msa) > 3 else ""


@dataclass(frozen=True)
class Sent:
    """What a simulated run sent and what the center answered."""

    run: RunData
    #: ASTM: NAKs received (frames sent again); HL7: 0.
    naks: int = 0
    #: HL7: the ACK's MSA-1 and MSA-3; ASTM has no application answer ("", "").
    ack_code: str = ""
    ack_text: str = ""


def run_analyzer(db: Database, analyzer_id: str, host: str, port: int,
                 options: SimOptions | None = None, *, bad_checksums: int = 0,
                 now: datetime | None = None) -> Sent:
    """Plan a run and send it over the analyzer's own protocol."""
    run = plan_run(db, analyzer_id, options, now=now)
    analyzer = analyzer_of(get_catalog(), analyzer_id)
    if analyzer.protocol == "astm":
        return Sent(run, naks=send_astm(run, host, port, bad_checksums=bad_checksums))
    code, text = send_oru(run, host, port)
    return Sent(run, ack_code=code, ack_text=text)
