"""Registry of county sites: who may send, and where results go back."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Site, SiteCertificate, Study

_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
# PS3.5 AE title: up to 16 chars of the default repertoire, no backslash or control chars.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}\Z")
#: Result formats a site may take besides DICOM SR + PDF, which every site gets.
RESULT_FORMATS = frozenset({"hl7", "fhir"})


@dataclass(frozen=True)
class SiteSpec:
    id: str
    name: str
    ae_title: str
    host: str
    port: int
    allowed_addresses: tuple[str, ...]
    accepts_results: bool = False
    inactivity_s: float | None = None
    storage_commitment: bool = False
    hl7_host: str | None = None
    hl7_port: int | None = None
    result_formats: tuple[str, ...] = ()


def validate_ae_title(value: str) -> str:
    ae = value.strip()
    if not ae or not _AE_TITLE.match(ae):
        raise InvalidInput(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return ae


def _validate(spec: SiteSpec) -> SiteSpec:
    if not _SITE_ID.match(spec.id):
        raise InvalidInput(f"invalid site id {spec.id!r}: lowercase letters, digits, '-' or '_'")
    if not spec.name.strip():
        raise InvalidInput("site name must not be empty")
    if not 1 <= spec.port <= 65535:
        raise InvalidInput(f"invalid port {spec.port}")
    if not spec.allowed_addresses:
        raise InvalidInput("at least one allowed peer address (IP or CIDR network) is required")
    for addr in spec.allowed_addresses:
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError as e:
            raise InvalidInput(f"invalid allowed address {addr!r}: {e}") from e
    if spec.inactivity_s is not None and spec.inactivity_s <= 0:
        raise InvalidInput("inactivity window must be positive")
    unknown = set(spec.result_formats) - RESULT_FORMATS
    if unknown:
        raise InvalidInput(f"unknown result formats {sorted(unknown)}: known are "
                           f"{sorted(RESULT_FORMATS)}")
    if "hl7" in spec.result_formats and not (spec.hl7_host and spec.hl7_port):
        raise InvalidInput("results as HL7 need the site's HL7 endpoint (host and port)")
    if spec.hl7_port is not None and not 1 <= spec.hl7_port <= 65535:
        raise InvalidInput(f"invalid HL7 port {spec.hl7_port}")
    return SiteSpec(
        id=spec.id, name=spec.name.strip(), ae_title=validate_ae_title(spec.ae_title),
        host=spec.host, port=spec.port, allowed_addresses=tuple(spec.allowed_addresses),
        accepts_results=spec.accepts_results, inactivity_s=spec.inactivity_s,
        storage_commitment=spec.storage_commitment, hl7_host=spec.hl7_host,
        hl7_port=spec.hl7_port, result_formats=tuple(spec.result_formats),
    )


def add_site(session: Session, spec: SiteSpec, actor: str) -> Site:
    spec = _validate(spec)
    if session.get(Site, spec.id) is not None:
        raise Conflict(f"site {spec.id!r} already exists")
    clash = session.scalar(select(Site).where(Site.ae_title == spec.ae_title))
    if clash is not None:
        raise Conflict(f"AE title {spec.ae_title!r} is already used by site {clash.id!r}")
    site = Site(
        id=spec.id, name=spec.name, ae_title=spec.ae_title, host=spec.host, port=spec.port,
        allowed_addresses=list(spec.allowed_addresses), accepts_results=spec.accepts_results,
        inactivity_s=spec.inactivity_s, enabled=True,
        storage_commitment=spec.storage_commitment, hl7_host=spec.hl7_host,
        hl7_port=spec.hl7_port, result_formats=list(spec.result_formats),
    )
    session.add(site)
    session.flush()
    audit.append(session, actor=actor, action="site.add", object_type="site", object_id=site.id,
                 detail={"ae_title": site.ae_title, "host": site.host, "port": site.port,
                         "allowed_addresses": site.allowed_addresses,
                         "accepts_results": site.accepts_results,
                         "storage_commitment": site.storage_commitment,
                         "result_formats": site.result_formats})
    return site


def list_sites(session: Session) -> list[Site]:
    return list(session.scalars(select(Site).order_by(Site.id)))


def remove_site(session: Session, site_id: str, actor: str) -> str:
    """Remove a site so that it can no longer send.

    A site that has sent studies, or was issued TLS certificates, is only disabled:
    its studies, receipts, certificates and audit trail must keep pointing at it (a
    disabled site's certificates are refused at the TLS handshake).  Returns
    ``"deleted"`` or ``"disabled"``.
    """
    site = session.get(Site, site_id)
    if site is None or not site.enabled:
        raise NotFound(f"no such site {site_id!r}")
    has_studies = session.scalar(select(Study.id).where(Study.site_id == site_id).limit(1))
    has_certs = session.scalar(
        select(SiteCertificate.id).where(SiteCertificate.site_id == site_id).limit(1))
    keep = has_studies is not None or has_certs is not None
    outcome = "disabled" if keep else "deleted"
    if keep:
        site.enabled = False
    else:
        session.delete(site)
    audit.append(session, actor=actor, action="site.remove", object_type="site",
                 object_id=site_id, detail={"outcome": outcome})
    return outcome


def address_allowed(site: Site, peer_address: str) -> bool:
    try:
        peer = ipaddress.ip_address(peer_address)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in ipaddress.ip_network(net, strict=False) for net in site.allowed_addresses)


def find_sender(session: Session, calling_ae: str, peer_address: str) -> Site | None:
    """The enabled site whose AE title and addresses both match, else ``None``."""
    site = session.scalar(
        select(Site).where(Site.ae_title == calling_ae.strip(), Site.enabled.is_(True))
    )
    if site is None or not address_allowed(site, peer_address):
        return None
    return site
