"""Every Westgard rule on known sequences: the ones that must fire (with their level and
whether within the run, across runs or across levels) and near misses that must not."""

from __future__ import annotations

import random

import pytest

from lab.westgard import (
    ALL_RULES,
    ControlPoint,
    Violation,
    evaluate,
    runs_to_detect,
    status_of,
)


def hist(level_z: dict[int, list[float]]) -> list[ControlPoint]:
    """History of runs 1..n, one point per level per run (z per level, oldest first)."""
    out = []
    for lv, zs in level_z.items():
        out += [ControlPoint(run=i + 1, level=lv, z=z) for i, z in enumerate(zs)]
    return out


def cur(run: int, *zs: float) -> list[ControlPoint]:
    return [ControlPoint(run=run, level=i + 1, z=z) for i, z in enumerate(zs)]


Fired = set[tuple[str, int | None, str]]


def fired(history: list[ControlPoint], current: list[ControlPoint]) -> Fired:
    return {(v.rule, v.level, v.across) for v in evaluate(history, current)}


def test_quiet_run_fires_nothing() -> None:
    h = hist({1: [0.3, -0.5, 0.8, -0.2, 0.1], 2: [-0.4, 0.6, 0.2, -0.9, 0.5]})
    assert evaluate(h, cur(6, 0.4, -0.3)) == []
    assert status_of([]) == "accept"


def test_1_2s_warns_and_1_3s_rejects() -> None:
    v = evaluate([], cur(1, 2.5, 0.1))
    assert v == [Violation("1-2s", 1, "run")]
    assert status_of(v) == "warning" and not v[0].rejects
    v = evaluate([], cur(1, 0.1, -3.4))
    assert {(x.rule, x.level, x.across) for x in v} == {("1-2s", 2, "run"), ("1-3s", 2, "run")}
    assert status_of(v) == "reject"
    assert [x.label for x in v] == ["1-2s", "1-3s"]
    # Exactly 2 or 3 SD is not beyond the limit.
    assert evaluate([], cur(1, 2.0, -3.0)) == [Violation("1-2s", 2, "run")]


def test_2_2s_within_a_level_across_runs() -> None:
    h = hist({1: [0.1, 2.3], 2: [0.2, 0.3]})
    assert ("2-2s", 1, "runs") in fired(h, cur(3, 2.1, 0.0))
    # Opposite sides: not 2-2s.
    assert not any(r == "2-2s" for r, _, _ in fired(h, cur(3, -2.1, 0.0)))
    # Not consecutive (a quiet run between): not 2-2s.
    h2 = hist({1: [2.3, 0.1], 2: [0.2, 0.3]})
    assert not any(r == "2-2s" for r, _, _ in fired(h2, cur(3, 2.1, 0.0)))


def test_2_2s_across_levels_within_a_run() -> None:
    f = fired([], cur(1, -2.2, -2.4))
    assert ("2-2s", None, "levels") in f
    assert {"2-2s (across levels)"} <= {v.label for v in evaluate([], cur(1, -2.2, -2.4))}
    assert not any(r == "2-2s" for r, _, _ in fired([], cur(1, -2.2, -1.9)))


def test_r_4s_within_a_run_across_levels() -> None:
    assert ("R-4s", None, "levels") in fired([], cur(1, 2.1, -2.05))
    assert not any(r == "R-4s" for r, _, _ in fired([], cur(1, 2.1, -2.0)))
    assert not any(r == "R-4s" for r, _, _ in fired([], cur(1, 2.1, -1.9)))
    # A +2s and a -2s in different runs is not R-4s (within a run only).
    h = hist({1: [2.3], 2: [0.0]})
    assert not any(r == "R-4s" for r, _, _ in fired(h, cur(2, -2.2, 0.0)))


def test_4_1s_within_a_level_and_across_levels() -> None:
    h = hist({1: [0.0, 1.2, 1.5, 1.1], 2: [0.1, -0.3, 0.2, 0.0]})
    assert ("4-1s", 1, "runs") in fired(h, cur(5, 1.3, 0.2))
    # Three beyond +1s then a point inside: no.
    assert not any(r == "4-1s" for r, _, _ in fired(h, cur(5, 0.9, 0.2)))
    # Two runs of two levels, all beyond +1s: 4-1s across levels (not within one level).
    h2 = hist({1: [0.0, 1.4], 2: [0.0, 1.2]})
    f = fired(h2, cur(3, 1.1, 1.6))
    assert ("4-1s", None, "levels") in f
    assert ("4-1s", 1, "runs") not in f and ("4-1s", 2, "runs") not in f


def test_10_x_within_a_level_and_across_levels() -> None:
    h = hist({1: [0.2, 0.5, 0.1, 0.9, 0.3, 0.4, 0.6, 0.2, 0.8], 2: [0.0] * 9})
    assert ("10-x", 1, "runs") in fired(h, cur(10, 0.3, -0.4))
    # Nine on one side and the tenth on the other: no.
    assert not any(r == "10-x" for r, _, _ in fired(h, cur(10, -0.1, -0.4)))
    # Five runs of two levels all below the mean: 10-x across levels.
    h2 = hist({1: [-0.2, -0.5, -0.3, -0.6], 2: [-0.4, -0.1, -0.7, -0.3]})
    f = fired(h2, cur(5, -0.2, -0.9))
    assert ("10-x", None, "levels") in f
    assert not any(r == "10-x" and lv is not None for r, lv, _ in f)


def test_2of3_2s_and_3_1s_with_three_levels() -> None:
    f = fired([], cur(1, 2.2, 0.5, 2.4))
    assert ("2of3-2s", None, "levels") in f
    f = fired([], cur(1, 1.2, 1.5, 1.1))
    assert ("3-1s", None, "levels") in f
    assert not any(r in ("2of3-2s", "3-1s") for r, _, _ in fired([], cur(1, 1.2, 0.5, 1.1)))
    # Within one level over three runs (three levels run).
    h = hist({1: [2.3, 0.1], 2: [0.0, 0.0], 3: [0.0, 0.0]})
    assert ("2of3-2s", 1, "runs") in fired(h, cur(3, 2.1, 0.0, 0.0))
    h = hist({1: [1.3, 1.2], 2: [0.0, 0.0], 3: [0.0, 0.0]})
    assert ("3-1s", 1, "runs") in fired(h, cur(3, 1.6, 0.0, 0.0))


def test_2of3_2s_and_3_1s_do_not_apply_to_two_levels() -> None:
    h = hist({1: [1.3, 1.2], 2: [0.0, 0.0]})
    assert not any(r in ("2of3-2s", "3-1s") for r, _, _ in fired(h, cur(3, 1.6, 0.0)))


def test_7_t_trend() -> None:
    h = hist({1: [-1.5, -1.0, -0.6, -0.1, 0.3, 0.8], 2: [0.0, 0.1, 0.0, 0.1, 0.0, 0.1]})
    assert ("7-T", 1, "runs") in fired(h, cur(7, 1.2, 0.0))
    # The seventh breaks the trend: no.
    assert not any(r == "7-T" for r, _, _ in fired(h, cur(7, 0.5, 0.0)))
    # Downwards too.
    hd = hist({1: [1.5, 1.0, 0.6, 0.1, -0.3, -0.8], 2: [0.0] * 6})
    assert ("7-T", 1, "runs") in fired(hd, cur(7, -0.9, 0.0))


def test_history_alone_does_not_fire() -> None:
    # A 1-3s and a 2-2s in the past do not reject today's quiet run.
    h = hist({1: [3.5, 2.2, 2.4], 2: [0.0, 0.0, 0.0]})
    assert evaluate(h, cur(4, 0.1, 0.2)) == []


def test_rules_can_be_chosen_and_bad_input_refused() -> None:
    assert evaluate([], cur(1, 3.5, 0.0), rules=["1-3s"]) == [Violation("1-3s", 1, "run")]
    with pytest.raises(ValueError, match="unknown Westgard rule"):
        evaluate([], cur(1, 0.0), rules=["13s"])
    with pytest.raises(ValueError, match="several runs"):
        evaluate([], [ControlPoint(1, 1, 0.0), ControlPoint(2, 2, 0.0)])
    with pytest.raises(ValueError, match="before the current"):
        evaluate([ControlPoint(5, 1, 0.0)], cur(5, 0.0))
    assert set(ALL_RULES) == {"1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10-x", "2of3-2s",
                              "3-1s", "7-T"}


def test_multirule_finds_a_2sd_shift_sooner_than_1_3s() -> None:
    rng = random.Random(7)
    multi, single = [], []
    for _ in range(150):
        history = [ControlPoint(r, lv, rng.gauss(0, 1)) for r in range(1, 21) for lv in (1, 2)]
        shifted = [[ControlPoint(21 + i, lv, rng.gauss(2.0, 1)) for lv in (1, 2)]
                   for i in range(40)]
        multi.append(runs_to_detect(shifted, history, ALL_RULES) or 41)
        single.append(runs_to_detect(shifted, history, ["1-3s"]) or 41)
    assert sum(multi) / len(multi) < sum(single) / len(single)
    assert sum(multi) / len(multi) < 2.0
