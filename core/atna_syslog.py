"""Syslog transport for audit messages: RFC 5424 messages over UDP, TCP or TLS.

A hospital's audit record repository (an IHE ATNA "Audit Record Repository", as
dcm4chee's or any syslog collector) takes DICOM audit messages over syslog:

- ``udp://host:514``: one message per datagram (RFC 5426).  UDP confirms nothing;
  a refusal that the local stack sees (ICMP port unreachable) is detected and the
  batch is sent again, but a datagram lost on the way is lost.  Use it only where
  the repository is on a trusted, uncongested network;
- ``tcp://host:601``: octet-counted frames, ``LEN SP MSG`` (RFC 6587 3.4.1);
- ``tls://host:6514``: the same frames inside TLS (RFC 5425), the server's
  certificate checked (and this node's certificate offered when configured).

Syslog over TCP has no acknowledgement.  So that a batch counts as delivered only
when the repository has read it, the sender opens one connection per batch, sends
it, half-closes (TCP) or sends TLS close_notify, and waits for the repository to
close its side: a repository closes after it has read to the end of the stream.  A
reset before that means the batch is sent again (at least once, never skipped).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from core.errors import ConfigurationError, RDCError

log = logging.getLogger(__name__)

DEFAULT_PORTS: Final = {"udp": 514, "tcp": 601, "tls": 6514}
#: The largest payload of one UDP datagram over IPv4.
MAX_UDP_PAYLOAD: Final = 65_507
#: Facility "security/authorization messages" (10), as IHE ATNA uses.
FACILITY_AUTHPRIV: Final = 10
SEVERITY_WARNING: Final = 4
SEVERITY_NOTICE: Final = 5
NILVALUE: Final = "-"
BOM: Final = b"\xef\xbb\xbf"


class SyslogError(RDCError):
    """The syslog receiver could not be reached, or did not take the whole batch."""

    exit_code = 7


@dataclass(frozen=True)
class SyslogTarget:
    scheme: Literal["udp", "tcp", "tls"]
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(url: str) -> SyslogTarget:
    """``udp://host[:port]``, ``tcp://...`` or ``tls://...``; a clear error otherwise."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigurationError(
            f"syslog URL {url!r}: the scheme must be udp://, tcp:// or tls:// "
            "(for example tls://audit.hospital.example:6514)")
    if not parts.hostname:
        raise ConfigurationError(f"syslog URL {url!r} names no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as e:
        raise ConfigurationError(f"syslog URL {url!r}: {e}") from e
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigurationError(f"syslog URL {url!r}: only scheme, host and port are allowed")
    kind: Literal["udp", "tcp", "tls"] = ("udp" if scheme == "udp" else
                                          "tcp" if scheme == "tcp" else "tls")
    return SyslogTarget(kind, parts.hostname, port)


def _printable(value: str, limit: int) -> str:
    """A header field: PRINTUSASCII (33-126) only, at most ``limit`` characters."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or NILVALUE


def rfc5424_timestamp(moment: datetime) -> str:
    """``2024-05-01T10:00:00.123456Z``: UTC, microseconds (TIME-SECFRAC allows six)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def frame_message(*, severity: int, timestamp: str, hostname: str, app_name: str,
                  procid: str, msgid: str, msg: bytes,
                  facility: int = FACILITY_AUTHPRIV) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - BOM MSG``.

    MSG is UTF-8 and starts with the byte order mark, which is how RFC 5424 says
    that it is UTF-8 (the audit XML carries names in any script).
    """
    header = (f"<{facility * 8 + severity}>1 {_printable(timestamp, 64)} "
              f"{_printable(hostname, 255)} {_printable(app_name, 48)} "
              f"{_printable(procid, 128)} {_printable(msgid, 32)} {NILVALUE} ")
    return header.encode("ascii") + BOM + msg


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing (used over TCP and, per RFC 5425, TLS)."""
    return str(len(message)).encode("ascii") + b" " + message


def tls_context(ca_file: Path | None, cert_file: Path | None,
                key_file: Path | None) -> ssl.SSLContext:
    """A client context that checks the repository's certificate and host name."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigurationError(f"audit syslog TLS files: {e}") from e
    return ctx


class SyslogSender:
    """Sends batches of RFC 5424 messages to one receiver; all of a batch or an error."""

    def __init__(self, target: SyslogTarget, *, timeout: float = 10.0,
                 context: ssl.SSLContext | None = None) -> None:
        if target.scheme == "tls" and context is None:
            context = tls_context(None, None, None)
        self.target = target
        self.timeout = timeout
        self.context = context

    def send(self, messages: Sequence[bytes]) -> None:
        if not messages:
            return
        try:
            if self.target.scheme == "udp":
                self._send_udp(messages)
            else:
                self._send_stream(messages)
        except SyslogError:
            raise
        except (OSError, ssl.SSLError) as e:
            raise SyslogError(f"syslog {self.target}: {e}") from e

    def _send_udp(self, messages: Sequence[bytes]) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.target.host, self.target.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(self.timeout)
            # Connected, so that an ICMP "port unreachable" comes back as an error.
            sock.connect(address)
            for message in messages:
                if len(message) > MAX_UDP_PAYLOAD:
                    raise SyslogError(f"a {len(message)}-byte message does not fit in one "
                                      f"UDP datagram; use tcp:// or tls:// for {self.target}")
                sock.send(message)
            time.sleep(0.05)  # time for a local refusal to arrive before we count the batch
            pending = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if pending:
                raise SyslogError(f"syslog {self.target}: {errno.errorcode.get(pending, pending)}"
                                  f" ({pending}): nothing listens there")

    def _send_stream(self, messages: Sequence[bytes]) -> None:
        try:
            raw = socket.create_connection((self.target.host, self.target.port),
                                           timeout=self.timeout)
        except OSError as e:
            raise SyslogError(f"syslog {self.target}: cannot connect: {e}") from e
        with raw:
            payload = b"".join(octet_counted(m) for m in messages)
            if self.target.scheme == "tls":
                assert self.context is not None
                try:
                    tls = self.context.wrap_socket(raw, server_hostname=self.target.host)
                except (OSError, ssl.SSLError) as e:
                    raise SyslogError(f"syslog {self.target}: TLS handshake failed: {e}") from e
                with tls:
                    try:
                        tls.sendall(payload)
                    except (OSError, ssl.SSLError) as e:
                        raise self._dropped(e) from e
                    self._confirm_tls(tls)
                return
            try:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
            except OSError as e:
                raise self._dropped(e) from e
            self._confirm(raw)

    def _dropped(self, e: BaseException) -> SyslogError:
        return SyslogError(f"syslog {self.target} dropped the connection before reading the "
                           f"batch ({e}); it will be sent again")

    def _confirm(self, sock: socket.socket) -> None:
        """Wait for the receiver to close after reading everything up to our FIN."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                if not sock.recv(4096):
                    return  # it read to the end and closed: delivered
            except TimeoutError:
                break
            except OSError as e:
                raise self._dropped(e) from e
        # Still open after the timeout: it holds our data and refused nothing.
        log.debug("syslog.no_close target=%s", self.target)

    def _confirm_tls(self, tls: ssl.SSLSocket) -> None:
        try:
            tls.unwrap()  # close_notify, then wait for the receiver's
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            return  # it closed without a close_notify of its own after reading: delivered
        except TimeoutError:
            log.debug("syslog.no_close target=%s", self.target)
        except (OSError, ssl.SSLError) as e:
            raise self._dropped(e) from e
