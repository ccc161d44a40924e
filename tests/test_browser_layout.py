"""Layout on the screens readers and patients really use, in Debian's Chromium.

The built front end runs against the stand-in API of ``test_frontend_smoke`` (no center
behind it).  A reader's laptop is 1366 x 768: the study viewer and the ECG screen must fit
it without page scrolling, with the image viewport wholly on screen and the toolbar in
one row.  A patient opens the cloud film page on a 375 px wide phone: no sideways
scrolling.  Each check keeps a screenshot under ``var/screenshots/``.
"""

# The fixtures `browser` and `static_dir` come from test_frontend_smoke: a test naming
# one "redefines" the import, which is how pytest fixtures are shared.
# ruff: noqa: F811

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse
from test_frontend_smoke import (  # noqa: F401  (fixtures)
    SCREENSHOTS,
    _collect_errors,
    _fitted,
    _png,
    _Server,
    _stub_app,
    browser,
    static_dir,
)

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 667}

# The page fits the window: no page scrolling either way.
_NO_PAGE_SCROLL = ("() => { const d = document.scrollingElement;"
                   " return d.scrollHeight <= window.innerHeight"
                   " && d.scrollWidth <= window.innerWidth; }")


def _box(page: Any, testid: str) -> dict[str, float]:
    box: dict[str, float] = page.evaluate(
        "id => { const r = document.querySelector(`[data-testid=${id}]`)"
        ".getBoundingClientRect(); return {left: r.left, top: r.top, right: r.right,"
        " bottom: r.bottom, width: r.width, height: r.height}; }", testid)
    return box


def _on_screen(page: Any, testid: str) -> dict[str, float]:
    """The element is wholly inside the window (and not empty)."""
    box = _box(page, testid)
    width, height = page.evaluate("[window.innerWidth, window.innerHeight]")
    assert box["width"] > 0 and box["height"] > 0, (testid, box)
    assert box["left"] >= 0 and box["top"] >= 0, (testid, box)
    assert box["right"] <= width and box["bottom"] <= height, (testid, box, width, height)
    return box


def test_study_viewer_fits_a_1366x768_screen(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport=LAPTOP)
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/study/1")
        page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=60_000)
        page.wait_for_function("() => window.__rdc.nonBlankPixelCount() > 100", timeout=20_000)
        page.wait_for_function("() => document.querySelector('[data-testid=seg-label]')"
                               ".textContent !== ''", timeout=20_000)

        # The whole viewport is on screen and the page itself does not scroll.
        page.wait_for_function(_NO_PAGE_SCROLL)
        scroll = page.evaluate("[document.scrollingElement.scrollHeight, window.innerHeight,"
                               " document.scrollingElement.scrollWidth, window.innerWidth]")
        assert scroll[0] <= scroll[1] and scroll[2] <= scroll[3], scroll
        viewport = _on_screen(page, "viewport")
        assert viewport["width"] > 600 and viewport["height"] > 500, viewport
        _fitted(page, "imageExtent")

        # The toolbar (tools, CT presets, invert/reset, AI SEG controls) is one row.
        toolbar = page.evaluate(
            "() => { const t = document.querySelector('.viewer-pane [role=toolbar]');"
            " const tops = [...t.querySelectorAll('button, input, label')]"
            ".filter(e => e.offsetParent !== null)"
            ".map(e => Math.round(e.getBoundingClientRect().top));"
            " return {scroll: t.scrollWidth, client: t.clientWidth, height: t.offsetHeight,"
            " rows: new Set(tops.map(x => Math.round(x / 8))).size}; }")
        assert toolbar["scroll"] <= toolbar["client"], toolbar
        assert toolbar["height"] <= 40, toolbar
        assert toolbar["rows"] <= 2, toolbar  # same line (labels centre a little lower)
        assert page.get_by_test_id("seg-toggle").is_visible()
        for testid in ("wl-preset-brain", "viewer-reset", "tool-rectangle-roi"):
            _on_screen(page, testid)
        # The header is one line, and the side panes scroll inside themselves.
        assert _box(page, "study-header")["height"] < 48
        _on_screen(page, "report-panel")

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "study-1366x768.png"))

        # With a prior beside it, both viewports still fit, and both images are fitted.
        page.get_by_test_id("prior-open").click()
        page.wait_for_selector("[data-testid=prior-viewport-image][data-rendered=true]",
                               timeout=60_000)
        page.wait_for_function(_NO_PAGE_SCROLL)
        _on_screen(page, "viewport")
        _on_screen(page, "prior-viewport-image")
        _fitted(page, "imageExtent")
        _fitted(page, "priorImageExtent")
        page.screenshot(path=str(SCREENSHOTS / "study-prior-1366x768.png"))
        assert errors == []
        page.close()


def test_radiograph_gets_no_ct_presets(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport=LAPTOP)
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/study/5")
        page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=60_000)
        presets = page.get_by_test_id("wl-presets")
        page.wait_for_function("() => document.querySelector('[data-testid=wl-presets]')"
                               ".dataset.modality === 'DX'")
        assert presets.locator("button").evaluate_all(
            "bs => bs.map(b => b.dataset.testid)") == ["wl-preset-default"]
        assert page.get_by_test_id("wl-preset-lung").count() == 0
        assert page.get_by_test_id("viewer-invert").is_visible()
        # "Default" brings back the image's own window after the reader changed it.
        wl = page.get_by_test_id("viewport-wl")
        page.wait_for_function("() => document.querySelector('[data-testid=viewport-wl]')"
                               ".textContent !== ''")
        own = wl.inner_text()
        page.evaluate("() => { const v = window.__rdc.getViewport();"
                      " v.setProperties({voiRange: {lower: -500, upper: 500}}); v.render(); }")
        page.wait_for_function("t => document.querySelector('[data-testid=viewport-wl]')"
                               ".textContent !== t", arg=own)
        page.get_by_test_id("wl-preset-default").click()
        page.wait_for_function("t => document.querySelector('[data-testid=viewport-wl]')"
                               ".textContent === t", arg=own)
        # The priority reads as a name; the signed report is read-only with its PDF.
        assert page.get_by_test_id("study-priority").inner_text() == "AI CRITICAL"
        page.get_by_test_id("report-pdf").wait_for()
        assert page.get_by_test_id("report-pdf").get_attribute("href") == "/api/reports/4/pdf"
        page.wait_for_function(_NO_PAGE_SCROLL)
        page.screenshot(path=str(SCREENSHOTS / "radiograph-1366x768.png"))
        assert errors == []
        page.close()


def test_due_in_counts_down_on_the_study_page(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport=LAPTOP)
        page.clock.install()
        page.goto(f"{server.url}/#/study/1")
        due = page.get_by_test_id("study-due")
        page.wait_for_function("() => document.querySelector('[data-testid=study-due]')"
                               "?.textContent.startsWith('due in')", timeout=20_000)
        assert due.inner_text() == "due in 30m"
        page.clock.fast_forward("05:00")
        # The installed clock still flows with real time, so on a loaded machine the
        # few seconds since the first render can take the count below 25 minutes.
        page.wait_for_function("() => ['due in 25m', 'due in 24m'].includes("
                               "document.querySelector('[data-testid=study-due]').textContent)",
                               timeout=15_000)
        page.clock.fast_forward("26:00")
        page.wait_for_function("() => document.querySelector('[data-testid=study-due]')"
                               ".textContent === 'overdue 1m'", timeout=15_000)
        assert "overdue" in (due.get_attribute("class") or "")
        page.close()


def test_ecg_statements_editor_is_on_a_1366x768_screen(static_dir: Path,
                                                      browser: Any) -> None:
    app = _stub_app(static_dir, roles=("cardiologist",))
    with _Server(app) as server:
        page = browser.new_page(viewport=LAPTOP)
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/ecg/9")
        page.wait_for_selector("[data-testid=ecg-canvas][data-rendered=true]", timeout=15_000)
        page.get_by_test_id("ecg-statement").first.wait_for()
        page.wait_for_function(_NO_PAGE_SCROLL)
        # The statements, their editing controls and Save are on screen as it opens.
        for testid in ("ecg-statement-list", "ecg-statement-add-text", "ecg-statement-add",
                       "ecg-save", "ecg-report-status", "ecg-speed", "ecg-gain"):
            _on_screen(page, testid)
        for statement in page.get_by_test_id("ecg-statement").all():
            box = statement.bounding_box()
            assert box is not None and box["y"] + box["height"] <= LAPTOP["height"], box
        paper = _box(page, "ecg-paper")
        assert paper["width"] > 700, paper  # the tracing keeps most of the width
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "ecg-1366x768.png"))
        assert errors == []
        page.close()


def test_worklist_fits_a_1366_wide_screen(static_dir: Path, browser: Any) -> None:
    app = _stub_app(static_dir)
    with _Server(app) as server:
        page = browser.new_page(viewport=LAPTOP)
        errors = _collect_errors(page)
        page.goto(f"{server.url}/#/worklist")
        page.locator("[data-testid=worklist-row][data-study-id='5']").wait_for(timeout=15_000)
        wrap = page.evaluate("() => { const w = document.querySelector('.table-wrap');"
                             " return [w.scrollWidth, w.clientWidth]; }")
        assert wrap[0] <= wrap[1], wrap
        _on_screen(page, "worklist-priority")
        page.screenshot(path=str(SCREENSHOTS / "worklist-1366x768.png"))
        assert errors == []
        page.close()


# Cloud film on a phone ---------------------------------------------------------------------
@pytest.fixture
def share_page() -> Iterator[str]:
    """The cloud film page as :func:`viewer.share.render_page` writes it, for a report with
    long unbroken words (a hash, a pasted link), served as the app serves it."""
    from core.models import ReportVersion, ShareLink, Study
    from viewer.share import SharedReport, render_page

    study = Study(site_id="county-a", study_uid="1.2.3", patient_id="P-001",
                  patient_name="Phantom^Demo", study_date="20040119",
                  description="CT chest without contrast", modalities=["CT"])
    version = ReportVersion(
        report_id=1, number=1, state="final", signed_by="dr.li",
        signed_at=datetime(2026, 11, 20, 9, 30, tzinfo=UTC), hash_algorithm="sha256",
        content_hash="3f" * 32,
        fields={"findings": "Nodule in the right upper lobe, 8 mm. See "
                            "https://example.org/a-very-long-link-without-any-break-"
                            "in-it-at-all-0123456789abcdef0123456789abcdef",
                "impression": "右肺上叶结节，建议3个月后复查。"})
    link = ShareLink(token_hash="x", report_version_id=1,
                     expires_at=datetime.now(UTC) + timedelta(hours=1))
    html = render_page(SharedReport(link, version, study), ["/key/0.png"],
                       "Regional Diagnostic Center of the Jiangbei District")
    app = FastAPI()

    @app.get("/share/t")
    def page() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/key/0.png")
    def image() -> Response:
        return Response(_png(512, 512), media_type="image/png")

    with _Server(app) as server:
        yield f"{server.url}/share/t"


def test_share_page_fits_a_phone(share_page: str, browser: Any) -> None:
    page = browser.new_page(viewport=PHONE)
    errors = _collect_errors(page)
    page.goto(share_page)
    page.wait_for_function("() => { const i = document.querySelector('img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    overflow = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert overflow[0] <= overflow[1] == PHONE["width"], overflow
    text = page.inner_text("body")
    assert "2004-01-19" in text and "20040119" not in text
    assert "Demo Phantom" in text and "Phantom^Demo" not in text
    assert "2026-11-20 09:30 UTC" in text
    img = page.evaluate("document.querySelector('img').getBoundingClientRect().right")
    assert img <= PHONE["width"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "share-375x667.png"), full_page=True)
    assert errors == []
    page.close()
