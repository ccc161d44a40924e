"""The cardiologists' ECG screens end to end, in a real browser against a real center.

Nothing here is a stand-in: Orthanc, the gateway, a Celery worker (routing, the ECG
analysis, delivery) and the web app (``python -m rdc web``) run as processes; a DCMTK
``storescp`` plays the county PACS that receives the signed results.  pydicom's 12-lead
``waveform_ecg.dcm`` arrives over C-STORE and gets its automatic analysis.  Then Debian's
Chromium, driven by Playwright, starts at the home URL, signs in as a cardiologist, opens
the ECG from the main worklist (it goes to the ECG screen, with the ECG model's findings),
finds it in the ECG queue, opens it, checks that the tracing really rendered (non-blank
canvas pixels), uses the calipers, edits a statement (the database row changes), fills
and signs the ECG report and sees its delivery.  Each step leaves
``var/screenshots/ecg-<nn>-<step>.png``.

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
from pydicom.data import get_testdata_file
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
from core.models import AIFinding, Delivery, ECGAnalysis, Report, ReportVersion, Study
from devkit.dcmtk import start_storescp, storescu
from viewer.accounts import add_user

CARDIOLOGIST = "dr.heart"
EDITED = "Sinus rhythm, confirmed on the tracing"
FILL = {
    "rhythm": "Sinus rhythm.",
    "measurements": "HR about 60/min; PR, QRS and QTc within normal limits.",
    "interpretation": "Normal ECG.",
    "comparison": "No previous ECG.",
}


@dataclass
class EcgCenter:
    center: Center
    web: subprocess.Popen[bytes]
    inbox: Path
    ecg_id: int
    study_id: int
    study_uid: str
    totp_uri: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.center.web_port}"




def _analysis(c: Center, study_uid: str) -> tuple[int, int] | None:
    """The ECG's analysis and study, once the ECG model's findings are there too."""
    with c.db.session() as s:
        found = s.execute(select(ECGAnalysis.id, Study.id)
                          .join(Study, Study.id == ECGAnalysis.study_id)
                          .where(Study.study_uid == study_uid)).first()
        if found is None or s.scalar(select(AIFinding.id).where(
                AIFinding.study_id == found[1]).limit(1)) is None:
            return None
        return int(found[0]), int(found[1])


@pytest.fixture
def ecg_center(center: Center, tmp_path: Path) -> Iterator[EcgCenter]:
    """A whole center with one analysed ECG, and a county PACS (storescp)."""
    if not (STATIC / "index.html").is_file():
        pytest.fail("the front end's test build is missing: cd viewer && npm run build:test")
    c = center
    scp_port, inbox = free_port(), tmp_path / "county-inbox"
    scp = start_storescp(inbox, scp_port, ae_title=SENDER_AE)
    web: subprocess.Popen[bytes] | None = None
    try:
        c.start_orthanc()
        c.add_site(port=scp_port, accepts_results=True, inactivity_s=1)
        c.start_gateway()
        c.start_worker()
        web = start_web(c)

        path = Path(get_testdata_file("waveform_ecg.dcm"))
        study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        sent = storescu([path], host="127.0.0.1", port=c.gateway_port,
                        calling_ae=SENDER_AE, called_ae=c.gateway_ae)
        assert sent.succeeded, sent.output[-2000:]
        try:
            ecg_id, study_id = wait_until(lambda: _analysis(c, study_uid), 300,
                                          "the ECG's ECGAnalysis row and its AI findings",
                                          interval=1.0)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{c.logs()}") from None

        with c.db.session() as s:
            _, uri = add_user(s, c.settings, username=CARDIOLOGIST, display_name="Dr Heart",
                              password=PASSWORD, roles=["cardiologist"], all_sites=True,
                              actor="test")
        issue_key(c, CARDIOLOGIST, "Dr Heart")
        yield EcgCenter(c, web, inbox, ecg_id, study_id, study_uid, uri)
    finally:
        if web is not None:
            stop(web)
        scp.terminate()
        scp.wait(10)




def _row(c: Center, ecg_id: int) -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    with c.db.session() as s:
        row = s.get(ECGAnalysis, ecg_id)
        assert row is not None
        return list(row.statements), dict(row.measurements), row.edited_by


@pytest.mark.timeout(900)
def test_read_and_sign_an_ecg_in_the_browser(ecg_center: EcgCenter, browser: Any) -> None:
    e = ecg_center
    c = e.center
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    shot = Shots(page, "ecg")

    # 1. Sign in as the cardiologist (password + TOTP), from the home URL.
    page.goto(f"{e.url}/")
    page.wait_for_selector("[data-testid=login-form]", state="visible")
    page.get_by_test_id("login-username").fill(CARDIOLOGIST)
    page.get_by_test_id("login-password").fill(PASSWORD)
    totp = pyotp.parse_uri(e.totp_uri)
    assert isinstance(totp, pyotp.TOTP), e.totp_uri
    page.get_by_test_id("login-totp").fill(totp.now())
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("current-user").wait_for()

    # 2. Opened from the main worklist, the ECG goes to the ECG screen (never to the
    # image viewer), with the ECG model's findings beside the rule statements.
    wl_row = page.locator(f"[data-testid=worklist-row][data-study-id='{e.study_id}']")
    wl_row.wait_for()
    assert wl_row.get_by_test_id("worklist-status").inner_text() == "unread"
    wl_row.get_by_test_id("worklist-open").click()
    page.wait_for_function(f"() => window.location.hash === '#/ecg/{e.ecg_id}'")
    try:
        page.wait_for_selector("[data-testid=ecg-canvas][data-rendered=true]", timeout=60_000)
    except Exception:
        shot("worklist-open-failed")
        raise AssertionError(
            f"the ECG opened from the worklist did not render; url {page.url}; errors: "
            f"{page.get_by_test_id('ecg-error').all_inner_texts()}; console: {errors}") from None
    assert page.get_by_test_id("viewport").count() == 0
    ai = page.get_by_test_id("ecg-ai-finding")
    ai.first.wait_for()
    with c.db.session() as s:
        labels = set(s.scalars(select(AIFinding.label).where(AIFinding.study_id == e.study_id)))
    assert {ai.nth(i).get_attribute("data-label") for i in range(ai.count())} == labels
    assert "ecg-rhythm@" in page.get_by_test_id("ecg-ai-findings").inner_text()
    assert page.get_by_test_id("ecg-statement").count() >= 1
    shot("from-worklist")
    # Opening it stored no report: the study stays unread until the first save.
    with c.db.session() as s:
        assert s.scalar(select(Report)) is None

    # The ECG queue shows the ECG too.
    page.get_by_test_id("nav-ecg").click()
    row = page.locator(f"[data-testid=ecg-row][data-ecg-id='{e.ecg_id}']")
    try:
        row.wait_for(timeout=30_000)
    except Exception:
        shot("queue-missing")
        raise AssertionError(
            f"no ECG queue row for {e.ecg_id}; error: "
            f"{page.get_by_test_id('ecg-queue-error').all_inner_texts()}; "
            f"console: {errors}") from None
    assert row.get_attribute("data-status") == "unread"
    assert row.get_by_test_id("ecg-hr").inner_text().strip() not in ("", "—")
    shot("queue")

    # 3. Open it: the 12-lead tracing really renders on the paper.
    row.get_by_test_id("ecg-open").click()
    try:
        page.wait_for_selector("[data-testid=ecg-canvas][data-rendered=true]", timeout=60_000)
    except Exception:
        shot("tracing-missing")
        raise AssertionError(
            f"the tracing did not render; errors: "
            f"{page.get_by_test_id('ecg-error').all_inner_texts()} "
            f"{page.get_by_test_id('ecg-tracing-error').all_inner_texts()}; "
            f"console: {errors}") from None
    page.wait_for_function("() => window.__rdc.ecgNonBlankPixels() > 500")
    assert page.get_by_test_id("ecg-quality-grade").inner_text().startswith("quality:")
    assert page.get_by_test_id("ecg-previous").is_visible()
    shot("tracing")

    # Calipers: two clicks one second apart on the paper read 1000 ms.
    canvas = page.get_by_test_id("ecg-canvas")
    px_per_mm = float(canvas.get_attribute("data-px-per-mm") or 0)
    page.get_by_test_id("ecg-calipers").click()
    canvas.click(position={"x": 80, "y": 50})
    canvas.click(position={"x": 80 + 25 * px_per_mm, "y": 50})
    page.wait_for_selector("[data-testid=ecg-caliper-dt]")
    dt = int(page.get_by_test_id("ecg-caliper-readout").get_attribute("data-dt-ms") or 0)
    assert abs(dt - 1000) <= 10, dt
    shot("calipers")

    # 4. Edit a statement and save: the database row changes, by this cardiologist.
    before, measurements, _ = _row(c, e.ecg_id)
    assert before, "the automatic analysis made no statements"
    first = page.get_by_test_id("ecg-statement").first
    code = first.get_attribute("data-code")
    first.get_by_test_id("ecg-statement-text").fill(EDITED)
    page.get_by_test_id("ecg-save").click()
    page.wait_for_function("() => document.querySelector('[data-testid=ecg-save-status]')"
                           ".textContent.startsWith('Saved')")
    assert not page.get_by_test_id("ecg-error").is_visible(), (
        page.get_by_test_id("ecg-error").inner_text())
    after, measurements_after, edited_by = _row(c, e.ecg_id)
    assert edited_by == CARDIOLOGIST
    assert measurements_after == measurements  # untouched measurements stay as they were
    assert after[0]["code"] == code and after[0]["text"] == EDITED, after
    assert [s["code"] for s in after] == [s["code"] for s in before]
    shot("statement-saved")

    # 5. The ECG report: fill the required fields the template asks for, save, sign.
    page.get_by_test_id("report-state").wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=report-state]').textContent === 'draft'")
    fields = page.locator("[data-testid=report-fields] textarea[data-field]")
    keys = [fields.nth(i).get_attribute("data-field") for i in range(fields.count())]
    assert keys, "the report has no fields"
    for key in keys:
        box = page.get_by_test_id(f"report-field-{key}")
        value = box.input_value()
        if not value.strip() or "{{" in value:
            box.fill(FILL.get(key or "", f"{key}: reviewed."))
    page.get_by_test_id("report-save").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=report-status]').textContent"
        ".startsWith('Saved')")
    assert not page.get_by_test_id("report-error").is_visible(), (
        page.get_by_test_id("report-error").inner_text())
    shot("report-filled", full_page=True)

    page.get_by_test_id("report-sign").click()
    page.get_by_test_id("sign-passphrase").wait_for(state="visible")
    page.get_by_test_id("sign-passphrase").fill(PASSPHRASE)
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
    # Signed: what the report was signed on is read-only, and the API refuses a change
    # (409: it needs an addendum).
    page.get_by_test_id("ecg-locked").wait_for(state="visible")
    assert page.get_by_test_id("ecg-save").is_disabled()
    assert page.get_by_test_id("ecg-statement-add").is_disabled()
    assert page.get_by_test_id("ecg-statement-text").first.get_attribute("readonly") is not None
    assert all(page.get_by_test_id("ecg-ai-accept").nth(i).is_disabled()
               for i in range(page.get_by_test_id("ecg-ai-accept").count()))
    csrf = page.request.get(f"{e.url}/api/auth/me").json()["csrf_token"]
    refused = page.request.put(
        f"{e.url}/api/ecg/{e.ecg_id}", headers={"X-CSRF-Token": csrf},
        data={"measurements": {"heart_rate_bpm": 130},
              "statements": [{"code": "stemi", "text": "Anterior STEMI", "critical": True}]})
    assert refused.status == 409 and "addendum" in refused.json()["detail"], refused.text()
    assert _row(c, e.ecg_id)[0] == after
    shot("signed")

    # 6. The delivery to the county site shows as sent (or committed).
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
    except AssertionError as err:
        shot("delivery-missing")
        raise AssertionError(
            f"{err}; delivery items: {page.get_by_test_id('delivery-status').inner_text()}"
            f"\n{c.logs()}") from None
    assert "county-a" in page.locator(delivered).first.inner_text()
    shot("delivered", full_page=True)

    # The county PACS received the signed SR and its PDF, of the ECG's study.
    received = wait_until(
        lambda: f if len(f := sorted(p for p in e.inbox.rglob("*") if p.is_file())) >= 2
        else None, 60, "the SR and PDF at the county storescp")
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion).where(ReportVersion.state == "final"))
        assert v is not None and v.signed_by == CARDIOLOGIST
        expected = {v.sr_sop_uid, v.pdf_sop_uid}
        d = s.scalar(select(Delivery))
        assert d is not None and d.state in ("sent", "committed")
    datasets = [pydicom.dcmread(p) for p in received]
    assert {str(ds.SOPInstanceUID) for ds in datasets} == expected
    assert {str(ds.Modality) for ds in datasets} == {"SR", "DOC"}
    assert all(str(ds.StudyInstanceUID) == e.study_uid for ds in datasets)

    # Signed: the ECG leaves the open queue.
    page.goto(f"{e.url}/#/ecg")
    page.get_by_test_id("ecg-queue-total").wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=ecg-queue-total]').textContent === '0 ECGs'")
    context.close()
    assert errors == [], "the browser saw problems:\n  " + "\n  ".join(errors)
