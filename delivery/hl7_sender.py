"""The HL7 channel of a delivery: one ORU^R01 over MLLP, optionally inside TLS, and its ACK.

This module knows no database: it sends one message and returns the acknowledged control
ID, or raises :class:`~delivery.errors.DeliveryFailed` with the precise reason.
"""

from __future__ import annotations

import socket
import ssl

from core.tls import describe_failure
from delivery.errors import DeliveryFailed

#: Seconds to connect (explicit, so a site that accepts TCP and then says nothing costs one
#: bounded attempt instead of a worker).
CONNECT_TIMEOUT_S = 10.0
HL7_TIMEOUT_S = 30.0
HL7_MAX_ACK_BYTES = 1 << 20

_MLLP_START, _MLLP_END = b"\x0b", b"\x1c\x0d"


def _hl7_fields(segment: str, separator: str) -> list[str]:
    return segment.split(separator)


def send_hl7(host: str, port: int, message: str, timeout_s: float = HL7_TIMEOUT_S,
             tls: ssl.SSLContext | None = None) -> tuple[str, str]:
    """Send one HL7 v2 message over MLLP and wait for its ACK.

    Success only for MSA-1 ``AA``/``CA`` acknowledging our MSH-10; returns (control ID,
    ACK code).  Anything else raises :class:`DeliveryFailed` with the reason.  With
    ``tls`` (the center's client context for the site, :mod:`core.tls`) the
    MLLP stream runs inside TLS, as IHE ITI's secure node profile has it: the HIS's
    certificate and host name are checked before a byte of the report is sent.
    """
    if not message.startswith("MSH") or len(message) < 8:
        raise DeliveryFailed("the HL7 message does not start with an MSH segment")
    separator = message[3]
    msh = _hl7_fields(message.replace("\n", "\r").split("\r", 1)[0], separator)
    control_id = msh[9] if len(msh) > 9 else ""
    payload = _MLLP_START + message.encode("utf-8") + _MLLP_END
    where = f"HL7 endpoint {host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        raise DeliveryFailed(f"cannot connect to {where}: {e}") from e
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise DeliveryFailed(f"TLS handshake with {where} failed: "
                                 f"{describe_failure(e)[1]} (results go to this site over "
                                 "TLS only)") from e
    try:
        with sock:
            sock.settimeout(timeout_s)
            sock.sendall(payload)
            buffer = b""
            while _MLLP_END not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DeliveryFailed(f"{where} closed the connection without an ACK")
                buffer += chunk
                if len(buffer) > HL7_MAX_ACK_BYTES:
                    raise DeliveryFailed(f"{where} sent more than {HL7_MAX_ACK_BYTES} bytes "
                                         "without an MLLP end block")
    except TimeoutError as e:
        raise DeliveryFailed(f"no ACK from {where} within {timeout_s:g} s") from e
    except OSError as e:
        raise DeliveryFailed(f"connection to {where} failed: {e}") from e
    start = buffer.find(_MLLP_START)
    ack = buffer[start + 1 if start >= 0 else 0:buffer.index(_MLLP_END)]
    text = ack.decode("utf-8", errors="replace")
    segments = [seg for seg in text.replace("\n", "\r").split("\r") if seg]
    ack_sep = segments[0][3] if segments and segments[0].startswith("MSH") else separator
    msa = next((_hl7_fields(seg, ack_sep) for seg in segments if seg.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        raise DeliveryFailed(f"{where} answered without an MSA segment: {text[:200]!r}")
    code = msa[1]
    acked = msa[2] if len(msa) > 2 else ""
    if code not in ("AA", "CA"):
        why = msa[3] if len(msa) > 3 and msa[3] else "no text"
        raise DeliveryFailed(f"{where} answered {code} (MSA-3: {why})")
    if control_id and acked != control_id:
        raise DeliveryFailed(f"{where} acknowledged message {acked!r}, not ours "
                             f"({control_id!r})")
    return control_id, code
