"""Report templates: versioned TOML files, one per modality or exam.

A template names the report's fields in order, which of them must be filled
before signing, their default text, and which fields a reading domain prefills
(``prefill = "<kind>"``, see :mod:`reports.registry`).  Text between ``{{`` and
``}}`` is a placeholder the reader must resolve; a required field that is empty or
still holds one blocks signing.

A template for one exam (``ct-chest``) names the modalities, the DICOM body parts
(``body_parts``) and the study description words (``keywords``) it is for; a
template with modalities but neither is that modality's generic fallback
(``ct-generic``).  :func:`template_for` picks the exam's template, else the
modality's fallback, else ``generic``: a spine CT never gets the chest template.

The templates in this package's ``templates/`` folder are for images (the AI
pre-read's findings prefill them); a reading domain ships its own (``ecg/report_templates``)
and registers the folder with :func:`reports.registry.register_templates`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import InvalidInput, NotFound
from reports import registry

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PLACEHOLDER = re.compile(r"\{\{.*?\}\}", re.DOTALL)


@dataclass(frozen=True)
class TemplateField:
    key: str
    title: str
    required: bool
    default: str = ""
    #: What fills the field in a new draft: a prefill kind that a reading domain
    #: registered (:func:`reports.registry.register_prefill`), e.g. the accepted AI
    #: findings or the ECG analysis; "" for none.
    prefill: str = ""


@dataclass(frozen=True)
class Template:
    id: str
    version: str
    title: str
    modalities: tuple[str, ...]
    fields: tuple[TemplateField, ...]
    #: DICOM BodyPartExamined values (upper case) this exam template is for.
    body_parts: tuple[str, ...] = ()
    #: Words of the study description that mean this exam (lower case).
    keywords: tuple[str, ...] = ()

    @property
    def is_fallback(self) -> bool:
        """A modality's generic template: it names no body part and no keyword."""
        return not self.body_parts and not self.keywords

    def matches_exam(self, body_part: str, description: str) -> bool:
        """Whether the study's body part or description names this template's exam."""
        part = _norm_part(body_part)
        if part and part in {_norm_part(p) for p in self.body_parts}:
            return True
        text = description.lower()
        words = set(re.findall(r"[a-z0-9]+", text))
        return any((k in words) if k.isascii() else (k in text) for k in self.keywords)

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
                          prefill=str(f.get("prefill", "")))
            for f in raw["fields"])
        return Template(id=str(raw["id"]), version=str(raw["version"]), title=str(raw["title"]),
                        modalities=tuple(raw.get("modalities", [])), fields=fields,
                        body_parts=tuple(str(p).upper() for p in raw.get("body_parts", [])),
                        keywords=tuple(str(k).lower() for k in raw.get("keywords", [])))
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"report template {path.name} is invalid: {e}") from e


def all_templates() -> dict[tuple[str, str], Template]:
    """Every shipped template (this package's and the loaded domains'), keyed by
    (id, version)."""
    return _templates_in((TEMPLATES_DIR, *registry.template_dirs()))


@lru_cache(maxsize=4)
def _templates_in(directories: tuple[Path, ...]) -> dict[tuple[str, str], Template]:
    found: dict[tuple[str, str], Template] = {}
    origin: dict[tuple[str, str], Path] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.toml")):
            t = _load(path)
            if (t.id, t.version) in found:
                raise InvalidInput(f"report template {t.id}@{t.version} is shipped twice: "
                                   f"{origin[(t.id, t.version)]} and {path}")
            found[(t.id, t.version)] = t
            origin[(t.id, t.version)] = path
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


def _norm_part(value: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", value.upper())


def template_for(modalities: list[str], body_part: str = "",
                 description: str = "") -> Template:
    """The template for a study: the exam's own template for its modality and body part
    (or study description), else the modality's generic template, else ``generic``."""
    newest = {t.id: get_template(t.id) for t in all_templates().values()}
    candidates = [t for _, t in sorted(newest.items())
                  if t.modalities and set(t.modalities) & set(modalities)]
    for t in candidates:
        if not t.is_fallback and t.matches_exam(body_part, description):
            return t
    for t in candidates:
        if t.is_fallback:
            return t
    return get_template("generic")
