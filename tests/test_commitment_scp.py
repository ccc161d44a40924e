"""Storage commitment reports that a site sends on an association of its own.

A real center (Orthanc, database, Redis broker) and its commitment SCP as the real
process (``rdc commitment``); the county site is a pynetdicom peer that accepts the
C-STOREs and the N-ACTION, releases the association without reporting, and later opens a
new association to the center's commitment port, with SCP/SCU role selection as PS3.4
J.3.3 has it, to send the N-EVENT-REPORT.  The deliver job runs through
``core.jobs.execute``, as a worker would run it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role
from sqlalchemy import select

from conftest import REPO, Center, free_port, wait_port, wait_until
from core import jobs
from core.models import AuditRecord, Delivery
from core.settings import get_settings
from delivery.commitment_scp import STATUS_INVALID_ARGUMENT_VALUE, STATUS_SUCCESS
from delivery.dicom_scu import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from test_delivery import (
    BASIC_TEXT_SR,
    ENCAPSULATED_PDF,
    CountySCP,
    audit_actions,
    job_of,
    make_outputs,
    register_site,
    reload,
    schedule,
    signed_version,
    upload,
)

CENTER_AE = "RDC_CENTER"
#: Short, so that a report of an unknown transaction is answered soon (the SCP waits
#: this plus a grace for the worker to record the attempt).
COMMIT_WAIT_S = "2"


@pytest.fixture
def commit_center(env_center: Center, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[Center, int]]:
    """The center with Orthanc and ``rdc commitment`` running; its settings are this
    process's (the deliver job reads them).  Yields (center, commitment port)."""
    center = env_center
    port = free_port()
    extra = {"RDC_COMMITMENT_PORT": str(port), "RDC_DELIVERY_COMMIT_WAIT_S": COMMIT_WAIT_S}
    center.extra_env.update(extra)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    center.start_orthanc()
    center.home.mkdir(parents=True, exist_ok=True)
    log = open(center.home / "commitment.test.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "rdc", "commitment"], env=center.env,
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, proc)
        yield center, port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        get_settings.cache_clear()


def send_report(port: int, calling_ae: str, transaction_uid: str,
                committed: list[tuple[str, str]], failed: list[tuple[str, str, int]],
                ) -> tuple[str, int | None]:
    """Open a new association to the center's commitment SCP as ``calling_ae`` and send
    one N-EVENT-REPORT; returns ("rejected"|"aborted"|"established", status)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # The site is the Storage Commitment SCP, although it requests the association.
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    assoc = ae.associate("127.0.0.1", port, ae_title=CENTER_AE, ext_neg=[role])
    if assoc.is_rejected:
        return "rejected", None
    if not assoc.is_established:
        return "aborted", None
    report = Dataset()
    report.TransactionUID = transaction_uid
    ok = []
    for sop_class, sop_uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        ok.append(item)
    bad = []
    for sop_class, sop_uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        item.FailureReason = reason
        bad.append(item)
    if ok:
        report.ReferencedSOPSequence = ok
    if bad:
        report.FailedSOPSequence = bad
    try:
        status, _ = assoc.send_n_event_report(report, 2 if bad else 1,
                                              STORAGE_COMMITMENT_PUSH,
                                              STORAGE_COMMITMENT_INSTANCE)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return "established", int(status.Status) if "Status" in status else None


class LateReportingSite(CountySCP):
    """A county PACS that stores, accepts the commitment request, releases the
    association itself without reporting, and reports later on a new association.

    With ``gate`` the report waits until the test sets it; without, it follows the
    release at once (and may overtake the worker recording the attempt)."""

    def __init__(self, port: int, ae_title: str, commit_port: int, *,
                 refuse_commit: frozenset[str] = frozenset(),
                 gate: threading.Event | None = None) -> None:
        super().__init__(port, Path(tempfile.mkdtemp(prefix="rdc-late-site-")), ae_title,
                         refuse_commit=refuse_commit)
        self.commit_port, self.gate = commit_port, gate
        self.report_results: list[tuple[str, int | None]] = []
        self.reported = threading.Event()

    def _after_response(self, assoc: Any, info: Dataset) -> None:
        threading.Thread(target=self._release_then_report, args=(assoc, info),
                         daemon=True).start()

    def _release_then_report(self, assoc: Any, info: Dataset) -> None:
        assoc.release()
        if self.gate is not None:
            self.gate.wait(60)
        committed, failed = [], []
        for ref in info.ReferencedSOPSequence:
            uid = str(ref.ReferencedSOPInstanceUID)
            if uid in self.refuse_commit or self.received[uid] == 0:
                failed.append((str(ref.ReferencedSOPClassUID), uid, 0x0110))
            else:
                committed.append((str(ref.ReferencedSOPClassUID), uid))
        self.report_results.append(send_report(self.commit_port, self.ae_title,
                                               str(info.TransactionUID), committed, failed))
        self.reported.set()


@pytest.fixture
def sites() -> Iterator[list[LateReportingSite]]:
    started: list[LateReportingSite] = []
    yield started
    for site in started:
        site.stop()


def commitment_audit(center: Center, delivery_id: int) -> list[AuditRecord]:
    with center.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "delivery.commitment", AuditRecord.object_type == "delivery",
            AuditRecord.object_id == str(delivery_id))))


def state_of(center: Center, delivery_id: int) -> str:
    return reload(center, delivery_id).state


def test_report_on_a_separate_association_commits_or_fails_the_delivery(
        commit_center: tuple[Center, int], sites: list[LateReportingSite]) -> None:
    c, commit_port = commit_center
    outputs = make_outputs("Committed later.")
    upload(c, outputs)
    sr_uid, pdf_uid = outputs["SR"][0], outputs["PDF"][0]

    # Committed: the delivery waits as sent ("awaiting commitment") until the report.
    gate = threading.Event()
    port_a = free_port()
    sites.append(site_a := LateReportingSite(port_a, "COUNTY_A", commit_port,
                                             gate=gate).start())
    register_site(c, "county-a", "COUNTY_A", port_a, storage_commitment=True)
    delivery = schedule(c, signed_version(c, "county-a", outputs), "county-a")
    assert jobs.execute(c.db, job_of(c, delivery.id)) == "succeeded"
    sent = reload(c, delivery.id)
    assert sent.state == "sent", sent.last_error
    assert sent.commitment_uid is not None and site_a.transactions == [sent.commitment_uid]
    assert sent.committed_at is None and commitment_audit(c, delivery.id) == []
    assert site_a.received == Counter({sr_uid: 1, pdf_uid: 1})
    listed = c.rdc("deliveries", "list")
    assert "sent (awaiting commitment)" in listed.stdout, listed.stdout + listed.stderr
    gate.set()
    assert site_a.reported.wait(60), c.logs()
    assert site_a.report_results == [("established", STATUS_SUCCESS)], c.logs()
    wait_until(lambda: state_of(c, delivery.id) == "committed", 30, "the committed delivery")
    done = reload(c, delivery.id)
    assert done.committed_at is not None
    [record] = commitment_audit(c, delivery.id)
    assert record.actor == "site:county-a"
    assert record.detail["committed"] is True
    assert record.detail["commitment_uid"] == sent.commitment_uid
    assert audit_actions(c, delivery.id)[-2:] == ["delivery.attempt", "delivery.commitment"]

    # A failure list: the report follows the release at once (it may overtake the worker
    # recording the attempt) and sends the delivery back to failed, to be retried.
    port_b = free_port()
    sites.append(site_b := LateReportingSite(port_b, "COUNTY_B", commit_port,
                                             refuse_commit=frozenset({pdf_uid})).start())
    register_site(c, "county-b", "COUNTY_B", port_b, storage_commitment=True)
    refused = schedule(c, signed_version(c, "county-b", outputs), "county-b")
    assert jobs.execute(c.db, job_of(c, refused.id)) == "succeeded"  # stored; report later
    assert site_b.reported.wait(60), c.logs()
    assert site_b.report_results == [("established", STATUS_SUCCESS)], c.logs()
    wait_until(lambda: state_of(c, refused.id) == "failed", 30, "the failed commitment")
    failed = reload(c, refused.id)
    assert failed.commitment_uid == site_b.transactions[0]
    assert (f"site did not commit {pdf_uid}: 0x0110 processing failure"
            in (failed.last_error or ""))
    assert failed.next_attempt_at is not None
    [record] = commitment_audit(c, refused.id)
    assert record.actor == "site:county-b" and record.detail["committed"] is False

    # The same report again: the delivery is settled, nothing changes.
    assert send_report(commit_port, "COUNTY_A", sent.commitment_uid,
                       [(BASIC_TEXT_SR, sr_uid), (ENCAPSULATED_PDF, pdf_uid)], []) == \
        ("established", STATUS_SUCCESS)
    assert len(commitment_audit(c, delivery.id)) == 1
    assert state_of(c, delivery.id) == "committed"


def test_reports_from_unknown_sites_or_of_unknown_transactions_are_refused(
        commit_center: tuple[Center, int], sites: list[LateReportingSite]) -> None:
    c, commit_port = commit_center
    outputs = make_outputs("Awaiting commitment.")
    upload(c, outputs)
    sr_uid, pdf_uid = outputs["SR"][0], outputs["PDF"][0]
    gate = threading.Event()  # never set: site A does not report in this test
    port_a = free_port()
    sites.append(site_a := LateReportingSite(port_a, "COUNTY_A", commit_port,
                                             gate=gate).start())
    register_site(c, "county-a", "COUNTY_A", port_a, storage_commitment=True)
    register_site(c, "county-b", "COUNTY_B", free_port(), storage_commitment=True)
    delivery = schedule(c, signed_version(c, "county-a", outputs), "county-a")
    assert jobs.execute(c.db, job_of(c, delivery.id)) == "succeeded"
    transaction_uid = reload(c, delivery.id).commitment_uid
    assert transaction_uid is not None and site_a.transactions == [transaction_uid]
    everything = [(BASIC_TEXT_SR, sr_uid), (ENCAPSULATED_PDF, pdf_uid)]

    # A stranger (an AE title no site has) is refused at the association, and audited.
    assert send_report(commit_port, "STRANGER", transaction_uid, everything, []) == \
        ("rejected", None)
    with c.db.session() as s:
        [refusal] = s.scalars(select(AuditRecord).where(
            AuditRecord.action == "commitment.association_reject")).all()
        assert refusal.detail["calling_ae"] == "STRANGER"
        assert refusal.detail["reason"] == "calling AE title / address not registered"
    # A registered site cannot commit another site's delivery ...
    assert send_report(commit_port, "COUNTY_B", transaction_uid, everything, []) == \
        ("established", STATUS_INVALID_ARGUMENT_VALUE)
    # ... and a transaction the center never started is refused (after the wait for a
    # worker that has not recorded its attempt yet).
    assert send_report(commit_port, "COUNTY_A", str(generate_uid()), everything, []) == \
        ("established", STATUS_INVALID_ARGUMENT_VALUE)
    still = reload(c, delivery.id)
    assert still.state == "sent" and still.committed_at is None
    assert commitment_audit(c, delivery.id) == []
    with c.db.session() as s:
        refused = list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "delivery.commitment_refused").order_by(AuditRecord.seq)))
        assert [r.actor for r in refused] == ["site:county-b", "site:county-a"]
        assert s.scalar(select(Delivery.state).where(Delivery.id == delivery.id)) == "sent"
