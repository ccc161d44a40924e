"""Hostile peers at the DICOM front door: slowloris, garbage, idle associations, floods.

A real gateway process (one process, so that its limits and its CPU time are those
of one known process) with the registered site ``COUNTY_A`` on 127.0.0.1.  Attackers
connect from other loopback addresses: 127.0.0.2 is registered as a second site
(``HOSTILE``, so that it can hold established associations), 127.0.0.3 is registered
nowhere.  The attacks use raw sockets, which cost the test process nothing while
they wait (pynetdicom's requestor would poll every millisecond, on the same two
cores as the gateway).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from select import select as wait_readable
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import SENDER_AE, Center, wait_until
from core.models import AuditRecord
from core.settings import Settings
from devkit.dcmtk import storescu

HOSTILE_AE = "HOSTILE"
REGISTERED_ATTACKER = "127.0.0.2"   # registered as site "hostile"
STRANGER = "127.0.0.3"              # registered nowhere
CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))
VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


# Raw DICOM upper layer ----------------------------------------------------------------
def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(calling: str, called: str) -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2): Verification, Explicit VR Little Endian."""
    pres = bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION.encode()) \
        + _item(0x40, str(ExplicitVRLittleEndian).encode())
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.1")
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) \
        + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, pres) \
        + _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def connect_from(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_peer(s: socket.socket, wait: float) -> bool:
    """True when the gateway closes (FIN or RST) ``s`` within ``wait`` seconds."""
    s.settimeout(wait)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def established_raw(source: str, c: Center, calling: str = HOSTILE_AE) -> socket.socket | None:
    """An established association on a raw socket (A-ASSOCIATE-AC read), else None."""
    s = connect_from(source, c.gateway_port)
    try:
        s.sendall(associate_rq(calling, c.gateway_ae))
        header = s.recv(6)
    except OSError:
        s.close()
        return None
    if len(header) < 6 or header[0] != 0x02:
        s.close()
        return None
    (length,) = struct.unpack(">I", header[2:6])
    s.settimeout(5)
    left = length
    while left:
        left -= len(s.recv(left))
    return s


PAYLOADS: dict[str, bytes] = {
    "partial-pdu": b"\x01\x00\x00\x00\x10\x00",        # an A-ASSOCIATE-RQ header, no body
    "unknown-type": b"\x09\x00\x00\x00\x00\x04",       # PDU type 0x09 does not exist
    "random": b"",                                      # os.urandom at send time
    "nothing": b"",
}


@dataclass
class SlowSocket:
    kind: str
    opened: float
    sock: socket.socket
    closed_after: float | None = None


@dataclass
class Slowloris:
    """Keeps ``count`` slow connections open from ``source``, reopening what is closed."""

    source: str
    port: int
    count: int
    opened: list[SlowSocket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _open(self, i: int) -> SlowSocket | None:
        kind = list(PAYLOADS)[i % len(PAYLOADS)]
        try:
            s = connect_from(self.source, self.port)
            payload = os.urandom(64) if kind == "random" else PAYLOADS[kind]
            if payload:
                s.sendall(payload)
        except OSError:
            return None
        s.setblocking(False)
        return SlowSocket(kind, time.monotonic(), s)

    def _run(self) -> None:
        live: list[SlowSocket | None] = [None] * self.count
        while not self._stop.is_set():
            now = time.monotonic()
            for i, slot in enumerate(live):
                if slot is not None and (slot.closed_after is None
                                         or now - slot.opened - slot.closed_after < 0.5):
                    continue  # open, or closed less than half a second ago
                new = self._open(i)
                live[i] = new
                if new is not None:
                    self.opened.append(new)
            waiting = {slot.sock: slot for slot in live
                       if slot is not None and slot.closed_after is None}
            readable, _, _ = wait_readable(list(waiting), [], [], 0.05)
            for sock in readable:
                slot = waiting[sock]
                try:
                    if sock.recv(65536):
                        continue  # an A-ABORT or A-ASSOCIATE-RJ; the close follows
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                slot.closed_after = time.monotonic() - slot.opened
                sock.close()
        for slot in live:
            if slot is not None and slot.closed_after is None:
                slot.sock.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


# Measurements --------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo_seconds(c: Center) -> float:
    """A whole C-ECHO (associate, echo, release) by the registered site; its duration."""
    t0 = time.monotonic()
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established, f"the registered site was refused\n{c.logs()}"
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
    return time.monotonic() - t0


def audit_rows(c: Center, actions: tuple[str, ...], peer: str) -> list[tuple[str, dict[str, Any]]]:
    with c.db.session() as s:
        rows = s.execute(select(AuditRecord.action, AuditRecord.detail)
                         .where(AuditRecord.action.in_(actions)).order_by(AuditRecord.seq))
        return [(a, dict(d)) for a, d in rows if dict(d).get("peer") == peer]


# Fixture ------------------------------------------------------------------------------
def _start(c: Center, **env: str) -> Center:
    c.extra_env.update({"RDC_GATEWAY_PROCESSES": "1", **env})
    c.add_site()
    c.add_site("hostile", ae_title=HOSTILE_AE, allowed=(f"{REGISTERED_ATTACKER}/32",),
               port=11198)
    c.start_gateway()
    assert c.gateway_proc is not None
    return c


@pytest.fixture
def gateway(center: Center) -> Iterator[Center]:
    """The gateway with the front door's default limits and timeouts."""
    center.start_orthanc()
    yield _start(center)


# Tests --------------------------------------------------------------------------------
def test_front_door_defaults_are_sane() -> None:
    s = Settings()
    assert 1 <= s.gateway_associate_timeout_s <= 10, "a sender gets a few seconds for its RQ"
    assert 10 <= s.gateway_idle_timeout_s <= 120
    assert s.gateway_unregistered_connections < s.gateway_max_associations
    assert s.gateway_max_connections_per_address < s.gateway_max_associations
    assert s.gateway_refusal_audit_window_s >= 10 and s.gateway_refusal_audit_burst <= 10


def test_slowloris_garbage_and_idle_associations_do_not_lock_out_a_site(
        gateway: Center) -> None:
    """80 slow or garbage connections from an unregistered address, and idle established
    associations from a registered one: the site on 127.0.0.1 stores and echoes within 5 s,
    and every slow socket is closed within the A-ASSOCIATE-RQ deadline (default 5 s)."""
    c = gateway
    settings = c.settings
    deadline = settings.gateway_associate_timeout_s
    per_address = settings.gateway_max_connections_per_address

    # Idle established associations: only ``per_address`` of 20 get in.
    idle = [s for s in (established_raw(REGISTERED_ATTACKER, c) for _ in range(20))
            if s is not None]
    assert len(idle) == per_address, f"{len(idle)} established from one address\n{c.logs()}"
    slow = Slowloris(STRANGER, c.gateway_port, 80)
    slow.start()
    try:
        time.sleep(1.0)  # the flood is on
        for _ in range(3):
            took = echo_seconds(c)
            assert took < 5.0, f"C-ECHO took {took:.1f} s under attack"
            t0 = time.monotonic()
            sent = storescu([CT_SMALL], host="127.0.0.1", port=c.gateway_port,
                            calling_ae=SENDER_AE, called_ae=c.gateway_ae, timeout=30)
            took = time.monotonic() - t0
            assert sent.succeeded == [CT_SMALL], sent.output
            assert took < 5.0, f"C-STORE took {took:.1f} s under attack"
            time.sleep(deadline / 2)
    finally:
        slow.stop()

    # Every slow socket that the gateway did not refuse at once was closed by the
    # deadline; none was held longer.
    closed = [s for s in slow.opened if s.closed_after is not None]
    assert len(slow.opened) >= 80 and len(closed) >= 80, (len(slow.opened), len(closed))
    longest = max(s.closed_after or 0.0 for s in closed)
    assert longest <= deadline + 2.0, f"a slow socket was held {longest:.1f} s"
    by_kind = {k: [s.closed_after for s in closed if s.kind == k] for k in PAYLOADS}
    assert all(by_kind.values()), by_kind
    # The timed-out kinds were held up to the deadline by some, refused at once for most.
    held = [t for t in by_kind["partial-pdu"] + by_kind["nothing"] if t and t > 1.0]
    assert held and min(held) >= deadline - 0.5, held

    # The idle associations are still established (idle limit 30 s) and do hold slots.
    for s in idle:
        assert not closed_by_peer(s, 0.01)
        s.close()

    # The refusals are audited: the first few individually, the rest in the summary
    # that the gateway writes when the window ends, or at the latest when it stops.
    c.stop_gateway()
    rows = audit_rows(c, ("connection.refuse", "refusal.summary"), STRANGER)
    kinds = {d["kind"] for a, d in rows if a == "connection.refuse"}
    for a, d in rows:
        if a == "refusal.summary":
            kinds |= set(d["kinds"])
    assert {"capacity", "no-data", "partial-pdu", "garbage"} <= kinds, rows
    assert len(rows) <= 2 * c.settings.gateway_refusal_audit_burst + 2, rows


def test_idle_associations_cost_no_cpu_and_end_at_the_idle_limit(center: Center) -> None:
    """30 idle established associations: the gateway uses a few % of one core, a C-ECHO
    takes well under a second, and each is aborted at the idle limit, like one stuck
    midway through a PDU."""
    idle_s = 20.0
    c = _start(center, RDC_GATEWAY_IDLE_TIMEOUT_S=str(idle_s),
               RDC_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS="40",
               RDC_GATEWAY_MAX_ASSOCIATIONS="48")
    assert c.gateway_proc is not None
    pid = c.gateway_proc.pid
    time.sleep(2.0)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(5.0)
    baseline = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

    # Each socket's idle clock starts when it is established (or when it last sent).
    quiet_since: dict[socket.socket, float] = {}
    for _ in range(30):
        s = established_raw(REGISTERED_ATTACKER, c)
        assert s is not None, f"not all 30 established\n{c.logs()}"
        quiet_since[s] = time.monotonic()
    socks = list(quiet_since)
    # Two of them stop in the middle of a P-DATA-TF PDU (6-byte header, no body).
    for s in socks[:2]:
        s.sendall(b"\x04\x00\x00\x00\x40\x00")
        quiet_since[s] = time.monotonic()

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(10.0)
    usage = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    echo = echo_seconds(c)
    assert usage < 0.05, (f"30 idle associations cost {usage:.1%} of a core "
                          f"(idle gateway: {baseline:.1%})")
    assert echo < 1.0, f"C-ECHO took {echo:.2f} s beside 30 idle associations"

    # All 30 are ended by the gateway at the idle limit, not before.
    ended_after: dict[socket.socket, float] = {}
    while len(ended_after) < len(socks):
        s = next(s for s in socks if s not in ended_after)
        left = quiet_since[s] + idle_s + 5.0 - time.monotonic()
        assert closed_by_peer(s, max(left, 0.1)), \
            f"an association idle for {idle_s + 5:g} s is still open\n{c.logs()}"
        ended_after[s] = time.monotonic() - quiet_since[s]
    early = [round(t, 1) for t in ended_after.values() if t < idle_s - 1.0]
    assert not early, f"ended before the idle limit of {idle_s:g} s: {early}"
    for s in socks:
        s.close()
    aborts = wait_until(
        lambda: (rows := [d for a, d in audit_rows(c, ("association.abort",),
                                                   REGISTERED_ATTACKER)]) and len(rows) >= 30
        and rows, 15, "30 audited aborts")
    reasons = [d.get("reason", "") for d in aborts]
    assert reasons.count(f"idle for {idle_s:g} s") >= 28, reasons
    assert all(r == f"idle for {idle_s:g} s" or r.startswith("PDU incomplete")
               for r in reasons), reasons


def test_a_refusal_flood_costs_a_bounded_number_of_audit_rows(center: Center) -> None:
    """300 refused connections from one peer (no data, garbage, an unknown AE title, no
    slot): a few individual rows and one summary per window that counts them all."""
    window_s, burst = 8.0, 3
    c = _start(center, RDC_GATEWAY_REFUSAL_AUDIT_WINDOW_S=str(window_s),
               RDC_GATEWAY_REFUSAL_AUDIT_BURST=str(burst))
    n = 300
    t0 = time.monotonic()
    for i in range(n):
        s = connect_from(STRANGER, c.gateway_port)
        try:
            if i % 3 == 1:
                s.sendall(os.urandom(32))
            elif i % 3 == 2:
                s.sendall(associate_rq("STRANGER", c.gateway_ae))
                s.settimeout(5)
                s.recv(64)  # the A-ASSOCIATE-RJ (or the close of a refused connection)
        except OSError:
            pass
        finally:
            s.close()
        if i == 0:
            # The first refusal of a window is in the audit log at once.
            wait_until(lambda: audit_rows(c, ("connection.refuse",), STRANGER), 5,
                       "the first refusal audited")
    flood_s = time.monotonic() - t0

    actions = ("connection.refuse", "association.reject", "refusal.summary")
    def summarised() -> list[tuple[str, dict[str, Any]]]:
        rows = audit_rows(c, actions, STRANGER)
        summaries = [d for a, d in rows if a == "refusal.summary"]
        individual = len(rows) - len(summaries)
        total = sum(int(d["refusals"]) for d in summaries) + individual - sum(
            int(d["audited_individually"]) for d in summaries)
        return rows if total >= n else []
    rows = wait_until(summarised, window_s + 15, f"all {n} refusals accounted for")

    summaries = [d for a, d in rows if a == "refusal.summary"]
    individual = [(a, d) for a, d in rows if a != "refusal.summary"]
    total = sum(int(d["refusals"]) for d in summaries) + len(individual) - sum(
        int(d["audited_individually"]) for d in summaries)
    assert total == n, f"the audit reports {total} refusals, {n} happened"
    windows = int(flood_s // window_s) + 2
    assert len(rows) <= windows * (2 * burst + 1), \
        f"{len(rows)} audit rows for {n} refusals in {flood_s:.1f} s"
    assert summaries, "no summary row"
    kinds: dict[str, int] = {}
    for d in summaries:
        for k, v in d["kinds"].items():
            kinds[k] = kinds.get(k, 0) + int(v)
    assert {"no-data", "rejected"} <= set(kinds), kinds
    assert any(d.get("calling_aes", {}).get("STRANGER") for d in summaries), summaries
    # Individual AE rejections keep their detail for the operator.
    rejects = [d for a, d in individual if a == "association.reject"]
    assert rejects and rejects[0]["calling_ae"] == "STRANGER", rejects

    c.stop_gateway()
    r = c.rdc("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def _p_data_command(elements: bytes, context_id: int = 1) -> bytes:
    """A P-DATA-TF with one PDV: a whole command set (message control header 0x03)."""
    pdv = bytes([context_id, 0x03]) + elements
    item = struct.pack(">I", len(pdv)) + pdv
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def _implicit(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def test_a_command_set_pynetdicom_cannot_decode_is_aborted_and_audited(
        gateway: Center) -> None:
    """Fuzzing finding G1: a command set with no CommandField raised inside pynetdicom's
    state machine and ended the DUL thread with no A-ABORT, no audit record, and the
    association's state left behind.  The gateway now aborts and audits it."""
    c = gateway
    before = len(audit_rows(c, ("association.abort",), REGISTERED_ATTACKER))
    for command in (
        _implicit(0x0000, 0x0002, b"1.2.840.10008.1.1\x00"),           # no CommandField
        _implicit(0x0000, 0x0100, struct.pack("<H", 0x7777))            # unknown one
        + _implicit(0x0000, 0x0002, b"1.2.840.10008.1.1\x00"),
    ):
        s = established_raw(REGISTERED_ATTACKER, c)
        assert s is not None, f"the association was not established\n{c.logs()}"
        try:
            s.sendall(_p_data_command(command))
            s.settimeout(5)
            got = b""
            try:
                while len(got) < 6:
                    chunk = s.recv(6 - len(got))
                    if not chunk:
                        break
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
            assert got[:1] == b"\x07", f"no A-ABORT for an undecodable command set: {got!r}"
        finally:
            s.close()
    def new_aborts() -> list[tuple[str, dict[str, Any]]] | None:
        rows = audit_rows(c, ("association.abort",), REGISTERED_ATTACKER)[before:]
        return rows if len(rows) >= 2 else None

    rows = wait_until(new_aborts, 15, "both aborts audited")
    assert all(d.get("reason") for _, d in rows), rows
    assert echo_seconds(c) < 5, "the gateway still serves"
