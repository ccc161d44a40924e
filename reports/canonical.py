"""The canonical form of a report version: exactly the bytes a reader signs.

JSON with sorted keys and no insignificant whitespace, UTF-8, text in Unicode
NFC with ``\\n`` line ends, so that the same report always gives the same bytes
on any machine and database, and a stored copy can be checked byte for byte.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

SCHEMA = "rdc-report-1"


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no trailing spaces at line ends or the end."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def canonical_bytes(content: dict[str, Any]) -> bytes:
    """Serialize ``content`` canonically (it must already hold only JSON types)."""
    return json.dumps({"schema": SCHEMA, **content}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")
