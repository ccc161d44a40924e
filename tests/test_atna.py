"""Audit events as DICOM audit messages (PS3.15 A.5) over syslog, to real listeners.

Real UDP, TCP and TLS syslog receivers run in the test; the center sends to them from
the gateway's background exporter and from ``rdc audit export-atna``.  Each received
frame is parsed as RFC 5424 (and RFC 6587 octet counting on streams), its XML as an
``AuditMessage``, and its record's sequence number counted: every record arrives,
and after an outage each one arrives exactly once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import ssl
import struct
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import REPO, Center, _make_center, free_port, wait_until
from core import audit
from core.atna import ACTION_EVENTS, FAMILY_EVENTS, event_for
from core.models import AuditRecord, Report, Study
from core.settings import Settings

# A syslog repository -------------------------------------------------------------------
FRAME = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) (.*)$", re.S)


@dataclass(frozen=True)
class Received:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    xml: ET.Element

    @property
    def record(self) -> dict[str, Any]:
        for d in self.xml.iter("ParticipantObjectDetail"):
            if d.get("type") == "rdc-audit-record":
                return dict(json.loads(base64.b64decode(d.get("value", ""))))
        raise AssertionError("no rdc-audit-record detail in " + ET.tostring(self.xml).decode())

    @property
    def seq(self) -> int:
        return int(self.record["seq"])

    def event(self) -> ET.Element:
        e = self.xml.find("EventIdentification")
        assert e is not None
        return e

    def event_id(self) -> str:
        node = self.event().find("EventID")
        assert node is not None
        return str(node.get("csd-code"))

    def type_codes(self) -> list[tuple[str | None, str | None]]:
        return [(t.get("csd-code"), t.get("codeSystemName"))
                for t in self.event().findall("EventTypeCode")]

    def participants(self) -> list[dict[str, str]]:
        out = []
        for p in self.xml.findall("ActiveParticipant"):
            role = p.find("RoleIDCode")
            out.append({**p.attrib, "role": role.get("csd-code", "") if role is not None
                        else ""})
        return out

    def objects(self) -> list[dict[str, str]]:
        out = []
        for o in self.xml.findall("ParticipantObjectIdentification"):
            id_type = o.find("ParticipantObjectIDTypeCode")
            name = o.find("ParticipantObjectName")
            out.append({**o.attrib, "id_type": id_type.get("csd-code", "")
                        if id_type is not None else "",
                        "name": name.text or "" if name is not None else ""})
        return out


def parse_frame(frame: bytes) -> Received:
    m = FRAME.match(frame)
    assert m, f"not an RFC 5424 message: {frame[:120]!r}"
    pri, timestamp, host, app, _procid, msgid, sd, msg = m.groups()
    assert sd == b"-"
    assert msg.startswith(b"\xef\xbb\xbf"), "MSG must start with the UTF-8 BOM"
    dt.datetime.fromisoformat(timestamp.decode().replace("Z", "+00:00"))  # valid time
    root = ET.fromstring(msg[3:])  # noqa: S314 (our own messages, in the test)
    assert root.tag == "AuditMessage"
    # PS3.15 A.5.1 order of the message's parts.
    tags = [child.tag for child in root]
    first_object = tags.index("ParticipantObjectIdentification") if (
        "ParticipantObjectIdentification" in tags) else len(tags)
    assert tags[0] == "EventIdentification"
    assert tags[-1 if first_object == len(tags) else first_object - 1] == \
        "AuditSourceIdentification", tags
    assert set(tags[1:tags.index("AuditSourceIdentification")]) == {"ActiveParticipant"}
    return Received(int(pri), timestamp.decode(), host.decode(), app.decode(),
                    msgid.decode(), root)


class Repository:
    """A syslog receiver: UDP datagrams, or octet-counted frames over TCP or TLS."""

    def __init__(self, kind: str, port: int | None = None,
                 context: ssl.SSLContext | None = None, reset_first_after: int = 0) -> None:
        self.kind, self.port = kind, port or free_port()
        self.context = context
        self.frames: list[bytes] = []
        self.connections = 0
        #: The first connection is reset after this many frames (0: never).
        self.reset_first_after = reset_first_after
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Repository:
        self._stop.clear()
        if self.kind == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        if self.kind != "udp":
            sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def messages(self) -> list[Received]:
        """The audit messages (the checkpoint copies, MSGID RDC-CHECKPOINT, left out)."""
        with self._lock:
            return [parse_frame(f) for f in self.frames if b" RDC-CHECKPOINT " not in f[:200]]

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                if self.kind == "udp":
                    data = self._sock.recv(70_000)
                    with self._lock:
                        self.frames.append(data)
                    continue
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read_stream, args=(conn,), daemon=True).start()

    def _read_stream(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            first = self.connections == 1
        conn.settimeout(10)
        buf, count = b"", 0
        try:
            stream: Any = conn
            if self.context is not None:
                stream = self.context.wrap_socket(conn, server_side=True)
            while True:
                while b" " not in buf[:12]:
                    chunk = stream.recv(65536)
                    if not chunk:
                        stream.close()
                        return  # the sender half-closed after its batch: close too
                    buf += chunk
                length, _, buf = buf.partition(b" ")
                size = int(length)
                while len(buf) < size:
                    chunk = stream.recv(65536)
                    assert chunk, "stream ended inside a frame"
                    buf += chunk
                frame, buf = buf[:size], buf[size:]
                count += 1
                if first and self.reset_first_after and count > self.reset_first_after:
                    # Die while reading the batch: a reset, the frame not kept.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    conn.close()
                    return
                with self._lock:
                    self.frames.append(frame)
        except (OSError, ssl.SSLError):
            conn.close()


# The center ----------------------------------------------------------------------------
@pytest.fixture
def center_home(tmp_path: Path) -> Iterator[Center]:
    yield from _make_center(tmp_path, "sqlite", "", None)


def seqs_in_chain(c: Center) -> list[int]:
    with c.db.session() as s:
        return [int(x) for x in s.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq))]


def add_records(c: Center, n: int) -> None:
    with c.db.session() as s:
        for i in range(n):
            audit.append(s, actor="operator", action="site.add", object_type="site",
                         object_id=f"site-{i}", detail={"i": i})


def sign_in(c: Center, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real sign-in through the accounts module: one refused, one accepted."""
    from viewer.accounts import AuthenticationFailed, Client, add_user, authenticate

    for k, v in c.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    from core.settings import get_settings
    get_settings.cache_clear()
    settings: Settings = get_settings()
    client = Client(address="10.20.30.40", user_agent="pytest")
    with c.db.session() as s:
        _, uri = add_user(s, settings, username="dr.li", display_name="Dr Li",
                          password="a long enough password 1", roles=["radiologist"],
                          all_sites=True, actor="admin")
    with pytest.raises(AuthenticationFailed), c.db.session() as s:
        authenticate(s, settings, "dr.li", "wrong password here", "000000", client)
    with c.db.session() as s:
        authenticate(s, settings, "dr.li", "a long enough password 1",
                     pyotp.parse_uri(uri).now(), client)
    get_settings.cache_clear()


def study_view_and_report_sign(c: Center) -> tuple[int, int]:
    """A study and its report in the database, and the records that viewing it and
    signing its report write (the same actions, objects and details as
    viewer/studies.py and reports/service.py)."""
    with c.db.session() as s:
        study = Study(site_id="county-a", study_uid="1.2.826.0.1.3680043.8.498.1",
                      patient_id="P-0042", patient_name="WANG^FANG",
                      issuer_of_patient_id="COUNTY_A", modalities=["CR"])
        s.add(study)
        s.flush()
        report = Report(subject_type="study", subject_id=str(study.id), study_id=study.id,
                        site_id="county-a", template_id="cxr", template_version="1")
        s.add(report)
        s.flush()
        audit.append(s, actor="dr.li", action="study.view", object_type="study",
                     object_id=str(study.id), detail={"site": "county-a"})
        audit.append(s, actor="dr.li", action="report.sign", object_type="report",
                     object_id=str(report.id), detail={
                         "version": 1, "key_fingerprint": "ab" * 32, "algorithm": "sm2",
                         "content_hash": "cd" * 32, "sr": "1.2.3.9.1", "pdf": "1.2.3.9.2"})
        return int(study.id), int(report.id)


def reject_association(c: Center) -> None:
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_rejected, "an unknown AE was not rejected"


def one(messages: list[Received], action: str) -> Received:
    found = [m for m in messages if m.record["action"] == action]
    assert len(found) == 1, f"{len(found)} messages for {action}"
    return found[0]


# Every action maps ---------------------------------------------------------------------
_ACTION_LINE = re.compile(r"audit\(|action=")
_LITERAL = re.compile(r'(f?)"([a-z][a-z_]*(?:\.[a-z_{}]+)+)"')
_BARE = re.compile(r'action="([a-z_]+)"')
_SOURCES = ("core", "pacs_gateway", "delivery", "reports", "viewer", "ai_models", "ecg", "lab",
            "pathology", "rdc")


def actions_in_code_base() -> dict[str, str]:
    """Every audit action the code writes (f-string ones as ``family.{...}``), with
    where it was found."""
    found: dict[str, str] = {}
    for folder in _SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "node_modules" in path.parts or path.name == "atna.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not _ACTION_LINE.search(line) or line.lstrip().startswith(("def ", "#")):
                    continue
                names = [m.group(2) for m in _LITERAL.finditer(line)]
                if "audit" in line:  # not argparse's action="store_true"
                    names += _BARE.findall(line)
                for name in names:
                    found.setdefault(name, f"{path.relative_to(REPO)}:{number}")
    return found


def test_every_audit_action_in_the_code_base_maps_to_a_dicom_event() -> None:
    actions = actions_in_code_base()
    # The scan itself works: these are written by the center today.
    for known in ("login", "login.failed", "report.sign", "study.view", "association.reject",
                  "association.{how}", "job.{outcome}", "model.enable", "process.restart",
                  "delivery.attempt"):
        assert known in actions, f"the scan missed {known!r}"
    assert len(actions) >= 50, sorted(actions)
    unmapped = []
    for action, where in sorted(actions.items()):
        if "{" in action:
            mapped = action.split(".", 1)[0] in FAMILY_EVENTS
        else:
            mapped = event_for(action)[1]
        if not mapped:
            unmapped.append(f"{action} ({where})")
    assert not unmapped, ("audit actions with no DICOM audit event (add them to "
                          "ACTION_EVENTS or FAMILY_EVENTS in core/atna.py): "
                          + ", ".join(unmapped))
    # Unknown actions still go out, as Application Activity.
    event, mapped = event_for("something.new")
    assert not mapped and event.event_id.code == "110100"
    assert all(e.event_id.system == "DCM" for e in [*ACTION_EVENTS.values(),
                                                    *FAMILY_EVENTS.values()])


# UDP, from the gateway's background exporter ----------------------------------------------
def test_gateway_sends_sign_in_report_signing_study_view_and_reject_over_udp(
        center_home: Center, monkeypatch: pytest.MonkeyPatch) -> None:
    c = center_home
    repo = Repository("udp").start()
    try:
        c.extra_env.update(RDC_ATNA_SYSLOG_URL=f"udp://127.0.0.1:{repo.port}",
                           RDC_ATNA_POLL_S="0.3", RDC_ATNA_SOURCE_ID="rdc-test-center",
                           RDC_CENTER_NAME="County Imaging Center")
        c.add_site()
        sign_in(c, monkeypatch)
        study_id, report_id = study_view_and_report_sign(c)
        c.start_gateway()
        reject_association(c)

        def everything() -> bool:
            got = {m.seq for m in repo.messages()}
            return bool(got) and got >= set(seqs_in_chain(c))

        wait_until(everything, 60, "every audit record at the UDP repository")
        c.stop_gateway()
        messages = repo.messages()
        counts = Counter(m.seq for m in messages)
        assert set(counts) == set(seqs_in_chain(c))
        assert max(counts.values()) == 1, "a record was sent twice"

        for m in messages:
            assert m.app == "rdc" and m.msgid == "IHE+RFC-3881"
            assert m.pri in (84, 85)  # authpriv.notice / authpriv.warning
            source = m.xml.find("AuditSourceIdentification")
            assert source is not None and source.get("AuditSourceID") == "rdc-test-center"
            assert source.get("AuditEnterpriseSiteID") == "County Imaging Center"
            # The record's own hash travels with it, and it is the chain's.
            rec = m.record
            assert rec["hash"] == audit.record_digest(
                rec["seq"], rec["at"], rec["actor"], rec["action"], rec["object_type"],
                rec["object_id"], rec["detail"], rec["prev_hash"])

        # A sign-in and a refused one: User Authentication / Login, from the client address.
        for action, outcome in (("login", "0"), ("login.failed", "4")):
            m = one(messages, action)
            assert m.event_id() == "110114" and ("110122", "DCM") in m.type_codes()
            assert m.event().get("EventOutcomeIndicator") == outcome
            assert m.event().get("EventActionCode") == "E"
            user = m.participants()[0]
            assert user["UserID"] == "dr.li" and user["UserIsRequestor"] == "true"
            assert user["NetworkAccessPointID"] == "10.20.30.40"
            assert user["NetworkAccessPointTypeCode"] == "2"
            assert m.objects()[0]["ParticipantObjectID"] == "dr.li"
        assert one(messages, "login.failed").event().findtext(
            "EventOutcomeDescription") == "wrong password"

        # The study view: DICOM Instances Accessed, read, the study UID and the patient.
        m = one(messages, "study.view")
        assert m.event_id() == "110103" and m.event().get("EventActionCode") == "R"
        assert m.event().get("EventOutcomeIndicator") == "0"
        objects = m.objects()
        assert objects[0]["ParticipantObjectID"] == "1.2.826.0.1.3680043.8.498.1"
        assert objects[0]["id_type"] == "110180"
        patient = [o for o in objects if o["ParticipantObjectTypeCodeRole"] == "1"]
        assert patient and patient[0]["ParticipantObjectID"] == "P-0042^^^COUNTY_A"
        assert patient[0]["name"] == "WANG^FANG"

        # The report signing: Patient Record, update, the report and its patient.
        m = one(messages, "report.sign")
        assert m.event_id() == "110110" and m.event().get("EventActionCode") == "U"
        assert ("report.sign", "99RDC") in m.type_codes()
        objects = m.objects()
        assert objects[0]["ParticipantObjectID"] == str(report_id)
        assert objects[0]["id_type"] == "9"  # RFC 3881 Report Number
        assert {o["ParticipantObjectID"] for o in objects} >= {
            "1.2.826.0.1.3680043.8.498.1", "P-0042^^^COUNTY_A"}
        assert m.record["detail"]["content_hash"] == "cd" * 32

        # The association reject, written by the gateway, sent by its exporter:
        # Security Alert / Node Authentication, failure, the stranger at its address.
        m = one(messages, "association.reject")
        assert m.event_id() == "110113" and ("110126", "DCM") in m.type_codes()
        assert m.event().get("EventOutcomeIndicator") == "4"
        stranger, center = m.participants()
        assert stranger["UserID"] == "STRANGER" and stranger["UserIsRequestor"] == "true"
        assert stranger["NetworkAccessPointID"] == "127.0.0.1" and stranger["role"] == "110153"
        assert center["UserID"] == c.gateway_ae and center["role"] == "110152"
        assert "not registered" in (m.event().findtext("EventOutcomeDescription") or "")
        assert study_id > 0
    finally:
        repo.stop()


# TCP: an outage, then each record exactly once --------------------------------------------
def test_gateway_exporter_catches_up_after_a_tcp_outage_exactly_once(
        center_home: Center) -> None:
    c = center_home
    port = free_port()
    c.extra_env.update(RDC_ATNA_SYSLOG_URL=f"tcp://127.0.0.1:{port}", RDC_ATNA_POLL_S="0.3")
    c.add_site()
    add_records(c, 30)
    c.start_gateway()  # the repository is down: nothing listens on the port
    try:
        wait_until(lambda: "atna.export_failed" in c.logs(), 30, "the export to fail")
        add_records(c, 20)
        assert not (c.home / "audit" / "atna.cursor").exists()
        repo = Repository("tcp", port).start()  # the repository comes back
        try:
            wait_until(lambda: {m.seq for m in repo.messages()} >= set(seqs_in_chain(c)),
                       90, "the exporter to catch up after the outage")
            add_records(c, 5)  # and it keeps up afterwards
            wait_until(lambda: {m.seq for m in repo.messages()} >= set(seqs_in_chain(c)),
                       30, "the 5 records after the outage")
            c.stop_gateway()
            counts = Counter(m.seq for m in repo.messages())
            assert set(counts) == set(seqs_in_chain(c)) and len(counts) >= 56
            assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1]
            cursor = json.loads((c.home / "audit" / "atna.cursor").read_text())
            assert cursor["seq"] == max(seqs_in_chain(c))
            assert "atna.repository_back" in c.logs()
        finally:
            repo.stop()
    finally:
        c.stop_gateway()


def test_export_atna_command_fails_clearly_then_catches_up_and_resends_a_reset_batch(
        center_home: Center) -> None:
    c = center_home
    port = free_port()
    c.extra_env["RDC_ATNA_SYSLOG_URL"] = f"tcp://127.0.0.1:{port}"
    add_records(c, 12)

    down = c.rdc("audit", "export-atna")
    assert down.returncode == 7, down.stdout + down.stderr
    assert "records up to 0 were sent" in down.stderr and "nothing is skipped" in down.stderr

    # The repository dies while reading the first batch (a reset after 5 frames): the
    # batch is not confirmed, so the cursor stays and the whole batch goes again.
    repo = Repository("tcp", port, reset_first_after=5).start()
    try:
        failed = c.rdc("audit", "export-atna")
        assert failed.returncode == 7, failed.stdout + failed.stderr
        assert "dropped the connection" in failed.stderr, failed.stderr
        ok = c.rdc("audit", "export-atna")
        assert ok.returncode == 0, ok.stderr
        assert "sent 12 audit records" in ok.stdout and "up to 12 of 12" in ok.stdout
        add_records(c, 3)
        again = c.rdc("audit", "export-atna")
        assert again.returncode == 0 and "sent 3 audit records" in again.stdout, again.stdout
        counts = Counter(m.seq for m in repo.messages())
        assert set(counts) == set(range(1, 16)), counts
        # Only the 5 frames read before the reset arrive twice; nothing is missing.
        assert {s for s, n in counts.items() if n > 1} <= set(range(1, 6))
        assert c.rdc("audit", "export-atna").stdout.startswith("sent 0 audit records")
    finally:
        repo.stop()


# TLS ----------------------------------------------------------------------------------------
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "repo-cert.pem", tmp_path / "repo-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_export_over_tls_checks_the_repository_certificate(center_home: Center,
                                                           tmp_path: Path) -> None:
    c = center_home
    cert, key = _self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    repo = Repository("tls", context=server).start()
    try:
        add_records(c, 4)
        c.extra_env["RDC_ATNA_SYSLOG_URL"] = f"tls://localhost:{repo.port}"
        # Without the repository's CA the certificate is refused, and nothing counts as sent.
        untrusted = c.rdc("audit", "export-atna")
        assert untrusted.returncode == 7 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, \
            untrusted.stderr
        c.extra_env["RDC_ATNA_TLS_CA_FILE"] = str(cert)
        ok = c.rdc("audit", "export-atna")
        assert ok.returncode == 0 and "sent 4 audit records" in ok.stdout, ok.stderr
        assert sorted(m.seq for m in repo.messages()) == [1, 2, 3, 4]
        assert {m.event_id() for m in repo.messages()} == {"110113"}  # site.add
    finally:
        repo.stop()


def test_checkpoints_also_go_to_the_syslog(center_home: Center) -> None:
    c = center_home
    repo = Repository("udp").start()
    try:
        c.extra_env["RDC_ATNA_SYSLOG_URL"] = f"udp://127.0.0.1:{repo.port}"
        add_records(c, 2)
        assert c.rdc("audit", "checkpoint").returncode == 0
        line = (c.home / "audit" / "checkpoints.jsonl").read_bytes().strip()
        wait_until(lambda: repo.frames, 10, "the checkpoint at the syslog")
        frame = repo.frames[0]
        assert b" RDC-CHECKPOINT - \xef\xbb\xbf" in frame and frame.endswith(line)
    finally:
        repo.stop()
