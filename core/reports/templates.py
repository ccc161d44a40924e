"""Report templates: versioned TOML files, one per modality or exam.

A template names the report's fields in order, which of them must be filled
before signing, their default text, and which field takes the AI findings a
reader accepted.  Text between ``{{`` and ``}}`` is a placeholder the reader
must resolve; a required field that is empty or still holds one blocks signing.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import InvalidInput, NotFound

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.DOTALL)


@dataclass(frozen=True)
class TemplateField:
    key: str
    title: str
    required: bool
    default: str = ""
    ai_prefill: bool = False
    #: What fills the field in a new draft: "ai_findings" (accepted AI findings),
    #: "ecg_rhythm", "ecg_measurements" or "ecg_statements" (the ECG analysis).
    prefill: str = ""


@dataclass(frozen=True)
class Template:
    id: str
    version: str
    title: str
    modalities: tuple[str, ...]
    fields: tuple[TemplateField, ...]

    def field(self, key: str) -> TemplateField:
        for f in self.fields:
            if f.key == key:
                return f
        raise InvalidInput(f"template {self.id}@{self.version} has no field {key!r}; "
                           f"fields are {[f.key for f in self.fields]}")

    def unresolved(self, values: dict[str, str]) -> list[str]:
        """Required fields that are empty or still hold a ``{{placeholder}}``."""
        missing = []
        for f in self.fields:
            text = values.get(f.key, "")
            if f.required and (not text.strip() or PLACEHOLDER.search(text)):
                missing.append(f.key)
        return missing


def _load(path: Path) -> Template:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        fields = tuple(
            TemplateField(key=str(f["key"]), title=str(f["title"]),
                          required=bool(f.get("required", False)),
                          default=str(f.get("default", "")),
                          ai_prefill=bool(f.get("ai_prefill", False)),
                          prefill=str(f.get("prefill", "ai_findings" if f.get("ai_prefill")
                                                else "")))
            for f in raw["fields"])
        return Template(id=str(raw["id"]), version=str(raw["version"]), title=str(raw["title"]),
                        modalities=tuple(raw.get("modalities", [])), fields=fields)
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"report template {path.name} is invalid: {e}") from e


@lru_cache(maxsize=1)
def all_templates() -> dict[tuple[str, str], Template]:
    """Every shipped template, keyed by (id, version)."""
    found: dict[tuple[str, str], Template] = {}
    for path in sorted(TEMPLATES_DIR.glob("*.toml")):
        t = _load(path)
        found[(t.id, t.version)] = t
    return found


def get_template(template_id: str, version: str | None = None) -> Template:
    """A template by id, at ``version`` or the newest one."""
    matches = [t for (tid, _), t in all_templates().items() if tid == template_id]
    if version is not None:
        matches = [t for t in matches if t.version == version]
    if not matches:
        known = sorted({tid for tid, _ in all_templates()})
        raise NotFound(f"no report template {template_id!r}"
                       f"{'@' + version if version else ''}; known: {known}")
    return max(matches, key=lambda t: tuple(int(p) for p in t.version.split(".")))


def template_for(modalities: list[str]) -> Template:
    """The template for a study's modalities: the first specific match, else generic."""
    for t in sorted(all_templates().values(), key=lambda t: t.id):
        if t.modalities and set(t.modalities) & set(modalities):
            return get_template(t.id)
    return get_template("generic")
