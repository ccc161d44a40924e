"""Signing in and staying signed in, in a real browser against a real web app.

Debian's Chromium (Playwright) against ``python -m rdc web`` and the center's Orthanc;
the study is a row in the center's database (the report panel needs no images).

- Signing in from the home URL lands on the worklist, and from a deep link on that page,
  never back on the sign-in page.
- A report being typed survives the session ending: it is autosaved, kept in the
  browser until the server has it (and put back when the report is reopened), the
  session is kept alive while the reader types, and a 401 opens a sign-in dialog over
  the page; after signing in again the text is saved.

Each step leaves ``var/screenshots/session-<nn>-<step>.png``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from browser_support import (
    PASSWORD,
    Codes,
    Shots,
    collect_errors,
    require_front_end,
    sign_in,
    start_web,
    stop,
)
from conftest import Center, wait_until
from core.models import Report, ReportVersion, Study, WebSession
from viewer.accounts import add_user

READER = "dr.session"
#: Shortened for the test through the front end's localStorage settings (api.js tuning()).
AUTOSAVE_MS = 1500
KEEPALIVE_MS = 1000


@dataclass
class Reading:
    center: Center
    web: subprocess.Popen[bytes]
    study_id: int
    codes: Codes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.center.web_port}"


@pytest.fixture
def reading(center: Center) -> Iterator[Reading]:
    """The web app and Orthanc of a center with one complete CT study and one reader."""
    require_front_end()
    c = center
    web: subprocess.Popen[bytes] | None = None
    try:
        c.start_orthanc()
        c.add_site()
        now = datetime.now(UTC)
        with c.db.session() as s:
            study = Study(site_id="county-a", study_uid="1.2.826.0.1.3680043.10.1245.77",
                          patient_id="SESS-1", patient_name="SESSION^TEST",
                          description="CT chest", modalities=["CT"], state="complete",
                          completed_at=now, first_received_at=now,
                          due_at=now + timedelta(hours=4))
            s.add(study)
            s.flush()
            study_id = int(study.id)
            _, uri = add_user(s, c.settings, username=READER, display_name="Dr Session",
                              password=PASSWORD, roles=["radiologist"], all_sites=True,
                              actor="test")
        web = start_web(c)
        yield Reading(c, web, study_id, Codes(uri))
    finally:
        if web is not None:
            stop(web)


def _findings(c: Center) -> str | None:
    """The findings the server has for the study's report (None: no report stored)."""
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion).order_by(ReportVersion.id.desc()))
        return None if v is None else str(v.fields.get("findings", ""))


def _reports(c: Center) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Report)) or 0)


OPEN_DIALOGS = "() => document.querySelectorAll('dialog[open]').length"


def _unexpected(errors: list[str]) -> list[str]:
    """Console errors other than the ones this test causes on purpose: the 401s of the
    ended session and the saves made offline (Chromium logs each failed fetch)."""
    return [e for e in errors if "401" not in e and "ERR_INTERNET_DISCONNECTED" not in e]


@pytest.mark.timeout(600)
def test_sign_in_from_home_and_from_a_deep_link(reading: Reading, browser: Any) -> None:
    r = reading
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    shot = Shots(page, "session-home")

    # From the home URL: the sign-in page, then the worklist, not the sign-in page again.
    page.goto(f"{r.url}/")
    page.get_by_test_id("login-form").wait_for(state="visible")
    shot("login")
    sign_in(page, READER, r.codes)
    row = page.locator(f"[data-testid=worklist-row][data-study-id='{r.study_id}']")
    row.wait_for()
    assert page.evaluate("() => window.location.hash") == "#/worklist"
    assert page.get_by_test_id("login-form").count() == 0
    assert row.get_by_test_id("worklist-status").inner_text() == "unread"
    shot("worklist")
    context.close()

    # From a deep link: the sign-in page, then that very study.
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors += collect_errors(page)
    shot = Shots(page, "session-deep-link")
    page.goto(f"{r.url}/#/study/{r.study_id}")
    page.get_by_test_id("login-form").wait_for(state="visible")
    sign_in(page, READER, r.codes)
    page.get_by_test_id("report-field-findings").wait_for()
    assert page.evaluate("() => window.location.hash") == f"#/study/{r.study_id}"
    assert page.get_by_test_id("study-patient-name").inner_text().startswith("SESSION")
    shot("study")
    # Opening the study stored no report: it is still unread for everyone.
    assert _reports(r.center) == 0
    page.get_by_test_id("back-to-worklist").click()
    row = page.locator(f"[data-testid=worklist-row][data-study-id='{r.study_id}']")
    row.wait_for()
    assert row.get_by_test_id("worklist-status").inner_text() == "unread"
    context.close()
    assert errors == [], "the browser saw problems:\n  " + "\n  ".join(errors)


@pytest.mark.timeout(600)
def test_report_text_survives_the_session_ending(reading: Reading, browser: Any) -> None:
    r, c = reading, reading.center
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(f"localStorage.setItem('rdc.autosaveMs', '{AUTOSAVE_MS}');"
                            f"localStorage.setItem('rdc.keepaliveMs', '{KEEPALIVE_MS}');")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    shot = Shots(page, "session-report")
    asked_me: list[str] = []  # the keepalive asks GET /api/auth/me
    page.on("request", lambda q: asked_me.append(q.url) if q.url.endswith("/api/auth/me")
            else None)

    page.goto(f"{r.url}/#/study/{r.study_id}")
    sign_in(page, READER, r.codes)
    findings = page.get_by_test_id("report-field-findings")
    findings.wait_for()
    page.wait_for_function("() => document.querySelector('[data-testid=report-state]')"
                           ".textContent === 'draft'")
    assert _reports(c) == 0  # opened, nothing stored yet

    # 1. Typing is autosaved: the first save creates the report.
    findings.click()
    findings.press("Control+End")
    findings.press_sequentially(" First line.", delay=20)
    wait_until(lambda: "First line." in (_findings(c) or ""), 20,
               "the autosaved findings in the database")
    page.wait_for_function("() => document.querySelector('[data-testid=report-status]')"
                           ".textContent.startsWith('Saved')")
    assert _reports(c) == 1
    shot("autosaved")

    # 2. While the reader types, the page keeps the session alive; idle, it does not.
    before = len(asked_me)
    findings.press_sequentially(" Typed slowly, for a while.", delay=200)
    assert len(asked_me) > before, "no keepalive request while typing"
    wait_until(lambda: "for a while." in (_findings(c) or ""), 20, "the autosave")
    page.wait_for_timeout(1500)
    idle = len(asked_me)
    page.wait_for_timeout(3 * KEEPALIVE_MS)
    assert len(asked_me) == idle, "keepalive requests without any activity"

    # 3. The session ends on the server.  The reader types on and saves: a sign-in
    # dialog opens over the page; the text stays where it is.
    with c.db.session() as s:
        s.execute(delete(WebSession))
    # One input event (a dialog opening mid-typing would take the keys), then Ctrl+S.
    findings.fill(findings.input_value() + " Second line.")
    page.keyboard.press("Control+s")
    dialog = page.get_by_test_id("reauth-dialog")
    dialog.wait_for(state="visible")
    assert page.get_by_test_id("reauth-username").input_value() == READER
    assert "Second line." in findings.input_value()
    assert page.evaluate("() => window.location.hash") == f"#/study/{r.study_id}"
    assert "Second line." not in (_findings(c) or "")
    kept = page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith("
                         "'rdc.report-draft:')).map(k => localStorage.getItem(k)).join()")
    assert "Second line." in kept, kept
    shot("session-ended")

    # 4. Signing in again over the page sends the save that failed: the text is saved.
    sign_in(page, READER, r.codes, prefix="reauth")
    dialog.wait_for(state="detached")
    wait_until(lambda: "Second line." in (_findings(c) or ""), 20,
               "the findings saved after signing in again")
    page.wait_for_function("() => document.querySelector('[data-testid=report-status]')"
                           ".textContent.startsWith('Saved')")
    assert "First line." in findings.input_value() and "Second line." in findings.input_value()
    assert not page.get_by_test_id("report-error").is_visible(), (
        page.get_by_test_id("report-error").inner_text())
    shot("saved-after-sign-in")

    # 5. Text the server never got is kept in the browser and comes back when the
    # report is opened again.
    # The network goes away until the report is opened again (a closing tab sends what
    # is typed one last time, see report.js: that fails too).
    context.set_offline(True)
    # (Typed without clicking first: after the dialog, the keys go where the reader was.)
    findings.press_sequentially(" Third line.", delay=20)
    try:
        page.wait_for_function("() => document.querySelector('[data-testid=report-error]')"
                               ".textContent.includes('kept in this browser')")
    except Exception:
        shot("not-kept")
        raise AssertionError(
            f"status {page.get_by_test_id('report-status').inner_text()!r}, error "
            f"{page.get_by_test_id('report-error').inner_text()!r}, db {_findings(c)!r}, "
            f"console {errors}; active "
            f"{page.evaluate('() => document.activeElement?.outerHTML?.slice(0, 200)')}; "
            f"dialogs {page.evaluate(OPEN_DIALOGS)}; "
            f"value {findings.input_value()!r}") from None
    assert "Third line." not in (_findings(c) or "")
    page.close()
    context.set_offline(False)
    assert "Third line." not in (_findings(c) or "")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors += collect_errors(page)
    shot = Shots(page, "session-restored")
    page.goto(f"{r.url}/#/study/{r.study_id}")
    findings = page.get_by_test_id("report-field-findings")
    findings.wait_for()
    page.get_by_test_id("report-restored").wait_for(state="visible")
    assert "Third line." in findings.input_value()
    shot("restored")
    wait_until(lambda: "Third line." in (_findings(c) or ""), 20,
               "the restored text autosaved")
    page.wait_for_function("() => !Object.keys(localStorage).some(k => k.startsWith("
                           "'rdc.report-draft:'))")

    # 6. Typing, then signing out at once on a shared workstation: sign-out waits for
    # the text to reach the server, and no copy of it stays in the browser.
    findings.click()
    findings.press("Control+End")
    findings.press_sequentially(" Fourth line.", delay=10)
    page.get_by_test_id("logout-button").click()
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    assert "Fourth line." in (_findings(c) or "")
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith("
                         "'rdc.report-draft:'))") == []
    context.close()
    assert _unexpected(errors) == [], "the browser saw problems:\n  " + "\n  ".join(errors)
