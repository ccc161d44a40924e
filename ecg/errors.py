"""ECG errors: one family under the core hierarchy so the edges map them to 422 / exit 2.

Every message names the file part or field that is wrong and the value found, because
the people who read them are site engineers fixing an exporter, not Python developers.
"""

from __future__ import annotations

from core.errors import InvalidInput


class EcgError(InvalidInput):
    """Base of every ECG input error; nothing derived from the input is kept when raised."""


class UnreadableWaveform(EcgError):
    """The bytes are not a waveform file in a format we read (or are corrupt)."""


class InconsistentWaveform(EcgError):
    """The file parses, but its declared structure contradicts its data.

    Examples: a channel count that does not match the channel definitions, fewer data
    bytes than channels x samples x bytes per sample, a sampling rate that is not > 0.
    """


class NotAnEcg(EcgError):
    """The file is a waveform, but not an electrocardiogram (audio, hemodynamic, ...)."""


class MissingLeads(EcgError):
    """The ECG lacks leads the 12-lead analysis needs and that cannot be derived."""


class NoBeats(EcgError):
    """No (or too few) QRS complexes were found, so nothing can be measured."""
