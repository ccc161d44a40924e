"""A synthetic but realistic lab dataset with known, injected errors (seeded).

Patients of county sites, each with a biological set point per analyte and previous
results; a new visit with a serum tube (chemistry, CHEM1) and an EDTA tube (hematology,
HEME1) measured in analyzer runs with two control levels per analyte; and errors
injected by kind, with the truth kept on every result:

- ``wbit``: two patients' specimens swapped (wrong blood in tube): all their analytes
  swap.  The rate is the share of patients involved (pairs).
- ``hemolysis``: a serum tube with a high hemolysis index (H 60-400, above K's limit of
  50) and potassium raised by red-cell leakage, about 0.36 mmol/L per g/L of free
  hemoglobin (H 100 ~ 1 g/L; Dimeski G, Clague AE, Hickman PE, Ann Clin Biochem
  2005;42:119-23, and Lippi G et al., Clin Chem Lab Med 2006;44:311-6).  Only K is wrong.
- ``shift``: an analyzer shift of 1-3 analytical SD on one analyte, over several
  consecutive runs, in the controls and the patient results alike.  The rate is the
  share of data runs shifted (at least one run when > 0).
- ``transcription``: one value with a digit error (two adjacent digits transposed) or a
  decimal slip (x10 or /10).
- ``stability``: a tube analysed past its stability window (an unspun serum tube 6-20 h
  at room temperature: K rises, glucose is consumed, bicarbonate is lost; or an EDTA tube
  after 26-40 h: cells swell, MCV rises).  Results of tests past their window are wrong.

Within-subject variation: each measurement is the set point times ``1 + CVi * N(0, 1)``
(biological) times ``1 + CVa * N(0, 1)`` (analytical).  Within-subject CVs (CVi) are the
EFLM Biological Variation Database estimates (Aarsand AK et al., Clin Chem
2018;64:501-14; biologicalvariation.eu), rounded: Na 0.5 %, K 4.1 %, Cl 1.1 %, HCO3
4.0 %, creatinine 4.5 %, glucose 4.7 %, hemoglobin 2.7 %, leukocytes 11.1 %, platelets
7.3 %, MCV 0.8 % (demonstration values: check the database before any clinical use).
Analytical CVs (CVa) are typical of current analyzers.  Set points
are drawn from adult population distributions (between-subject variation), with a few
patients carrying a real change since their previous visit (not an error).

``generate`` is pure (no database); ``write_replay`` writes the JSON lines that
``rdc lab validate-rules --replay`` reads (lab/validate_rules.py); ``load`` stores the
dataset in a center's database (orders, tubes, previous released results, runs, control
lots and controls, the new results pending) for the benchmark and tests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.models.lab import (
    LabControlLot,
    LabControlResult,
    LabOrder,
    LabResult,
    LabRun,
    LabSpecimen,
)
from core.sites import SiteSpec, add_site
from lab.catalog import Catalog, get_catalog
from lab.stability import stability_hours
from lab.westgard import ControlPoint, evaluate, status_of

ERROR_KINDS: tuple[str, ...] = ("wbit", "hemolysis", "shift", "transcription", "stability")
SITES: tuple[str, ...] = ("county-a", "county-b")
START = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)

#: Analyzer, specimen type, container and tests of each tube of a visit.
TUBES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "serum": ("CHEM1", "serum", "SST (gold top)", ("K", "NA", "CL", "HCO3", "CREA", "GLU")),
    "edta": ("HEME1", "whole blood", "EDTA (lavender top)", ("HGB", "WBC", "PLT", "MCV")),
}
#: Within-subject biological CV (%), EFLM Biological Variation Database (rounded).
CV_I: dict[str, float] = {"K": 4.1, "NA": 0.5, "CL": 1.1, "HCO3": 4.0, "CREA": 4.5,
                          "GLU": 4.7, "HGB": 2.7, "WBC": 11.1, "PLT": 7.3, "MCV": 0.8}
#: Analytical CV (%), typical of current chemistry and hematology analyzers.
CV_A: dict[str, float] = {"K": 1.5, "NA": 0.8, "CL": 1.0, "HCO3": 3.0, "CREA": 3.0,
                          "GLU": 2.0, "HGB": 1.2, "WBC": 2.5, "PLT": 3.0, "MCV": 0.8}
#: Control lots: (level 1 mean, level 2 mean); SD = CVa x mean.
CONTROL_MEANS: dict[str, tuple[float, float]] = {
    "K": (4.0, 6.5), "NA": (120.0, 155.0), "CL": (90.0, 115.0), "HCO3": (18.0, 32.0),
    "CREA": (90.0, 450.0), "GLU": (5.5, 16.0), "HGB": (80.0, 160.0), "WBC": (4.0, 15.0),
    "PLT": (80.0, 400.0), "MCV": (80.0, 95.0)}


@dataclass(frozen=True)
class PreviousValue:
    test_code: str
    value: float
    at: datetime


@dataclass
class NewResult:
    """One new result with its context and the truth (``error``: kind or None)."""

    site_id: str
    patient_id: str
    sex: str
    birth_date: str
    age_y: float
    tube: str  # "serum" | "edta"
    accession: str
    analyzer_id: str
    run_code: str
    test_code: str
    value: float
    units: str
    collected_at: datetime
    measured_at: datetime
    condition: str
    spun: bool
    hil: dict[str, float]
    flags: list[str]
    error: str | None
    previous: list[PreviousValue]
    specimen_hold: str = ""
    qc_hold: str = ""


@dataclass(frozen=True)
class ControlValue:
    analyzer_id: str
    run_code: str
    test_code: str
    level: int
    value: float
    measured_at: datetime


@dataclass(frozen=True)
class Lot:
    analyzer_id: str
    lot: str
    test_code: str
    level: int
    mean: float
    sd: float


@dataclass
class Dataset:
    seed: int
    results: list[NewResult]
    controls: list[ControlValue]
    lots: list[Lot]
    #: (analyzer, run code, start) in order; history runs (controls only) first.
    runs: list[tuple[str, str, datetime]]
    #: (analyzer, test, first shifted run code, SD) of each injected shift.
    shifts: list[tuple[str, str, str, float]] = field(default_factory=list)

    def by_error(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for r in self.results:
            out[r.error] = out.get(r.error, 0) + 1
        return out


# --- patients -------------------------------------------------------------------------------
def _set_points(rng: random.Random, sex: str) -> dict[str, float]:
    """One adult's set points (population between-subject distributions)."""
    na = rng.gauss(140.0, 2.0)
    hco3 = rng.gauss(25.0, 1.8)
    gap = rng.gauss(11.0, 1.8)
    male = sex == "M"
    sp = {"NA": na, "HCO3": hco3, "CL": na - hco3 - gap, "K": rng.gauss(4.2, 0.3),
          "CREA": rng.gauss(85.0 if male else 65.0, 12.0), "GLU": rng.lognormvariate(1.62, 0.13),
          "HGB": rng.gauss(150.0 if male else 133.0, 9.0), "WBC": rng.lognormvariate(1.85, 0.22),
          "PLT": rng.gauss(240.0, 45.0), "MCV": rng.gauss(90.0, 3.5)}
    return {k: max(v, 0.2) for k, v in sp.items()}


def _draw(rng: random.Random, code: str, set_point: float) -> float:
    bio = set_point * (1 + CV_I[code] / 100 * rng.gauss(0, 1))
    return bio * (1 + CV_A[code] / 100 * rng.gauss(0, 1))


def _round(catalog: Catalog, code: str, value: float) -> float:
    return round(value, catalog.test(code).decimals)


def _transcribe(rng: random.Random, catalog: Catalog, code: str, value: float) -> float:
    """A digit transposition, or a decimal slip when the transposition changes nothing."""
    decimals = catalog.test(code).decimals
    text = f"{value:.{decimals}f}"
    digits = [i for i in range(len(text) - 1) if text[i].isdigit() and text[i + 1].isdigit()
              and text[i] != text[i + 1]]
    if digits and rng.random() < 0.5:
        i = rng.choice(digits)
        swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        return float(swapped)
    return round(value * 10 if rng.random() < 0.5 else value / 10, decimals)


# --- the generator ----------------------------------------------------------------------------
def generate(*, seed: int = 0, patients: int = 200, errors: Mapping[str, float] | None = None,
             with_previous: float = 0.85, real_change: float = 0.04,
             specimens_per_run: int = 40, history_runs: int = 20, shift_runs: int = 4,
             start: datetime = START, catalog: Catalog | None = None) -> Dataset:
    """A dataset of ``patients`` visits; ``errors`` maps a kind (:data:`ERROR_KINDS`) to
    its rate (share of patients; for ``shift`` the share of data runs)."""
    errors = dict(errors or {})
    unknown = sorted(set(errors) - set(ERROR_KINDS))
    if unknown:
        raise ValueError(f"unknown error kind(s) {unknown}: use {', '.join(ERROR_KINDS)}")
    if patients < 2:
        raise ValueError("at least 2 patients")
    catalog = catalog or get_catalog()
    rng = random.Random(seed)
    people: list[dict[str, Any]] = []
    for i in range(patients):
        sex = rng.choice("MF")
        age = rng.uniform(18, 90)
        born = start - timedelta(days=age * 365.25)
        sp = _set_points(rng, sex)
        people.append({"site": SITES[i % len(SITES)], "pid": f"P{i:05d}", "sex": sex,
                       "birth": born.strftime("%Y%m%d"), "age": age, "sp": sp,
                       "has_prev": rng.random() < with_previous})
    # Visits arrive over the day: each gets a collection time and a receipt order.
    order = list(range(patients))
    rng.shuffle(order)
    spacing = timedelta(minutes=2)
    results: list[NewResult] = []
    visit_values: dict[int, dict[str, float]] = {}
    previous: dict[int, list[PreviousValue]] = {}
    for rank, i in enumerate(order):
        p = people[i]
        t_arrive = start + timedelta(hours=2) + spacing * rank
        values = {c: _draw(rng, c, p["sp"][c]) for c in CV_I}
        prev: list[PreviousValue] = []
        if p["has_prev"]:
            at = t_arrive - timedelta(hours=rng.uniform(14, 22))
            prev = [PreviousValue(c, _round(catalog, c, _draw(rng, c, p["sp"][c])), at)
                    for c in CV_I]
            if rng.random() < 0.5:  # an older visit too
                at2 = at - timedelta(days=rng.uniform(3, 30))
                prev += [PreviousValue(c, _round(catalog, c, _draw(rng, c, p["sp"][c])), at2)
                         for c in CV_I]
            if rng.random() < real_change:  # a real change since: not an error
                code, factor = rng.choice([("CREA", 1.6), ("HGB", 0.82), ("WBC", 2.2),
                                           ("PLT", 0.55), ("GLU", 1.8)])
                values[code] *= factor
        visit_values[i] = values
        previous[i] = prev
        p["arrive"] = t_arrive
    # Errors that change who or what: decided per patient.
    pool = [i for i in range(patients)]
    rng.shuffle(pool)
    taken: set[int] = set()

    def pick(rate: float, need_prev: bool = False) -> list[int]:
        n = round(rate * patients)
        out: list[int] = []
        for i in pool:
            if len(out) >= n:
                break
            if i in taken or (need_prev and not people[i]["has_prev"]):
                continue
            out.append(i)
            taken.add(i)
        return out

    error_of: dict[tuple[int, str], str] = {}  # (patient, test) -> kind
    swapped = pick(errors.get("wbit", 0.0), need_prev=True)
    if len(swapped) % 2:
        taken.discard(swapped.pop())
    for a, b in zip(swapped[::2], swapped[1::2], strict=True):
        visit_values[a], visit_values[b] = visit_values[b], visit_values[a]
        for c in CV_I:
            error_of[(a, c)] = error_of[(b, c)] = "wbit"
    hil: dict[tuple[int, str], dict[str, float]] = {}
    for i in range(patients):
        for tube in TUBES:
            hil[(i, tube)] = ({"H": float(rng.randint(0, 20)), "I": float(rng.randint(0, 3)),
                               "L": float(rng.randint(0, 30))} if tube == "serum" else {})
    for i in pick(errors.get("hemolysis", 0.0)):
        h = float(rng.randint(60, 400))
        hil[(i, "serum")]["H"] = h
        visit_values[i]["K"] += 0.0036 * h
        error_of[(i, "K")] = "hemolysis"
    for i in pick(errors.get("transcription", 0.0)):
        code = rng.choice(list(CV_I))
        before = _round(catalog, code, visit_values[i][code])
        after = _transcribe(rng, catalog, code, before)
        if after == before:
            after = round(before * 10, catalog.test(code).decimals)
        visit_values[i][code] = after
        error_of[(i, code)] = "transcription"
    stale: dict[tuple[int, str], float] = {}  # (patient, tube) -> hours since collection
    for i in pick(errors.get("stability", 0.0)):
        tube = rng.choice(list(TUBES))
        aged = rng.uniform(6, 20) if tube == "serum" else rng.uniform(26, 40)
        stale[(i, tube)] = aged
        v = visit_values[i]
        if tube == "serum":
            v["K"] += 0.04 * aged
            v["GLU"] *= max(0.2, (1 - 0.06) ** aged)
            v["HCO3"] -= min(8.0, 0.25 * aged)
        else:
            v["MCV"] += 0.15 * (aged - 24)
    # Tubes, runs and controls.
    lots = [Lot(TUBES[t][0], f"QC{lv}-2611", c, lv, m, round(m * CV_A[c] / 100, 4))
            for t in TUBES for c in TUBES[t][3]
            for lv, m in ((1, CONTROL_MEANS[c][0]), (2, CONTROL_MEANS[c][1]))]
    runs: list[tuple[str, str, datetime]] = []
    controls: list[ControlValue] = []
    for analyzer in ("CHEM1", "HEME1"):
        for h in range(history_runs):
            code = f"{analyzer}-H{h:03d}"
            at = start - timedelta(hours=history_runs - h)
            runs.append((analyzer, code, at))
    accession_n = 0
    data_runs: dict[str, list[tuple[str, datetime, list[int]]]] = {}
    arrivals = sorted(range(patients), key=lambda i: people[i]["arrive"])
    for analyzer, _, _, _ in TUBES.values():
        groups = [arrivals[k:k + specimens_per_run]
                  for k in range(0, len(arrivals), specimens_per_run)]
        data_runs[analyzer] = []
        for g, members in enumerate(groups):
            at = max(people[i]["arrive"] for i in members) + timedelta(minutes=20)
            code = f"{analyzer}-R{g:03d}"
            data_runs[analyzer].append((code, at, members))
            runs.append((analyzer, code, at))
    # Shifts: consecutive data runs of one analyzer and analyte.
    shifted: dict[tuple[str, str], float] = {}  # (run code, test) -> SD
    shifts: list[tuple[str, str, str, float]] = []
    n_data = sum(len(v) for v in data_runs.values())
    n_shift = round(errors.get("shift", 0.0) * n_data)
    if errors.get("shift", 0.0) > 0:
        n_shift = max(1, n_shift)
    for _ in range(200):
        if n_shift <= 0:
            break
        analyzer = rng.choice(list(data_runs))
        seq = data_runs[analyzer]
        tests = next(t[3] for t in TUBES.values() if t[0] == analyzer)
        test = rng.choice(tests)
        length = min(n_shift, shift_runs, len(seq))
        first = rng.randrange(0, len(seq) - length + 1)
        if any((seq[k][0], t) in shifted for k in range(first, first + length) for t in tests):
            continue
        sd = rng.choice([-1, 1]) * rng.uniform(1.0, 3.0)
        for k in range(first, first + length):
            shifted[(seq[k][0], test)] = sd
        shifts.append((analyzer, test, seq[first][0], round(sd, 2)))
        n_shift -= length
    for analyzer, code, at in runs:
        for lo in lots:
            if lo.analyzer_id != analyzer:
                continue
            off = shifted.get((code, lo.test_code), 0.0)
            controls.append(ControlValue(analyzer, code, lo.test_code, lo.level,
                                         round(lo.mean + lo.sd * (rng.gauss(0, 1) + off), 4),
                                         at))
    for tube, (analyzer, _, _, tests) in TUBES.items():
        for code, at, members in data_runs[analyzer]:
            for i in members:
                p = people[i]
                accession_n += 1
                accession = f"L{accession_n:08d}"
                hours = stale.get((i, tube))
                spun = tube == "serum" and hours is None  # EDTA tubes are never spun
                delay = hours if hours is not None else rng.uniform(2.0, 10.0)
                collected = at - timedelta(hours=delay)
                for test in tests:
                    val = visit_values[i][test]
                    kind = error_of.get((i, test))
                    shift_sd = shifted.get((code, test))
                    if shift_sd is not None and kind is None:
                        val *= 1 + shift_sd * CV_A[test] / 100
                        kind = "shift"
                    if hours is not None and kind is None and \
                            stability_hours(catalog.test(test), "room", spun) < hours:
                        kind = "stability"
                    t = catalog.test(test)
                    value = _round(catalog, test, val)
                    if t.measuring_low is not None:
                        value = max(value, t.measuring_low)
                    results.append(NewResult(
                        site_id=p["site"], patient_id=p["pid"], sex=p["sex"],
                        birth_date=p["birth"], age_y=round(p["age"], 1), tube=tube,
                        accession=accession, analyzer_id=analyzer, run_code=code,
                        test_code=test, value=value, units=t.units, collected_at=collected,
                        measured_at=at, condition="room", spun=spun,
                        hil=dict(hil[(i, tube)]), flags=[], error=kind,
                        previous=list(previous[i])))
    ds = Dataset(seed=seed, results=results, controls=controls, lots=lots, runs=runs,
                 shifts=shifts)
    _label_holds(ds, catalog)
    return ds


def _label_holds(ds: Dataset, catalog: Catalog) -> None:
    """What the center would set before autoverification: the specimen hold (stability
    windows, lab.stability's wording) and the QC hold (lab.westgard on the controls, the
    wording of lab.qc), so that the replay file carries them."""
    by_accession: dict[str, list[NewResult]] = {}
    for r in ds.results:
        by_accession.setdefault(r.accession, []).append(r)
    for members in by_accession.values():
        reasons = []
        for r in members:
            test = catalog.test(r.test_code)
            hours = stability_hours(test, r.condition, r.spun)
            elapsed = (r.measured_at - r.collected_at).total_seconds() / 3600
            how = f"{r.condition}, {'spun' if r.spun else 'unspun'}"
            if hours <= 0:
                reasons.append(f"{r.test_code} ({test.name}) is not stable {how}")
            elif elapsed > hours:
                reasons.append(f"past stability: {r.test_code} ({test.name}) keeps "
                               f"{hours:g} h {how}; collected {elapsed:.1f} h ago")
        for r in members:
            r.specimen_hold = "; ".join(reasons)
    lot_level = {(lo.analyzer_id, lo.test_code, lo.level): lo for lo in ds.lots}
    ordinal = {code: n for n, (_, code, _) in enumerate(ds.runs)}
    past: dict[tuple[str, str], list[ControlPoint]] = {}
    verdict: dict[tuple[str, str], str] = {}
    for analyzer, code, _ in ds.runs:
        cur: dict[str, list[ControlPoint]] = {}
        for c in ds.controls:
            if c.run_code == code:
                lo = lot_level[(analyzer, c.test_code, c.level)]
                cur.setdefault(c.test_code, []).append(
                    ControlPoint(ordinal[code], c.level, (c.value - lo.mean) / lo.sd))
        for tcode, points in cur.items():
            hist = past.setdefault((analyzer, tcode), [])
            vs = evaluate(hist[-40:], points)
            if status_of(vs) == "reject":
                verdict[(code, tcode)] = (f"QC reject on {analyzer} run {code}: " + ", ".join(
                    v.label for v in vs if v.rejects))
            hist.extend(points)
    for r in ds.results:
        r.qc_hold = verdict.get((r.run_code, r.test_code), "")


# --- the replay file ----------------------------------------------------------------------------
def human_verdict(r: NewResult, catalog: Catalog) -> str:
    """What a careful reviewer does: hold a wrong result they could see, and every
    critical value.

    A person sees what the rules see.  A swapped tube of a patient with no earlier result
    looks like any new patient, and a small analyzer shift that the controls did not flag
    looks like any result, so neither is held by the reviewer either; the replay's
    ``error`` column keeps the truth, and the benchmark counts those misses against the
    rules all the same.  (An ideal oracle that held them would make every rule set fail
    validation on data no reviewer could have judged.)
    """
    visible = r.error is not None and not (
        (r.error == "wbit" and not r.previous) or (r.error == "shift" and not r.qc_hold))
    if visible:
        return "hold"
    t = catalog.test(r.test_code)
    if (t.critical_low is not None and r.value < t.critical_low) or \
            (t.critical_high is not None and r.value > t.critical_high):
        return "hold"
    return "release"


def replay_lines(ds: Dataset, catalog: Catalog | None = None) -> list[dict[str, Any]]:
    catalog = catalog or get_catalog()
    out = []
    for r in ds.results:
        out.append({
            "result": {"test_code": r.test_code, "value": r.value, "units": r.units,
                       "flags": list(r.flags), "hil": dict(r.hil), "sex": r.sex,
                       "age_y": r.age_y, "specimen_hold": r.specimen_hold,
                       "qc_hold": r.qc_hold, "measured_at": r.measured_at.isoformat(),
                       "specimen": r.accession, "patient_id": r.patient_id,
                       "site_id": r.site_id},
            "previous": [{"test_code": p.test_code, "value": p.value, "at": p.at.isoformat()}
                         for p in r.previous],
            "human": human_verdict(r, catalog), "error": r.error})
    return out


def write_replay(ds: Dataset, path: Path, catalog: Catalog | None = None) -> int:
    """Write the replay file (JSON lines, lab/validate_rules.py's format); the count."""
    lines = replay_lines(ds, catalog)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                    encoding="utf-8")
    return len(lines)


# --- into a center's database --------------------------------------------------------------------
@dataclass
class Loaded:
    #: Result id -> the NewResult it stores.
    results: dict[int, NewResult]
    #: Run code -> run id (data and history runs).
    runs: dict[str, int]
    data_runs: list[int]


def load(session: Session, ds: Dataset, *, add_sites: bool = True, actor: str = "dataset",
         ) -> Loaded:
    """Store the dataset: sites, one order per visit (and one per previous visit, its
    results released), tubes with HIL and collection, runs, lots, controls (their z) and
    the new results (pending, on their run).  Bulk ORM adds, flushed; the caller commits."""
    if add_sites:
        for site in SITES:
            add_site(session, SiteSpec(id=site, name=site, ae_title=site.upper()[:16],
                                       host="127.0.0.1", port=104,
                                       allowed_addresses=("127.0.0.1",)), actor=actor)
    run_ids: dict[str, int] = {}
    for analyzer, code, at in ds.runs:
        run = LabRun(analyzer_id=analyzer, run_code=code, started_at=at, state="received")
        session.add(run)
        session.flush()
        run_ids[code] = run.id
    lot_ids: dict[tuple[str, str, int], LabControlLot] = {}
    for lo in ds.lots:
        lot_row = LabControlLot(analyzer_id=lo.analyzer_id, lot=lo.lot,
                                test_code=lo.test_code, level=lo.level, mean=lo.mean,
                                sd=lo.sd, active=True)
        session.add(lot_row)
        lot_ids[(lo.analyzer_id, lo.test_code, lo.level)] = lot_row
    session.flush()
    session.add_all([
        LabControlResult(lot_id=lot_ids[(c.analyzer_id, c.test_code, c.level)].id,
                         run_id=run_ids[c.run_code], value=c.value,
                         z=(c.value - lot_ids[(c.analyzer_id, c.test_code, c.level)].mean)
                         / lot_ids[(c.analyzer_id, c.test_code, c.level)].sd,
                         measured_at=c.measured_at)
        for c in ds.controls])
    catalog = get_catalog()
    # Previous visits (released results), once per patient.
    n = 0
    seen: set[tuple[str, str]] = set()
    first: dict[tuple[str, str], NewResult] = {}
    for r in ds.results:
        first.setdefault((r.site_id, r.patient_id), r)
    for key, r in first.items():
        if key in seen or not r.previous:
            continue
        seen.add(key)
        by_time: dict[datetime, list[PreviousValue]] = {}
        for p in r.previous:
            by_time.setdefault(p.at, []).append(p)
        for at, values in sorted(by_time.items()):
            n += 1
            order = LabOrder(site_id=r.site_id, placer_order_number=f"PREV{n:07d}",
                             filler_order_number=f"FPREV{n:07d}", patient_id=r.patient_id,
                             sex=r.sex, birth_date=r.birth_date, state="resulted")
            session.add(order)
            session.flush()
            tubes: dict[str, LabSpecimen] = {}
            for tube, (_, stype, container, _) in TUBES.items():
                spec = LabSpecimen(order_id=order.id, accession=f"LP{n:07d}{tube[0].upper()}",
                                   specimen_type=stype, container=container,
                                   collected_at=at, condition="room", spun=tube == "serum",
                                   state="stored")
                session.add(spec)
                tubes[tube] = spec
            session.flush()
            for p in values:
                tube = "serum" if p.test_code in TUBES["serum"][3] else "edta"
                t = catalog.test(p.test_code)
                session.add(LabResult(
                    order_id=order.id, specimen_id=tubes[tube].id, site_id=r.site_id,
                    patient_id=r.patient_id, test_code=p.test_code, loinc=t.loinc,
                    state="autoverified", value=p.value, value_text=f"{p.value:g}",
                    units=t.units, analyzer_id=TUBES[tube][0], measured_at=at))
    session.flush()
    # The new visit: one order per patient, its tubes and pending results.
    orders: dict[tuple[str, str], LabOrder] = {}
    specimens: dict[str, LabSpecimen] = {}
    stored: dict[int, NewResult] = {}
    pending: list[tuple[LabResult, NewResult]] = []
    for r in ds.results:
        key = (r.site_id, r.patient_id)
        if key not in orders:
            n += 1
            orders[key] = LabOrder(site_id=r.site_id, placer_order_number=f"NEW{n:07d}",
                                   filler_order_number=f"FNEW{n:07d}",
                                   patient_id=r.patient_id, sex=r.sex,
                                   birth_date=r.birth_date, state="in_progress")
            session.add(orders[key])
            session.flush()
        if r.accession not in specimens:
            _, stype, container, _ = TUBES[r.tube]
            specimens[r.accession] = LabSpecimen(
                order_id=orders[key].id, accession=r.accession, specimen_type=stype,
                container=container, collected_at=r.collected_at, condition=r.condition,
                spun=r.spun, state="on_analyzer", hil=dict(r.hil),
                hold_reason=r.specimen_hold)
            session.add(specimens[r.accession])
            session.flush()
        t = catalog.test(r.test_code)
        row = LabResult(order_id=orders[key].id, specimen_id=specimens[r.accession].id,
                        site_id=r.site_id, patient_id=r.patient_id, test_code=r.test_code,
                        loinc=t.loinc, state="pending", value=r.value,
                        value_text=f"{r.value:.{t.decimals}f}", units=r.units,
                        instrument_flags=list(r.flags), analyzer_id=r.analyzer_id,
                        run_id=run_ids[r.run_code], measured_at=r.measured_at)
        session.add(row)
        pending.append((row, r))
    session.flush()
    for row, r in pending:
        stored[row.id] = r
    data_runs = [run_ids[code] for _, code, _ in ds.runs if "-R" in code]
    data_runs.sort(key=lambda rid: next(at for _, c, at in ds.runs if run_ids[c] == rid))
    return Loaded(results=stored, runs=run_ids, data_runs=data_runs)


def summary(ds: Dataset) -> dict[str, Any]:
    """Counts by error kind (None = error-free), specimens, runs, shifts."""
    return {"results": len(ds.results),
            "specimens": len({r.accession for r in ds.results}),
            "patients": len({(r.site_id, r.patient_id) for r in ds.results}),
            "runs": len(ds.runs), "controls": len(ds.controls),
            "by_error": {str(k): v for k, v in ds.by_error().items()},
            "shifts": [list(s) for s in ds.shifts]}


def main(argv: list[str] | None = None) -> int:
    """``python -m devkit.lab_dataset --out replay.jsonl [--error wbit=0.05 ...]``: write a
    replay file for ``rdc lab validate-rules --replay``."""
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic lab replay file (JSON lines).")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--error", action="append", default=[], metavar="KIND=RATE",
                    help=f"inject errors: one of {', '.join(ERROR_KINDS)} with its rate")
    args = ap.parse_args(argv)
    errors: dict[str, float] = {}
    for item in args.error:
        kind, _, rate = item.partition("=")
        try:
            errors[kind] = float(rate)
        except ValueError:
            ap.error(f"--error {item!r}: KIND=RATE, e.g. wbit=0.05")
    try:
        ds = generate(seed=args.seed, patients=args.patients, errors=errors)
    except ValueError as e:
        ap.error(str(e))
    n = write_replay(ds, args.out)
    print(f"wrote {n} results to {args.out}: {json.dumps(summary(ds)['by_error'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
