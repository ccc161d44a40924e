"""TLS client certificates of county sites: issue, hand out, revoke, check at handshake.

A site's certificate comes from the center's TLS CA (:mod:`core.tls_ca`) with CN = the
site id.  The database keeps every certificate issued (never the private key, which
goes to the site once, as files) and its revocation.  The gateway's TLS port accepts a
client certificate only when OpenSSL has verified its chain and validity *and*
:func:`check_presented` finds it here, unrevoked, for an enabled site whose id is the
certificate's CN: an allow-list, so a revocation is effective at the next handshake
without a restart or a CRL to distribute, and a certificate the CA signed without a
record (a stolen CA key used offline) is refused too.

Issuing a certificate marks the site ``tls_required``: from then on the plain DICOM
port refuses its AE title, so a spoofed AE title and address gain nothing over TLS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, tls_ca
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Site, SiteCertificate
from core.settings import Settings


def _site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound(f"no such site {site_id!r}")
    return site


def issue(session: Session, settings: Settings, site_id: str, *, actor: str,
          now: datetime | None = None, days: int | None = None,
          ) -> tuple[SiteCertificate, tls_ca.IssuedCertificate]:
    """Issue ``site_id`` a new client certificate and record it; the caller hands the
    returned private key to the site (:func:`write_bundle`) and forgets it.

    Earlier certificates of the site stay valid until revoked, so a site can roll over
    to the new one without an interruption.  ``now`` and ``days`` exist for tests that
    need a certificate from the past.
    """
    site = _site(session, site_id)
    if not site.enabled:
        raise Conflict(f"site {site_id!r} is disabled: it gets no certificate")
    issued = tls_ca.issue_site_certificate(
        tls_ca.center_tls_ca(settings), site.id, settings.center_name,
        days=days or settings.site_cert_days, now=now)
    row = SiteCertificate(
        site_id=site.id, serial=issued.serial, fingerprint=issued.fingerprint,
        subject=issued.cert.subject.rfc4514_string()[:255],
        cert_pem=issued.cert_pem.decode("ascii"),
        not_before=issued.cert.not_valid_before_utc, not_after=issued.cert.not_valid_after_utc,
        issued_by=actor[:128], revoke_reason="")
    session.add(row)
    was_required = site.tls_required
    site.tls_required = True
    session.flush()
    audit.append(session, actor=actor, action="site.cert_issue", object_type="site",
                 object_id=site.id, detail={
                     "serial": row.serial, "fingerprint": row.fingerprint,
                     "not_before": row.not_before.isoformat(),
                     "not_after": row.not_after.isoformat(),
                     "tls_required": True, "tls_required_before": was_required})
    return row, issued


@dataclass(frozen=True)
class Bundle:
    """The files written for a site: its key, its certificate, the CA to trust."""

    directory: Path
    key: Path
    cert: Path
    ca: Path


def write_bundle(directory: Path, site_id: str, issued: tls_ca.IssuedCertificate,
                 ca_cert_pem: bytes) -> Bundle:
    """Write ``<site>-key.pem``, ``<site>-cert.pem`` and ``ca-cert.pem`` (all 0600) into
    ``directory`` (made 0700).  Refuses to overwrite a file: an existing key may be the
    one the site uses now."""
    directory = directory.expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    bundle = Bundle(directory, directory / f"{site_id}-key.pem",
                    directory / f"{site_id}-cert.pem", directory / "ca-cert.pem")
    existing = [p.name for p in (bundle.key, bundle.cert) if p.exists()]
    if existing:
        raise Conflict(f"{directory} already holds {', '.join(existing)}; choose another "
                       "output directory or move them away first")
    tls_ca.write_private(bundle.key, issued.key_pem)
    tls_ca.write_private(bundle.cert, issued.cert_pem)
    tls_ca.write_private(bundle.ca, ca_cert_pem)
    os.chmod(directory, 0o700)
    return bundle


def list_certificates(session: Session, site_id: str | None = None) -> list[SiteCertificate]:
    q = select(SiteCertificate).order_by(SiteCertificate.id)
    if site_id is not None:
        q = q.where(SiteCertificate.site_id == site_id)
    return list(session.scalars(q))


def state(cert: SiteCertificate, at: datetime | None = None) -> str:
    """``active``, ``revoked``, ``expired`` or ``not yet valid``."""
    moment = at or datetime.now(UTC)
    if cert.revoked_at is not None:
        return "revoked"
    if cert.not_after <= moment:
        return "expired"
    if cert.not_before > moment:
        return "not yet valid"
    return "active"


def revoke(session: Session, site_id: str, serial: str | None, *, actor: str,
           reason: str = "") -> list[SiteCertificate]:
    """Revoke one certificate of the site (by serial, hex) or, without a serial, every
    one not yet revoked.  Effective at the gateway's next TLS handshake."""
    _site(session, site_id)
    certs = list_certificates(session, site_id)
    if serial is not None:
        # As the CLI prints it, or as OpenSSL does (upper case, colons, leading zeros).
        wanted = serial.strip().lower().removeprefix("0x").replace(":", "").lstrip("0")
        certs = [c for c in certs if c.serial.lstrip("0") == wanted]
        if not certs:
            raise NotFound(f"site {site_id!r} has no certificate with serial {serial}")
        if certs[0].revoked_at is not None:
            raise Conflict(f"certificate {certs[0].serial} of site {site_id!r} was already "
                           f"revoked at {certs[0].revoked_at}")
    else:
        certs = [c for c in certs if c.revoked_at is None]
        if not certs:
            raise NotFound(f"site {site_id!r} has no certificate left to revoke")
    now = datetime.now(UTC)
    for cert in certs:
        cert.revoked_at = now
        cert.revoked_by = actor[:128]
        cert.revoke_reason = reason[:200]
        audit.append(session, actor=actor, action="site.cert_revoke", object_type="site",
                     object_id=site_id, detail={"serial": cert.serial,
                                                "fingerprint": cert.fingerprint,
                                                "reason": reason})
    session.flush()
    return certs


@dataclass(frozen=True)
class PeerCheck:
    """What the gateway concluded about a client certificate that OpenSSL verified."""

    site_id: str | None
    serial: str
    subject: str
    #: None when the certificate may be used; else why not.
    problem: str | None = None
    #: Short refusal category for the audit log (``revoked``, ``unknown_certificate``...).
    category: str = ""


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def check_presented(session: Session, der: bytes, at: datetime | None = None) -> PeerCheck:
    """Decide on a client certificate (DER) whose chain and validity OpenSSL verified:
    it must be one this center issued and recorded, not revoked, within validity, of an
    enabled site whose id is the certificate's CN."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        return PeerCheck(None, "", "", f"unreadable client certificate: {e}", "bad_certificate")
    serial, subject = tls_ca.serial_hex(cert), cert.subject.rfc4514_string()
    cn = common_name(cert)
    row = session.scalar(select(SiteCertificate).where(SiteCertificate.serial == serial))
    if row is None or row.fingerprint != tls_ca.fingerprint(cert):
        return PeerCheck(None, serial, subject,
                         f"certificate serial {serial} ({subject}) is not one this center "
                         "issued to a site", "unknown_certificate")
    if row.site_id != cn:
        return PeerCheck(row.site_id, serial, subject,
                         f"certificate serial {serial} names {cn!r} but was issued to site "
                         f"{row.site_id!r}", "unknown_certificate")
    moment = at or datetime.now(UTC)
    why = state(row, moment)
    if why == "revoked":
        return PeerCheck(row.site_id, serial, subject,
                         f"certificate serial {serial} of site {row.site_id!r} was revoked at "
                         f"{(row.revoked_at or moment).isoformat()}", "revoked")
    if why != "active":
        return PeerCheck(row.site_id, serial, subject,
                         f"certificate serial {serial} of site {row.site_id!r} is {why}",
                         "expired" if why == "expired" else "not_yet_valid")
    site = session.get(Site, row.site_id)
    if site is None or not site.enabled:
        return PeerCheck(row.site_id, serial, subject,
                         f"site {row.site_id!r} is disabled", "site_disabled")
    return PeerCheck(row.site_id, serial, subject)


def set_delivery_ca(session: Session, site_id: str, ca_pem: str | None, *,
                    actor: str) -> Site:
    """Deliver results to the site over TLS, verifying its SCP's certificate against
    ``ca_pem`` (one or more PEM certificates); ``None`` goes back to plain DICOM."""
    site = _site(session, site_id)
    fingerprints: list[str] = []
    if ca_pem is not None:
        try:
            certs = x509.load_pem_x509_certificates(ca_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as e:
            raise InvalidInput(f"the delivery CA for site {site_id!r} is not PEM "
                               f"certificates: {e}") from e
        fingerprints = [tls_ca.fingerprint(c) for c in certs]
    site.delivery_tls_ca = ca_pem
    audit.append(session, actor=actor, action="site.delivery_tls", object_type="site",
                 object_id=site_id, detail={"tls": ca_pem is not None,
                                            "ca_fingerprints": fingerprints})
    return site
