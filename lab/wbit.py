"""Wrong blood in tube: several analytes of one specimen against the patient's previous
results at once.

Why several: a univariate delta check finds about half of the mislabelled specimens at
5 % false positives (Sheiner 1979), because one analyte of another patient is often close
to this patient's own value.  Several analytes, each scaled by how much it moves within
one person (its within-subject biological variation CVi plus the analytical CVa), are
rarely all close at once (Strathmann 2011; Rosenbaum and Baron 2018).

Each analyte's change is standardized by the SD of the difference of two measurements of
the same person, ``sqrt(2) * sqrt(CVa^2 + CVi^2) / 100 * previous`` (the reference change
value's SD, Fraser 2001), capped at ``z_cap`` so that one analyte that truly moved cannot
make a swap by itself; the sum of squares over ``k`` analytes is compared with the
chi-square 95th percentile for ``k`` degrees of freedom (about 5 % false positives for
the same patient).  Pure: no database, no clock.  The parameters are the rule file's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WbitParams:
    """The ``wbit`` rule's parameters (lab/rules/<version>.toml)."""

    cv_i: Mapping[str, float]
    cv_a: Mapping[str, float]
    z_cap: float
    min_analytes: int
    window_h: float
    #: chi-square 95th percentile by number of analytes ("2" -> 5.991 ...).
    threshold_by_k: Mapping[int, float]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> WbitParams:
        """Read (and check) the rule's params; ValueError names the bad one."""
        cv_i = {str(k): float(v) for k, v in dict(params["cv_i"]).items()}
        cv_a = {str(k): float(v) for k, v in dict(params["cv_a"]).items()}
        if set(cv_i) != set(cv_a):
            raise ValueError("cv_i and cv_a must name the same analytes")
        if any(v <= 0 for v in (*cv_i.values(), *cv_a.values())):
            raise ValueError("cv_i and cv_a must be positive (percent)")
        thresholds = {int(k): float(v) for k, v in dict(params["threshold_by_k"]).items()}
        min_analytes = int(params["min_analytes"])
        if min_analytes < 2:
            raise ValueError("min_analytes must be at least 2 (one analyte is the delta check)")
        if min_analytes not in thresholds:
            raise ValueError(f"threshold_by_k has no threshold for min_analytes={min_analytes}")
        z_cap = float(params["z_cap"])
        if z_cap <= 0:
            raise ValueError("z_cap must be positive")
        return cls(cv_i=cv_i, cv_a=cv_a, z_cap=z_cap, min_analytes=min_analytes,
                   window_h=float(params["window_h"]), threshold_by_k=thresholds)

    def threshold(self, k: int) -> float:
        """The threshold for ``k`` analytes (the largest tabulated k beyond the table)."""
        if k in self.threshold_by_k:
            return self.threshold_by_k[k]
        return self.threshold_by_k[max(self.threshold_by_k)]


@dataclass(frozen=True)
class WbitScore:
    """The score of one specimen: each analyte's standardized change and their sum."""

    z: Mapping[str, float]
    score: float
    threshold: float

    @property
    def k(self) -> int:
        return len(self.z)

    @property
    def suspect(self) -> bool:
        return self.score > self.threshold


def change_sd(code: str, previous: float, params: WbitParams) -> float:
    """SD of the difference of two measurements of one person, in the analyte's units."""
    cv = math.sqrt(params.cv_a[code] ** 2 + params.cv_i[code] ** 2) / 100.0
    return math.sqrt(2.0) * cv * abs(previous)


def score(current: Mapping[str, float], previous: Mapping[str, float],
          params: WbitParams) -> WbitScore | None:
    """Score one specimen's values against the patient's previous ones (same analyte
    codes); None when fewer than ``min_analytes`` analytes can be compared."""
    z: dict[str, float] = {}
    for code, value in current.items():
        before = previous.get(code)
        if code not in params.cv_i or before is None or before <= 0:
            continue
        if not (math.isfinite(value) and math.isfinite(before)):
            continue
        raw = (value - before) / change_sd(code, before, params)
        z[code] = max(-params.z_cap, min(params.z_cap, raw))
    if len(z) < params.min_analytes:
        return None
    total = sum(v * v for v in z.values())
    return WbitScore(z=z, score=total, threshold=params.threshold(len(z)))
