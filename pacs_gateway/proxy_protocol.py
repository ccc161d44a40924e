"""The PROXY protocol (version 2) header a TCP load balancer puts before a connection.

Behind a TCP load balancer (HAProxy, ``send-proxy-v2``) every connection comes from
the balancer's address, and deny-by-default, which admits a site only from its
registered addresses, would see one address for all of them.  The balancer therefore
writes a binary header with the site's real address before the first DICOM byte, and
the gateway reads it before anything else (before a TLS handshake too).

Only connections from the configured balancer addresses
(``RDC_GATEWAY_PROXY_PROTOCOL_FROM``) are read this way, and from those the header is
required: anyone else who sends one is sending garbage to the DICOM port, and a
balancer connection without one is refused.  So no sender can claim an address by
writing a header itself.  Version 1 (text) is not accepted: HAProxy writes v2 when
asked, and one strict format leaves less to get wrong.

Reference: HAProxy's "The PROXY protocol, versions 1 & 2" (proxy-protocol.txt).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The fixed part: signature, version and command, family and protocol, length.
HEADER_LEN = 16
#: Addresses (36 bytes for IPv6) plus the TLVs HAProxy may add (unique ID, SSL, ALPN,
#: CRC32C, netns): a few hundred bytes.  A larger header is refused unread.
MAX_BODY = 512

_LOCAL, _PROXY = 0x0, 0x1
_AF_INET, _AF_INET6 = 0x1, 0x2
_STREAM = 0x1


class ProxyHeaderError(Exception):
    """The header is missing, malformed or not for a TCP stream; the connection is
    refused (its text is what the refusal audit says)."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        #: Closed before sending a byte: a TCP probe (a plain health check, a port
        #: scan of the balancer's network), not a malformed header.
        self.empty = empty


@dataclass(frozen=True)
class ProxiedPeer:
    """Who the balancer says connected; ``None`` addresses for a LOCAL header (the
    balancer's own health check, which speaks for no site)."""

    address: str | None
    port: int | None

    @property
    def is_local(self) -> bool:
        return self.address is None


def parse(header: bytes, body: bytes) -> ProxiedPeer:
    """Decode a v2 header (``header``: the 16 fixed bytes, ``body``: what its length
    announced).  Raises :class:`ProxyHeaderError` for anything but a well-formed
    PROXY over TCP/IPv4 or TCP/IPv6, or LOCAL."""
    if len(header) != HEADER_LEN or header[:12] != SIGNATURE:
        raise ProxyHeaderError("no PROXY protocol v2 header from the load balancer")
    ver_cmd, fam, length = header[12], header[13], struct.unpack("!H", header[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY protocol version {ver_cmd >> 4} (only 2 is read)")
    if length != len(body):
        raise ProxyHeaderError(f"PROXY header announces {length} bytes, {len(body)} came")
    command = ver_cmd & 0x0F
    if command == _LOCAL:
        return ProxiedPeer(None, None)  # addresses, if any, are to be ignored
    if command != _PROXY:
        raise ProxyHeaderError(f"PROXY protocol command {command:#x} is not PROXY or LOCAL")
    family, proto = fam >> 4, fam & 0x0F
    if proto != _STREAM:
        raise ProxyHeaderError("PROXY header is not for a TCP stream")
    if family == _AF_INET:
        if length < 12:
            raise ProxyHeaderError("PROXY header too short for IPv4 addresses")
        src = ipaddress.IPv4Address(body[0:4])
        port = struct.unpack("!H", body[8:10])[0]
    elif family == _AF_INET6:
        if length < 36:
            raise ProxyHeaderError("PROXY header too short for IPv6 addresses")
        src6 = ipaddress.IPv6Address(body[0:16])
        port = struct.unpack("!H", body[32:34])[0]
        # An IPv4 site reached over an IPv6 listener is the IPv4 site.
        return ProxiedPeer(str(src6.ipv4_mapped or src6), port)
    else:
        raise ProxyHeaderError(f"PROXY header address family {family:#x} is not IPv4 or "
                               "IPv6")
    return ProxiedPeer(str(src), port)


def read_header(sock: socket.socket, deadline_s: float) -> ProxiedPeer:
    """Read exactly the header from ``sock`` (never a byte of what follows it) within
    ``deadline_s`` seconds, and decode it."""
    end = time.monotonic() + deadline_s
    head = _read_exactly(sock, HEADER_LEN, end, signature=True)
    if head[:12] != SIGNATURE[:len(head)] or len(head) < HEADER_LEN:
        raise ProxyHeaderError("no PROXY protocol v2 header from the load balancer")
    length = struct.unpack("!H", head[14:16])[0]
    if length > MAX_BODY:
        raise ProxyHeaderError(f"PROXY header of {length} bytes (limit {MAX_BODY})")
    return parse(head, _read_exactly(sock, length, end))


def _read_exactly(sock: socket.socket, n: int, end: float, *, signature: bool = False,
                  ) -> bytes:
    """``n`` bytes before ``end``; with ``signature``, refused as soon as what came
    differs from the PROXY signature (a DICOM peer is not kept waiting for 16 bytes)."""
    out = bytearray()
    while len(out) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise ProxyHeaderError("PROXY header not complete in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(out))
        except TimeoutError:
            raise ProxyHeaderError("PROXY header not complete in time") from None
        except OSError as exc:
            raise ProxyHeaderError(f"connection failed during the PROXY header: {exc}") \
                from None
        if not chunk:
            raise ProxyHeaderError("connection closed during the PROXY header", empty=not out)
        out += chunk
        if signature and out[:12] != SIGNATURE[:len(out)]:
            raise ProxyHeaderError("no PROXY protocol v2 header from the load balancer")
    return bytes(out)


def build(src: str, src_port: int, dst: str, dst_port: int) -> bytes:
    """A PROXY v2 header (for the tests and the fuzz corpus; the balancer writes its own)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError("source and destination must be of one IP version")
    fam = (_AF_INET if s.version == 4 else _AF_INET6) << 4 | _STREAM
    body = s.packed + d.packed + struct.pack("!HH", src_port, dst_port)
    return SIGNATURE + bytes([0x20 | _PROXY, fam]) + struct.pack("!H", len(body)) + body


def build_local() -> bytes:
    """A LOCAL header: what HAProxy's health check sends."""
    return SIGNATURE + bytes([0x20 | _LOCAL, 0]) + struct.pack("!H", 0)
