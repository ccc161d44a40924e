"""The UIDs of the objects a model run writes into the study, derived from the run.

They are a pure function of (source series, model, version): a worker killed
mid-batch and re-run writes the same SR and SEG again instead of a second copy,
and the web app can tell from an ``ai_results`` row alone which series and
instances in Orthanc belong to a study (it checks every DICOMweb request
against the center's own database, not against Orthanc's answer).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass


def deterministic_uid(*parts: str) -> str:
    """A ``2.25.<n>`` UID that is the same for the same parts (≤ 64 characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16]).int}"


@dataclass(frozen=True)
class ResultUids:
    """Series and SOP Instance UIDs of one run's SR and (if any) SEG."""

    sr_series: str
    sr: str
    seg_series: str
    seg: str


def result_uids(series_uid: str, model: str, version: str) -> ResultUids:
    key = (series_uid, model, version)
    return ResultUids(sr_series=deterministic_uid(*key, "sr-series"),
                      sr=deterministic_uid(*key, "sr"),
                      seg_series=deterministic_uid(*key, "seg-series"),
                      seg=deterministic_uid(*key, "seg"))
