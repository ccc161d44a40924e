"""The lab center end to end, in a real browser against a real center (issue 14's
browser "Done when").

Nothing here is a stand-in: the web app (``python -m rdc web``, serving the test build
of the front end) and the lab listener (``python -m rdc lab listen``, MLLP) run as
processes; the county site is devkit.hl7_site: it sends its orders as OML^O21 over
MLLP, and its MLLP receiver ACKs and records the ORUs the center sends back.  The tubes
travel in a box (packed, courier, received with the logger's readings); the chemistry
analyzer's run arrives through ``lab.results_in.store_run`` with two control levels per
analyte, the potassium level-1 control at +3.5 SD; the ``lab_run`` job (QC, then
autoverification, release and the critical-value loop) and the delivery jobs run
through ``core.jobs.execute``, as a worker runs them.  Then Debian's Chromium, driven
by Playwright, at a laptop's 1366 x 768:

- a lab reviewer starts at ``/`` and signs in (password + TOTP); the Lab link leads to
  the held results: the critical glucose first, the potassium results held by the
  failing control with its Westgard rule (1-3s), the serum indices and the rules that
  fired; the Levey-Jennings chart shows the rejected control;
- the reviewer releases one QC hold with a reason;
- a county account, in a second browser context, is alerted to the critical value over
  its home page and acknowledges it with the value read back;
- the reviewer ticks two results (the released potassium and the critical glucose) and
  signs them at once with the key's passphrase: each gets its own signature;
- the dashboard shows the site's result -> notification -> acknowledgement times;
- the held potassium's detail and its tube's custody timeline (ordered at the county
  site, collected, packed, carried, received, on the analyzer);
- the signed results go back over MLLP: the site's receiver gets the ORU^R01 with the
  values, and its ACK (AA) is recorded on the outbound message.

Each step leaves ``var/screenshots/lab-<nn>-<step>.png``.  Missing pieces fail
loudly, never skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lab_review_support import make_site
from sqlalchemy import select

from browser_support import (
    PASSPHRASE,
    PASSWORD,
    Codes,
    Shots,
    collect_errors,
    issue_key,
    require_front_end,
    sign_in,
    start_web,
    stop,
)
from conftest import Center, free_port, wait_port, wait_until
from core import jobs
from core.models import (
    Delivery,
    Job,
    LabCriticalNotice,
    LabOrder,
    LabResult,
    LabSpecimen,
    OutboundMessage,
)
from devkit.hl7_site import Patient, SiteReceiver, Tube, msa, oml_o21, send_message
from lab import custody, qc
from lab.catalog import get_catalog
from lab.results_in import ControlMeasurement, MeasuredResult, RunData, store_run
from lab.run_job import JOB_KIND, run_lab_run
from viewer.accounts import add_user

REVIEWER = "lab.reviewer"
CLERK = "clerk.county"
SITE = "county-a"
VIEWPORT = {"width": 1366, "height": 768}
#: Control lots of the chemistry analyzer: (test, level) -> (mean, SD).
LOTS = {("K", 1): (4.0, 0.1), ("K", 2): (6.0, 0.15), ("NA", 1): (140.0, 1.5),
        ("NA", 2): (125.0, 1.5), ("GLU", 1): (5.5, 0.2), ("GLU", 2): (15.0, 0.5),
        ("CREA", 1): (90.0, 4.0), ("CREA", 2): (400.0, 12.0)}
#: The potassium level-1 control +3.5 SD off: the Westgard 1-3s rule rejects the run.
K_CONTROL = 4.35


@dataclass
class LabCenter:
    center: Center
    receiver: SiteReceiver
    reviewer_uri: str
    clerk_uri: str
    #: (patient id, test) -> result id
    results: dict[tuple[str, str], int]
    notice_id: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.center.web_port}"


def _order(c: Center, port: int, placer: str, patient: Patient, tube: Tube,
           collected: datetime) -> None:
    """The site's OML^O21 over MLLP to the lab listener; the ACK must be AA."""
    ack = send_message("127.0.0.1", port, oml_o21(SITE, placer, patient, [tube],
                                                   collected_at=collected))
    code, _control, text = msa(ack)
    assert code == "AA", f"order {placer} refused: {code} {text}\n{c.logs()}"


def _run_jobs(c: Center, kind: str | None = None) -> None:
    """Run the queued jobs (of ``kind``) as a worker would, until none is left."""
    for _ in range(10):
        with c.db.session() as s:
            q = select(Job.id).where(Job.state.in_(["queued", "failed"]))
            if kind is not None:
                q = q.where(Job.kind == kind)
            ids = list(s.scalars(q.order_by(Job.id)))
        if not ids:
            return
        for job_id in ids:
            jobs.execute(c.db, job_id)


@pytest.fixture
def lab_center(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabCenter]:
    """A center with the lab listener and the web app, a county site with its HL7
    receiver, a lab reviewer (with a signing key) and a county account; two orders
    sent over MLLP, their tubes carried in a box and run on CHEM1 with a failing
    potassium control and a critical glucose."""
    require_front_end()
    c = center
    mllp_port = free_port()
    c.extra_settings.update({"lab_mllp_port": str(mllp_port), "lab_astm_port": "0"})
    for key, value in c.env.items():
        if key.startswith("RDC_"):
            monkeypatch.setenv(key, value)
    from core.settings import get_settings

    get_settings.cache_clear()
    if JOB_KIND not in jobs.registered_kinds():
        # lab/plugin.py declares it for the worker; this process runs the job itself.
        jobs.register_handler(JOB_KIND, run_lab_run)
    receiver = SiteReceiver().start()
    web: subprocess.Popen[bytes] | None = None
    listener: subprocess.Popen[bytes] | None = None
    try:
        make_site(c, SITE, hl7_port=receiver.port)
        listener = c._rdc("lab", "listen", log="lab")
        wait_port(mllp_port, 60, listener)
        web = start_web(c)
        with c.db.session() as s:
            _, reviewer_uri = add_user(s, c.settings, username=REVIEWER,
                                       display_name="Lab Reviewer", password=PASSWORD,
                                       roles=["lab_reviewer"], all_sites=True, actor="test")
            _, clerk_uri = add_user(s, c.settings, username=CLERK, display_name="Ward Nurse",
                                    password=PASSWORD, roles=["site_user"], sites=[SITE],
                                    actor="test")
        issue_key(c, REVIEWER, "Lab Reviewer")

        # Orders over MLLP, as the county's LIS sends them.
        now = datetime.now(UTC).replace(microsecond=0)
        collected = now - timedelta(hours=2)
        _order(c, mllp_port, "PO-A1", Patient("PA1", "CHEN^MEI", "19800214", "F", "V-A1"),
               Tube("TUBE-A1", ("K", "NA", "GLU", "CREA")), collected)
        _order(c, mllp_port, "PO-B1", Patient("PB1", "WANG^LEI", "19620703", "M", "V-B1"),
               Tube("TUBE-B1", ("K", "GLU")), collected)
        with c.db.session() as s:
            accession = {t: a for t, a in s.execute(
                select(LabSpecimen.site_specimen_id, LabSpecimen.accession))}
            assert set(accession) == {"TUBE-A1", "TUBE-B1"}, accession
            # The tubes' trip (scanned as it happens, after the orders): packed at the
            # site, carried, received with the box logger's readings.
            custody.pack_box(s, site_id=SITE, box_code="BOX-C1", condition="room",
                             accessions=sorted(accession.values()), actor="tech.county",
                             location="county-a lab")
            custody.courier_pickup(s, "BOX-C1", actor="courier.7", courier="City Couriers")
            custody.receive_box(s, "BOX-C1", actor="tech.center", temperature_log=[
                (now - timedelta(minutes=90), 21.0), (now - timedelta(minutes=40), 22.0)])
            for (test, level), (mean, sd) in LOTS.items():
                qc.add_lot(s, analyzer_id="CHEM1", lot=f"LOT-{test}-{level}", test_code=test,
                           level=level, mean=mean, sd=sd, actor="test")

        # The analyzer's run: controls (K level 1 at +3.5 SD) and the patients.
        catalog = get_catalog()
        measured = datetime.now(UTC)
        hil = {"H": 10.0, "I": 1.0, "L": 5.0}
        values = {("TUBE-A1", "K"): 4.4, ("TUBE-A1", "NA"): 139.0, ("TUBE-A1", "GLU"): 5.2,
                  ("TUBE-A1", "CREA"): 78.0, ("TUBE-B1", "K"): 4.1,
                  ("TUBE-B1", "GLU"): 28.4}
        controls = tuple(ControlMeasurement(
            lot=f"LOT-{t}-{lv}", test_code=t, level=lv,
            value=K_CONTROL if (t, lv) == ("K", 1) else mean, measured_at=measured)
            for (t, lv), (mean, _sd) in LOTS.items())
        results = tuple(MeasuredResult(
            accession=accession[tube], test_code=t, value=v, value_text=str(v),
            units=catalog.test(t).units, flags=(), measured_at=measured, hil=hil)
            for (tube, t), v in values.items())
        stored = store_run(c.db, RunData("CHEM1", "RUN-0001", results, controls),
                           actor="analyzer:CHEM1")
        assert stored.stored == len(values) and not stored.refused, stored
        _run_jobs(c, JOB_KIND)
        _run_jobs(c)  # the ORUs of the autoverified results and the critical value

        with c.db.session() as s:
            ids = {(o.patient_id, r.test_code): r.id for r, o in s.execute(
                select(LabResult, LabOrder).join(LabOrder, LabOrder.id == LabResult.order_id))}
            notice = s.scalar(select(LabCriticalNotice))
            assert notice is not None, "the critical glucose opened no notice"
            state = {k: s.get(LabResult, v).state for k, v in ids.items()}  # type: ignore[union-attr]
        assert state[("PA1", "K")] == "held" and state[("PB1", "K")] == "held", state
        assert state[("PB1", "GLU")] == "held", state
        assert state[("PA1", "NA")] == "autoverified", state
        yield LabCenter(c, receiver, reviewer_uri, clerk_uri, ids, notice.id)
    finally:
        if web is not None:
            stop(web)
        if listener is not None:
            stop(listener)
        receiver.stop()
        get_settings.cache_clear()


def _row(page: Any, result_id: int) -> Any:
    return page.locator(f"[data-testid=lab-held-row][data-result-id='{result_id}']")


@pytest.mark.timeout(900)
def test_review_acknowledge_and_sign_in_the_browser(lab_center: LabCenter,
                                                    browser: Any) -> None:
    e = lab_center
    c = e.center
    k_a, k_b = e.results[("PA1", "K")], e.results[("PB1", "K")]
    glu_b = e.results[("PB1", "GLU")]
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = collect_errors(page)
    shot = Shots(page, "lab")

    # 1. The reviewer signs in from the home URL and lands on the held results (a lab
    #    reviewer's home); the Lab link in the nav leads there too.
    page.goto(f"{e.url}/")
    sign_in(page, REVIEWER, Codes(e.reviewer_uri))
    page.get_by_test_id("current-user").wait_for()
    page.get_by_test_id("lab-held-row").first.wait_for()
    assert page.url.endswith("#/lab"), page.url
    assert page.get_by_test_id("nav-lab").get_attribute("href") == "#/lab"
    try:
        _row(page, k_a).wait_for()
    except Exception:
        shot("held-missing")
        raise AssertionError(f"no held row for K; errors: "
                             f"{page.get_by_test_id('lab-held-error').all_inner_texts()}; "
                             f"console: {errors}") from None
    rows = page.get_by_test_id("lab-held-row")
    order = [int(rows.nth(i).get_attribute("data-result-id") or 0) for i in range(rows.count())]
    assert order[0] == glu_b, order  # the critical value first
    assert set(order) == {glu_b, k_a, k_b}, order
    assert _row(page, glu_b).get_attribute("data-critical") == "true"

    # 2. The QC hold and its Westgard rule, the indices, the rules that fired.
    row = _row(page, k_a)
    assert row.get_attribute("data-qc-hold") == "true"
    qc_text = row.get_by_test_id("lab-qc").inner_text()
    assert "reject" in qc_text and "1-3s" in qc_text, qc_text
    assert "1-3s" in (row.get_by_test_id("lab-qc").get_attribute("title") or "")
    assert row.get_by_test_id("lab-hil").inner_text() == "H 10 · I 1 · L 5"
    fired = [row.get_by_test_id("lab-rule").nth(i).get_attribute("data-rule")
             for i in range(row.get_by_test_id("lab-rule").count())]
    assert fired, "no rule listed for the QC-held result"
    assert row.get_by_test_id("lab-select").is_disabled()  # held by QC: not signable
    shot("held")

    # The Levey-Jennings chart of that control: the rejected point, its rule.
    page.get_by_test_id("lab-tab-qc").click()
    page.locator("[data-testid=lab-qc-point][data-status=reject]").wait_for()
    assert "1-3s" in page.get_by_test_id("lab-qc-rules").first.inner_text()
    shot("levey-jennings")
    page.get_by_test_id("lab-tab-held").click()
    row = _row(page, k_a)
    row.wait_for()

    # 3. Release the QC hold of patient A's potassium, with a reason.
    row.get_by_test_id("lab-release").click()
    row.get_by_test_id("lab-review-reason").fill("Control vial left open; repeat in range")
    row.get_by_test_id("lab-review-submit").click()
    page.locator(f"[data-testid=lab-held-row][data-result-id='{k_a}'][data-qc-hold=false]"
                 ).wait_for()
    with c.db.session() as s:
        k = s.get(LabResult, k_a)
        assert k is not None and k.qc_hold == "" and k.review_action == "release"
    shot("qc-released")

    # 4. The county account acknowledges the critical value, reading it back.
    site_ctx = browser.new_context(viewport=VIEWPORT)
    site_page = site_ctx.new_page()
    site_page.set_default_timeout(30_000)
    site_errors = collect_errors(site_page)
    site_shot = Shots(site_page, "lab-site")
    site_page.goto(f"{e.url}/")
    sign_in(site_page, CLERK, Codes(e.clerk_uri))
    # The alert shows over the home page; it leads to the acknowledgement form.
    alert = site_page.locator(f"[data-testid=lab-critical-alert-link]"
                              f"[data-notice-id='{e.notice_id}']")
    alert.wait_for()
    assert alert.inner_text().startswith("GLU 28.4")
    assert site_page.get_by_test_id("nav-lab").is_visible()
    site_shot("alert")
    alert.click()
    notice = site_page.locator(f"[data-testid=lab-notice][data-notice-id='{e.notice_id}']")
    notice.wait_for()
    assert notice.get_attribute("data-state") == "notified"
    shown = notice.get_by_test_id("lab-notice-value").inner_text()
    assert shown.startswith("28.4"), shown
    notice.get_by_test_id("lab-ack-name").fill("Nurse Li Hua")
    notice.get_by_test_id("lab-ack-readback").fill(shown.split()[0])
    site_shot("acknowledge")
    notice.get_by_test_id("lab-ack-submit").click()
    site_page.locator(f"[data-testid=lab-notice][data-notice-id='{e.notice_id}']"
                      "[data-state=acknowledged]").wait_for()
    site_page.reload()  # the alert is gone once acknowledged
    site_page.get_by_test_id("lab-critical-table").wait_for()
    site_page.wait_for_timeout(1000)
    assert site_page.get_by_test_id("lab-critical-alert-link").count() == 0
    assert "Nurse Li Hua" in site_page.get_by_test_id("lab-notice-ack").first.inner_text()
    site_shot("acknowledged")
    with c.db.session() as s:
        n = s.get(LabCriticalNotice, e.notice_id)
        assert n is not None and (n.state, n.ack_name, n.ack_by, n.ack_matches) == (
            "acknowledged", "Nurse Li Hua", CLERK, True)
    assert not site_errors, site_errors
    site_ctx.close()

    # 5. The reviewer signs two results at once: the released K and the critical GLU.
    page.reload()
    _row(page, k_a).get_by_test_id("lab-select").check()
    _row(page, glu_b).get_by_test_id("lab-select").check()
    assert page.get_by_test_id("lab-sign-count").inner_text() == "2 selected"
    page.get_by_test_id("lab-sign-passphrase").fill(PASSPHRASE)
    page.get_by_test_id("lab-sign-submit").click()
    page.get_by_text("Signed 2 results").wait_for()
    # The notice shows as soon as the signature is answered; the list reloads after it.
    _row(page, k_a).wait_for(state="detached")
    _row(page, glu_b).wait_for(state="detached")
    assert _row(page, k_b).count() == 1  # still under its QC hold
    shot("signed")
    with c.db.session() as s:
        signed = [s.get(LabResult, i) for i in (k_a, glu_b)]
        assert all(r is not None and r.state == "verified" and r.signed_by == REVIEWER
                   and r.envelope and r.message_id for r in signed)
        assert len({r.content_hash for r in signed if r is not None}) == 2
        message_ids = {r.message_id for r in signed if r is not None}

    # The dashboard: result -> notification -> acknowledgement for the county site.
    page.get_by_test_id("lab-tab-dashboard").click()
    site_row = page.locator(f"[data-testid=lab-dashboard-site][data-site='{SITE}']")
    site_row.wait_for()
    assert site_row.get_by_test_id("lab-dashboard-notify").inner_text().endswith(" s")
    assert site_row.get_by_test_id("lab-dashboard-ack").inner_text() != "—"
    shot("dashboard")
    page.get_by_test_id("lab-tab-held").click()
    _row(page, k_b).wait_for()

    # The still-held potassium's detail, and its tube's journey across institutions.
    _row(page, k_b).get_by_test_id("lab-open").click()
    page.get_by_test_id("lab-result-qc").wait_for()
    assert "1-3s" in page.get_by_test_id("lab-result-qc").inner_text()
    assert page.get_by_test_id("lab-result-analyzer").inner_text().startswith("CHEM1")
    page.get_by_test_id("lab-result-specimen").locator("a").click()
    page.get_by_test_id("lab-specimen-timeline").wait_for()
    steps = page.locator("[data-testid=lab-custody-event]")
    seen = [steps.nth(i).get_attribute("data-step") for i in range(steps.count())]
    assert set(seen[:2]) == {"ordered", "collected"} and "received" in seen \
        and seen[-1] == "on_analyzer", seen
    shot("custody")

    # 6. The ORU goes back over MLLP; the site's ACK is recorded on the message.
    _run_jobs(c)

    def acked() -> list[OutboundMessage] | None:
        with c.db.session() as s:
            found = list(s.scalars(select(OutboundMessage)
                                   .where(OutboundMessage.id.in_(message_ids))))
            return found if found and all(m.ack_code for m in found) else None

    sent = wait_until(acked, 60, "the site's ACK of the signed results")
    assert sent is not None and all(m.ack_code == "AA" for m in sent), \
        [(m.id, m.ack_code, m.ack_detail) for m in sent or []]
    controls = {m.control_id for m in sent}
    got = [m for m in e.receiver.received() if m.control_id in controls]
    assert got and all(m.message_type.startswith("ORU^R01") and msa(m.ack)[0] == "AA"
                       for m in got), [(m.message_type, m.ack) for m in got]
    text = "\n".join(m.raw for m in got)
    assert "PA1" in text and "PB1" in text and "4.4" in text and "28.4" in text
    with c.db.session() as s:
        deliveries = list(s.scalars(select(Delivery).where(
            Delivery.message_id.in_(message_ids))))
        assert {d.message_id for d in deliveries} == message_ids
        assert all(d.channel == "hl7" for d in deliveries)
    assert not errors, errors
    context.close()
