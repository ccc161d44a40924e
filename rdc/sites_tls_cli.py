"""``rdc sites cert``: a site's DICOM TLS client certificate (issue, re-issue, revoke), and
the helpers ``rdc sites add --tls`` shares with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from core import site_certs, tls_ca
from core.db import get_database
from core.errors import InvalidInput, NotFound, RDCError
from core.models import Site
from core.settings import Settings
from rdc.console import console, fail
from rdc.console import load_settings as _settings


def default_out_dir(site_id: str) -> Path:
    return Path.cwd() / f"{site_id}-tls"


def issue_and_write(session: Session, settings: Settings, site_id: str, out: Path | None,
                    actor: str = "cli") -> None:
    """Issue the site a certificate in ``session`` and write its files; the files are
    written before the caller commits, so a failed write records nothing."""
    row, issued = site_certs.issue(session, settings, site_id, actor=actor)
    bundle = site_certs.write_bundle(out or default_out_dir(site_id), site_id, issued,
                                     tls_ca.center_tls_ca(settings).cert_pem)
    port = settings.gateway_tls_listen_port
    console.print(
        f"TLS client certificate for site {site_id!r}: serial {row.serial}, valid until "
        f"{row.not_after:%Y-%m-%d}\n"
        f"  key:         {bundle.key}\n  certificate: {bundle.cert}\n"
        f"  center CA:   {bundle.ca}\n"
        "Give these files to the site over a trusted channel; the center keeps no copy of "
        "the key.\nThe site now sends over TLS only"
        + (f" (port {port})" if port else " (RDC_GATEWAY_TLS_PORT is off: set it)")
        + ", e.g. storescu +tls KEY CERT +cf CA -aet AE -aec "
        f"{settings.gateway_ae} HOST {port or 2762} FILE")


def _print_certificates(session: Session, site_id: str) -> None:
    site = session.get(Site, site_id)
    if site is None:
        raise NotFound(f"no such site {site_id!r}")
    table = Table("serial", "not before", "not after", "state", "issued by", "revoked")
    for cert in site_certs.list_certificates(session, site_id):
        table.add_row(cert.serial, f"{cert.not_before:%Y-%m-%d}", f"{cert.not_after:%Y-%m-%d}",
                      site_certs.state(cert), cert.issued_by,
                      f"{cert.revoked_at:%Y-%m-%d %H:%M} {cert.revoke_reason}".strip()
                      if cert.revoked_at else "")
    console.print(table)
    console.print(f"site {site_id!r}: {'TLS only' if site.tls_required else 'plain or TLS'}; "
                  f"results over {'TLS' if site.delivery_tls_ca else 'plain DICOM'}")


def read_ca_file(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read the CA file {path}: {e}") from e


def sites_cert(
    site_id: Annotated[str, typer.Argument(help="Site id.")],
    serial: Annotated[str | None, typer.Argument(
        help="With --revoke: the serial (hex) to revoke; without it, all of the site's.")]
    = None,
    revoke: Annotated[bool, typer.Option(
        "--revoke", help="Revoke instead of issuing (effective at the next handshake).")]
    = False,
    reason: Annotated[str, typer.Option(help="Why it is revoked (audited).")] = "",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory for the key, certificate and CA files (default ./SITE-tls).")]
    = None,
    delivery_ca: Annotated[Path | None, typer.Option(
        "--delivery-ca", help="Deliver results over TLS, checking the site's SCP certificate "
        "against this PEM CA file (nothing is issued).")] = None,
    delivery_plain: Annotated[bool, typer.Option(
        "--delivery-plain", help="Deliver results over plain DICOM again.")] = False,
    list_: Annotated[bool, typer.Option(
        "--list", help="List the site's certificates (serial, validity, state).")] = False,
) -> None:
    """Issue (or re-issue) a site's DICOM TLS client certificate, or revoke it.

    Issuing writes the key, the certificate and the center's TLS CA as PEM files (0600)
    and marks the site TLS-only.  Earlier certificates stay valid until revoked.
    """
    s = _settings()
    db = get_database(s.database_url)
    try:
        if sum((revoke, delivery_ca is not None, delivery_plain, list_)) > 1:
            raise InvalidInput("--revoke, --delivery-ca, --delivery-plain and --list exclude "
                               "each other")
        if serial is not None and not revoke:
            raise InvalidInput("a serial is only given with --revoke")
        with db.session() as sess:
            if list_:
                _print_certificates(sess, site_id)
            elif revoke:
                done = site_certs.revoke(sess, site_id, serial, actor="cli", reason=reason)
                for cert in done:
                    console.print(f"revoked certificate {cert.serial} of site {site_id!r}")
            elif delivery_ca is not None or delivery_plain:
                pem = read_ca_file(delivery_ca) if delivery_ca is not None else None
                site_certs.set_delivery_ca(sess, site_id, pem, actor="cli")
                console.print(f"results to site {site_id!r} go over "
                              f"{'DICOM TLS (and HL7 MLLP over TLS)' if pem else 'plain DICOM'}")
            else:
                issue_and_write(sess, s, site_id, out)
    except RDCError as e:
        raise fail(e) from e
