"""Validation of a rule set by replay (CLSI AUTO10-A), and which version is enabled.

A replay file holds past results with the verdict a person gave each, one JSON object a
line (devkit/lab_dataset.py writes them)::

    {"result": {"test_code": "K", "value": 4.1, "units": "mmol/L", "flags": [],
                "hil": {"H": 10}, "sex": "F", "age_y": 54.2, "specimen_hold": "",
                "qc_hold": "", "measured_at": "2026-11-30T08:12:00+00:00",
                "specimen": "S123"},
     "previous": [{"test_code": "K", "value": 3.9, "at": "2026-11-28T07:50:00+00:00"}],
     "human": "release" | "hold", "error": "wbit" | "hemolysis" | ... | null}

``specimen`` is optional: lines with the same specimen are judged together (the anion
gap and WBIT rules read a specimen's results at once); without it each line is its own
specimen.  ``value`` null (with ``value_text``) is a result with no numeric value.

The report gives the agreement with the people, the autoverification rate, the
sensitivity for results a person held (held by the rules too), the positive predictive
value of a hold, and per injected error kind the share the rules held.  It passes when
the sensitivity is at least :data:`MIN_SENSITIVITY` and no critical value would have
been released.  The outcome is recorded on the version's LabRuleSet row with the rule
file's sha256; :func:`enable_rule_set` refuses a version whose current file is not the
one that passed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput
from core.models.lab import LabRuleSet
from lab import rules_engine
from lab.catalog import Catalog
from lab.rules_engine import Previous, ResultInput, RuleFileError, RuleSet

#: Of the results a person held, the share the rules must hold too.
MIN_SENSITIVITY = 0.99
_VERDICTS = frozenset({"release", "hold"})


@dataclass(frozen=True)
class ReplayLine:
    item: ResultInput
    human: str
    error: str | None


@dataclass
class ValidationReport:
    version: str
    file_sha256: str
    replay: str
    replay_sha256: str
    results: int
    agreement: float
    autoverification_rate: float
    human_held: int
    rules_held: int
    held_by_both: int
    sensitivity: float | None
    ppv: float | None
    critical_results: int
    critical_released: int
    by_error: dict[str, dict[str, float | int]] = field(default_factory=dict)
    passed: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the replay file ----------------------------------------------------------------------
def _time(raw: object, where: str) -> datetime:
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}: a time must be an ISO 8601 text")
    try:
        t = datetime.fromisoformat(raw)
    except ValueError as e:
        raise InvalidInput(f"{where}: {raw!r} is not an ISO 8601 time") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _number(raw: object, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidInput(f"{where}: must be a number or null")
    return float(raw)


def _line(n: int, text: str) -> ReplayLine:
    where = f"line {n}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{where}: not JSON: {e}") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("result"), dict):
        raise InvalidInput(f"{where}: an object with 'result', 'previous', 'human' expected")
    r = obj["result"]
    code = r.get("test_code")
    if not isinstance(code, str) or not code:
        raise InvalidInput(f"{where}: result.test_code is required")
    human = obj.get("human")
    if human not in _VERDICTS:
        raise InvalidInput(f"{where}: human must be 'release' or 'hold', not {human!r}")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise InvalidInput(f"{where}: error must be a text or null")
    previous = []
    for i, p in enumerate(obj.get("previous") or []):
        pw = f"{where}: previous[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("test_code"), str):
            raise InvalidInput(f"{pw}: test_code, value and at are required")
        value = _number(p.get("value"), f"{pw}.value")
        if value is None:
            continue
        previous.append(Previous(p["test_code"], value, _time(p.get("at"), f"{pw}.at")))
    hil = r.get("hil") or {}
    flags = r.get("flags") or []
    if not isinstance(hil, dict) or not isinstance(flags, list):
        raise InvalidInput(f"{where}: result.hil must be an object and flags a list")
    age = _number(r.get("age_y"), f"{where}: result.age_y")
    measured = r.get("measured_at")
    item = ResultInput(
        key=n, specimen=r.get("specimen") or f"line-{n}", test_code=code,
        value=_number(r.get("value"), f"{where}: result.value"),
        value_text=str(r.get("value_text") or ""), units=str(r.get("units") or ""),
        flags=tuple(str(f) for f in flags),
        hil={str(k): float(v) for k, v in hil.items()
             if isinstance(v, int | float) and not isinstance(v, bool)},
        sex=str(r.get("sex") or "U"), age_y=age,
        measured_at=None if measured is None else _time(measured, f"{where}: measured_at"),
        specimen_hold=str(r.get("specimen_hold") or ""), qc_hold=str(r.get("qc_hold") or ""),
        previous=tuple(previous))
    return ReplayLine(item=item, human=str(human), error=error)


def read_replay(path: Path) -> list[ReplayLine]:
    """Every line of a replay file; InvalidInput names the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read the replay file {path}: {e}") from e
    lines = [_line(n, t) for n, t in enumerate(text.splitlines(), 1) if t.strip()]
    if not lines:
        raise InvalidInput(f"the replay file {path} has no results")
    return lines


# --- the report ---------------------------------------------------------------------------
def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


def validate(rule_set: RuleSet, catalog: Catalog, lines: Sequence[ReplayLine], *,
             replay: str = "", replay_sha256: str = "") -> ValidationReport:
    """Judge every replayed result with ``rule_set`` and compare with the people.  Pure."""
    verdicts = rules_engine.evaluate(rule_set, catalog, [ln.item for ln in lines])
    n = len(lines)
    human_held = rules_held = both = agree = critical = critical_released = 0
    per_error: dict[str, list[int]] = {}
    for ln, v in zip(lines, verdicts, strict=True):
        h = ln.human == "hold"
        human_held += h
        rules_held += v.held
        both += h and v.held
        agree += h == v.held
        test = catalog.tests.get(ln.item.test_code)
        is_critical = test is not None and rules_engine.classify_value(
            ln.item.value, test, ln.item.sex, ln.item.age_y, ln.item.value_text)[1]
        critical += is_critical
        critical_released += is_critical and not v.held
        if ln.error:
            counts = per_error.setdefault(ln.error, [0, 0])
            counts[0] += 1
            counts[1] += v.held
    sensitivity = _ratio(both, human_held)
    report = ValidationReport(
        version=rule_set.version, file_sha256=rule_set.sha256, replay=replay,
        replay_sha256=replay_sha256, results=n, agreement=agree / n,
        autoverification_rate=(n - rules_held) / n, human_held=human_held,
        rules_held=rules_held, held_by_both=both, sensitivity=sensitivity,
        ppv=_ratio(both, rules_held), critical_results=critical,
        critical_released=critical_released,
        by_error={k: {"results": c[0], "held": c[1], "sensitivity": c[1] / c[0]}
                  for k, c in sorted(per_error.items())})
    if sensitivity is None:
        report.reasons.append("no result of the replay was held by a person: the "
                              "sensitivity cannot be measured")
    elif sensitivity < MIN_SENSITIVITY or math.isnan(sensitivity):
        report.reasons.append(f"sensitivity {sensitivity:.4f} for results a person held is "
                              f"below {MIN_SENSITIVITY}")
    if critical_released:
        report.reasons.append(f"{critical_released} critical value(s) would have been "
                              f"released")
    report.passed = not report.reasons
    return report


def replay_file(rule_set: RuleSet, catalog: Catalog, path: Path) -> ValidationReport:
    """Read ``path`` and validate ``rule_set`` against it."""
    lines = read_replay(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return validate(rule_set, catalog, lines, replay=path.name, replay_sha256=sha)


# --- the versions in the database ------------------------------------------------------------
def record_validation(session: Session, report: ValidationReport, *, actor: str,
                      now: datetime | None = None) -> LabRuleSet:
    """Write the report on the version's row (one row per version; a new validation
    replaces the old one, and a failing one turns the version off)."""
    row = session.scalar(select(LabRuleSet).where(LabRuleSet.version == report.version))
    moment = now or datetime.now(UTC)
    if row is None:
        row = LabRuleSet(version=report.version, file_sha256=report.file_sha256)
        session.add(row)
    row.file_sha256 = report.file_sha256
    row.validation = report.to_dict()
    row.validated_at = moment
    row.validated_by = actor
    if not report.passed and row.enabled:
        row.enabled = False
    session.flush()
    audit.append(session, actor=actor, action="lab.rules_validate", object_type="lab_rule_set",
                 object_id=report.version, detail={
                     "file_sha256": report.file_sha256, "replay": report.replay,
                     "replay_sha256": report.replay_sha256, "passed": report.passed,
                     "sensitivity": report.sensitivity,
                     "autoverification_rate": report.autoverification_rate,
                     "reasons": report.reasons})
    return row


def enable_rule_set(session: Session, version: str, *, actor: str,
                    rules_dir: Path | None = None, now: datetime | None = None) -> LabRuleSet:
    """Enable ``version`` (and disable the others): only with a passing validation of the
    file as it is now (same sha256); Conflict says what is missing."""
    path = rules_engine.rule_file(version, rules_dir)
    rule_set = rules_engine.load_rule_set(path)
    row = session.scalar(select(LabRuleSet).where(LabRuleSet.version == version))
    if row is None:
        raise Conflict(f"rule set {version} has never been validated: run "
                       f"`rdc lab validate-rules --replay FILE --version {version}` first")
    if not row.validation.get("passed"):
        raise Conflict(f"rule set {version} did not pass its last validation: "
                       f"{'; '.join(row.validation.get('reasons', [])) or 'no report'}")
    if row.file_sha256 != rule_set.sha256:
        raise Conflict(f"rule file {path.name} changed since it was validated (sha256 "
                       f"{rule_set.sha256[:12]}..., validated {row.file_sha256[:12]}...): "
                       f"validate it again")
    moment = now or datetime.now(UTC)
    for other in session.scalars(select(LabRuleSet).where(LabRuleSet.enabled.is_(True))):
        if other.id != row.id:
            other.enabled = False
    row.enabled = True
    row.enabled_at = moment
    row.enabled_by = actor
    session.flush()
    audit.append(session, actor=actor, action="lab.rules_enable", object_type="lab_rule_set",
                 object_id=version, detail={"file_sha256": row.file_sha256,
                                            "validated_at": row.validated_at.isoformat()})
    return row


def active_rule_set(session: Session, rules_dir: Path | None = None) -> RuleSet:
    """The enabled version, checked against the sha256 it was validated with.

    While no version is enabled, the shipped ``autoverify-1`` is used: it ships validated
    (tests/test_lab_validate_rules.py replays it and fails the build if it does not
    pass), so a new center autoverifies from its first run.  An enabled file that was
    edited or removed is refused (RuleFileError / NotFound): autoverify then holds every
    result saying so.
    """
    row = session.scalar(select(LabRuleSet).where(LabRuleSet.enabled.is_(True)))
    if row is None:
        return rules_engine.load_rule_set(
            rules_engine.rule_file(rules_engine.SHIPPED_VERSION, rules_dir))
    rule_set = rules_engine.load_rule_set(rules_engine.rule_file(row.version, rules_dir))
    if rule_set.sha256 != row.file_sha256:
        raise RuleFileError(f"the enabled rule file {rule_set.path.name} changed since it "
                            f"was validated: validate and enable it again")
    return rule_set


def rule_sets(session: Session, rules_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every version with a file or a row: validated?, passed?, enabled?, file changed?"""
    rows = {r.version: r for r in session.scalars(select(LabRuleSet))}
    folder = rules_dir or rules_engine.RULES_DIR
    versions = sorted(set(rows) | {p.stem for p in folder.glob("*.toml")})
    out = []
    for v in versions:
        row = rows.get(v)
        path = folder / f"{v}.toml"
        sha = rules_engine.file_sha256(path) if path.is_file() else None
        out.append({
            "version": v, "file": str(path) if sha else None, "file_sha256": sha,
            "validated": row is not None,
            "passed": bool(row and row.validation.get("passed")),
            "validated_at": row.validated_at.isoformat() if row else None,
            "enabled": bool(row and row.enabled),
            "file_changed": bool(row and sha and sha != row.file_sha256),
            "in_use": False})
    if not any(o["enabled"] for o in out):
        for o in out:
            o["in_use"] = o["version"] == rules_engine.SHIPPED_VERSION
    else:
        for o in out:
            o["in_use"] = o["enabled"]
    return out

