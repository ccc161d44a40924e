"""Wrong blood in tube (lab/wbit.py) on generated specimen swaps: at the same false
positive rate, the multi-analyte score finds more swaps than the best univariate delta
check of the same panel, and the rule file's chi-square threshold gives about 5 % false
positives on the patient's own specimens.

The patients are generated the way biological variation describes them: each has a
setpoint drawn from the population (between-subject SD), and each measurement varies
around it by the within-subject and analytical CVs; a swap is another patient's specimen.
"""

from __future__ import annotations

import numpy as np
import pytest

from lab import wbit
from lab.rules_engine import load_rule_set, rule_file

_RULE = load_rule_set(rule_file("autoverify-1")).rule("wbit")
assert _RULE is not None
RULE = _RULE
PARAMS = wbit.WbitParams.from_params(RULE.params)

#: Population mean and between-subject SD of each analyte (adults; orders of magnitude
#: as in the EFLM database's CVg).
POPULATION = {"MCV": (90.0, 5.0), "HGB": (138.0, 15.0), "PLT": (250.0, 60.0),
              "WBC": (6.8, 1.8), "NA": (140.0, 2.3), "CL": (104.0, 2.8),
              "HCO3": (25.0, 2.3), "K": (4.2, 0.33), "CREA": (80.0, 18.0)}
PANELS = {"cbc": ("MCV", "HGB", "PLT", "WBC"), "chemistry": ("NA", "CL", "HCO3", "K", "CREA")}
N = 4000


def _measure(rng: np.random.Generator, setpoints: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for code, sp in setpoints.items():
        cv = np.hypot(PARAMS.cv_i[code], PARAMS.cv_a[code]) / 100.0
        out[code] = sp * (1.0 + cv * rng.standard_normal(sp.shape))
    return out


Deltas = dict[str, tuple[np.ndarray, np.ndarray]]


def _simulate(panel: tuple[str, ...], seed: int) -> tuple[np.ndarray, np.ndarray, Deltas]:
    """Scores and per-analyte |relative delta| for own specimens and for swaps."""
    rng = np.random.default_rng(seed)
    setpoints = {c: rng.normal(*POPULATION[c], size=N).clip(POPULATION[c][0] * 0.3)
                 for c in panel}
    before = _measure(rng, setpoints)
    own = _measure(rng, setpoints)
    swapped_from = rng.permutation(N)
    swapped_from = np.where(swapped_from == np.arange(N), (swapped_from + 1) % N, swapped_from)
    swap = {c: _measure(rng, setpoints)[c][swapped_from] for c in panel}
    scores = []
    for now in (own, swap):
        s = []
        for i in range(N):
            result = wbit.score({c: float(now[c][i]) for c in panel},
                                {c: float(before[c][i]) for c in panel}, PARAMS)
            assert result is not None
            s.append(result.score)
        scores.append(np.array(s))
    deltas: Deltas = {c: (np.abs(own[c] - before[c]) / before[c],
                          np.abs(swap[c] - before[c]) / before[c]) for c in panel}
    return scores[0], scores[1], deltas


@pytest.mark.parametrize("panel", sorted(PANELS))
def test_multi_analyte_beats_univariate_at_equal_false_positives(panel: str) -> None:
    own, swap, deltas = _simulate(PANELS[panel], seed=14)
    fp = 0.05
    threshold = float(np.quantile(own, 1 - fp))
    multi = float(np.mean(swap > threshold))
    univariate = {}
    for code, (d_own, d_swap) in deltas.items():
        limit = float(np.quantile(d_own, 1 - fp))
        univariate[code] = float(np.mean(d_swap > limit))
    best = max(univariate.values())
    # The best single analyte of the panel (MCV for a blood count) at 5 % false positives
    # finds fewer swaps than all of them together, by a clear margin.
    assert multi > best + 0.08, (multi, univariate)
    assert multi > 0.75, (multi, univariate)


@pytest.mark.parametrize("panel", sorted(PANELS))
def test_rule_threshold_gives_about_five_percent_false_positives(panel: str) -> None:
    own, swap, _ = _simulate(PANELS[panel], seed=7)
    k = len(PANELS[panel])
    threshold = PARAMS.threshold(k)
    false_positive = float(np.mean(own > threshold))
    assert 0.02 <= false_positive <= 0.07, false_positive
    assert float(np.mean(swap > threshold)) > 0.7


def test_fewer_than_min_analytes_is_no_score_and_cap_limits_one_analyte() -> None:
    assert wbit.score({"MCV": 95.0}, {"MCV": 88.0}, PARAMS) is None
    assert wbit.score({"MCV": 95.0, "GLU": 9.0}, {"MCV": 88.0, "GLU": 5.0}, PARAMS) is None
    # One analyte far off (a transfusion's HGB) with another unchanged: capped at z_cap,
    # so its square alone (16) is all the score gets.
    one = wbit.score({"HGB": 200.0, "MCV": 88.0}, {"HGB": 80.0, "MCV": 88.0}, PARAMS)
    assert one is not None and one.z["HGB"] == PARAMS.z_cap and one.score == PARAMS.z_cap ** 2
    with pytest.raises(ValueError, match="min_analytes"):
        wbit.WbitParams.from_params({**RULE.params, "min_analytes": 1})
