"""The lab's MLLP listener (lab.mllp_server) on a free port, with a real MLLP client
(devkit.hl7_site over python-hl7): every message answered AA, AE or AR with its reason
in MSA-3 and ERR, every message kept in lab_inbound_messages, and a refused order
stores nothing."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from conftest import Center
from core.models import LabInboundMessage, LabOrder, LabResult, LabSpecimen
from core.settings import get_settings
from devkit.center import REPO
from devkit.hl7_site import Patient, Tube, msa, oml_o21, orm_o01, send_message, send_messages
from devkit.ports import LOOPBACK, free_port, wait_port
from lab import mllp_server
from lab.instrument_oru import build_oru
from lab.results_in import MeasuredResult, RunData

PATIENT = Patient("P-200", "LI^Na", "19850704", "F", "V-1")


class Listener:
    """The MLLP server in a thread of its own (its asyncio loop), on a free port."""

    def __init__(self, center: Center) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                mllp_server.serve(center.db, LOOPBACK, self.port))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30)

    def close(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def lab(env_center: Center) -> Iterator[tuple[Center, int]]:
    env_center.add_site("county-a", "COUNTY_A")
    listener = Listener(env_center)
    try:
        yield env_center, listener.port
    finally:
        listener.close()


def collected() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


def good_oml(placer: str = "PO-1", control: str | None = None) -> str:
    return oml_o21("county-a", placer, PATIENT,
                   [Tube("T1", ("K", "NA")), Tube("T2", ("HGB",), "whole blood", spun=False)],
                   collected_at=collected(), control_id=control)


def inbound(c: Center) -> list[LabInboundMessage]:
    with c.db.session() as s:
        return list(s.scalars(select(LabInboundMessage).order_by(LabInboundMessage.id)))


def orders(c: Center) -> int:
    with c.db.session() as s:
        return s.scalar(select(func.count()).select_from(LabOrder)) or 0


def err_segment(ack: str) -> str:
    return next(seg for seg in ack.split("\r") if seg.startswith("ERR"))


def test_good_oml_and_orm_are_accepted(lab: tuple[Center, int]) -> None:
    c, port = lab
    oml = good_oml(control="OML-1")
    orm = orm_o01("county-a", "PO-2", PATIENT, ["CREA", "PLT"], collected_at=collected(),
                  control_id="ORM-1")
    acks = send_messages(LOOPBACK, port, [oml, orm])  # one connection, two messages
    assert [msa(a)[:2] for a in acks] == [("AA", "OML-1"), ("AA", "ORM-1")]
    assert "MSA|AA|OML-1|order LO" in acks[0] and "2 tube(s) L" in msa(acks[0])[2]
    assert not any(seg.startswith("ERR") for seg in acks[0].split("\r"))
    rows = inbound(c)
    assert [(r.sender, r.control_id, r.outcome, r.message_type, r.peer) for r in rows] == [
        ("county-a", "OML-1", "AA", "OML^O21", LOOPBACK),
        ("county-a", "ORM-1", "AA", "ORM^O01", LOOPBACK)]
    assert rows[0].raw.startswith("MSH|") and rows[0].order_id is not None
    with c.db.session() as s:
        accessions = list(s.scalars(select(LabSpecimen.accession).where(
            LabSpecimen.order_id == rows[0].order_id).order_by(LabSpecimen.id)))
        codes = sorted(s.scalars(select(LabResult.test_code).where(
            LabResult.order_id == rows[1].order_id)))
    assert msa(acks[0])[2].endswith(" ".join(accessions))
    assert codes == ["CREA", "PLT"]


@pytest.mark.parametrize(("message", "code", "reason", "err"), [
    ("this is not HL7", "AR", "does not start with an MSH segment", "100"),
    ("MSH|^~\\&|LIS|county-a|RDC|LAB|20261201||OML^O21|||2.5.1\rPID|1||X", "AR",
     "MSH-10 (message control id) is empty", "100"),
    (good_oml(control="C-unknown-code").replace("NA^NA^L", "XYZ^Mystery^L"), "AE",
     "unknown test code 'XYZ'", "103"),
    (good_oml(control="C-no-pid").replace("PID|1||P-200^^^county-a^MR", "PID|1||"), "AE",
     "PID-3 (patient identifier) is empty", "101"),
    (good_oml(control="C-bad-date").replace("19850704", "19851304"), "AE",
     "PID-7 (birth date): '19851304' is not a valid date", "101"),
    (good_oml(control="C-site").replace("|county-a|RDC|", "|county-zz|RDC|"), "AR",
     "unknown site 'county-zz' (MSH-4)", "204"),
    (good_oml(control="C-adt").replace("OML^O21^OML_O21", "ADT^A01"), "AR",
     "message type ADT^A01 is not taken from a site", "200"),
])
def test_bad_messages_are_refused_with_the_reason(lab: tuple[Center, int], message: str,
                                                  code: str, reason: str, err: str) -> None:
    c, port = lab
    ack = send_message(LOOPBACK, port, message)
    got, _control, text = msa(ack)
    assert got == code, ack
    assert reason in text, ack
    assert f"|{err}^" in err_segment(ack) and "|E|" in err_segment(ack)
    assert orders(c) == 0
    rows = inbound(c)
    assert len(rows) == 1 and rows[0].outcome == code and reason in rows[0].reason
    assert rows[0].raw.replace("\r", "\n").strip() == message.replace("\r", "\n").strip()


def test_duplicate_control_id_and_duplicate_order(lab: tuple[Center, int]) -> None:
    c, port = lab
    first = good_oml(control="DUP-1")
    assert msa(send_message(LOOPBACK, port, first))[0] == "AA"
    again = send_message(LOOPBACK, port, first)
    assert msa(again)[0] == "AR"
    assert "duplicate message control id 'DUP-1'" in msa(again)[2]
    assert "|205^" in err_segment(again)
    # The same order under a new control id: the placer order number is taken.
    resent = send_message(LOOPBACK, port, good_oml(control="DUP-2"))
    assert msa(resent)[0] == "AE"
    assert "duplicate placer order number 'PO-1'" in msa(resent)[2]
    assert orders(c) == 1
    rows = inbound(c)
    assert [(r.outcome, r.sender) for r in rows] == [("AA", "county-a"), ("AR", "county-a"),
                                                    ("AE", "county-a")]
    assert rows[1].control_id.startswith("refused-") and "DUP-1" in rows[1].raw
    assert rows[2].control_id == "DUP-2"


def test_wrong_peer_address_is_refused(env_center: Center) -> None:
    c = env_center
    c.add_site("county-far", "COUNTY_FAR", allowed=("10.20.0.0/16",))
    listener = Listener(c)
    try:
        ack = send_message(LOOPBACK, listener.port,
                           good_oml().replace("|county-a|RDC|", "|county-far|RDC|"))
    finally:
        listener.close()
    assert msa(ack)[0] == "AR"
    assert "peer address 127.0.0.1 is not allowed for site 'county-far'" in msa(ack)[2]
    assert orders(c) == 0
    assert [(r.outcome, r.peer) for r in inbound(c)] == [("AR", LOOPBACK)]


def test_not_mllp_framed_is_answered_and_closed(lab: tuple[Center, int]) -> None:
    c, port = lab
    with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
        sock.sendall(b"MSH|^~\\&|no start block\x1c\r")
        data = b""
        while b"\x1c\r" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert sock.recv(4096) == b""  # closed after the answer
    ack = data[1:-2].decode()
    assert msa(ack)[0] == "AR" and "MLLP framing error" in msa(ack)[2]
    assert [r.outcome for r in inbound(c)] == ["AR"]


def test_instrument_oru_from_the_hematology_analyzer(lab: tuple[Center, int]) -> None:
    c, port = lab
    assert msa(send_message(LOOPBACK, port, good_oml(control="O-1")))[0] == "AA"
    with c.db.session() as s:
        accession = s.scalar(select(LabSpecimen.accession).where(
            LabSpecimen.specimen_type == "whole blood"))
    assert accession is not None
    now = datetime.now(UTC)
    run = RunData(analyzer_id="HEME1", run_code="RUN-H-1", controls=(), results=(
        MeasuredResult(accession=accession, test_code="HGB", value=131.0, value_text="131",
                       units="g/L", flags=(), measured_at=now),))
    ack = send_message(LOOPBACK, port, build_oru(run))
    assert msa(ack)[:2] == ("AA", "RUN-H-1"), ack
    with c.db.session() as s:
        result = s.scalar(select(LabResult).where(LabResult.test_code == "HGB"))
        assert result is not None
        assert (result.state, result.value, result.analyzer_id) == ("pending", 131.0, "HEME1")
    # The same run again (our ACK lost): recognised, not doubled, answered AA.
    again = send_message(LOOPBACK, port, build_oru(run))
    assert msa(again)[0] == "AA" and "already received" in msa(again)[2]
    # An instrument result from a site is not taken.
    from_site = send_message(LOOPBACK, port, build_oru(run).replace(
        "|HEME1|HEME1|", "|LIS|county-a|").replace("RUN-H-1", "RUN-X"))
    assert msa(from_site)[0] == "AR" and "ORU^R01 is not taken from a site" in msa(
        from_site)[2]
    rows = inbound(c)
    assert [(r.sender, r.outcome) for r in rows] == [
        ("county-a", "AA"), ("HEME1", "AA"), ("HEME1", "AA"), ("county-a", "AR")]


def test_rdc_lab_listen_and_rdc_lab_order(env_center: Center, tmp_path: Path) -> None:
    """The listener process as `rdc up` runs it, and the CLI that sends an order file."""
    c = env_center
    c.add_site("county-a", "COUNTY_A")
    mllp, astm = free_port(), free_port()
    c.extra_settings.update({"lab_mllp_port": str(mllp), "lab_astm_port": str(astm)})
    c.home.mkdir(parents=True, exist_ok=True)
    with open(tmp_path / "lab.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rdc", "lab", "listen"], env=c.env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(mllp, 60, proc, "rdc lab listen")
        wait_port(astm, 60, proc, "rdc lab listen")
        good = tmp_path / "order.hl7"
        good.write_text(good_oml(control="CLI-1").replace("\r", "\n"))
        done = c.rdc("lab", "order", str(good), "--port", str(mllp))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "MSA|AA|CLI-1|order LO" in done.stdout
        again = c.rdc("lab", "order", str(good), "--port", str(mllp))
        assert again.returncode == 1
        assert "AR for message CLI-1: duplicate message control id 'CLI-1'" in again.stderr
        bad = tmp_path / "bad.hl7"
        bad.write_text("hello")
        refused = c.rdc("lab", "order", str(bad), "--port", str(mllp))
        assert refused.returncode == 2 and "is not an HL7 v2 message" in refused.stderr
        missing = c.rdc("lab", "order", str(tmp_path / "none.hl7"), "--port", str(mllp))
        assert missing.returncode == 2 and "cannot read" in missing.stderr
        assert [r.outcome for r in inbound(c)] == ["AA", "AR"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    out = (tmp_path / "lab.log").read_text()
    assert f":{mllp}" in out and "lab: stopped" in out, out
    assert code == 0, out


def test_the_same_message_twice_at_once_is_stored_once(lab: tuple[Center, int]) -> None:
    """Two connections racing with one message: one AA, the other refused; one order."""
    c, port = lab
    message = oml_o21("county-a", "PO-RACE", Patient("P-9", "张^伟", "19600101", "M"),
                      [Tube("T9", ("K", "NA", "GLU"))], collected_at=collected(),
                      control_id="RACE-1")
    answers: list[str] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        barrier.wait()
        answers.append(send_message(LOOPBACK, port, message))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(msa(a)[0] for a in answers)
    assert codes[0] == "AA" and codes[1] in ("AE", "AR"), answers
    assert orders(c) == 1
    with c.db.session() as s:
        order = s.scalar(select(LabOrder))
        assert order is not None and order.patient_name == "张^伟"
        assert s.scalar(select(func.count()).select_from(LabResult)) == 3
    assert sorted(r.outcome for r in inbound(c)) == codes


def test_a_center_failure_is_answered_ae_to_send_again(lab: tuple[Center, int],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog unreadable (an operator's broken edit): the site is told to resend."""
    c, port = lab
    broken = tmp_path / "catalog.toml"
    broken.write_text("[catalog\nversion = ")
    monkeypatch.setenv("RDC_LAB_CATALOG", str(broken))
    get_settings.cache_clear()
    ack = send_message(LOOPBACK, port, good_oml(control="FAIL-1"))
    assert msa(ack)[:2] == ("AE", "FAIL-1")
    assert "could not process the message now (CatalogError); send it again later" in msa(
        ack)[2]
    assert "|207^" in err_segment(ack)
    assert orders(c) == 0
    monkeypatch.delenv("RDC_LAB_CATALOG")
    get_settings.cache_clear()
    assert msa(send_message(LOOPBACK, port, good_oml(control="FAIL-1")))[0] == "AA"


def test_rdc_up_runs_the_lab_listener_when_a_lab_port_is_on(center: Center) -> None:
    from rdc.supervisor import center_specs

    on = center.settings.model_copy(update={"lab_mllp_port": 12575, "lab_astm_port": 15700})
    lab_spec = {s.name: s for s in center_specs(on)}["lab"]
    assert lab_spec.argv[-3:] == ("rdc", "lab", "listen")
    assert lab_spec.ready_port == 12575 and "15700" in lab_spec.where
    assert [s.name for s in center_specs(on)][-2:] == ["lab", "web"]
    astm_only = on.model_copy(update={"lab_mllp_port": 0})
    assert {s.name: s for s in center_specs(astm_only)}["lab"].ready_port == 15700
    off = on.model_copy(update={"lab_mllp_port": 0, "lab_astm_port": 0})
    assert "lab" not in [s.name for s in center_specs(off)]
