"""The gateway behind a TCP load balancer: the PROXY protocol v2 header.

A relay in this test stands in for the balancer's wire format (HAProxy itself runs in
tests/test_multinode.py): it connects to the gateway from a given source address and
writes the given bytes first.  The cases are the attacker's: a header from an address
that is not the balancer, no header from the balancer, a header naming an address no
site has, garbage, a slow header, and the balancer's health check.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from core.models import AuditRecord, Instance
from devkit.center import SENDER_AE, Center
from devkit.ports import free_port, wait_until
from pacs_gateway import proxy_protocol as pp

BALANCER = "127.0.0.2"
SITE = "10.20.30.40"


class Relay:
    """Accepts on a loopback port; each connection goes on to the gateway from
    ``source``, with ``prefix`` written before the client's own bytes."""

    def __init__(self, target_port: int, source: str, prefix: bytes) -> None:
        self.target_port, self.source, self.prefix = target_port, source, prefix
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port),
                                                source_address=(self.source, 0))
            if self.prefix:
                upstream.sendall(self.prefix)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def behind_balancer(center: Center) -> Iterator[Center]:
    center.extra_settings["gateway_proxy_protocol_from"] = BALANCER
    center.extra_settings["gateway_associate_timeout_s"] = "2"
    center.add_site(allowed=(SITE,))
    center.start_gateway()
    yield center


def _echo(port: int) -> bool:
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="RDC_CENTER")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _refusals(c: Center, kind: str) -> list[AuditRecord]:
    with c.db.session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.action == "connection.refuse"))
        return [r for r in rows if r.detail.get("kind") == kind]


def _header(src: str) -> bytes:
    return pp.build(src, 40000, "127.0.0.1", 104)


def test_the_site_address_comes_from_the_balancer_header(behind_balancer: Center) -> None:
    c = behind_balancer
    relay = Relay(c.gateway_port, BALANCER, _header(SITE))
    try:
        assert _echo(relay.port)
        ae = AE(ae_title=SENDER_AE)
        ae.requested_contexts = StoragePresentationContexts[:]
        assoc = ae.associate("127.0.0.1", relay.port, ae_title="RDC_CENTER")
        assert assoc.is_established
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    finally:
        relay.close()
    with c.db.session() as s:
        peers = set(s.scalars(select(Instance.peer_address)))
    assert peers == {SITE}


def test_a_header_from_anyone_but_the_balancer_is_refused(behind_balancer: Center) -> None:
    """A sender that writes a header itself cannot claim a site's address."""
    c = behind_balancer
    relay = Relay(c.gateway_port, "127.0.0.1", _header(SITE))
    try:
        assert not _echo(relay.port)
    finally:
        relay.close()
    wait_until(lambda: _refusals(c, "garbage"), 10, "the forged header audited as garbage")


def test_the_balancer_without_a_header_is_refused(behind_balancer: Center) -> None:
    """Behind the balancer, the balancer's own address is no site's: no header, no entry."""
    c = behind_balancer
    relay = Relay(c.gateway_port, BALANCER, b"")
    try:
        assert not _echo(relay.port)
    finally:
        relay.close()
    rows = wait_until(lambda: _refusals(c, "proxy-header"), 10, "refusal audited")
    assert "no PROXY protocol v2 header" in rows[0].detail["reason"]


def test_a_header_naming_an_unregistered_address_is_rejected(
        behind_balancer: Center) -> None:
    c = behind_balancer
    relay = Relay(c.gateway_port, BALANCER, _header("192.0.2.99"))
    try:
        assert not _echo(relay.port)
    finally:
        relay.close()
    wait_until(lambda: any("192.0.2.99" in r.object_id
                           for r in _all(c, "association.reject")), 10,
               "the rejection of the unregistered address audited")


def _all(c: Center, action: str) -> list[AuditRecord]:
    with c.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


@pytest.mark.parametrize("prefix", [
    pytest.param(b"PROXY TCP4 10.20.30.40 127.0.0.1 40000 104\r\n", id="v1-text"),
    pytest.param(pp.SIGNATURE + b"\x21\x11\xff\xff", id="oversized"),
    pytest.param(pp.SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), id="udp"),
    pytest.param(pp.SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), id="version-3"),
    pytest.param(pp.SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), id="short-v4"),
])
def test_malformed_headers_are_refused(behind_balancer: Center, prefix: bytes) -> None:
    c = behind_balancer
    relay = Relay(c.gateway_port, BALANCER, prefix)
    try:
        assert not _echo(relay.port)
    finally:
        relay.close()
    wait_until(lambda: _refusals(c, "proxy-header"), 10, "refusal audited")
    assert _still_serves(c)


def _still_serves(c: Center) -> bool:
    """The gateway still serves: a good header still gets in afterwards."""
    relay = Relay(c.gateway_port, BALANCER, _header(SITE))
    try:
        return _echo(relay.port)
    finally:
        relay.close()


def test_health_checks_and_stalls(behind_balancer: Center) -> None:
    """The balancer's health check (LOCAL) is closed quietly; a header that never comes
    is cut at the association deadline and audited."""
    c = behind_balancer
    with socket.create_connection(("127.0.0.1", c.gateway_port),
                                  source_address=(BALANCER, 0)) as s:
        s.sendall(pp.build_local())
        s.settimeout(5)
        assert s.recv(10) == b""  # closed by the gateway
    with socket.create_connection(("127.0.0.1", c.gateway_port),
                                  source_address=(BALANCER, 0)) as s:
        s.sendall(pp.SIGNATURE[:6])
        s.settimeout(10)
        assert s.recv(10) == b""  # closed after the 2 s deadline
    rows = wait_until(lambda: _refusals(c, "proxy-header"), 10, "the stall audited")
    assert any("not complete in time" in r.detail["reason"] for r in rows)
    assert not any("LOCAL" in r.detail["reason"] for r in rows)
    assert _still_serves(c)
