"""Sites (county hospitals) and the TLS client certificates the center issued them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime
from core.models.base import Base, utcnow


class Site(Base):
    """A county hospital that sends studies and may receive results back."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    allowed_addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    accepts_results: Mapped[bool] = mapped_column(Boolean, default=False)
    inactivity_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: The site's SCP answers storage commitment (N-ACTION) for delivered results.
    storage_commitment: Mapped[bool] = mapped_column(Boolean, default=False)
    #: HL7 v2 MLLP endpoint for ORU^R01 results, when the site wants them.
    hl7_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    hl7_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Output kinds the site takes back besides DICOM: "hl7", "fhir".
    result_formats: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Agreed turnaround from completion to signed report, in minutes (routine work).
    turnaround_target_min: Mapped[int] = mapped_column(Integer, default=240)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The site holds a TLS client certificate and may send over the mutual-TLS port
    #: only: the plain DICOM port refuses its AE title (see pacs_gateway.tls).
    tls_required: Mapped[bool] = mapped_column(Boolean, default=False)
    #: PEM CA certificate(s) that the site's SCP certificate must chain to; when set,
    #: results are delivered over TLS with the gateway's certificate as client identity.
    delivery_tls_ca: Mapped[str | None] = mapped_column(Text, nullable=True)


class SiteCertificate(Base):
    """A TLS client certificate the center's TLS CA issued to a site (core.site_certs).

    The private key is never stored: it goes to the site once.  A handshake on the
    gateway's TLS port is accepted only for a certificate listed here, not revoked, of
    an enabled site, so a revocation takes effect at the next handshake.
    """

    __tablename__ = "site_certificates"
    __table_args__ = (Index("ix_site_certificates_site", "site_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"))
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(String(255))
    cert_pem: Mapped[str] = mapped_column(Text)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    issued_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    revoke_reason: Mapped[str] = mapped_column(String(200), default="")
