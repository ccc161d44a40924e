"""Errors of the pathology domain, each carrying how the edges report it.

A slide import names the file it refuses and why, so that a technician at a
county site can fix that one file (re-export it, re-scan it) without guessing.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInput, RDCError


class SlideImportError(InvalidInput):
    """A slide file could not be imported; nothing of the import was kept.

    ``file`` is the path the caller gave (only its name is shown to people), and
    ``reason`` a sentence saying what is wrong with it.
    """

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"{self.file.name}: {reason}")


class WSIConversionError(RDCError):
    """The DICOM WSI converter failed on a file OpenSlide accepted (its log is kept)."""

    def __init__(self, file: Path | str, reason: str, log: str = "") -> None:
        self.file = Path(file)
        self.reason = reason
        self.log = log
        super().__init__(f"{self.file.name}: {reason}")
