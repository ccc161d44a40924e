"""The autoverification rule engine (pure): each rule of the shipped autoverify-1 fires on
its case and not on a clean result, every rule that fired is reported, and a bad rule
file is refused with a message naming the rule and field."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import NotFound
from lab.catalog import get_catalog
from lab.rules_engine import (
    RULE_IDS,
    Previous,
    ResultInput,
    RuleFileError,
    Verdict,
    evaluate,
    load_rule_set,
    rule_file,
)

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
RULES = load_rule_set(rule_file("autoverify-1"))
CATALOG = get_catalog()


def item(code: str = "K", value: float | None = 4.2, **kw: object) -> ResultInput:
    units = CATALOG.tests[code].units if code in CATALOG.tests else ""
    base = ResultInput(key=kw.pop("key", 1), specimen=kw.pop("specimen", "S1"),  # type: ignore[arg-type]
                       test_code=code, value=value, units=units, sex="F", age_y=50.0,
                       measured_at=NOW)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def judge(*items: ResultInput) -> list[Verdict]:
    return evaluate(RULES, CATALOG, list(items))


def fired(v: Verdict) -> set[str]:
    return {h.rule for h in v.hits}


def test_shipped_file_knows_every_rule_with_sources() -> None:
    assert RULES.version == "autoverify-1"
    assert [r.id for r in RULES.rules] == list(RULE_IDS)
    for r in RULES.rules:
        assert r.source and r.checks and r.title
    assert len(RULES.sha256) == 64


def test_clean_result_is_autoverified_with_nothing_fired() -> None:
    prev = (Previous("K", 4.0, NOW - timedelta(hours=24)),)
    [v] = judge(item("K", 4.2, hil={"H": 5, "I": 1, "L": 10}, flags=("N",), previous=prev))
    assert v.state == "autoverified" and v.hits == ()
    assert (v.abnormal_flag, v.critical, v.ref_low, v.ref_high) == ("", False, 3.5, 5.3)


@pytest.mark.parametrize(("case", "rule", "text"), [
    (dict(value=None, value_text="****"), "no-value", "could not be judged"),
    (dict(specimen_hold="past stability: K 4 h room unspun"), "specimen-hold", "stability"),
    (dict(qc_hold="QC reject on CHEM1 run R1: 1-3s"), "qc-hold", "1-3s"),
    (dict(flags=("W",)), "instrument-flag", "W"),
    (dict(value=10.5), "measuring-range", "above the measuring range"),
    (dict(value=1.0, value_text="<1.0"), "measuring-range", "'<1.0'"),
    (dict(hil={"H": 80}), "hil", "H index 80"),
    (dict(value=6.5), "critical", "above the critical limit 6.2"),
    (dict(value=2.5), "critical", "below the critical limit 2.8"),
    (dict(test_code="XX"), "unevaluable", "not in catalog"),
    (dict(units="mg/dL"), "unevaluable", "mmol/L"),
    (dict(value=5.5, hil={"H": 30}), "hemolysed-potassium", "hemolysis index H 30"),
    (dict(previous=(Previous("K", 2.9, NOW - timedelta(hours=10)),), value=4.2),
     "delta", "changed +1.3"),
])
def test_each_rule_fires_on_its_case(case: dict[str, object], rule: str, text: str) -> None:
    [v] = judge(item(**case))  # type: ignore[arg-type]
    assert v.state == "held"
    hits = [h for h in v.hits if h.rule == rule]
    assert hits, f"{rule} did not fire: {v.hits}"
    assert text in hits[0].message
    assert hits[0].severity == "hold" and hits[0].source


def test_critical_marks_the_result_and_every_rule_is_listed() -> None:
    [v] = judge(item("K", 6.8, hil={"H": 80}, flags=("W",)))
    assert v.critical and v.abnormal_flag == "HH"
    assert {"critical", "hil", "instrument-flag", "reference-range"} <= fired(v)


def test_reference_range_alone_does_not_hold_inside_the_autoverification_range() -> None:
    # K 5.6 is above 5.3 but inside 5.3 + 0.5 * (5.3 - 3.5) = 6.2.
    [v] = judge(item("K", 5.6))
    assert v.state == "autoverified" and v.abnormal_flag == "H"
    [hit] = v.hits
    assert hit.rule == "reference-range" and hit.severity == "info"
    # NA 131 is below 137 - 0.5 * 10 = 132: held (not critical, 120).
    [v] = judge(item("NA", 131))
    assert v.state == "held" and not v.critical and fired(v) == {"reference-range"}
    # Glucose has explicit limits 3.0-13.9; troponin is not widened (99th percentile).
    assert judge(item("GLU", 12.0))[0].state == "autoverified"
    assert judge(item("GLU", 14.5))[0].state == "held"
    assert judge(item("TNI", 20.0, sex="F"))[0].state == "held"
    assert judge(item("TNI", 12.0, sex="F"))[0].state == "autoverified"


def test_unknown_age_with_age_dependent_ranges_is_held() -> None:
    [v] = judge(item("K", 4.2, age_y=None))
    assert v.state == "held" and "no reference range" in v.hits[0].message


def test_delta_needs_abs_and_pct_within_the_window() -> None:
    old = NOW - timedelta(hours=100)  # K's window is 72 h
    assert judge(item("K", 4.2, previous=(Previous("K", 2.9, old),)))[0].hits == ()
    # +0.9 mmol/L is 27 % but not more than 1.0 mmol/L: no delta.
    assert judge(item("K", 4.2, previous=(Previous("K", 3.3, NOW - timedelta(hours=5)),))
                 )[0].hits == ()
    # CREA +50 umol/L from 300 is only 17 % (needs 50 %).
    assert judge(item("CREA", 350, sex="M", previous=(
        Previous("CREA", 300, NOW - timedelta(hours=5)),)))[0].state == "held"  # range
    v = judge(item("CREA", 100, sex="M", previous=(
        Previous("CREA", 60, NOW - timedelta(hours=5)),)))[0]
    assert "delta" not in fired(v)
    v = judge(item("CREA", 100, sex="M", previous=(
        Previous("CREA", 40, NOW - timedelta(hours=5)),)))[0]
    assert "delta" in fired(v)


def test_hemolysed_potassium_not_on_normal_k_or_low_h() -> None:
    assert judge(item("K", 4.5, hil={"H": 40}))[0].hits == ()
    assert "hemolysed-potassium" not in fired(judge(item("K", 5.5, hil={"H": 20}))[0])


def _chem(values: dict[str, float], **kw: object) -> list[ResultInput]:
    return [item(code, v, key=i, **kw) for i, (code, v) in enumerate(values.items())]  # type: ignore[arg-type]


def test_anion_gap_holds_all_three_only_when_out_of_range() -> None:
    ok = judge(*_chem({"NA": 140, "CL": 104, "HCO3": 24, "K": 4.0}))
    assert all(v.state == "autoverified" for v in ok)
    bad = judge(*_chem({"NA": 140, "CL": 108, "HCO3": 30, "K": 4.0}))  # gap 2
    assert [("anion-gap" in fired(v)) for v in bad] == [True, True, True, False]
    assert "= 2.0 mmol/L" in bad[0].hits[0].message
    # Context results (not judged) count too: NA and CL from an earlier run.
    mixed = judge(item("NA", 140, key=1, judge=False), item("CL", 108, key=2, judge=False),
                  item("HCO3", 30, key=3))
    assert len(mixed) == 1 and "anion-gap" in fired(mixed[0])


def _heme(values: dict[str, float], before: dict[str, float]) -> list[ResultInput]:
    prev = tuple(Previous(c, v, NOW - timedelta(days=5)) for c, v in before.items())
    return [item(c, v, key=i, previous=prev) for i, (c, v) in enumerate(values.items())]


def test_wbit_fires_on_several_small_changes_a_delta_check_misses() -> None:
    before = {"MCV": 88.0, "HGB": 135.0, "PLT": 240.0, "WBC": 6.0}
    same = judge(*_heme({"MCV": 88.6, "HGB": 131.0, "PLT": 255.0, "WBC": 6.8}, before))
    assert all(v.state == "autoverified" for v in same)
    # Each change is within its delta limit (MCV 3 fL, HGB 20 g/L, PLT 50, WBC 5) ...
    other = judge(*_heme({"MCV": 90.9, "HGB": 122.0, "PLT": 200.0, "WBC": 8.5}, before))
    assert all("delta" not in fired(v) for v in other)
    # ... but together they are not this patient.
    assert all(fired(v) == {"wbit"} for v in other)
    # The whole tube is suspect: a result of it that is not scored (glucose) holds too.
    tube = judge(*_heme({"MCV": 90.9, "HGB": 122.0, "PLT": 200.0, "WBC": 8.5}, before),
                 item("GLU", 5.0, key=9))
    assert fired(tube[-1]) == {"wbit"}
    assert "wrong blood in tube" in other[0].hits[0].message


def test_an_error_inside_a_rule_holds_never_releases() -> None:
    [v] = judge(item("K", 4.2, previous=(Previous("K", 4.0, "not a time"),)))  # type: ignore[arg-type]
    assert v.state == "held" and fired(v) == {"unevaluable"}


# --- the rule file -------------------------------------------------------------------------
SHIPPED = rule_file("autoverify-1")


def _edited(tmp_path: Path, old: str, new: str, name: str = "autoverify-1") -> Path:
    path = tmp_path / f"{name}.toml"
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ('id = "hil"', 'id = "hemolysis"', "unknown rule id 'hemolysis'"),
    ('params = { test = "K", h_fraction = 0.5 }',
     'params = { test = "K", h_fraction = 0.5, h_max = 3 }', "unknown params ['h_max']"),
    ('params = { low = 3.0, high = 20.0 }', 'params = { low = 3.0 }', "params ['high'] are"),
    ('params = { low = 3.0, high = 20.0 }', 'params = { low = 30.0, high = 20.0 }',
     "low must be below high"),
    ('id = "critical"\ntitle = "Critical value"', 'id = "delta"\ntitle = "Critical value"',
     "appear twice"),
    ('checks = "The value is below', 'checks = "" #', "checks is required"),
])
def test_bad_rule_files_are_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(RuleFileError, match=None) as e:
        load_rule_set(_edited(tmp_path, old, new))
    assert message in str(e.value) and "autoverify-1.toml" in str(e.value)


def test_safety_rules_are_required_and_hold(tmp_path: Path) -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    start = text.index('[[rules]]\nid = "qc-hold"')
    end = text.index("[[rules]]", start + 5)
    path = tmp_path / "autoverify-1.toml"
    path.write_text(text[:start] + text[end:], encoding="utf-8")
    with pytest.raises(RuleFileError, match="'qc-hold' is required"):
        load_rule_set(path)
    soft = text.replace('id = "critical"\ntitle = "Critical value"\nchecks',
                        'id = "critical"\ntitle = "Critical value"\nchecks', 1)
    idx = soft.index('id = "critical"')
    soft = soft[:idx] + soft[idx:].replace('severity = "hold"', 'severity = "info"', 1)
    path.write_text(soft, encoding="utf-8")
    with pytest.raises(RuleFileError, match="'critical': severity must be 'hold'"):
        load_rule_set(path)


def test_version_must_match_the_file_name_and_exist(tmp_path: Path) -> None:
    shutil.copy(SHIPPED, tmp_path / "autoverify-9.toml")
    with pytest.raises(RuleFileError, match="must be the file's name"):
        load_rule_set(tmp_path / "autoverify-9.toml")
    with pytest.raises(NotFound, match="no rule file"):
        rule_file("autoverify-9")
    with pytest.raises(NotFound, match="not a valid name"):
        rule_file("../catalog")
    (tmp_path / "autoverify-1.toml").write_text("[rule_set\n", encoding="utf-8")
    with pytest.raises(RuleFileError, match="not a valid TOML"):
        load_rule_set(tmp_path / "autoverify-1.toml")


def test_a_value_beyond_the_measuring_range_is_classified_by_its_bound() -> None:
    [v] = judge(item("K", None, value_text=">10.0", flags=(">",)))
    assert v.state == "held" and v.critical and v.abnormal_flag == "HH"
    assert {"no-value", "instrument-flag", "measuring-range", "critical"} <= fired(v)
    crit = next(h for h in v.hits if h.rule == "critical")
    assert "reported as '>10.0'" in crit.message
    [low] = judge(item("TNI", None, value_text="<2", sex="F"))
    assert not low.critical and low.abnormal_flag == "" and "critical" not in fired(low)
