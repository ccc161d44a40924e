"""What reading domains contribute to reports: prefill, template folders, PDF figures.

Reports are shared by every reading domain, so this package names none of them.  A
domain's ``plugin.register()`` (loaded from ``rdc/domains.py``) declares here what it
puts into a report:

* a *prefill provider*: the text a template field with ``prefill = "<kind>"`` starts
  from in a new draft (the AI domain's accepted findings, the ECG analysis);
* a *template folder*: the domain's own report templates (TOML files, see
  :mod:`reports.templates`), kept in its package beside the code that fills them;
* a *figure provider*: pictures for the signed report's PDF (the ECG's 12-lead
  tracing), drawn from the study's archived objects.

A template whose prefill kind no loaded domain provides is refused when a draft is
made from it, with the kind named: the domain is missing from ``rdc/domains.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from core.errors import InvalidInput
from core.models import Study
from reports.document import Figure

#: Text for one prefilled field: (session, the reported study, the field's prefill kind).
PrefillProvider = Callable[[Session, Study, str], str]

_lock = threading.Lock()
#: Reads one archived object's file: (SOP Instance UID, what it is, for the error that
#: says it is missing) -> the DICOM file's bytes.  The caller chooses how a missing
#: object or an unreachable archive is answered (the web app: 404 / 502).
ArchivedFile = Callable[[str, str], bytes]
#: Figures for a study's signed PDF: (session, the reported study, a reader of its files).
FigureProvider = Callable[[Session, Study, ArchivedFile], tuple[Figure, ...]]

_prefill: dict[str, PrefillProvider] = {}
_template_dirs: list[Path] = []
_figures: list[FigureProvider] = []


def register_prefill(kind: str, provider: PrefillProvider) -> None:
    """Declare what fills template fields with ``prefill = kind``.

    ``kind`` is a prefill kind (``"ai_findings"``), or a prefix ending in ``*``
    (``"ecg_*"``) for every kind that starts with it; an exact kind wins over a prefix.
    Registering the same kind twice with another provider is a programming error."""
    if not kind or kind == "*":
        raise ValueError(f"a prefill kind must name something, not {kind!r}")
    with _lock:
        known = _prefill.get(kind)
        if known is not None and known is not provider:
            raise ValueError(f"prefill kind {kind!r} is registered already ({known!r})")
        _prefill[kind] = provider


def prefill_provider(kind: str) -> PrefillProvider:
    """The provider of a prefill kind: its exact registration, else the longest prefix."""
    with _lock:
        provider = _prefill.get(kind)
        if provider is not None:
            return provider
        prefixes = sorted((k for k in _prefill if k.endswith("*") and kind.startswith(k[:-1])),
                          key=len, reverse=True)
        if prefixes:
            return _prefill[prefixes[0]]
        known = sorted(_prefill)
    raise InvalidInput(f"unknown template prefill {kind!r}: no loaded domain provides it "
                       f"(registered: {known}); is its domain listed in rdc/domains.py?")


def prefill(session: Session, study: Study, kind: str) -> str:
    """The text that a field with ``prefill = kind`` starts from for ``study``."""
    return prefill_provider(kind)(session, study, kind)


def register_templates(directory: Path) -> None:
    """Add a domain's folder of report templates (``*.toml``) to the shipped ones."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise ValueError(f"report template folder {directory} does not exist")
    with _lock:
        if directory in _template_dirs:
            return
        _template_dirs.append(directory)


def template_dirs() -> tuple[Path, ...]:
    """The domains' template folders, in the order they were registered."""
    with _lock:
        return tuple(_template_dirs)



def register_figures(provider: FigureProvider) -> None:
    """Declare a source of figures for signed reports' PDFs (once per provider)."""
    with _lock:
        if provider not in _figures:
            _figures.append(provider)


def figures(session: Session, study: Study, archived: ArchivedFile) -> tuple[Figure, ...]:
    """Every registered domain's figures for ``study``, in registration order (a domain
    that has nothing for the study gives none)."""
    with _lock:
        providers = tuple(_figures)
    return tuple(f for provider in providers for f in provider(session, study, archived))
