"""Delivery of signed results back to county sites, against real peers.

A real center (Orthanc + database + Redis broker) sends to a real county SCP on a free
loopback port: a pynetdicom C-STORE + Storage Commitment SCP running in this process, or
DCMTK's ``storescp``, and a tiny MLLP listener for HL7.  Jobs run through
``core.jobs.execute``, as a worker would run them.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, Self

import pytest
import redis
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

from conftest import Center, free_port, wait_port
from core import audit, jobs
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AuditRecord, Delivery, Job, Report, ReportVersion, Site
from core.settings import get_settings
from core.sites import SiteSpec, add_site
from delivery import service as dl
from delivery.dicom_scu import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from dicom_compare import same_dataset

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_BYTES = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
             b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
PDF_BYTES += b"\n" * (len(PDF_BYTES) % 2)  # an even length needs no DICOM pad byte


# The center --------------------------------------------------------------------------
@pytest.fixture
def live(env_center: Center) -> Center:
    env_center.start_orthanc()
    return env_center


# Test objects ------------------------------------------------------------------------
def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _common(ds: Dataset, sop_class: str, study_uid: str, modality: str) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT-DELIVERY"
    ds.PatientName = "Doe^Jane"
    ds.Modality = modality
    ds.SeriesNumber = 901
    ds.InstanceNumber = 1
    ds.StudyDate = ds.ContentDate = "20261123"
    ds.ContentTime = "120000"
    ds.Manufacturer = "RDC test"


def make_outputs(text: str) -> dict[str, tuple[str, bytes]]:
    """A verified Basic Text SR and an Encapsulated PDF of one study: label -> (uid, file)."""
    study_uid = generate_uid()
    sr = Dataset()
    _common(sr, BASIC_TEXT_SR, study_uid, "SR")
    sr.ValueType = "CONTAINER"
    sr.ContinuityOfContent = "SEPARATE"
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "VERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic imaging report"
    sr.ConceptNameCodeSequence = [title]
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator = "121071", "DCM"
    finding.CodeMeaning = "Finding"
    item.ConceptNameCodeSequence = [finding]
    sr.ContentSequence = [item]
    pdf = Dataset()
    _common(pdf, ENCAPSULATED_PDF, study_uid, "DOC")
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.DocumentTitle = "Signed report"
    pdf.BurnedInAnnotation = "YES"
    pdf.EncapsulatedDocument = PDF_BYTES
    pdf.ConceptNameCodeSequence = [title]
    return {"SR": (str(sr.SOPInstanceUID), _part10(sr)),
            "PDF": (str(pdf.SOPInstanceUID), _part10(pdf))}


def upload(center: Center, outputs: dict[str, tuple[str, bytes]]) -> None:
    with center.orthanc() as orthanc:
        for _uid, data in outputs.values():
            orthanc.upload_instance(data)


def register_site(center: Center, site_id: str, ae_title: str, port: int,
                  **extra: Any) -> None:
    with center.db.session() as s:
        site = add_site(s, SiteSpec(id=site_id, name=f"{site_id} hospital", ae_title=ae_title,
                                    host="127.0.0.1", port=port,
                                    allowed_addresses=("127.0.0.1/32",),
                                    accepts_results=extra.pop("accepts_results", True)),
                        actor="test")
        for key, value in extra.items():
            setattr(site, key, value)


def signed_version(center: Center, site_id: str, outputs: dict[str, tuple[str, bytes]] | None,
                   hl7: str | None = None, state: str = "final") -> int:
    with center.db.session() as s:
        report = Report(subject_type="study", subject_id=uuid.uuid4().hex, site_id=site_id,
                        template_id="ct-chest", template_version="1", state=state)
        s.add(report)
        s.flush()
        version = ReportVersion(
            report_id=report.id, number=1, state=state, author="dr-who", signed_by="dr-who",
            signed_at=datetime.now(UTC) if state == "final" else None,
            sr_sop_uid=outputs["SR"][0] if outputs else None,
            pdf_sop_uid=outputs["PDF"][0] if outputs else None, hl7_message=hl7)
        s.add(version)
        s.flush()
        return version.id


def schedule(center: Center, version_id: int, site_id: str, channel: str = "dicom") -> Delivery:
    with center.db.session() as s:
        version, site = s.get(ReportVersion, version_id), s.get(Site, site_id)
        assert version is not None and site is not None
        return dl.schedule_delivery(s, version, site, channel=channel)


def reload(center: Center, delivery_id: int) -> Delivery:
    with center.db.session() as s:
        found = s.get(Delivery, delivery_id)
        assert found is not None
        return found


def job_of(center: Center, delivery_id: int) -> int:
    job_id = reload(center, delivery_id).job_id
    assert job_id is not None
    return job_id


def audit_actions(center: Center, delivery_id: int) -> list[str]:
    with center.db.session() as s:
        assert audit.verify(s).ok
        return list(s.scalars(select(AuditRecord.action).where(
            AuditRecord.object_type == "delivery", AuditRecord.object_id == str(delivery_id))
            .order_by(AuditRecord.seq)))


def queued_job_ids(broker_url: str) -> list[int]:
    """Job IDs in the Redis broker's ``delivery`` queue (Kombu keeps a list per priority)."""
    r = redis.Redis.from_url(broker_url)
    ids = []
    for key in r.scan_iter(match="delivery*"):
        if r.type(key) != b"list":
            continue
        for raw in r.lrange(key, 0, -1):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.append(int(args[0]))
    return ids


# A county site's PACS ----------------------------------------------------------------
class CountySCP:
    """C-STORE SCP that writes what it receives, plus a Storage Commitment SCP that answers
    N-ACTION and then reports on the same association (N-EVENT-REPORT)."""

    def __init__(self, port: int, out: Path, ae_title: str = "COUNTY_A", *,
                 store_status: int = 0x0000, refuse_commit: frozenset[str] = frozenset()):
        self.port, self.out, self.ae_title = port, out, ae_title
        self.store_status = store_status
        self.refuse_commit = refuse_commit
        self.received: Counter[str] = Counter()
        self.files: dict[str, Path] = {}
        self.transactions: list[str] = []
        self.report_statuses: list[int] = []
        self._lock = threading.Lock()
        self._pending: dict[int, Dataset] = {}
        self._rsp_sent: set[int] = set()
        self._server: Any = None
        out.mkdir(parents=True, exist_ok=True)

    def start(self) -> Self:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        for uid in (BASIC_TEXT_SR, ENCAPSULATED_PDF, STORAGE_COMMITMENT_PUSH):
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action),
                          (evt.EVT_DIMSE_SENT, self._on_dimse_sent),
                          (evt.EVT_DATA_SENT, self._on_data_sent)])
        wait_port(self.port, 30)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Any) -> int:
        if self.store_status != 0x0000:
            return self.store_status
        data = event.encoded_dataset()
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.received[uid] += 1
            path = self.out / f"{uid}.{self.received[uid]}.dcm"
            path.write_bytes(data)
            self.files[uid] = path
        return 0x0000

    def _on_action(self, event: Any) -> tuple[int, Dataset | None]:
        if event.action_type != 1:
            return 0x0123, None  # no such action
        info = event.action_information
        with self._lock:
            self.transactions.append(str(info.TransactionUID))
            self._pending[id(event.assoc)] = info
        return 0x0000, None

    # The report must follow the N-ACTION response on the wire: wait until the response
    # was encoded (DIMSE sent) and its bytes written (data sent), then report.
    def _on_dimse_sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            with self._lock:
                self._rsp_sent.add(id(event.assoc))

    def _on_data_sent(self, event: Any) -> None:
        key = id(event.assoc)
        with self._lock:
            if key not in self._rsp_sent:
                return
            self._rsp_sent.discard(key)
            info = self._pending.pop(key)
        self._after_response(event.assoc, info)

    def _after_response(self, assoc: Any, info: Dataset) -> None:
        """What the PACS does once its N-ACTION response is on the wire: this one reports
        on the same association (tests/test_commitment_scp.py has one that reports later)."""
        threading.Thread(target=self._report, args=(assoc, info), daemon=True).start()

    def _report(self, assoc: Any, info: Dataset) -> None:
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        ok, failed = [], []
        for ref in info.ReferencedSOPSequence:
            item = Dataset()
            item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
            item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
            uid = str(ref.ReferencedSOPInstanceUID)
            if uid in self.refuse_commit or self.received[uid] == 0:
                item.FailureReason = 0x0110
                failed.append(item)
            else:
                ok.append(item)
        if ok:
            report.ReferencedSOPSequence = ok
        if failed:
            report.FailedSOPSequence = failed
        status, _ = assoc.send_n_event_report(report, 2 if failed else 1,
                                              STORAGE_COMMITMENT_PUSH,
                                              STORAGE_COMMITMENT_INSTANCE)
        self.report_statuses.append(int(status.get("Status", -1)))


@pytest.fixture
def scps() -> Iterator[list[CountySCP]]:
    started: list[CountySCP] = []
    yield started
    for scp in started:
        scp.stop()


def assert_arrived_intact(scp: CountySCP, outputs: dict[str, tuple[str, bytes]],
                          text: str) -> None:
    for uid, original in outputs.values():
        assert scp.received[uid] == 1, f"{uid} received {scp.received[uid]} times"
        ok, why = same_dataset(original, scp.files[uid].read_bytes())
        assert ok, f"{uid}: {why}"
    sr = dcmread(scp.files[outputs["SR"][0]])
    assert sr.SOPInstanceUID == outputs["SR"][0]
    assert sr.ContentSequence[0].TextValue == text
    pdf = dcmread(scp.files[outputs["PDF"][0]])
    assert pdf.SOPInstanceUID == outputs["PDF"][0]
    assert pdf.EncapsulatedDocument == PDF_BYTES


# Tests -------------------------------------------------------------------------------
def test_site_up_receives_sr_and_pdf_intact(live: Center, tmp_path: Path,
                                            scps: list[CountySCP]) -> None:
    text = "No acute cardiopulmonary abnormality."
    outputs = make_outputs(text)
    upload(live, outputs)
    port = free_port()
    scps.append(scp := CountySCP(port, tmp_path / "county").start())
    register_site(live, "county-a", "COUNTY_A", port)
    version_id = signed_version(live, "county-a", outputs)

    delivery = schedule(live, version_id, "county-a")
    assert delivery.state == "pending" and delivery.job_id is not None
    # Queued by ID in the real broker once the transaction committed.
    assert delivery.job_id in queued_job_ids(live.broker_url)
    assert schedule(live, version_id, "county-a").id == delivery.id  # idempotent

    assert jobs.execute(live.db, delivery.job_id) == "succeeded"
    done = reload(live, delivery.id)
    assert done.state == "sent", done.last_error
    assert done.attempts == 1 and done.sent_at is not None and done.last_error is None
    assert done.commitment_uid is None  # the site does not do storage commitment
    assert_arrived_intact(scp, outputs, text)
    assert audit_actions(live, delivery.id) == [
        "delivery.schedule", "delivery.attempt_start", "delivery.attempt"]
    with live.db.session() as s:
        record = s.scalars(select(AuditRecord).where(AuditRecord.action == "delivery.attempt")
                           ).one()
        assert record.detail["outcome"] == "sent"
        assert record.detail["statuses"] == {outputs["SR"][0]: "0x0000",
                                             outputs["PDF"][0]: "0x0000"}


def test_site_down_then_up_is_delivered_exactly_once(live: Center, tmp_path: Path,
                                                     scps: list[CountySCP]) -> None:
    outputs = make_outputs("Retry me.")
    upload(live, outputs)
    port = free_port()  # nothing listens yet: the county PACS is down
    register_site(live, "county-a", "COUNTY_A", port)
    delivery = schedule(live, signed_version(live, "county-a", outputs), "county-a")
    first_job = job_of(live, delivery.id)

    assert jobs.execute(live.db, first_job) == "failed"  # the attempt ran and failed
    failed = reload(live, delivery.id)
    assert failed.state == "failed" and failed.attempts == 1
    assert f"cannot connect to COUNTY_A@127.0.0.1:{port}" in (failed.last_error or "")
    assert "Connection refused" in (failed.last_error or "")
    retry_at = failed.next_attempt_at
    assert retry_at is not None
    assert retry_at > datetime.now(UTC) + timedelta(seconds=20)  # base backoff 30 s
    with live.db.session() as s:
        assert dl.requeue_due(s) == []  # not due yet

    scps.append(scp := CountySCP(port, tmp_path / "county").start())
    with live.db.session() as s:
        assert dl.requeue_due(s, now=retry_at + timedelta(seconds=1)) == [delivery.id]
    with live.db.session() as s:  # idempotent: the attempt's job exists already
        assert dl.requeue_due(s, now=retry_at + timedelta(seconds=1)) == []
    second_job = job_of(live, delivery.id)
    assert second_job != first_job
    assert second_job in queued_job_ids(live.broker_url)

    assert jobs.execute(live.db, second_job) == "succeeded"
    sent = reload(live, delivery.id)
    assert sent.state == "sent" and sent.attempts == 2 and sent.last_error is None
    # Duplicate messages for the job, and a stray job for the same delivery, send nothing.
    assert jobs.execute(live.db, second_job) == "succeeded"
    assert jobs.execute(live.db, second_job) == "succeeded"
    with live.db.session() as s:
        stray, _ = jobs.create_job(s, jobs.NewJob(
            key=f"deliver:{delivery.id}:stray", kind="deliver", queue="delivery",
            params={"delivery_id": delivery.id, "attempt": 2}))
    assert jobs.execute(live.db, stray.id) == "skipped"
    with live.db.session() as s:
        assert "already sent" in (s.get(Job, stray.id).error or "")  # type: ignore[union-attr]
        assert dl.requeue_due(s, now=retry_at + timedelta(days=1)) == []
    assert scp.received == Counter({outputs["SR"][0]: 1, outputs["PDF"][0]: 1})
    actions = audit_actions(live, delivery.id)
    assert actions.count("delivery.attempt") == 2 and "delivery.requeue" in actions


def test_rdc_status_never_counts_a_failed_attempt_as_succeeded(live: Center) -> None:
    """Issue 11: a delivery to a dead site showed as ``deliver: succeeded`` in
    ``rdc status``.  The attempt's job now ends ``failed`` with the attempt's reason, and
    stays failed when its message comes again (nothing is sent twice)."""
    outputs = make_outputs("Nobody home.")
    upload(live, outputs)
    port = free_port()  # nothing listens: the county PACS is down
    register_site(live, "county-a", "COUNTY_A", port)
    delivery = schedule(live, signed_version(live, "county-a", outputs), "county-a")
    job_id = job_of(live, delivery.id)
    assert jobs.execute(live.db, job_id) == "failed"
    assert jobs.execute(live.db, job_id) == "failed"  # a duplicate message
    with live.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "failed"
        assert (job.error or "").startswith(
            f"attempt 1 failed: cannot connect to COUNTY_A@127.0.0.1:{port}"), job.error
        assert [r.action for r in s.scalars(select(AuditRecord).where(
            AuditRecord.object_type == "job", AuditRecord.object_id == str(job_id))
            .order_by(AuditRecord.seq))] == ["job.create", "job.failed", "job.failed"]
    failed = reload(live, delivery.id)
    assert failed.state == "failed" and failed.attempts == 1  # one attempt, not two
    assert audit_actions(live, delivery.id).count("delivery.attempt_start") == 1

    r = live.rdc("status")
    assert r.returncode == 0, r.stderr
    row = [line for line in r.stdout.splitlines() if " deliver " in f" {line} "]
    assert row and "failed 1" in row[0] and "succeeded" not in row[0], r.stdout

def test_site_that_never_comes_back_is_dead_lettered_and_resent(
        live: Center, tmp_path: Path, scps: list[CountySCP],
        monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = make_outputs("Dead letter.")
    upload(live, outputs)
    port = free_port()
    register_site(live, "county-a", "COUNTY_A", port)
    delivery = schedule(live, signed_version(live, "county-a", outputs), "county-a")
    assert jobs.execute(live.db, job_of(live, delivery.id)) == "failed"
    assert reload(live, delivery.id).state == "failed"

    monkeypatch.setenv("RDC_DELIVERY_MAX_AGE_S", "0.001")  # its retry window is over
    get_settings.cache_clear()
    later = datetime.now(UTC) + timedelta(hours=2)
    with live.db.session() as s:
        assert dl.requeue_due(s, now=later) == [delivery.id]
    assert jobs.execute(live.db, job_of(live, delivery.id)) == "failed"
    dead = reload(live, delivery.id)
    assert dead.state == "dead" and dead.attempts == 2 and dead.next_attempt_at is None
    assert "Connection refused" in (dead.last_error or "")
    with live.db.session() as s:
        assert [d.id for d in dl.list_deliveries(s, "dead")] == [delivery.id]
        assert dl.list_deliveries(s, "failed") == []
        assert dl.requeue_due(s, now=later + timedelta(days=30)) == []  # no automatic retry
    assert "delivery.dead" in audit_actions(live, delivery.id)

    with live.db.session() as s:
        resent = dl.resend(s, delivery.id, actor="operator-1")
        assert resent.state == "pending"
    scps.append(scp := CountySCP(port, tmp_path / "county").start())
    assert jobs.execute(live.db, job_of(live, delivery.id)) == "succeeded"
    assert reload(live, delivery.id).state == "sent"
    assert scp.received == Counter({outputs["SR"][0]: 1, outputs["PDF"][0]: 1})

    with live.db.session() as s, pytest.raises(Conflict, match="already sent"):
        dl.resend(s, delivery.id, actor="operator-1")
    with live.db.session() as s:  # a site that stopped taking results gets nothing more
        site = s.get(Site, "county-a")
        assert site is not None
        site.accepts_results = False
    with live.db.session() as s:
        assert dl.resend(s, delivery.id, actor="operator-1", force=True).state == "pending"
    assert jobs.execute(live.db, job_of(live, delivery.id)) == "failed"
    refused = reload(live, delivery.id)
    assert refused.state == "dead"  # its retry window is long over
    assert "no longer accepts results" in (refused.last_error or "")
    with live.db.session() as s:
        site = s.get(Site, "county-a")
        assert site is not None
        site.accepts_results = True
    with live.db.session() as s:  # the operator says the site lost it
        assert dl.resend(s, delivery.id, actor="operator-1").state == "pending"
    assert jobs.execute(live.db, job_of(live, delivery.id)) == "succeeded"
    assert reload(live, delivery.id).state == "sent"
    assert scp.received == Counter({outputs["SR"][0]: 2, outputs["PDF"][0]: 2})
    with live.db.session() as s:
        records = s.scalars(select(AuditRecord).where(AuditRecord.action == "delivery.resend")
                            ).all()
        assert [(r.actor, r.detail["from"], r.detail["force"]) for r in records] == [
            ("operator-1", "dead", False), ("operator-1", "sent", True),
            ("operator-1", "dead", False)]


def test_site_refusing_store_or_association_fails_with_reason(
        live: Center, tmp_path: Path, scps: list[CountySCP]) -> None:
    outputs = make_outputs("Refused.")
    upload(live, outputs)
    port = free_port()
    scps.append(CountySCP(port, tmp_path / "county", store_status=0xA700).start())
    register_site(live, "county-a", "COUNTY_A", port)
    register_site(live, "county-b", "NOT_THEIR_AE", port)  # wrong called AE title
    version_id = signed_version(live, "county-a", outputs)

    full = schedule(live, version_id, "county-a")
    assert jobs.execute(live.db, job_of(live, full.id)) == "failed"
    refused = reload(live, full.id)
    assert refused.state == "failed"
    assert "status 0xA700 (Refused: Out of Resources)" in (refused.last_error or "")
    assert outputs["SR"][0] in (refused.last_error or "")

    wrong_ae = schedule(live, version_id, "county-b")
    assert jobs.execute(live.db, job_of(live, wrong_ae.id)) == "failed"
    rejected = reload(live, wrong_ae.id)
    assert rejected.state == "failed"
    assert "association rejected by NOT_THEIR_AE@127.0.0.1" in (rejected.last_error or "")
    assert "Called AE title not recognised" in (rejected.last_error or "")

    # DCMTK's storescp aborting the association after the C-STORE request.
    abort_port = free_port()
    with open(tmp_path / "storescp.log", "wb") as log:
        # It writes what it received before aborting: into the test's folder, not ours.
        (tmp_path / "aborting").mkdir()
        proc = subprocess.Popen(["storescp", "-aet", "COUNTY_C", "--abort-after", "-od",
                                 str(tmp_path / "aborting"), str(abort_port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_port(abort_port, 30, proc)
        register_site(live, "county-c", "COUNTY_C", abort_port)
        aborted = schedule(live, version_id, "county-c")
        assert jobs.execute(live.db, job_of(live, aborted.id)) == "failed"
    finally:
        proc.terminate()
        proc.wait(30)
    cut = reload(live, aborted.id)
    assert cut.state == "failed"
    assert f"no C-STORE response for {outputs['SR'][0]}" in (cut.last_error or "")
    assert "the site aborted the association (A-ABORT" in (cut.last_error or "")


def test_storage_commitment_on_the_same_association(
        live: Center, tmp_path: Path, scps: list[CountySCP]) -> None:
    outputs = make_outputs("Commit me.")
    upload(live, outputs)
    good_port, bad_port = free_port(), free_port()
    scps.append(good := CountySCP(good_port, tmp_path / "a").start())
    scps.append(bad := CountySCP(bad_port, tmp_path / "b", ae_title="COUNTY_B",
                                 refuse_commit=frozenset({outputs["PDF"][0]})).start())
    register_site(live, "county-a", "COUNTY_A", good_port, storage_commitment=True)
    register_site(live, "county-b", "COUNTY_B", bad_port, storage_commitment=True)
    version_id = signed_version(live, "county-a", outputs)

    committed = schedule(live, version_id, "county-a")
    assert jobs.execute(live.db, job_of(live, committed.id)) == "succeeded"
    done = reload(live, committed.id)
    assert done.state == "committed", done.last_error
    assert good.transactions == [done.commitment_uid]
    assert good.report_statuses == [0x0000]
    assert done.sent_at is not None and done.committed_at is not None
    assert audit_actions(live, committed.id)[-2:] == ["delivery.attempt", "delivery.commitment"]

    refused = schedule(live, version_id, "county-b")
    assert jobs.execute(live.db, job_of(live, refused.id)) == "failed"
    failed = reload(live, refused.id)
    assert failed.state == "failed" and failed.commitment_uid == bad.transactions[0]
    assert (f"site did not commit {outputs['PDF'][0]}: 0x0110 processing failure"
            in (failed.last_error or ""))
    assert failed.next_attempt_at is not None


def test_delivery_to_dcmtk_storescp(live: Center, tmp_path: Path) -> None:
    text = "Read by DCMTK."
    outputs = make_outputs(text)
    upload(live, outputs)
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    with open(tmp_path / "storescp.log", "wb") as log:
        proc = subprocess.Popen(["storescp", "-aet", "COUNTY_D", "-od", str(out), str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30, proc)
        register_site(live, "county-d", "COUNTY_D", port)
        delivery = schedule(live, signed_version(live, "county-d", outputs), "county-d")
        assert jobs.execute(live.db, job_of(live, delivery.id)) == "succeeded"
        assert reload(live, delivery.id).state == "sent", reload(live, delivery.id).last_error
    finally:
        proc.terminate()
        proc.wait(30)
    received = {str(dcmread(p).SOPInstanceUID): p.read_bytes() for p in out.iterdir()}
    assert set(received) == {outputs["SR"][0], outputs["PDF"][0]}
    for uid, original in outputs.values():
        ok, why = same_dataset(original, received[uid])
        assert ok, f"{uid}: {why}"
    assert dcmread(BytesIO(received[outputs["SR"][0]])).ContentSequence[0].TextValue == text


class MLLPServer:
    """A county HIS: reads MLLP frames and answers each with the next scripted ACK code.
    With ``tls`` (a server context) it speaks MLLP inside TLS and records the common
    name of each client certificate in ``peers``."""

    def __init__(self, codes: list[str], tls: ssl.SSLContext | None = None) -> None:
        self.codes = codes
        self.tls = tls
        self.messages: list[str] = []
        self.peers: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    continue
                cert = conn.getpeercert() or {}
                names = [str(value) for rdn in cert.get("subject", ())
                         for key, value in rdn if key == "commonName"]
                self.peers.append(names[0] if names else "")
            with conn:
                conn.settimeout(30)
                buf = b""
                while b"\x1c\x0d" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                message = buf[1:buf.index(b"\x1c\x0d")].decode("utf-8")
                self.messages.append(message)
                control_id = message.split("\r", 1)[0].split("|")[9]
                code = self.codes.pop(0) if self.codes else "AA"
                ack = (f"MSH|^~\\&|HIS|COUNTY_A|RDC|CENTER|20261123120001||ACK^R01|A{control_id}"
                       f"|P|2.5.1\rMSA|{code}|{control_id}|"
                       f"{'database busy' if code != 'AA' else ''}\r")
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

    def close(self) -> None:
        self.sock.close()


def test_hl7_result_over_mllp(env_center: Center) -> None:
    center = env_center
    server = MLLPServer(["AE"])  # the first answer is an application error
    try:
        message = ("MSH|^~\\&|RDC|CENTER|HIS|COUNTY_A|20261123120000||ORU^R01|MSG0001|P|2.5.1\r"
                   "PID|1||PAT-DELIVERY||Doe^Jane\r"
                   "OBR|1||ACC-1|18748-4^Diagnostic imaging report^LN\r"
                   "OBX|1|TX|18748-4^Diagnostic imaging report^LN||Kein Befund. Ödem: nein"
                   "||||||F\r")
        register_site(center, "county-a", "COUNTY_A", 104, hl7_host="127.0.0.1",
                      hl7_port=server.port)
        delivery = schedule(center, signed_version(center, "county-a", None, hl7=message),
                            "county-a", channel="hl7")
        assert jobs.execute(center.db, job_of(center, delivery.id)) == "failed"
        failed = reload(center, delivery.id)
        assert failed.state == "failed"
        assert "answered AE (MSA-3: database busy)" in (failed.last_error or "")
        with center.db.session() as s:
            assert failed.next_attempt_at is not None
            later = failed.next_attempt_at + timedelta(seconds=1)
            assert dl.requeue_due(s, now=later) == [delivery.id]
        assert jobs.execute(center.db, job_of(center, delivery.id)) == "succeeded"
        assert reload(center, delivery.id).state == "sent"
        assert server.messages == [message, message]  # intact, byte for byte
    finally:
        server.close()


def test_scheduling_refuses_bad_input_precisely(env_center: Center,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    center = env_center
    outputs = {"SR": ("1.2.3.4", b""), "PDF": ("1.2.3.5", b"")}
    register_site(center, "closed", "CLOSED", 104, accepts_results=False)
    register_site(center, "open", "OPEN", 104)
    final = signed_version(center, "open", outputs)
    draft = signed_version(center, "open", outputs, state="draft")
    with pytest.raises(Conflict, match="does not accept results"):
        schedule(center, final, "closed")
    with pytest.raises(Conflict, match="only signed"):
        schedule(center, draft, "open")
    with pytest.raises(InvalidInput, match="unknown delivery channel 'fax'"):
        schedule(center, final, "open", channel="fax")
    with pytest.raises(InvalidInput, match="no HL7 endpoint"):
        schedule(center, final, "open", channel="hl7")
    first = schedule(center, final, "open")
    assert schedule(center, final, "open").id == first.id
    with center.db.session() as s:
        assert len(s.scalars(select(Job).where(Job.kind == "deliver")).all()) == 1
        with pytest.raises(InvalidInput, match="unknown delivery state 'lost'"):
            dl.list_deliveries(s, "lost")
        with pytest.raises(NotFound):
            dl.resend(s, 999, actor="operator-1")

    policy = dl.retry_policy()
    assert [policy.backoff(n).total_seconds() for n in (1, 2, 3, 8, 50)] == [
        30, 60, 120, 3600, 3600]
    monkeypatch.setenv("RDC_DELIVERY_RETRY_BASE_S", "soon")
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match="delivery_retry_base_s"):
        dl.retry_policy()
