"""DICOM over TLS (PS3.15 Annex B, BCP 195 / RFC 9325): contexts, the mutual-TLS acceptor
of the gateway's second port, and the site binding of an association.

The context builders (:func:`server_context`, :func:`client_context`) know nothing of
DICOM, so that the HL7/MLLP listener and sender can use the same profile.  The profile:
TLS 1.2 or 1.3 only; for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305) and ECDSA or RSA certificates, as the BCP 195 profiles of PS3.15 and
RFC 9325 section 4.2 recommend (TLS 1.3 suites are all AEAD); no TLS compression (CRIME),
no renegotiation, no session tickets (each connection presents and is checked with its
certificate).

The TLS port accepts a connection only when

1. OpenSSL verified the client certificate: it chains to the center's TLS CA
   (:mod:`core.tls_ca`; why not the signing CA is explained there), is within its
   validity and is meant for client authentication;
2. :func:`core.site_certs.check_presented` finds it issued to an enabled site and not
   revoked (read from the database at every handshake, so a revocation needs no
   restart);
3. at the A-ASSOCIATE-RQ, the site that the calling AE title and the peer address
   identify is the certificate's site (:func:`transport_refusal`, called by the SCP).

Anything else is refused and audited: no certificate, a certificate of another CA, an
expired or revoked one, a plain (non-TLS) DICOM peer, a handshake that does not finish
within ``RDC_GATEWAY_TLS_HANDSHAKE_S``.  The handshake runs in the connection's own
thread, never in the acceptor thread, so a peer that connects and says nothing delays
no one else.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from core import site_certs, tls_ca
from core.db import Database
from core.models import Site
from core.settings import Settings
from pacs_gateway.refusal_audit import RefusalAuditor

log = logging.getLogger(__name__)

#: TLS 1.2 suites allowed (OpenSSL names): ECDHE + AEAD only.  TLS 1.3 suites are AEAD.
TLS12_CIPHERS: Final = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
])

#: First byte of a TLS record carrying a handshake message (the ClientHello).
_TLS_HANDSHAKE_RECORD: Final = 0x16

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


# The acceptor of the TLS port --------------------------------------------------------
#: Called for each refused connection: (peer address, category, detail for the audit).
RefusalSink = Callable[[str, str, dict[str, Any]], None]


def aggregated_refusals(auditor: RefusalAuditor) -> RefusalSink:
    """A refusal sink through the gateway's refusal auditor: aggregated per peer and
    window (:mod:`pacs_gateway.refusal_audit`), so that a flood of failed handshakes
    costs a bounded number of audit rows.  The kind is ``tls_<category>``."""
    def sink(peer: str, category: str, detail: dict[str, Any]) -> None:
        auditor.refuse(peer, category="connection", kind=f"tls_{category}",
                       action="tls.refuse", object_id=peer, detail=detail)
    return sink


class TLSAcceptor:
    """Mutual-TLS handshakes for the gateway's TLS port, in each connection's thread."""

    def __init__(self, settings: Settings, db: Database, refuse: RefusalSink,
                 context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.db = db
        self.refuse = refuse
        self.context = context or gateway_server_context(settings)
        self.port = settings.gateway_tls_listen_port

    def _refused(self, peer: str, category: str, reason: str, **extra: Any) -> None:
        log.warning("tls.refused peer=%s category=%s reason=%s", peer, category, reason)
        detail: dict[str, Any] = {"peer": peer, "port": self.port, "category": category,
                                  "reason": reason, **extra}
        try:
            self.refuse(peer, category, detail)
        except Exception:
            log.exception("tls.refusal_sink_failed peer=%s", peer)

    def handshake(self, sock: socket.socket, address: Any) -> ssl.SSLSocket | None:
        """Complete the TLS handshake on an accepted socket and check the client's
        certificate; the TLS socket, or None after closing and auditing a refusal."""
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        previous_timeout = sock.gettimeout()
        sock.settimeout(self.settings.gateway_tls_handshake_s)
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError as e:
            category, reason = describe_failure(e)
            self._refused(peer, category, f"before the handshake: {reason}")
            sock.close()
            return None
        if not first:
            self._refused(peer, "closed", "the peer closed the connection without a TLS "
                          "handshake")
            sock.close()
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            what = " (a plain DICOM A-ASSOCIATE-RQ)" if first[0] == 0x01 else ""
            self._refused(peer, "not_tls", f"not a TLS connection: first byte "
                          f"0x{first[0]:02X}{what}; this port accepts DICOM over TLS only")
            sock.close()
            return None
        try:
            tls_sock = self.context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        except (OSError, ValueError) as e:
            self._refused(peer, *describe_failure(e))
            sock.close()
            return None
        try:
            tls_sock.do_handshake()
            der = tls_sock.getpeercert(binary_form=True)
        except (OSError, ValueError) as e:
            self._refused(peer, *describe_failure(e))
            tls_sock.close()
            return None
        if not der:  # cannot happen with CERT_REQUIRED; refuse rather than assume
            self._refused(peer, "no_certificate", "the peer presented no client certificate")
            tls_sock.close()
            return None
        try:
            with self.db.session() as s:
                check = site_certs.check_presented(s, der)
        except Exception:
            log.exception("tls.certificate_lookup_failed peer=%s", peer)
            self._refused(peer, "unavailable", "the center could not check the certificate "
                          "(database unavailable)")
            tls_sock.close()
            return None
        if check.problem is not None:
            self._refused(peer, check.category, check.problem, serial=check.serial,
                          subject=check.subject, site=check.site_id)
            tls_sock.close()
            return None
        tls_sock.settimeout(previous_timeout)
        log.info("tls.accepted peer=%s site=%s serial=%s version=%s cipher=%s", peer,
                 check.site_id, check.serial, tls_sock.version(),
                 (tls_sock.cipher() or ("?",))[0])
        return tls_sock

    def server_class(self, base: type[ThreadedAssociationServer],
                     ) -> type[ThreadedAssociationServer]:
        """``base`` with the handshake done in each connection's thread (pynetdicom's
        own TLS support handshakes in the acceptor thread, where one silent peer would
        stall every other connection)."""
        acceptor = self

        class TLSAssociationServer(base):  # type: ignore[valid-type,misc]
            def process_request_thread(self, request: Any, client_address: Any) -> None:
                tls_sock = acceptor.handshake(request, client_address)
                if tls_sock is not None:
                    super().process_request_thread(tls_sock, client_address)

        return TLSAssociationServer


# The association's site -------------------------------------------------------------
def peer_certificate(assoc: Association) -> x509.Certificate | None:
    """The verified client certificate of an association on the TLS port, else None."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def transport_refusal(assoc: Association, site: Site, *, tls: bool) -> str | None:
    """Why ``site`` (found from the calling AE title and address) may not use this
    association's transport, or None.  On the TLS port the client certificate must be
    the site's own; on the plain port a site that was issued a certificate is refused."""
    if not tls:
        if site.tls_required:
            return (f"site {site.id!r} holds a TLS certificate and must send over DICOM "
                    "TLS (the gateway's TLS port)")
        return None
    cert = peer_certificate(assoc)
    if cert is None:
        return "no verified client certificate on this TLS association"
    cert_site = site_certs.common_name(cert)
    if cert_site != site.id:
        return (f"the TLS client certificate (serial {tls_ca.serial_hex(cert)}) belongs to "
                f"site {cert_site!r}, but the calling AE title and address are site "
                f"{site.id!r}'s")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        return f"the TLS client certificate of site {site.id!r} expired during the connection"
    return None
