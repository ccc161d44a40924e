"""One call for the whole analysis: quality -> measurements -> statements.

Quality runs first so that bad leads are excluded from the combined signals and the
confidence reflects them; a signal with no measurable beats still yields an
:class:`Analysis` (with the reason) rather than an exception, because "unreadable ECG"
is itself a result the cardiologist must see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ecg.errors import NoBeats
from ecg.interpret import Statement, interpret
from ecg.measure import Measurements, measure
from ecg.quality import Quality, assess
from ecg.signal import Ecg12

#: Version of the analysis rules and algorithms, stored with every result.
ANALYSIS_VERSION = "ecg-core-2"
#: Intervals that, when not measurable on a readable ECG, send it to a human to measure.
HUMAN_MEASURED = ("qt_ms", "qrs_ms")


@dataclass(frozen=True)
class Analysis:
    """Result of :func:`analyze`. ``confidence`` is the quality confidence (0 when no
    measurement was possible); ``critical`` is True when any statement is critical."""

    quality: Quality
    measurements: Measurements | None
    statements: tuple[Statement, ...]
    confidence: float
    timings_ms: dict[str, float]
    metadata: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    @property
    def critical(self) -> bool:
        return any(s.critical for s in self.statements)

    @property
    def codes(self) -> list[str]:
        return [s.code for s in self.statements]

    @property
    def needs_human_measurement(self) -> dict[str, str]:
        """Intervals a human must measure (name -> why the analysis could not) on an ECG
        that is otherwise readable: the QT and QRS, which the rules depend on."""
        m = self.measurements
        if m is None or self.quality.grade == "unusable":
            return {}
        return {k: v for k, v in m.not_measurable.items() if k in HUMAN_MEASURED}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (no numpy), suitable for storage and the API."""
        return {
            "version": ANALYSIS_VERSION,
            "critical": self.critical,
            "needs_human_measurement": bool(self.needs_human_measurement),
            "human_measurement_reasons": self.needs_human_measurement,
            "confidence": round(self.confidence, 3),
            "failure": self.failure,
            "quality": self.quality.to_dict(),
            "measurements": self.measurements.to_dict() if self.measurements else None,
            "statements": [s.to_dict() for s in self.statements],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "metadata": self.metadata,
        }


def analyze(ecg: Ecg12) -> Analysis:
    """Analyse one 12-lead ECG. Never raises for a poor signal; see ``failure``."""
    t0 = time.perf_counter()
    quality = assess(ecg)
    t1 = time.perf_counter()
    measurements: Measurements | None = None
    failure: str | None = None
    statements: list[Statement] = []
    if quality.grade == "unusable":
        failure = "signal quality unusable: " + "; ".join(quality.problems)
    else:
        try:
            measurements = measure(ecg, quality.usable_mask)
        except NoBeats as exc:
            failure = str(exc)
    t2 = time.perf_counter()
    if measurements is not None:
        statements = interpret(measurements, quality, ecg.patient_sex, ecg.patient_age_years)
    else:
        statements = [Statement("not_analysable", f"ECG could not be analysed: {failure}",
                                {"problems": list(quality.problems)})]
    t3 = time.perf_counter()
    metadata = {
        "patient_id": ecg.patient_id,
        "acquisition_time": ecg.acquisition_time.isoformat() if ecg.acquisition_time else None,
        "sop_instance_uid": ecg.sop_instance_uid,
        "source_format": ecg.source_format,
        "sampling_rate_hz": ecg.sampling_rate,
        "duration_s": round(ecg.duration_s, 3),
        "derived_leads": list(ecg.derived_leads),
        "reader_warnings": list(ecg.warnings),
    }
    return Analysis(
        quality=quality, measurements=measurements, statements=tuple(statements),
        confidence=quality.confidence if measurements is not None else 0.0,
        timings_ms={"quality": (t1 - t0) * 1e3, "measure": (t2 - t1) * 1e3,
                    "interpret": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3},
        metadata=metadata, failure=failure,
    )
