"""DICOM over TLS (PS3.15 Annex B, BCP 195 / RFC 9325): the mutual-TLS acceptor of the
gateway's second port, and the site binding of an association.

The contexts of the profile and the readable handshake failures are :mod:`core.tls`'s,
since the delivery of results (outbound) uses them too.

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
from typing import Any, Final

from cryptography import x509
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from core import site_certs, tls_ca
from core.db import Database
from core.models import Site
from core.settings import Settings
from core.tls import describe_failure, gateway_server_context
from pacs_gateway.refusal_audit import RefusalAuditor

log = logging.getLogger(__name__)

#: First byte of a TLS record carrying a handshake message (the ClientHello).
_TLS_HANDSHAKE_RECORD: Final = 0x16


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
