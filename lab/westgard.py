"""Westgard multirules on control z-scores: pure functions, no database.

Why a module of its own: the same rules judge a run as it arrives (``lab.qc``), draw the
flags on the Levey-Jennings chart (``lab.lj_chart``), label the synthetic dataset
(``devkit.lab_dataset``) and are simulated by the benchmark (runs until a shift is
found).  They read only z-scores, ``(value - lot mean) / lot SD``.

Sources:

- Westgard JO, Barry PL, Hunt MR, Groth T. A multi-rule Shewhart chart for quality
  control in clinical chemistry. Clin Chem 1981;27:493-501 (1-2s, 1-3s, 2-2s, R-4s,
  4-1s, 10-x; "within run" and "across runs").
- Westgard JO, Barry PL. Cost-Effective Quality Control: Managing the Quality and
  Productivity of Analytical Processes. AACC Press, 1986 (across levels: 2-2s and 4-1s
  counted over the materials of a run and over consecutive runs).
- Westgard JO. Basic QC Practices, 3rd ed. (2010), and westgard.com "Westgard Rules"
  (2of3-2s and 3-1s for three control levels; R-4s within a run only; 7-T trend).

How they are read here:

- Rules are judged on the *current* run: a violation must include at least one of its
  points (a rule that fired on history alone was that earlier run's business).
- Every rule is evaluated on every run (a computer has no need for 1-2s as the
  trigger that starts a manual inspection, as Westgard's website notes); 1-2s is a
  warning only and never rejects.
- ``across``: "run" (one point of the current run), "runs" (one level over consecutive
  runs), "levels" (several levels: within the current run, or pooled over runs in
  run-then-level order).
- 2of3-2s and 3-1s apply where three levels are run (Westgard's rules for 3 materials);
  R-4s is within a run only (a range between runs is left to 2-2s/4-1s, as Westgard
  advises, since between-run differences include systematic change).
- 7-T: seven consecutive points of one level each higher (or each lower) than the one
  before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

#: Every rule this module knows, in the order they are reported.
ALL_RULES: tuple[str, ...] = ("1-2s", "1-3s", "2-2s", "R-4s", "4-1s", "10-x", "2of3-2s",
                              "3-1s", "7-T")
DEFAULT_RULES: tuple[str, ...] = ALL_RULES
#: Rules that only warn: the run is still accepted.
WARNING_RULES: frozenset[str] = frozenset({"1-2s"})


@dataclass(frozen=True)
class ControlPoint:
    """One control measurement: ``run`` is the ordinal of its run (larger = later)."""

    run: int
    level: int
    z: float


@dataclass(frozen=True)
class Violation:
    """One rule that fired; ``level`` is None when several levels fired it together."""

    rule: str
    level: int | None
    across: str  # "run" | "runs" | "levels"

    @property
    def rejects(self) -> bool:
        return self.rule not in WARNING_RULES

    @property
    def label(self) -> str:
        """How it is shown and stored: "1-3s", "2-2s (across runs)", "R-4s (across levels)"."""
        return self.rule if self.across == "run" else f"{self.rule} (across {self.across})"


def _same_side_beyond(zs: Sequence[float], limit: float) -> bool:
    """All beyond +limit, or all beyond -limit (strictly)."""
    return bool(zs) and (all(z > limit for z in zs) or all(z < -limit for z in zs))


def _count_side(zs: Iterable[float], limit: float) -> int:
    zs = list(zs)
    return max(sum(z > limit for z in zs), sum(z < -limit for z in zs))


def _trend(zs: Sequence[float]) -> bool:
    steps = list(pairwise(zs))
    return bool(steps) and (all(b > a for a, b in steps) or all(b < a for a, b in steps))


def _windows(seq: Sequence[ControlPoint], n: int, current_run: int,
             ) -> Iterable[Sequence[ControlPoint]]:
    """Windows of ``n`` consecutive points of ``seq`` that end on a current-run point."""
    for end in range(n, len(seq) + 1):
        if seq[end - 1].run == current_run:
            yield seq[end - n:end]


def evaluate(history: Sequence[ControlPoint], current: Sequence[ControlPoint],
             rules: Sequence[str] = DEFAULT_RULES) -> list[Violation]:
    """The rules the current run breaks, given its points and the earlier ones.

    ``current`` are the points of one run (all with the same ``run``, later than every
    ``history`` point).  Each violation is reported once, in :data:`ALL_RULES` order.
    """
    unknown = [r for r in rules if r not in ALL_RULES]
    if unknown:
        raise ValueError(f"unknown Westgard rule(s): {', '.join(unknown)}")
    if not current:
        return []
    runs = {p.run for p in current}
    if len(runs) != 1:
        raise ValueError(f"the current points belong to several runs: {sorted(runs)}")
    run = runs.pop()
    if any(p.run >= run for p in history):
        raise ValueError("history points must come from runs before the current one")
    wanted = set(rules)
    points = sorted([*history, *current], key=lambda p: (p.run, p.level))
    levels = sorted({p.level for p in points})
    by_level = {lv: [p for p in points if p.level == lv] for lv in levels}
    cur = sorted(current, key=lambda p: p.level)
    three_levels = len(levels) >= 3
    found: list[Violation] = []

    def add(rule: str, level: int | None, across: str) -> None:
        v = Violation(rule, level, across)
        if rule in wanted and v not in found:
            found.append(v)

    # One point of the current run.
    for p in cur:
        if abs(p.z) > 2:
            add("1-2s", p.level, "run")
        if abs(p.z) > 3:
            add("1-3s", p.level, "run")
    # Within a level, over consecutive runs.
    for lv, seq in by_level.items():
        for w in _windows(seq, 2, run):
            if _same_side_beyond([p.z for p in w], 2):
                add("2-2s", lv, "runs")
        for w in _windows(seq, 4, run):
            if _same_side_beyond([p.z for p in w], 1):
                add("4-1s", lv, "runs")
        for w in _windows(seq, 10, run):
            if _same_side_beyond([p.z for p in w], 0):
                add("10-x", lv, "runs")
        if three_levels:
            for w in _windows(seq, 3, run):
                if _count_side([p.z for p in w], 2) >= 2:
                    add("2of3-2s", lv, "runs")
                if _same_side_beyond([p.z for p in w], 1):
                    add("3-1s", lv, "runs")
        for w in _windows(seq, 7, run):
            if _trend([p.z for p in w]):
                add("7-T", lv, "runs")
    # Across the levels of the current run.
    zs = [p.z for p in cur]
    if len(cur) >= 2:
        if _count_side(zs, 2) >= 2:
            add("2-2s", None, "levels")
        if any(z > 2 for z in zs) and any(z < -2 for z in zs):
            add("R-4s", None, "levels")
    if three_levels and len(cur) >= 3:
        for i in range(len(cur) - 2):
            w3 = zs[i:i + 3]
            if _count_side(w3, 2) >= 2:
                add("2of3-2s", None, "levels")
            if _same_side_beyond(w3, 1):
                add("3-1s", None, "levels")
    # Pooled over levels and runs (run, then level order): only windows that mix levels
    # (a window of one level was judged above).
    for n, rule, limit in ((4, "4-1s", 1.0), (10, "10-x", 0.0)):
        for w in _windows(points, n, run):
            if len({p.level for p in w}) > 1 and _same_side_beyond([p.z for p in w], limit):
                add(rule, None, "levels")
    order = {r: i for i, r in enumerate(ALL_RULES)}
    return sorted(found, key=lambda v: (order[v.rule], v.level is None, v.level or 0,
                                        v.across))


def status_of(violations: Iterable[Violation]) -> str:
    """The run's status: "reject" if a rejecting rule fired, "warning" if only 1-2s
    did, else "accept"."""
    vs = list(violations)
    if any(v.rejects for v in vs):
        return "reject"
    return "warning" if vs else "accept"


def runs_to_detect(shifted: Sequence[Sequence[ControlPoint]],
                   history: Sequence[ControlPoint], rules: Sequence[str]) -> int | None:
    """The 1-based index of the first run in ``shifted`` that a rejecting rule fires on,
    each run judged with all earlier points as history (None: never detected)."""
    past = list(history)
    for i, cur in enumerate(shifted, start=1):
        if any(v.rejects for v in evaluate(past, cur, rules)):
            return i
        past.extend(cur)
    return None
