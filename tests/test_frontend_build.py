"""The browser tests' hook (``window.__rdc``) is in the test build of the front end and
nowhere in the production build.

vite.config.js defines ``__RDC_TEST_HOOKS__`` as ``true`` for ``vite build --mode test``
(``npm run build:test`` → viewer/static-test) and ``false`` otherwise (``npm run build`` →
viewer/static), and the pages build the hook only under ``if (__RDC_TEST_HOOKS__)``, so
the production bundle drops it as dead code. Both builds come from ``./bootstrap.sh``;
a missing one fails (never skips).
"""

from __future__ import annotations

from pathlib import Path

import pytest

VIEWER = Path(__file__).resolve().parent.parent / "viewer"
PRODUCTION = VIEWER / "static"
TEST_BUILD = VIEWER / "static-test"
HOOK = "__rdc"


def _scripts(build: Path, command: str) -> dict[str, str]:
    """The built JavaScript and HTML of ``build`` by name (the Swagger UI copy aside)."""
    if not (build / "index.html").is_file():
        pytest.fail(f"{build} is not built: cd viewer && npm ci && {command}")
    files = [build / "index.html", *sorted((build / "assets").glob("*.js"))]
    assert len(files) > 3, files  # index.html, the entry, the lazily loaded pages, workers
    return {str(f.relative_to(build)): f.read_text(encoding="utf-8", errors="replace")
            for f in files}


def test_production_bundle_has_no_test_hook() -> None:
    scripts = _scripts(PRODUCTION, "npm run build")
    assert [name for name, text in scripts.items() if HOOK in text] == []
    # The hook's own members went with it, not only the name it is published under.
    for member in ("segOverlayPixels", "nonBlankPixelCount", "ecgNonBlankPixels"):
        assert [name for name, text in scripts.items() if member in text] == [], member


def test_test_bundle_has_the_test_hook() -> None:
    scripts = _scripts(TEST_BUILD, "npm run build:test")
    with_hook = {name.split("-")[0] for name, text in scripts.items() if HOOK in text}
    # main.js (the entry), the study viewer and the ECG reading page each publish on it.
    assert {"assets/index", "assets/study", "assets/ecg"} <= with_hook, with_hook
