"""The one in-memory form of a resting 12-lead ECG that every reader produces.

Readers differ in lead naming, units and which leads they store (WFDB records often
carry 8 independent leads); normalising here means quality, measurement and rules are
written once, against the standard lead order and millivolts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from core import ecg_waveform
from core.ecg_waveform import canonical_lead_name as canonical_lead_name
from ecg.errors import InconsistentWaveform, MissingLeads

#: The standard lead order; lead labels are mapped to it by ``canonical_lead_name``
#: (both in ``core.ecg_waveform``, which the DICOM decoding shares with the rhythm model).
LEADS: tuple[str, ...] = ecg_waveform.LEADS
LEAD_INDEX: dict[str, int] = {name: i for i, name in enumerate(LEADS)}

#: A resting ECG shorter than this cannot give a rhythm statement (3 beats at 36 bpm).
MIN_DURATION_S = 5.0
#: Below this, QRS onset/offset cannot be placed within the +-10 ms the rules rely on.
MIN_SAMPLING_RATE_HZ = 100.0

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Ecg12:
    """A 12-lead ECG: ``leads`` is float32 millivolts, shape (12, n), in :data:`LEADS` order.

    Construct through :func:`assemble` (readers do) so that the invariants hold: 12 rows,
    finite values, a positive sampling rate and at least :data:`MIN_DURATION_S` seconds.
    """

    leads: FloatArray
    sampling_rate: float
    patient_id: str | None = None
    acquisition_time: datetime | None = None
    sop_instance_uid: str | None = None
    patient_sex: str | None = None  # "M" / "F" / None, as DICOM PatientSex
    patient_age_years: float | None = None
    source_format: str = "unknown"
    derived_leads: tuple[str, ...] = field(default_factory=tuple)
    #: What the reader assumed on the file's behalf (a documented default for an absent
    #: optional field); the analysis stores them so the ECG page can show them.
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.leads.ndim != 2 or self.leads.shape[0] != len(LEADS):
            raise InconsistentWaveform(
                f"expected a (12, n) lead array, got shape {tuple(self.leads.shape)}"
            )
        if not np.isfinite(self.sampling_rate) or self.sampling_rate <= 0:
            raise InconsistentWaveform(
                f"sampling rate must be > 0 Hz, got {self.sampling_rate!r}"
            )
        if self.sampling_rate < MIN_SAMPLING_RATE_HZ:
            raise InconsistentWaveform(
                f"sampling rate {self.sampling_rate:g} Hz is below the "
                f"{MIN_SAMPLING_RATE_HZ:g} Hz a diagnostic ECG needs"
            )
        if self.duration_s < MIN_DURATION_S:
            raise InconsistentWaveform(
                f"ECG lasts {self.duration_s:.2f} s ({self.leads.shape[1]} samples at "
                f"{self.sampling_rate:g} Hz); at least {MIN_DURATION_S:g} s are needed"
            )
        if not np.all(np.isfinite(self.leads)):
            bad = [LEADS[i] for i in np.flatnonzero(~np.isfinite(self.leads).all(axis=1))]
            raise InconsistentWaveform(f"non-finite samples in lead(s) {', '.join(bad)}")

    @property
    def n_samples(self) -> int:
        return int(self.leads.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate

    def lead(self, name: str) -> FloatArray:
        """One lead by its standard name (a view, not a copy)."""
        row: FloatArray = self.leads[LEAD_INDEX[name]]
        return row


def assemble(
    leads: Mapping[str, npt.ArrayLike] | Iterable[tuple[str, npt.ArrayLike]],
    sampling_rate: float,
    **metadata: object,
) -> Ecg12:
    """Build an :class:`Ecg12` from leads labelled as :func:`canonical_lead_name` knows.

    ``leads`` is a mapping or, from readers, the file's (label, samples) pairs in channel
    order, so that a label used twice is seen rather than silently overwritten.
    Missing limb leads are derived from I and II (Einthoven/Goldberger identities), which is
    how 8-channel recorders store them; the derived names are listed in ``derived_leads``.
    Raises :class:`MissingLeads` when I, II or any of V1-V6 is absent, and
    :class:`InconsistentWaveform` when leads differ in length or a lead appears twice.
    """
    pairs = list(leads.items()) if isinstance(leads, Mapping) else list(leads)
    by_name: dict[str, npt.NDArray[np.float64]] = {}
    first: dict[str, tuple[int, str]] = {}
    for position, (label, values) in enumerate(pairs):
        name = canonical_lead_name(label)
        if name is None:
            continue
        if name in first:
            where, earlier = first[name]
            raise InconsistentWaveform(
                f"lead {name} appears twice: channel {where + 1} ({earlier!r}) and channel "
                f"{position + 1} ({label!r}); refusing rather than guessing which one is {name}"
            )
        first[name] = (position, label)
        by_name[name] = np.asarray(values, dtype=np.float64).reshape(-1)
    lengths = {name: len(v) for name, v in by_name.items()}
    if len(set(lengths.values())) > 1:
        raise InconsistentWaveform(f"leads differ in length: {lengths}")
    derived: list[str] = []
    if "I" in by_name and "II" in by_name:
        lead_i, lead_ii = by_name["I"], by_name["II"]
        identities = {
            "III": lead_ii - lead_i,
            "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2,
            "aVF": lead_ii - lead_i / 2,
        }
        for name, values in identities.items():
            if name not in by_name:
                by_name[name] = values
                derived.append(name)
    missing = [name for name in LEADS if name not in by_name]
    if missing:
        raise MissingLeads(
            f"missing lead(s) {', '.join(missing)}; found {', '.join(sorted(by_name)) or 'none'}"
        )
    array = np.stack([by_name[name] for name in LEADS]).astype(np.float32)
    return Ecg12(
        leads=array, sampling_rate=float(sampling_rate), derived_leads=tuple(derived),
        **metadata,  # type: ignore[arg-type]
    )
