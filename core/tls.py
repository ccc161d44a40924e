"""TLS contexts of the center's BCP 195 / RFC 9325 profile, and readable reasons for a failed
handshake.

Moved here from :mod:`pacs_gateway.tls` (issue 12) because both directions of the center
use them: the gateway's mutual-TLS port (inbound) and the delivery of results to a site's
SCP or HIS (outbound, :mod:`delivery`), and the outbound package must not import the
inbound one.  They know nothing of DICOM, so that the HL7/MLLP listener and sender use the
same profile.  The profile: TLS 1.2 or 1.3 only; for TLS 1.2 only ECDHE key exchange with
AEAD ciphers (AES-GCM, ChaCha20-Poly1305) and ECDSA or RSA certificates, as the BCP 195
profiles of PS3.15 and RFC 9325 section 4.2 recommend (TLS 1.3 suites are all AEAD); no
TLS compression (CRIME), no renegotiation, no session tickets (each connection presents
and is checked with its certificate).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Final

from core import tls_ca
from core.settings import Settings

#: TLS 1.2 suites allowed (OpenSSL names): ECDHE + AEAD only.  TLS 1.3 suites are AEAD.
TLS12_CIPHERS: Final = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
])

#: X.509 verification results (OpenSSL's X509_V_ERR_*) -> refusal category.
_VERIFY_CATEGORY: Final = {
    2: "wrong_ca",    # unable to get issuer certificate
    18: "wrong_ca",   # self-signed certificate
    19: "wrong_ca",   # self-signed certificate in chain
    20: "wrong_ca",   # unable to get local issuer certificate
    21: "wrong_ca",   # unable to verify the first certificate
    7: "wrong_ca",    # certificate signature failure
    9: "not_yet_valid",
    10: "expired",
    23: "revoked",
    26: "wrong_purpose",  # unsupported certificate purpose (not for client auth)
}

#: OpenSSL reasons that mean the peer does not speak TLS at all.
_NOT_TLS_REASONS: Final = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                           "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                           "UNEXPECTED_RECORD", "WRONG_SSL_VERSION"}
#: OpenSSL reasons that mean the peer offered only what the profile does not allow.
_WEAK_REASONS: Final = {"UNSUPPORTED_PROTOCOL", "NO_SHARED_CIPHER", "NO_PROTOCOLS_AVAILABLE",
                        "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_SHARED_GROUP",
                        "TLSV1_ALERT_PROTOCOL_VERSION", "VERSION_TOO_LOW"}



# Contexts (DICOM-agnostic: MLLP can use them too) ----------------------------------------
def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the BCP 195 profile to a context (both sides)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
                    | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE)
    return ctx


def server_context(cert_file: Path, key_file: Path, *,
                   client_ca_file: Path | None) -> ssl.SSLContext:
    """A server context presenting ``cert_file``; with ``client_ca_file`` every client
    must present a certificate that chains to it (mutual TLS)."""
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.num_tickets = 0
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(cafile=str(client_ca_file))
    return ctx


def client_context(*, ca_pem: str | None = None, ca_file: Path | None = None,
                   cert_file: Path | None = None, key_file: Path | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """A client context that trusts only ``ca_pem``/``ca_file`` (never the system store:
    a site's SCP is vouched for by the CA configured for that site), presenting
    ``cert_file`` when given.  The peer's name is checked against the host connected to
    unless ``check_hostname`` is off."""
    if ca_pem is None and ca_file is None:
        raise ValueError("a TLS client needs the CA that vouches for its peer")
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca_file) if ca_file else None, cadata=ca_pem)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def gateway_server_context(settings: Settings) -> ssl.SSLContext:
    """The TLS port's context: the gateway's certificate, clients from the TLS CA."""
    cert, key = tls_ca.gateway_key_pair(settings)
    return server_context(cert, key, client_ca_file=tls_ca.ca_file(settings))


def center_client_context(settings: Settings, peer_ca_pem: str) -> ssl.SSLContext:
    """The context for delivering results to a site over TLS: the gateway's certificate
    as the center's client identity, the site's SCP checked against ``peer_ca_pem``."""
    cert, key = tls_ca.gateway_key_pair(settings)
    return client_context(ca_pem=peer_ca_pem, cert_file=cert, key_file=key)


def describe_failure(error: BaseException) -> tuple[str, str]:
    """(category, readable reason) of a failed TLS handshake, server or client side."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = int(getattr(error, "verify_code", 0) or 0)
        message = str(getattr(error, "verify_message", "") or error)
        return _VERIFY_CATEGORY.get(code, "bad_certificate"), f"certificate refused: {message}"
    if isinstance(error, ssl.SSLError):
        reason = str(error.reason or "")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate", "the peer presented no client certificate"
        if reason in _NOT_TLS_REASONS:
            return "not_tls", f"the peer does not speak TLS ({reason.lower()})"
        if reason in _WEAK_REASONS:
            return "weak_tls", ("the peer offered no protocol version or cipher suite of "
                                f"the BCP 195 profile ({reason.lower()})")
        if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
            return "peer_alert", f"the peer ended the handshake ({reason.lower()})"
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return "closed", "the peer closed the connection during the handshake"
        return "handshake_failed", f"TLS handshake failed: {reason or error}"
    if isinstance(error, TimeoutError):
        return "timeout", "the TLS handshake did not complete in time"
    if isinstance(error, ConnectionError):
        return "closed", f"the connection ended during the handshake ({error})"
    return "handshake_failed", f"TLS handshake failed: {type(error).__name__}: {error}"


def probe_handshake(host: str, port: int, context: ssl.SSLContext, *,
                    timeout_s: float = 10.0) -> str | None:
    """Try a TLS handshake only, to say precisely why a TLS connection failed (pynetdicom
    logs the TLS error but hands its caller no reason).  None when it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return None
    except (OSError, ValueError) as e:
        return describe_failure(e)[1]
