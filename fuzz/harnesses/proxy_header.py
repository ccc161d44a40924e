"""``pacs_gateway.proxy_protocol.read_header``: what a load balancer sends before the
first DICOM byte (only balancers' connections are read this way, but a balancer passes
on whatever its network sends it when misconfigured, so the reader must hold anyway).

Refusal: :class:`~pacs_gateway.proxy_protocol.ProxyHeaderError`.  An accepted header
must keep the reader's promises, checked on every accepted input: it read exactly the
header (the next byte on the socket is the first byte after it), and a PROXY header's
address is a valid IP address with a port.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

INSTRUMENT = ("pacs_gateway.proxy_protocol",)
MAX_LEN = 1024
#: The module is about 40 edges in all; a bounded run that reached 30 exercised it.
MIN_COVERAGE = 30


def load() -> Callable[[bytes], None]:
    from pacs_gateway.proxy_protocol import HEADER_LEN, ProxyHeaderError, read_header

    marker = b"\x01DICOM"

    def one_input(data: bytes) -> None:
        a, b = socket.socketpair()
        try:
            b.sendall(data + marker)
            b.shutdown(socket.SHUT_WR)
            try:
                peer = read_header(a, 1.0)
            except ProxyHeaderError:
                return
            stream = data + marker
            length = int.from_bytes(stream[14:16], "big")
            rest = a.recv(len(stream) + 1)
            assert rest == stream[HEADER_LEN + length:], (data, rest)
            if peer.address is not None:
                ipaddress.ip_address(peer.address)
                assert peer.port is not None and 0 <= peer.port <= 65535
        finally:
            a.close()
            b.close()

    return one_input
