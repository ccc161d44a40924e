"""The viewer issue end to end, in a real browser against a real center.

Nothing here is a stand-in: Orthanc, the gateway, a Celery worker (routing, AI inference,
delivery) and the web app (``python -m rdc web``) run as processes; a DCMTK ``storescp``
plays the county PACS that receives the signed results.  A chest CT phantom (the one
``rdc demo`` sends, with a planted nodule) arrives over C-STORE and gets its AI pre-read.
Then Debian's Chromium, driven by Playwright, starts at the home URL, signs in with
password + TOTP, opens the worklist and the study, checks that the image really rendered
(non-blank canvas pixels), changes the window, accepts an AI finding, fills and signs the
report, and sees its delivery.  Each step leaves a screenshot in
``var/screenshots/e2e-<nn>-<step>.png``.

Missing pieces fail loudly, never skip (see tests/test_frontend_smoke.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pyotp
import pytest
from sqlalchemy import select

from browser_support import (
    PASSPHRASE,
    PASSWORD,
    STATIC,
    Shots,
    collect_errors,
    issue_key,
    start_web,
    stop,
)
from conftest import SENDER_AE, Center, free_port, wait_until
from core.models import AIFinding, Delivery, ReportVersion, Study
from devkit.dcmtk import start_storescp, storescu
from devkit.samples import Patient, write_ct_series
from viewer.accounts import add_user

READER = "dr.e2e"
SLICES = 24

TECHNIQUE = "Axial CT of the chest, without intravenous contrast."
FINDINGS = "A solid nodule in the right lung, as marked by the AI pre-read. No effusion."
IMPRESSION = "Pulmonary nodule; follow-up CT in 3 months."


@dataclass
class E2E:
    center: Center
    web: subprocess.Popen[bytes]
    inbox: Path
    study_id: int
    study_uid: str
    finding_ids: list[int]
    totp_uri: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.center.web_port}"




def _study_with_findings(c: Center, study_uid: str) -> tuple[int, list[int]] | None:
    with c.db.session() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None or study.stored_instances < SLICES:
            return None
        ids = list(s.scalars(select(AIFinding.id).where(AIFinding.study_id == study.id)))
        return (study.id, ids) if ids else None


@pytest.fixture
def e2e(center: Center, tmp_path: Path) -> Iterator[E2E]:
    """A whole center with one CT study read by the AI, and a county PACS (storescp)."""
    if not (STATIC / "index.html").is_file():
        pytest.fail("the front end's test build is missing: cd viewer && npm run build:test")
    c = center
    scp_port, inbox = free_port(), tmp_path / "county-inbox"
    scp = start_storescp(inbox, scp_port, ae_title=SENDER_AE)
    web: subprocess.Popen[bytes] | None = None
    try:
        c.start_orthanc()
        c.add_site(port=scp_port, accepts_results=True)
        c.start_gateway()
        c.start_worker()
        web = start_web(c)

        ct = write_ct_series(tmp_path / "ct", slices=SLICES, patient=Patient(id="E2E-CT-1"))
        sent = storescu(ct.paths, host="127.0.0.1", port=c.gateway_port,
                        calling_ae=SENDER_AE, called_ae=c.gateway_ae)
        assert len(sent.succeeded) == SLICES, sent.output[-2000:]
        try:
            study_id, finding_ids = wait_until(
                lambda: _study_with_findings(c, ct.study_uid), 600,
                "the CT study in Orthanc with its AI findings", interval=1.0)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{c.logs()}") from None

        with c.db.session() as s:
            _, uri = add_user(s, c.settings, username=READER, display_name="Dr E2E",
                              password=PASSWORD, roles=["radiologist"], all_sites=True,
                              actor="test")
        issue_key(c, READER, "Dr E2E")
        yield E2E(c, web, inbox, study_id, ct.study_uid, finding_ids, uri)
    finally:
        if web is not None:
            stop(web)
        scp.terminate()
        scp.wait(10)




def _finding_review(c: Center, finding_id: int) -> str | None:
    with c.db.session() as s:
        f = s.get(AIFinding, finding_id)
        return f.review if f is not None else None


def _near(voi: dict[str, float], lower: float, upper: float) -> bool:
    """A VOI range within one unit of ``[lower, upper]`` (Cornerstone applies the DICOM
    linear window function, which puts the upper bound at center + (width - 1) / 2 - 0.5)."""
    return abs(voi["lower"] - lower) <= 1 and abs(voi["upper"] - upper) <= 1


def _inbox_files(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.rglob("*") if p.is_file())


@pytest.mark.timeout(900)
def test_read_and_sign_a_ct_in_the_browser(e2e: E2E, browser: Any) -> None:
    c = e2e.center
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    problems: list[str] = []
    shot = Shots(page, "e2e")

    # 1. Sign in with password + TOTP, from the home URL.
    page.goto(f"{e2e.url}/")
    page.wait_for_selector("[data-testid=login-form]", state="visible")
    page.get_by_test_id("login-username").fill(READER)
    page.get_by_test_id("login-password").fill(PASSWORD)
    totp = pyotp.parse_uri(e2e.totp_uri)
    assert isinstance(totp, pyotp.TOTP), e2e.totp_uri
    page.get_by_test_id("login-totp").fill(totp.now())
    shot("login")
    page.get_by_test_id("login-submit").click()

    # 2. The worklist shows the study.
    row = page.locator(f"[data-testid=worklist-row][data-study-id='{e2e.study_id}']")
    try:
        row.wait_for(timeout=30_000)
    except Exception:
        shot("worklist-missing")
        raise AssertionError(
            f"no worklist row for study {e2e.study_id}; login error: "
            f"{page.get_by_test_id('login-error').all_inner_texts()}; "
            f"worklist error: {page.get_by_test_id('worklist-error').all_inner_texts()}; "
            f"console: {errors}") from None
    assert page.get_by_test_id("current-user").inner_text() == "Dr E2E"
    assert page.evaluate("() => window.location.hash") == "#/worklist"
    assert row.get_by_test_id("worklist-patient").inner_text().strip()
    assert row.get_by_test_id("worklist-status").inner_text() == "unread"
    shot("worklist")

    # 3. Open the study: the CT really renders (non-blank canvas pixels).
    row.get_by_test_id("worklist-open").click()
    page.wait_for_selector("[data-testid=viewport][data-rendered=true]", timeout=120_000)
    page.wait_for_function("() => window.__rdc.nonBlankPixelCount() > 0", timeout=30_000)
    assert page.evaluate("() => window.__rdc.renderedImageCount") >= 1
    assert page.evaluate("() => window.__rdc.nonBlankPixelCount()") > 0
    page.wait_for_function(
        "() => document.querySelector('[data-testid=viewport-position]').textContent"
        f" === 'Im {SLICES // 2 + 1} / {SLICES}'")
    shot("study-rendered")
    # Take it: the header says so (signing gives it back, below).
    page.get_by_test_id("study-claim").click()
    page.wait_for_function("() => document.querySelector('[data-testid=study-claimed-by]')"
                           f".textContent === 'claimed by {READER}'")
    # The series list's thumbnail is an <img> of the proxied WADO-RS /rendered resource.
    # It does not block reading, so a broken one is recorded and the flow goes on.
    thumb = page.locator("[data-testid=series-item][data-kind=image] img").first
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=series-item] img')]"
        ".every(i => i.complete)", timeout=30_000)
    if not page.evaluate("i => i.complete && i.naturalWidth > 0", thumb.element_handle()):
        problems.append(
            "the series thumbnail did not load (GET .../rendered?viewport=128,128 then "
            ".../thumbnail through the web app's /dicom-web proxy; see the web log): "
            f"{thumb.get_attribute('src')}")

    # 3b. The AI SEG (ct-nodule-seg, a DICOM SEG in the study) is drawn over the CT as an
    # overlay: scroll to the nearest slice it marks (the planted nodule is in the middle).
    try:
        page.wait_for_function("() => window.__rdc.segSliceIndices().length > 0",
                               timeout=60_000)
    except Exception:
        shot("seg-missing")
        raise AssertionError(
            "the AI SEG overlay did not load; label: "
            f"{page.get_by_test_id('seg-label').all_inner_texts()}; console: {errors}") from None
    marked = page.evaluate("() => window.__rdc.segSliceIndices()")
    current = page.evaluate("() => window.__rdc.getViewport().getCurrentImageIdIndex()")
    target = min(marked, key=lambda i: abs(i - current))
    page.get_by_test_id("viewport").focus()
    for _ in range(abs(target - current)):
        page.keyboard.press("ArrowDown" if target > current else "ArrowUp")
    page.wait_for_function(
        f"() => window.__rdc.getViewport().getCurrentImageIdIndex() === {target}")
    page.wait_for_function("() => window.__rdc.segOverlayPixels() > 0")
    assert page.get_by_test_id("seg-toggle").is_checked()
    shot("seg-overlay")

    # 4. Change the window.  The phantom's own window is the lung window (W 1500 L -600),
    # so the bone preset comes first to prove the VOI moves, then the lung preset.
    voi = "() => window.__rdc.getViewport().getProperties().voiRange"
    wl_text = "() => document.querySelector('[data-testid=viewport-wl]').textContent"
    before = page.evaluate(voi)
    page.get_by_test_id("wl-preset-bone").click()
    page.wait_for_function(f"() => ({wl_text})() === 'W 2000 L 300'")
    bone = page.evaluate(voi)
    assert bone != before, (before, bone)
    assert _near(bone, -700, 1300), bone
    shot("window-bone")
    page.get_by_test_id("wl-preset-lung").click()
    page.wait_for_function(f"() => ({wl_text})() === 'W 1500 L -600'")
    lung = page.evaluate(voi)
    assert lung != bone and _near(lung, -1350, 150), lung
    page.wait_for_function("() => window.__rdc.nonBlankPixelCount() > 0")
    shot("window-lung")

    # 5. Accept an AI finding: the page and the database both say accepted.
    finding = page.locator("[data-testid=ai-finding]").first
    finding.wait_for()
    fid = int(finding.get_attribute("data-finding-id") or 0)
    assert fid in e2e.finding_ids, (fid, e2e.finding_ids)
    assert finding.get_attribute("data-review") != "accepted"
    finding.get_by_test_id("ai-finding-accept").click()
    page.wait_for_selector(
        f"[data-testid=ai-finding][data-finding-id='{fid}'][data-review=accepted]")
    wait_until(lambda: _finding_review(c, fid) == "accepted", 10,
               f"AIFinding {fid}.review == 'accepted' in the database")
    shot("ai-accepted")

    # 6. Fill the report: the template's technique has a {{placeholder}} to replace.
    technique = page.get_by_test_id("report-field-technique")
    technique.wait_for()
    # Opening the study and reviewing its findings stored no report: the first save does.
    with c.db.session() as s:
        assert s.scalar(select(ReportVersion)) is None
    assert "{{" in technique.input_value(), technique.input_value()
    assert page.get_by_test_id("report-state").inner_text() == "draft"
    technique.fill(TECHNIQUE)
    page.get_by_test_id("report-field-findings").fill(FINDINGS)
    page.get_by_test_id("report-field-impression").fill(IMPRESSION)
    page.get_by_test_id("report-save").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=report-status]').textContent"
        ".startsWith('Saved')")
    assert not page.get_by_test_id("report-error").is_visible(), (
        page.get_by_test_id("report-error").inner_text())
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion).order_by(ReportVersion.id.desc()))
        assert v is not None and v.state == "draft"
    shot("report-filled")

    # 7. Sign with the key's passphrase.
    page.get_by_test_id("report-sign").click()
    page.get_by_test_id("sign-passphrase").wait_for(state="visible")
    page.get_by_test_id("sign-passphrase").fill(PASSPHRASE)
    shot("sign-dialog")
    page.get_by_test_id("sign-confirm").click()
    try:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=report-state]').textContent === 'final'",
            timeout=60_000)
    except Exception:
        shot("sign-failed")
        raise AssertionError(
            "the report did not become final; sign error: "
            f"{page.get_by_test_id('sign-error').all_inner_texts()}; report error: "
            f"{page.get_by_test_id('report-error').all_inner_texts()}; console: {errors}",
        ) from None
    assert not page.get_by_test_id("report-sign").is_visible()
    assert page.get_by_test_id("report-addendum").is_visible()
    assert page.get_by_test_id("report-field-findings").get_attribute("readonly") is not None
    # What the report was signed on is read-only now: the AI findings' review controls,
    # and the API answers 409 (a change needs an addendum); the claim is released.
    page.wait_for_function("() => [...document.querySelectorAll("
                           "'[data-testid=ai-finding-accept], [data-testid=ai-finding-reject]')]"
                           ".every(b => b.disabled)")
    csrf = page.request.get(f"{e2e.url}/api/auth/me").json()["csrf_token"]
    refused = page.request.post(f"{e2e.url}/api/ai-findings/{fid}/review",
                                headers={"X-CSRF-Token": csrf}, data={"decision": "rejected"})
    assert refused.status == 409 and "addendum" in refused.json()["detail"], refused.text()
    assert _finding_review(c, fid) == "accepted"
    with c.db.session() as s:
        study = s.get(Study, e2e.study_id)
        assert study is not None and study.claimed_by is None
    shot("signed")

    # 8. The delivery to the county site shows as sent (or committed).
    delivered = ("[data-testid=delivery-item][data-state=sent], "
                 "[data-testid=delivery-item][data-state=committed]")

    def shown() -> bool:
        if page.locator(delivered).count():
            return True
        page.get_by_test_id("delivery-refresh").click()
        page.wait_for_timeout(1000)
        return bool(page.locator(delivered).count() > 0)
    try:
        wait_until(shown, 180, "the delivery shown as sent or committed", interval=1.0)
    except AssertionError as e:
        shot("delivery-missing")
        raise AssertionError(
            f"{e}; delivery items: {page.get_by_test_id('delivery-status').inner_text()}"
            f"\n{c.logs()}") from None
    item = page.locator(delivered).first
    assert "county-a" in item.inner_text(), item.inner_text()
    shot("delivered")

    # The county PACS really received the signed SR and its PDF.
    received = wait_until(lambda: f if len(f := _inbox_files(e2e.inbox)) >= 2 else None,
                          60, "the SR and PDF at the county storescp")
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion).where(ReportVersion.state == "final"))
        assert v is not None and v.signed_by == READER
        expected = {v.sr_sop_uid, v.pdf_sop_uid}
        delivery = s.scalar(select(Delivery))
        assert delivery is not None and delivery.state in ("sent", "committed")
    datasets = [pydicom.dcmread(p) for p in received]
    assert {str(ds.SOPInstanceUID) for ds in datasets} == expected
    assert {str(ds.Modality) for ds in datasets} == {"SR", "DOC"}
    assert all(str(ds.StudyInstanceUID) == e2e.study_uid for ds in datasets)

    context.close()
    if problems or errors:
        pytest.fail("the flow completed, but the browser saw problems:\n  "
                    + "\n  ".join(problems + errors), pytrace=False)
