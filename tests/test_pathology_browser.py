"""The pathology center end to end, in a real browser against a real center (issue 13's
"Done when").

Nothing here is a stand-in: Orthanc (with its WSI plugin), the gateway, a Celery worker
(routing, the pathology intake and its QC gate, delivery) and the web app (``python -m
rdc web``, serving the test build of the front end) run as processes; a DCMTK
``storescp`` plays the county site that receives the signed report.  Synthetic H&E
slides, written as DICOM WSI the way the center converts a vendor file
(devkit.wsi_samples), arrive over C-STORE and become cases: a routine one of two slides
and a frozen section.  Then Debian's Chromium, driven by Playwright, at a laptop's
1366 x 768:

- starts at ``/`` and signs in as a pathologist (password + TOTP), who was paged for the
  frozen section: the banner leads to it; claims it there and enters the intra-op call,
  which joins the frozen-section timeline;
- opens the pathology worklist (the frozen section first), claims the routine case and
  opens it;
- checks that the tissue really rendered in OpenSeadragon at two zoom levels (the whole
  slide, then full resolution over tissue): screenshots of the viewer, in which a
  meaningful fraction of the pixels is the stain's pink/purple, every tile through the
  web app's proxy; the scale bar is calibrated from the pixel spacing;
- draws a measurement line (its length in µm) and a text note, saves them (a DICOM
  Microscopy Bulk Simple Annotations instance), reopens the case and sees them read back;
- switches the QC flags overlay on and off; shows the second slide side by side, in step
  with the first; switches the AI heat map overlay on and off;
- asks a blinded second opinion of a pathologist of another site, who answers it in a
  second browser context (the consult lets them open that case), and grades the answer;
- fills and signs the synoptic report; the case is signed and the report (SR + PDF)
  reaches the county site's storescp.

Each step leaves ``var/screenshots/pathology-<nn>-<step>.png``; the viewer at both zoom
levels and the second slide are kept as ``pathology-canvas-<what>.png``.  Missing pieces fail
loudly, never skip.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from sqlalchemy import select

from browser_support import (
    PASSPHRASE,
    PASSWORD,
    SCREENSHOTS,
    Codes,
    Shots,
    collect_errors,
    issue_key,
    require_front_end,
    sign_in,
    start_web,
    stop,
)
from conftest import SENDER_AE, Center, free_port, wait_until
from core.models import Delivery, PathologyCase, PathologyConsult, PathologySlide, ReportVersion
from devkit.dcmtk import start_storescp, storescu
from devkit.wsi_samples import synthetic_wsi_dicom
from viewer.accounts import add_user

READER = "dr.slide"
FROZEN = "PATH-F1"
CONSULTANT = "dr.second"
ACCESSION = "PATH-B1"
VIEWPORT = {"width": 1366, "height": 768}
#: The share of a viewer screenshot that must be the stain's pink/purple.
MIN_TISSUE = 0.05
FILL = {
    "specimen": "Skin ellipse, left forearm (A1).",
    "procedure": "Excision.",
    "diagnosis": "Benign compound naevus.",
    "margins": "Clear; closest 2 mm (deep).",
    "grade": "Not applicable.",
    "comments": "Second opinion concordant.",
}


@dataclass
class PathCenter:
    center: Center
    web: subprocess.Popen[bytes]
    inbox: Path
    case_id: int
    slide_ids: list[int]
    frozen_id: int
    study_uid: str
    reader_uri: str
    consultant_uri: str
    consultant_id: int

    @property
    def slide_id(self) -> int:
        return self.slide_ids[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.center.web_port}"


def _case_ready(c: Center, accession: str, n_slides: int) -> tuple[int, list[int]] | None:
    """A case and its slides, once the intake's QC gate has graded all ``n_slides``."""
    with c.db.session() as s:
        case = s.scalar(select(PathologyCase).where(PathologyCase.accession_number == accession))
        if case is None or case.state not in ("qc_passed", "qc_failed"):
            return None
        slides = list(s.scalars(select(PathologySlide).where(PathologySlide.case_id == case.id)
                                .order_by(PathologySlide.id)))
        if len(slides) < n_slides or any(sl.qc_grade == "pending" for sl in slides):
            return None
        return case.id, [sl.id for sl in slides]


@pytest.fixture
def path_center(center: Center, tmp_path: Path) -> Iterator[PathCenter]:
    """A whole center with a pathologist of the center and one of county-b, then from
    county-a one case of two synthetic H&E slides (blocks A1 and A2) and one frozen
    section (which pages the center's pathologist), and the county site's storescp."""
    require_front_end()
    c = center
    scp_port, inbox = free_port(), tmp_path / "county-inbox"
    scp = start_storescp(inbox, scp_port, ae_title=SENDER_AE)
    web: subprocess.Popen[bytes] | None = None
    try:
        c.start_orthanc()
        c.add_site(port=scp_port, accepts_results=True, inactivity_s=1)
        c.add_site("county-b", ae_title="COUNTY_B", port=free_port())
        c.start_gateway()
        c.start_worker()
        web = start_web(c)

        with c.db.session() as s:
            _, reader_uri = add_user(s, c.settings, username=READER, display_name="Dr Slide",
                                     password=PASSWORD, roles=["pathologist"], all_sites=True,
                                     actor="test")
            consultant, consultant_uri = add_user(
                s, c.settings, username=CONSULTANT, display_name="Dr Second",
                password=PASSWORD, roles=["pathologist"], sites=["county-b"], actor="test")
            s.flush()
            consultant_id = int(consultant.id)

        files = [f for n, seed in ((1, 3), (2, 4)) for f in synthetic_wsi_dicom(
            tmp_path / f"wsi{n}", width=4096, height=3072, seed=seed, accession=ACCESSION,
            patient_id="PAT-B1", organ="skin", block=str(n), slide_number=n, blur=False,
            pen=False)]
        files += synthetic_wsi_dicom(tmp_path / "frozen", width=2048, height=1536, seed=5,
                                     accession=FROZEN, patient_id="PAT-F1", organ="breast",
                                     frozen=True, blur=False, pen=False)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        sent = storescu(files, host="127.0.0.1", port=c.gateway_port,
                        calling_ae=SENDER_AE, called_ae=c.gateway_ae)
        assert sent.succeeded, sent.output[-2000:]
        try:
            ready = wait_until(lambda: _case_ready(c, ACCESSION, 2), 300,
                               "the case and its QC-graded slides", interval=1.0)
            frozen = wait_until(lambda: _case_ready(c, FROZEN, 1), 300,
                                "the frozen section's case", interval=1.0)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{c.logs()}") from None
        assert ready is not None and frozen is not None
        case_id, slide_ids = ready
        issue_key(c, READER, "Dr Slide")
        yield PathCenter(c, web, inbox, case_id, slide_ids, frozen[0], study_uid, reader_uri,
                         consultant_uri, consultant_id)
    finally:
        if web is not None:
            stop(web)
        scp.terminate()
        scp.wait(10)


def tissue_fraction(png: Path) -> float:
    """The share of an RGB screenshot's pixels that are stained tissue: not white, and
    pink (eosin) or purple (hematoxylin): red and blue above green."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    stained = ((r + g + b) < 690) & (r > g + 25) & (b > g + 10)
    return float(stained.mean())


def densest_tissue(png: Path, block: int = 24) -> tuple[float, float]:
    """The centre (screenshot pixels) of the block with the most stained pixels."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(np.int32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    stained = (((r + g + b) < 690) & (r > g + 25) & (b > g + 10)).astype(np.float64)
    h, w = stained.shape
    # Leave out the navigator (bottom right) and the margins.
    hh, ww = (h * 3 // 4) // block, (w * 3 // 4) // block
    grid = stained[:hh * block, :ww * block].reshape(hh, block, ww, block).mean(axis=(1, 3))
    y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return (x + 0.5) * block, (y + 0.5) * block


def viewer_shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"pathology-canvas-{name}.png"
    page.get_by_test_id("slide-viewer").screenshot(path=str(path))
    return path


def wait_loaded(page: Any) -> None:
    page.wait_for_function("() => window.__rdc && window.__rdc.slideViewer"
                           " && window.__rdc.slideViewer.fullyLoaded()", timeout=90_000)


def text_of(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text())


@pytest.mark.timeout(1200)
def test_read_a_slide_consult_and_sign_in_the_browser(path_center: PathCenter,
                                                      browser: Any) -> None:
    e = path_center
    c = e.center
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    shot = Shots(page, "pathology")
    tiles: list[str] = []
    page.on("response", lambda r: tiles.append(r.url) if "/tiles/" in r.url and r.ok else None)

    # 1. Sign in as the pathologist, from the home URL; the Pathology link is there.
    page.goto(f"{e.url}/")
    sign_in(page, READER, Codes(e.reader_uri))
    page.get_by_test_id("current-user").wait_for()

    # 2. The frozen section paged this pathologist: the banner, over any page, leads to
    # it; claimed there, the intra-op call is entered and joins the timeline.
    link = page.locator(f"[data-testid=pathology-page-link][data-case-id='{e.frozen_id}']")
    try:
        link.wait_for()
    except Exception:
        shot("page-missing")
        raise AssertionError(f"no page for the frozen case; console: {errors}") from None
    assert FROZEN in link.inner_text()
    shot("paged")
    link.click()
    page.get_by_test_id("case-claim").click()
    page.get_by_test_id("case-release").wait_for()
    assert text_of(page, "case-urgency") == "FROZEN"
    wait_loaded(page)
    page.get_by_test_id("call-text").fill("Frozen section: benign, margins clear.")
    page.get_by_test_id("call-submit").click()
    page.locator("[data-testid=timeline-step][data-step=call][data-done=true]").wait_for()
    assert page.get_by_test_id("call-form").count() == 0
    steps = page.locator("[data-testid=timeline-step][data-done=true]")
    done = [steps.nth(i).get_attribute("data-step") for i in range(steps.count())]
    assert done[:2] == ["received", "qc"] and "first_tile" in done and done[-1] == "call", done
    shot("frozen-call")

    # 3. The case worklist, as the server sorts it: the frozen section first; claim the
    # routine case.
    page.get_by_test_id("nav-pathology").click()
    row = page.locator(f"[data-testid=path-row][data-case-id='{e.case_id}']")
    try:
        row.wait_for()
        assert page.get_by_test_id("path-row").first.get_attribute("data-urgency") == "frozen"
    except Exception:
        shot("worklist-missing")
        raise AssertionError(f"no worklist row for case {e.case_id}; error: "
                             f"{page.get_by_test_id('path-worklist-error').all_inner_texts()}; "
                             f"console: {errors}") from None
    assert row.get_by_test_id("path-accession").inner_text() == ACCESSION
    assert row.get_by_test_id("path-qc").inner_text().startswith("QC ")
    shot("worklist")
    row.get_by_test_id("path-claim").click()
    row.get_by_test_id("path-release").wait_for()
    assert row.get_by_test_id("path-holder").inner_text() == "Dr Slide"
    with c.db.session() as s:
        case = s.get(PathologyCase, e.case_id)
        assert case is not None and case.state == "assigned" and case.assigned_to is not None

    # 4. Open it: the slide tray and the viewer; the tissue renders at the whole-slide
    # zoom, through the proxy (tiles of the lowest level).
    tiles.clear()  # the frozen section's tiles came before
    row.get_by_test_id("path-open").click()
    page.wait_for_function(f"() => window.location.hash.startsWith('#/pathology/case/{e.case_id}')")
    page.get_by_test_id("slide-tray-item").nth(1).wait_for()
    try:
        page.wait_for_function("() => window.__rdc && window.__rdc.slideViewer", timeout=30_000)
        page.evaluate("() => window.__rdc.slideViewer.ready")
        wait_loaded(page)
    except Exception:
        shot("viewer-failed")
        raise AssertionError(
            f"the slide viewer did not load; errors: "
            f"{page.get_by_test_id('slide-viewer-error').all_inner_texts()} "
            f"{page.get_by_test_id('case-error').all_inner_texts()}; console: {errors}") from None
    pyramid = page.evaluate(f"() => fetch('/api/pathology/slides/{e.slide_id}/pyramid')"
                            ".then(r => r.json())")
    levels = sorted(int(lv["level"]) for lv in pyramid["levels"])
    assert len(levels) >= 3, pyramid
    low = page.evaluate("() => window.__rdc.slideViewer.viewer.viewport.getZoom(true)")
    overview = viewer_shot(page, "overview")
    fraction = tissue_fraction(overview)
    assert fraction > MIN_TISSUE, f"only {fraction:.1%} tissue pixels at the overview ({overview})"
    assert not any(f"/tiles/{levels[0]}/" in u for u in tiles), "full resolution at the overview?"
    assert text_of(page, "scale-bar-label").endswith(("µm", "mm"))
    shot("case-overview")

    # 5. Full resolution (server level 0), over tissue: the scale bar is calibrated.
    x, y = densest_tissue(overview)
    page.evaluate("([x, y]) => window.__rdc.slideViewer.panToElement(x, y)", [x, y])
    page.evaluate("() => window.__rdc.slideViewer.zoomTo(0)")
    wait_loaded(page)
    high = page.evaluate("() => window.__rdc.slideViewer.viewer.viewport.getZoom(true)")
    assert high > low * 4, (low, high)
    full = viewer_shot(page, "full-resolution")
    fraction = tissue_fraction(full)
    assert fraction > MIN_TISSUE, f"only {fraction:.1%} tissue pixels at full resolution ({full})"
    assert any(f"/tiles/{levels[0]}/" in u for u in tiles), "no full-resolution tile came"
    assert all(u.startswith(f"{e.url}/api/pathology/slides/{e.slide_id}/tiles/")
               for u in tiles), "a tile came from elsewhere than the web app's proxy"
    mpp = float(pyramid["mpp"])
    bar = page.get_by_test_id("scale-bar")
    um, px = float(bar.get_attribute("data-um") or 0), float(bar.get_attribute("data-px") or 0)
    assert abs(um / px - mpp) < mpp * 0.02, (um, px, mpp)  # 1 screen pixel = 1 image pixel
    shot("full-resolution")

    # 6. Annotate: a 200-pixel line (50 µm at 0.25 µm/px) and a text note; save them.
    layer = page.get_by_test_id("annotation-input")
    page.get_by_test_id("tool-line").click()
    box = layer.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] / 2 - 100, box["y"] + box["height"] / 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 100, y0, steps=4)
    page.mouse.move(x0 + 200, y0, steps=4)
    page.mouse.up()
    page.get_by_test_id("note-text").fill("atypical nest here")
    page.get_by_test_id("tool-text").click()
    page.mouse.click(x0 + 60, y0 + 80)
    page.get_by_test_id("tool-pan").click()
    new = page.locator("[data-testid=annotation-item][data-state=new]")
    assert new.count() == 2
    measure = new.first.get_by_test_id("annotation-measure").inner_text()
    m = re.fullmatch(r"([\d.]+) µm", measure)
    assert m and abs(float(m.group(1)) - 200 * mpp) <= 1, measure
    page.get_by_test_id("annotations-save").click()
    page.wait_for_function("() => document.querySelector('[data-testid=annotations-status]')"
                           ".textContent.startsWith('Saved')")
    stored = page.evaluate(f"() => fetch('/api/pathology/slides/{e.slide_id}/annotations')"
                           ".then(r => r.json())")["annotations"]
    assert sorted(a["kind"] for a in stored) == ["line", "text"], stored
    assert {a["author"] for a in stored} == {READER}, stored
    shot("annotated")

    # 7. Reopen the case: the annotations are read back from the stored DICOM object.
    page.get_by_test_id("case-back").click()
    row.wait_for()
    row.get_by_test_id("path-open").click()
    wait_loaded(page)
    saved = page.locator("[data-testid=annotation-item][data-state=saved]")
    saved.nth(1).wait_for()
    assert saved.count() == 2
    assert "atypical nest here" in page.get_by_test_id("case-annotations").inner_text()
    assert page.locator("[data-testid=annotation-shape][data-state=saved]").count() == 2
    shot("reopened")

    # 8. The QC flags are an overlay to switch on and off.
    page.get_by_test_id("overlay-qc").check()
    page.get_by_test_id("qc-overlay").wait_for(state="attached")
    page.get_by_test_id("overlay-qc").uncheck()
    page.wait_for_function("() => !document.querySelector('[data-testid=qc-overlay]')")

    # 9. Side by side: the second slide beside the first, kept in step; the AI heat map
    # (the demonstration tile model's, computed by the worker) is an overlay too.
    def heat_map() -> bool:
        detail = page.request.get(f"{e.url}/api/pathology/cases/{e.case_id}").json()
        return any(sl["has_heatmap"] for sl in detail["slides"])
    try:
        wait_until(heat_map, 300, "an AI heat map of a slide of the case", interval=2.0)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{c.logs()}") from None
    page.get_by_test_id("slide-tray-item").nth(1).get_by_test_id("slide-compare").click()
    page.wait_for_function("() => window.location.hash.endsWith("
                           f"'?slides={e.slide_ids[0]},{e.slide_ids[1]}')")
    page.wait_for_function("() => window.__rdc.slideViewer"
                           " && window.__rdc.slideViewer.views() === 2")
    page.evaluate("() => window.__rdc.slideViewer.ready")  # both views open
    wait_loaded(page)
    # Server level 1 at 1:1 in the first view; the second follows.
    page.evaluate("() => window.__rdc.slideViewer.zoomTo(1)")
    labels = "() => [...document.querySelectorAll('[data-testid=zoom-label]')]" \
             ".map(e => e.textContent).join()"
    down = next(float(lv["downsample"]) for lv in pyramid["levels"] if int(lv["level"]) == 1)
    one_to = f"1:{down:.1f}"
    try:
        page.wait_for_function(f"() => ({labels})() === '{one_to},{one_to}'")
    except Exception:
        shot("side-by-side-failed")
        raise AssertionError(f"the views are not in step: {page.evaluate(labels)}") from None
    assert page.get_by_test_id("slide-viewer").count() == 2
    wait_loaded(page)  # both views
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    second = SCREENSHOTS / "pathology-canvas-second-slide.png"
    page.get_by_test_id("slide-viewer").nth(1).screenshot(path=str(second))
    drawn = np.asarray(Image.open(second).convert("RGB")).min(axis=2) < 250
    assert drawn.mean() > 0.5, f"the second slide is not drawn ({second})"
    shot("side-by-side")
    page.get_by_test_id("overlay-ai").check()
    page.get_by_test_id("ai-overlay").first.wait_for(state="attached")
    assert page.get_by_test_id("ai-demo-note").is_visible()
    shot("ai-heat-map")
    page.get_by_test_id("overlay-ai").uncheck()
    page.wait_for_function("() => !document.querySelector('[data-testid=ai-overlay]')")

    # 10. Ask a second opinion of the county-b pathologist, blinded, this slide.
    page.get_by_test_id("consult-open-form").click()
    page.locator(f"[data-testid=consult-consultant] option[value='{e.consultant_id}']"
                 ).wait_for(state="attached")
    page.get_by_test_id("consult-consultant").select_option(str(e.consultant_id))
    page.get_by_test_id("consult-question-input").fill("Naevus or early melanoma?")
    page.get_by_test_id("consult-first-diagnosis").fill("Compound naevus")
    assert page.get_by_test_id("consult-blinded").is_checked()
    page.get_by_test_id("consult-submit").click()
    page.locator("[data-testid=consult-item][data-state=requested]").wait_for()
    shot("consult-requested")

    # 11. The consultant, in another browser context, answers it (and may open the case).
    other = browser.new_context(viewport=VIEWPORT)
    page2 = other.new_page()
    page2.set_default_timeout(30_000)
    errors2 = collect_errors(page2)
    page2.goto(f"{e.url}/")
    sign_in(page2, CONSULTANT, Codes(e.consultant_uri))
    page2.get_by_test_id("current-user").wait_for()
    page2.goto(f"{e.url}/#/pathology/consults")
    item = page2.locator("[data-testid=consults-to-me] [data-testid=consult-item]")
    item.first.wait_for()
    assert "Naevus or early melanoma?" in item.first.inner_text()
    assert "Compound naevus" not in item.first.inner_text()  # blinded
    item.first.get_by_test_id("consult-case-link").click()
    page2.wait_for_function("() => window.__rdc && window.__rdc.slideViewer")
    page2.evaluate("() => window.__rdc.slideViewer.ready")
    wait_loaded(page2)
    page2.go_back()
    item = page2.locator("[data-testid=consults-to-me] [data-testid=consult-item]")
    item.first.get_by_test_id("consult-answer-input").fill("Compound naevus, no atypia.")
    item.first.get_by_test_id("consult-answer-submit").click()
    page2.locator("[data-testid=consults-to-me] [data-testid=consult-item][data-state=answered]"
                  ).wait_for()
    Shots(page2, "pathology-consultant")("answered")
    other.close()
    assert errors2 == [], "the consultant's browser saw problems:\n  " + "\n  ".join(errors2)

    # 12. The requester grades the answer.
    page.get_by_test_id("pathology-tab-consults").click()
    mine = page.locator("[data-testid=consults-mine] [data-testid=consult-item]")
    mine.first.wait_for()
    mine.first.get_by_test_id("consult-grade-select").select_option("concordant")
    mine.first.get_by_test_id("consult-grade-submit").click()
    page.locator("[data-testid=consults-mine] [data-testid=consult-concordance]").wait_for()
    with c.db.session() as s:
        consult = s.scalar(select(PathologyConsult).where(PathologyConsult.case_id == e.case_id))
        assert consult is not None
        assert (consult.state, consult.concordance) == ("answered", "concordant")
        assert consult.answer == "Compound naevus, no atypia."
    shot("consult-graded")

    # 13. The synoptic report: start it, fill what is open, save, sign.
    page.goto(f"{e.url}/#/pathology/case/{e.case_id}")
    page.get_by_test_id("report-create").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=report-state]')?.textContent === 'draft'")
    fields = page.locator("[data-testid=report-fields] textarea[data-field]")
    keys = [fields.nth(i).get_attribute("data-field") for i in range(fields.count())]
    assert "diagnosis" in keys, keys
    for key in keys:
        field = page.get_by_test_id(f"report-field-{key}")
        value = field.input_value()
        if not value.strip() or "{{" in value:
            field.fill(FILL.get(key or "", f"{key}: reviewed."))
    page.get_by_test_id("report-save").click()
    page.wait_for_function("() => document.querySelector('[data-testid=report-status]')"
                           ".textContent.startsWith('Saved')")
    page.get_by_test_id("report-sign").click()
    page.get_by_test_id("sign-passphrase").fill(PASSPHRASE)
    page.get_by_test_id("sign-confirm").click()
    try:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=report-state]').textContent === 'final'",
            timeout=60_000)
    except Exception:
        shot("sign-failed")
        raise AssertionError(
            f"the report did not become final; sign error: "
            f"{page.get_by_test_id('sign-error').all_inner_texts()}; report error: "
            f"{page.get_by_test_id('report-error').all_inner_texts()}; console: {errors}"
        ) from None
    page.wait_for_function("() => document.querySelector('[data-testid=case-state]')"
                           ".dataset.state === 'signed'")
    with c.db.session() as s:
        case = s.get(PathologyCase, e.case_id)
        assert case is not None and case.state == "signed"
    shot("signed", full_page=True)

    # 14. The county site receives the signed SR and its PDF, of the slide's study.
    try:
        received = wait_until(
            lambda: f if len(f := sorted(p for p in e.inbox.rglob("*") if p.is_file())) >= 2
            else None, 180, "the SR and PDF at the county storescp", interval=1.0)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{c.logs()}") from None
    assert received is not None
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion).where(ReportVersion.state == "final"))
        assert v is not None and v.signed_by == READER
        expected = {v.sr_sop_uid, v.pdf_sop_uid}
        d = s.scalar(select(Delivery))
        assert d is not None and d.site_id == "county-a"
    datasets = [pydicom.dcmread(p) for p in received]
    assert {str(ds.SOPInstanceUID) for ds in datasets} == expected
    assert {str(ds.Modality) for ds in datasets} == {"SR", "DOC"}
    assert all(str(ds.StudyInstanceUID) == e.study_uid for ds in datasets)

    context.close()
    assert errors == [], "the browser saw problems:\n  " + "\n  ".join(errors)
