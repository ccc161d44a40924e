"""The autoverification rule engine: load a versioned rule file, judge results.

The rules themselves (which checks, their parameters and sources) are the readable file
``lab/rules/<version>.toml``; this module only knows how each rule id compares a result
with the catalog's limits.  An unknown rule id, an unknown parameter or a missing
safety rule in the file is refused when the file is loaded, so a typo cannot switch a
check off without anyone noticing.

:func:`evaluate` is pure and batched: it gets every result to judge (with its specimen,
patient and previous results already loaded by the caller) and returns one
:class:`Verdict` each.  Rules that look across results (the anion gap, wrong blood in
tube) see all results of one specimen at once.  It never touches the database, so the
same code judges a run (lab/autoverify.py) and a replay file (lab/validate_rules.py).

Fail-safe: anything that stops a result from being judged (a test not in the catalog,
a unit the catalog does not use, an error inside a rule) holds it with the rule
``unevaluable``; it is never released.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import ConfigurationError, NotFound
from lab import wbit
from lab.catalog import Catalog, RefRange, Test

#: The shipped rule files; ``<version>.toml`` each.
RULES_DIR = Path(__file__).resolve().parent / "rules"
#: The version used while no validated version is enabled (it ships validated by the
#: test suite: tests/test_lab_validate_rules.py replays it).
SHIPPED_VERSION = "autoverify-1"

#: Every rule the engine knows, with the params each may have.  Order of evaluation is
#: the file's.
RULE_PARAMS: Mapping[str, frozenset[str]] = {
    "unevaluable": frozenset(),
    "no-value": frozenset(),
    "specimen-hold": frozenset(),
    "qc-hold": frozenset(),
    "instrument-flag": frozenset({"release_flags"}),
    "measuring-range": frozenset(),
    "hil": frozenset(),
    "critical": frozenset(),
    "reference-range": frozenset({"widen_fraction", "limits", "not_widened"}),
    "delta": frozenset(),
    "hemolysed-potassium": frozenset({"test", "h_fraction"}),
    "anion-gap": frozenset({"low", "high"}),
    "wbit": frozenset({"window_h", "min_analytes", "z_cap", "cv_i", "cv_a", "threshold_by_k"}),
}
RULE_IDS = tuple(RULE_PARAMS)
#: Rules without which a result could be released unjudged: required, severity hold.
MANDATORY = frozenset({"unevaluable", "no-value", "specimen-hold", "qc-hold", "critical"})
SEVERITIES = frozenset({"hold", "info"})
_VERSION_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}\Z")
_AG_TESTS = ("NA", "CL", "HCO3")
#: The rules of :func:`_value_rule` (they read a numeric value).
_VALUE_RULES = frozenset({"critical", "reference-range", "delta", "hemolysed-potassium"})


class RuleFileError(ConfigurationError):
    """The rule file is not valid; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    checks: str
    severity: str
    source: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class RuleSet:
    """One version of the rules as loaded from its file (``sha256`` of the file bytes)."""

    version: str
    title: str
    rules: tuple[Rule, ...]
    sha256: str
    path: Path

    def rule(self, rule_id: str) -> Rule | None:
        for r in self.rules:
            if r.id == rule_id:
                return r
        return None


@dataclass(frozen=True)
class RuleHit:
    """One rule that fired on one result: what it found, its source, hold or info."""

    rule: str
    message: str
    source: str
    severity: str  # "hold" | "info"

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "source": self.source,
                "severity": self.severity}


@dataclass(frozen=True)
class Previous:
    """A previous released result of the same patient (same site), any test."""

    test_code: str
    value: float
    at: datetime


@dataclass(frozen=True)
class ResultInput:
    """What the rules read about one result; ``judge`` False means context only (another
    result of the same specimen, read by the anion gap and WBIT rules, not judged)."""

    key: Hashable
    specimen: Hashable
    test_code: str
    value: float | None
    value_text: str = ""
    units: str = ""
    flags: tuple[str, ...] = ()
    hil: Mapping[str, float] = field(default_factory=dict)
    sex: str = "U"
    age_y: float | None = None
    measured_at: datetime | None = None
    specimen_hold: str = ""
    qc_hold: str = ""
    previous: Sequence[Previous] = ()
    judge: bool = True


@dataclass(frozen=True)
class Verdict:
    key: Hashable
    state: str  # "autoverified" | "held"
    hits: tuple[RuleHit, ...]
    abnormal_flag: str
    critical: bool
    ref_low: float | None
    ref_high: float | None

    @property
    def held(self) -> bool:
        return self.state == "held"


# --- loading ---------------------------------------------------------------------------
def rule_file(version: str, rules_dir: Path | None = None) -> Path:
    """The file of ``version``; NotFound when there is none, InvalidInput-like refusal of
    a version name that could point outside the rules folder."""
    if not _VERSION_RE.match(version):
        raise NotFound(f"rule set version {version!r} is not a valid name "
                       f"(lowercase letters, digits, '.', '-')")
    path = (rules_dir or RULES_DIR) / f"{version}.toml"
    if not path.is_file():
        raise NotFound(f"no rule file for version {version!r} ({path})")
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_parsed: dict[tuple[Path, str], RuleSet] = {}


def load_rule_set(path: Path) -> RuleSet:
    """Read and check a rule file; RuleFileError names the file, rule and field.

    The bytes are read and hashed on every call (the sha256 is what a validation is
    bound to, so an edit is always seen); only the parse is cached, by that hash."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RuleFileError(f"rule file {path} cannot be read: {e.strerror or e}") from e
    key = (path, hashlib.sha256(raw).hexdigest())
    hit = _parsed.get(key)
    if hit is None:
        hit = _parse(path, raw)
        _parsed[key] = hit
    return hit


def _parse(path: Path, raw: bytes) -> RuleSet:
    where = str(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RuleFileError(f"{where}: not a valid TOML file: {e}") from e
    head = data.get("rule_set")
    if not isinstance(head, dict):
        raise RuleFileError(f"{where}: [rule_set] table with version and title is missing")
    version = head.get("version")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise RuleFileError(f"{where}: rule_set.version must be a name like 'autoverify-1'")
    if version != path.stem:
        raise RuleFileError(f"{where}: rule_set.version {version!r} must be the file's "
                            f"name ({path.stem!r})")
    unknown_top = set(data) - {"rule_set", "rules"}
    if unknown_top:
        raise RuleFileError(f"{where}: unknown tables {sorted(unknown_top)}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RuleFileError(f"{where}: no [[rules]]")
    rules = tuple(_rule(where, i, r) for i, r in enumerate(raw_rules))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuleFileError(f"{where}: rule ids appear twice: {dupes}")
    for needed in sorted(MANDATORY):
        r = next((x for x in rules if x.id == needed), None)
        if r is None:
            raise RuleFileError(f"{where}: the rule {needed!r} is required (without it a "
                                f"result could be released unjudged)")
        if r.severity != "hold":
            raise RuleFileError(f"{where}: rule {needed!r}: severity must be 'hold'")
    return RuleSet(version=version, title=str(head.get("title", "")), rules=rules,
                   sha256=hashlib.sha256(raw).hexdigest(), path=path)


def _rule(where: str, index: int, raw: object) -> Rule:
    if not isinstance(raw, dict):
        raise RuleFileError(f"{where}: rules[{index}] is not a table")
    rid = raw.get("id")
    if not isinstance(rid, str) or rid not in RULE_PARAMS:
        raise RuleFileError(f"{where}: rules[{index}]: unknown rule id {rid!r}; known: "
                            f"{', '.join(RULE_IDS)}")
    here = f"{where}: rule {rid!r}"
    unknown = set(raw) - {"id", "title", "checks", "severity", "source", "params"}
    if unknown:
        raise RuleFileError(f"{here}: unknown fields {sorted(unknown)}")
    texts: dict[str, str] = {}
    for key in ("title", "checks", "source"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RuleFileError(f"{here}: {key} is required (text)")
        texts[key] = value.strip()
    severity = raw.get("severity")
    if severity not in SEVERITIES:
        raise RuleFileError(f"{here}: severity must be 'hold' or 'info', not {severity!r}")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise RuleFileError(f"{here}: params must be a table")
    bad = set(params) - RULE_PARAMS[rid]
    if bad:
        raise RuleFileError(f"{here}: unknown params {sorted(bad)}; it reads "
                            f"{sorted(RULE_PARAMS[rid]) or 'none'}")
    missing = RULE_PARAMS[rid] - set(params) - {"limits", "not_widened"}
    if missing:
        raise RuleFileError(f"{here}: params {sorted(missing)} are required")
    try:
        _check_params(rid, params)
    except (ValueError, TypeError, KeyError) as e:
        raise RuleFileError(f"{here}: params: {e}") from e
    return Rule(id=rid, title=texts["title"], checks=texts["checks"], severity=str(severity),
                source=texts["source"], params=params)


def _check_params(rid: str, p: Mapping[str, Any]) -> None:
    if rid == "instrument-flag":
        if not isinstance(p["release_flags"], list) or not all(
                isinstance(f, str) for f in p["release_flags"]):
            raise ValueError("release_flags must be a list of flags")
    elif rid == "reference-range":
        if not 0 <= float(p["widen_fraction"]) <= 2:
            raise ValueError("widen_fraction must be between 0 and 2")
        for code, lim in dict(p.get("limits", {})).items():
            if (not isinstance(lim, list) or len(lim) != 2
                    or float(lim[0]) >= float(lim[1])):
                raise ValueError(f"limits.{code} must be [low, high] with low < high")
        if not isinstance(p.get("not_widened", []), list):
            raise ValueError("not_widened must be a list of test codes")
    elif rid == "hemolysed-potassium":
        if not 0 < float(p["h_fraction"]) <= 1 or not isinstance(p["test"], str):
            raise ValueError("h_fraction must be in (0, 1] and test a test code")
    elif rid == "anion-gap":
        if float(p["low"]) >= float(p["high"]):
            raise ValueError("low must be below high")
    elif rid == "wbit":
        wbit.WbitParams.from_params(p)


# --- classification (catalog limits; used by the rules, the DB layer and the replay) ---
def censored_bound(value_text: str) -> tuple[str, float] | None:
    """("<" or ">", bound) of a value reported beyond the measuring range ("<0.1",
    ">=40"); None for anything else."""
    text = value_text.strip()
    if text[:1] not in ("<", ">"):
        return None
    try:
        bound = float(text[1:].lstrip("=").strip())
    except ValueError:
        return None
    return (text[0], bound) if math.isfinite(bound) else None


def classify_value(value: float | None, test: Test, sex: str, age_y: float | None,
                   value_text: str = "") -> tuple[str, bool, RefRange | None]:
    """(HL7 0078 abnormal flag, critical, reference range) of a value; no value → "",
    unless the analyzer reported it beyond its measuring range ("<x" / ">x"): then the
    bound is what is known, e.g. K ">10" is critical."""
    rng = test.reference_range(sex, age_y)
    if value is None or not math.isfinite(value):
        censored = censored_bound(value_text)
        if censored is None:
            return "", False, rng
        op, bound = censored
        if op == ">":
            if test.critical_high is not None and bound >= test.critical_high:
                return "HH", True, rng
            high = rng.high if rng is not None else None
            return ("H" if high is not None and bound >= high else ""), False, rng
        if test.critical_low is not None and bound <= test.critical_low:
            return "LL", True, rng
        low = rng.low if rng is not None else None
        return ("L" if low is not None and bound <= low else ""), False, rng
    if test.critical_low is not None and value < test.critical_low:
        return "LL", True, rng
    if test.critical_high is not None and value > test.critical_high:
        return "HH", True, rng
    if rng is not None and rng.low is not None and value < rng.low:
        return "L", False, rng
    if rng is not None and rng.high is not None and value > rng.high:
        return "H", False, rng
    return "", False, rng


def autoverification_limits(rule: Rule, test: Test,
                            rng: RefRange | None) -> tuple[float | None, float | None]:
    """The range inside which an abnormal result is still released (see the rule file)."""
    p = rule.params
    explicit = dict(p.get("limits", {})).get(test.code)
    if explicit is not None:
        return float(explicit[0]), float(explicit[1])
    if rng is None:
        return None, None
    frac = 0.0 if test.code in p.get("not_widened", []) else float(p["widen_fraction"])
    if rng.low is not None and rng.high is not None:
        width = rng.high - rng.low
    else:
        width = abs(rng.high if rng.high is not None else (rng.low or 0.0))
    low = None if rng.low is None else rng.low - frac * width
    high = None if rng.high is None else rng.high + frac * width
    return low, high


# --- evaluation -------------------------------------------------------------------------
def evaluate(rule_set: RuleSet, catalog: Catalog,
             inputs: Sequence[ResultInput]) -> list[Verdict]:
    """One verdict per input with ``judge`` True, in input order.  Pure."""
    hits: dict[int, list[RuleHit]] = defaultdict(list)
    evaluable: dict[int, Test] = {}
    for i, item in enumerate(inputs):
        try:
            test = _single(rule_set, catalog, item, hits[i])
        except Exception as e:  # a rule that cannot run holds, never releases
            hits[i].append(_unevaluable(rule_set, f"the rules could not be evaluated: {e}"))
            test = None
        if test is not None:
            evaluable[i] = test
    by_specimen: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(inputs):
        by_specimen[item.specimen].append(i)
    wbit_rule = rule_set.rule("wbit")
    wbit_params = None if wbit_rule is None else wbit.WbitParams.from_params(wbit_rule.params)
    for members in by_specimen.values():
        try:
            _anion_gap(rule_set, inputs, members, hits)
            if wbit_rule is not None and wbit_params is not None:
                _wbit(wbit_rule, wbit_params, inputs, members, hits)
        except Exception as e:
            for i in members:
                hits[i].append(_unevaluable(rule_set, f"specimen rules failed: {e}"))
    verdicts = []
    for i, item in enumerate(inputs):
        if not item.judge:
            continue
        test_or_none = evaluable.get(i)
        flag, critical, rng = ("", False, None)
        if test_or_none is not None:
            flag, critical, rng = classify_value(item.value, test_or_none, item.sex,
                                                 item.age_y, item.value_text)
        mine = tuple(hits[i])
        held = any(h.severity == "hold" for h in mine)
        verdicts.append(Verdict(
            key=item.key, state="held" if held else "autoverified", hits=mine,
            abnormal_flag=flag, critical=critical,
            ref_low=rng.low if rng else None, ref_high=rng.high if rng else None))
    return verdicts


def unevaluable_verdicts(inputs: Sequence[ResultInput], reason: str) -> list[Verdict]:
    """Every judged input held with ``reason`` (no usable rule set or catalog)."""
    hit = RuleHit(rule="unevaluable", message=reason, severity="hold",
                  source="CLSI AUTO10-A: a result the algorithm cannot judge goes to "
                         "manual review.")
    return [Verdict(key=i.key, state="held", hits=(hit,), abnormal_flag="", critical=False,
                    ref_low=None, ref_high=None) for i in inputs if i.judge]


def _hit(rule: Rule, message: str, severity: str | None = None) -> RuleHit:
    return RuleHit(rule=rule.id, message=message, source=rule.source,
                   severity=severity or rule.severity)


def _unevaluable(rule_set: RuleSet, message: str) -> RuleHit:
    rule = rule_set.rule("unevaluable")
    assert rule is not None  # mandatory: checked on load
    return _hit(rule, message, "hold")


def _fmt(value: float | None, test: Test | None = None) -> str:
    if value is None:
        return "none"
    decimals = test.decimals if test is not None else 2
    return f"{value:.{decimals}f}"


def _single(rs: RuleSet, catalog: Catalog, item: ResultInput,
            out: list[RuleHit]) -> Test | None:
    """The rules that read one result alone; returns its test (None: unevaluable)."""
    test = catalog.tests.get(item.test_code)
    if test is None:
        out.append(_unevaluable(rs, f"test {item.test_code!r} is not in catalog "
                                    f"{catalog.version}: its limits are unknown"))
        return None
    if item.units and item.units != test.units:
        out.append(_unevaluable(rs, f"{test.code} in {item.units!r}, but the catalog's "
                                    f"limits are in {test.units!r}"))
        return None
    if not item.judge:
        return test
    value = item.value
    has_value = value is not None and math.isfinite(value)
    for rule in rs.rules:
        rid = rule.id
        if rid == "specimen-hold" and item.specimen_hold:
            out.append(_hit(rule, f"specimen held: {item.specimen_hold}"))
        elif rid == "qc-hold" and item.qc_hold:
            out.append(_hit(rule, item.qc_hold))
        elif rid == "no-value" and not has_value:
            shown = item.value_text or "nothing"
            out.append(_hit(rule, f"no numeric value ({shown!r}): {test.code} could not be "
                                  f"judged"))
        elif rid == "instrument-flag":
            release = set(rule.params["release_flags"])
            other = [f for f in item.flags if f not in release]
            if other:
                out.append(_hit(rule, f"analyzer flag(s) {', '.join(other)}"))
        elif rid == "hil":
            for index, limit in sorted(test.hil.items()):
                measured = item.hil.get(index)
                if measured is not None and measured > limit:
                    out.append(_hit(rule, f"{index} index {measured:g} above {test.code}'s "
                                          f"limit {limit:g}"))
        elif rid == "measuring-range":
            _measuring(rule, test, item, out)
        elif rid == "critical" and not has_value:
            flag, critical, _ = classify_value(None, test, item.sex, item.age_y,
                                               item.value_text)
            if critical:
                bound = test.critical_low if flag == "LL" else test.critical_high
                side = "below" if flag == "LL" else "above"
                out.append(_hit(rule, f"critical: {test.code} reported as "
                                      f"{item.value_text.strip()!r} {test.units}, {side} the "
                                      f"critical limit {bound:g}"))
        elif has_value:
            assert value is not None
            _value_rule(rule, test, item, value, out)
    return test


def _measuring(rule: Rule, test: Test, item: ResultInput, out: list[RuleHit]) -> None:
    text = item.value_text.strip()
    if text[:1] in ("<", ">"):
        out.append(_hit(rule, f"reported as {text!r}: outside the measuring range"))
        return
    v = item.value
    if v is None or not math.isfinite(v):
        return
    if test.measuring_low is not None and v < test.measuring_low:
        out.append(_hit(rule, f"{_fmt(v, test)} below the measuring range "
                              f"(from {test.measuring_low:g} {test.units})"))
    elif test.measuring_high is not None and v > test.measuring_high:
        out.append(_hit(rule, f"{_fmt(v, test)} above the measuring range "
                              f"(up to {test.measuring_high:g} {test.units})"))


def _value_rule(rule: Rule, test: Test, item: ResultInput, value: float,
                out: list[RuleHit]) -> None:
    rid = rule.id
    if rid not in _VALUE_RULES:
        return
    shown = f"{test.code} {_fmt(value, test)} {test.units}"
    if rid == "critical":
        flag, critical, _ = classify_value(value, test, item.sex, item.age_y)
        if critical:
            limit = test.critical_low if flag == "LL" else test.critical_high
            side = "below" if flag == "LL" else "above"
            out.append(_hit(rule, f"critical: {shown} {side} the critical limit {limit:g}"))
    elif rid == "reference-range":
        flag, critical, rng = classify_value(value, test, item.sex, item.age_y)
        if rng is None:
            age = "unknown" if item.age_y is None else f"{item.age_y:.0f} y"
            out.append(_hit(rule, f"no reference range of {test.code} for this patient "
                                  f"(sex {item.sex or 'U'}, age {age}): cannot be judged"))
        elif ((rng.low is not None and value < rng.low)
              or (rng.high is not None and value > rng.high)):
            flag = "L" if rng.low is not None and value < rng.low else "H"
            low, high = autoverification_limits(rule, test, rng)
            outside = ((low is not None and value < low)
                       or (high is not None and value > high))
            span = f"{_fmt(low, test)}-{_fmt(high, test)}"
            ref = f"{_fmt(rng.low, test)}-{_fmt(rng.high, test)}"
            if outside:
                out.append(_hit(rule, f"{shown} outside the autoverification range {span} "
                                      f"(reference {ref})"))
            else:
                out.append(_hit(rule, f"{shown} flagged {flag} (reference {ref}), inside "
                                      f"the autoverification range {span}", "info"))
    elif rid == "delta":
        _delta(rule, test, item, value, out)
    elif rid == "hemolysed-potassium" and test.code == rule.params["test"]:
        _, _, rng = classify_value(value, test, item.sex, item.age_y)
        h_limit = test.hil.get("H")
        h = item.hil.get("H")
        if (rng is not None and rng.high is not None and value > rng.high
                and h_limit is not None and h is not None
                and h > float(rule.params["h_fraction"]) * h_limit):
            out.append(_hit(rule, f"{shown} above the reference range with hemolysis index "
                                  f"H {h:g} (over {rule.params['h_fraction']} of the limit "
                                  f"{h_limit:g}): possibly released from red cells"))


def _latest_before(previous: Sequence[Previous], code: str, at: datetime | None,
                   window_h: float) -> Previous | None:
    best: Previous | None = None
    for p in previous:
        if p.test_code != code:
            continue
        if at is not None and not (at - timedelta(hours=window_h) <= p.at < at):
            continue
        if best is None or p.at > best.at:
            best = p
    return best


def _delta(rule: Rule, test: Test, item: ResultInput, value: float,
           out: list[RuleHit]) -> None:
    if test.delta is None or item.measured_at is None:
        return
    prev = _latest_before(item.previous, test.code, item.measured_at, test.delta.window_h)
    if prev is None:
        return
    change = value - prev.value
    pct = math.inf if prev.value == 0 else abs(change) / abs(prev.value) * 100.0
    if abs(change) > test.delta.abs and pct > test.delta.pct:
        hours = (item.measured_at - prev.at).total_seconds() / 3600.0
        out.append(_hit(rule, f"{test.code} changed {change:+.{test.decimals}f} {test.units} "
                              f"({pct:.0f} %) from {_fmt(prev.value, test)} {hours:.0f} h "
                              f"earlier (limits {test.delta.abs:g} {test.units} and "
                              f"{test.delta.pct:g} % within {test.delta.window_h:g} h)"))


def _numeric(item: ResultInput) -> float | None:
    v = item.value
    return v if v is not None and math.isfinite(v) else None


def _anion_gap(rs: RuleSet, inputs: Sequence[ResultInput], members: list[int],
               hits: dict[int, list[RuleHit]]) -> None:
    rule = rs.rule("anion-gap")
    if rule is None:
        return
    found: dict[str, int] = {}
    for i in members:
        if inputs[i].test_code in _AG_TESTS and _numeric(inputs[i]) is not None:
            found[inputs[i].test_code] = i
    if len(found) < 3:
        return
    na, cl, hco3 = (_numeric(inputs[found[c]]) for c in _AG_TESTS)
    assert na is not None and cl is not None and hco3 is not None
    gap = na - (cl + hco3)
    low, high = float(rule.params["low"]), float(rule.params["high"])
    if low <= gap <= high:
        return
    msg = (f"anion gap Na - (Cl + HCO3) = {na:g} - ({cl:g} + {hco3:g}) = {gap:.1f} mmol/L, "
           f"outside {low:g}-{high:g}")
    for code in _AG_TESTS:
        hits[found[code]].append(_hit(rule, msg))


def _wbit(rule: Rule, params: wbit.WbitParams, inputs: Sequence[ResultInput],
          members: list[int], hits: dict[int, list[RuleHit]]) -> None:
    current: dict[str, float] = {}
    previous: dict[str, float] = {}
    for i in members:
        item = inputs[i]
        v = _numeric(item)
        if v is None or item.test_code not in params.cv_i or item.measured_at is None:
            continue
        prev = _latest_before(item.previous, item.test_code, item.measured_at,
                              params.window_h)
        if prev is None:
            continue
        current[item.test_code] = v
        previous[item.test_code] = prev.value
    result = wbit.score(current, previous, params)
    if result is None or not result.suspect:
        return
    detail = ", ".join(f"{c} z={z:+.1f}" for c, z in sorted(result.z.items()))
    msg = (f"possible wrong blood in tube: {result.k} analytes together moved "
           f"{result.score:.1f} against the patient's previous results (threshold "
           f"{result.threshold:g}): {detail}")
    # The whole tube is suspect, not only the analytes scored: every result of it holds.
    for i in members:
        hits[i].append(_hit(rule, msg))
