"""The center's DICOM TLS certificate authority, and the certificates it issues.

Why a CA of its own instead of the report-signing CA (``reports.keys.center_ca``):

* The signing CA's algorithm is ``RDC_SIGNING_ALGORITHM``: SM2 (which no TLS stack a
  county PACS runs can verify) or Ed25519 by default, which OpenSSL accepts but the
  TLS profiles of PS3.15 (BCP 195, RFC 9325) and most modality and PACS vendors do not:
  their cipher suites are ECDHE with ECDSA or RSA certificates.  A TLS CA must be one
  every DICOM peer can check, so it is always ECDSA P-256 with SHA-256.
* Separation of duty: a reader's signing certificate (non-repudiation) must never open
  the DICOM port, and a site's TLS certificate must never sign a report.  Two CAs make
  that true by construction rather than by key-usage checks alone.

Files live under ``$RDC_HOME/secrets/tls`` (see :func:`tls_dir`): ``ca-cert.pem`` (0644),
``ca-key.pem`` (0600), and the gateway's own certificate ``gateway-cert.pem`` /
``gateway-key.pem``, which serves the TLS port and is presented as the center's client
certificate when it delivers results over TLS (EKU serverAuth + clientAuth).

Nothing here touches the database; :mod:`core.site_certs` records what is issued.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import ConfigurationError, InvalidInput
from core.settings import Settings
from core.timeutil import as_utc

log = logging.getLogger(__name__)

CA_CERT_FILE: Final = "ca-cert.pem"
CA_KEY_FILE: Final = "ca-key.pem"
GATEWAY_CERT_FILE: Final = "gateway-cert.pem"
GATEWAY_KEY_FILE: Final = "gateway-key.pem"
CA_DAYS: Final = 3650
GATEWAY_CERT_DAYS: Final = 397
#: The gateway's certificate is renewed at start when it has less than this left.
GATEWAY_RENEW_BEFORE: Final = timedelta(days=30)
#: Organizational unit of site client certificates; their CN is the site id.
SITE_OU: Final = "DICOM site"
GATEWAY_OU: Final = "DICOM gateway"


def tls_dir(settings: Settings) -> Path:
    """Where the TLS CA and the gateway's key pair live (owner-only)."""
    return settings.secrets_dir / "tls"


@dataclass(frozen=True)
class TLSCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCertificate:
    """A new end-entity certificate and its private key, for the caller to hand out."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    @property
    def serial(self) -> str:
        return serial_hex(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)


def serial_hex(cert: x509.Certificate) -> str:
    """Serial number as lowercase hex, the form the database and the CLI use."""
    return f"{cert.serial_number:x}"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: DCMTK and OpenSSL read it without a password prompt; the
    file mode (0600) protects it."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temporary file created with ``mode``, then rename it into place:
    a key is never readable by others, not even briefly.  Both CAs (this TLS CA and the
    signing CA of core.pki) write their files with it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # in case the umask removed bits we asked for
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise creation across the gateway's processes and the CLI."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _now(now: datetime | None) -> datetime:
    return as_utc(now).replace(microsecond=0)


def _name(common_name: str, organization: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64])]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]))
    return x509.Name(attrs)


def create_ca(organization: str, *, now: datetime | None = None,
              days: int = CA_DAYS) -> TLSCA:
    """A new self-signed ECDSA P-256 CA that may only issue end-entity certificates."""
    start = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{organization} DICOM TLS CA", organization)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return TLSCA(cert, key)


def save_ca(ca: TLSCA, directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(directory / CA_KEY_FILE, private_key_pem(ca.key))
    write_private(directory / CA_CERT_FILE, ca.cert_pem, 0o644)


def ca_files(directory: Path, cert_name: str, key_name: str,
             what: str) -> tuple[Path, Path]:
    """(certificate, key) paths of a CA on disk, refusing a missing file or a key file
    that others can read.  Both CAs (this one and core.pki's) load through it."""
    cert_path, key_path = directory / cert_name, directory / key_name
    if not cert_path.is_file() or not key_path.is_file():
        raise ConfigurationError(f"no {what} in {directory}: {cert_name} or {key_name} "
                                 "is missing")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(f"{key_path} is accessible by group or others (mode "
                                 f"{mode:04o}); run chmod 600 on it")
    return cert_path, key_path


def load_ca(directory: Path) -> TLSCA:
    """Read the CA, refusing a key file that others can read."""
    cert_path, key_path = ca_files(directory, CA_CERT_FILE, CA_KEY_FILE, "TLS CA")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as e:
        raise ConfigurationError(f"the TLS CA in {directory} is unreadable: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{key_path} is not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigurationError(f"{key_path} does not belong to {cert_path}")
    return TLSCA(cert, key)


def center_tls_ca(settings: Settings) -> TLSCA:
    """The center's TLS CA, created on first use."""
    directory = tls_dir(settings)
    if not (directory / CA_CERT_FILE).exists():
        with _locked(directory):
            if not (directory / CA_CERT_FILE).exists():
                ca = create_ca(settings.center_name)
                save_ca(ca, directory)
                log.info("tls_ca.created fingerprint=%s", fingerprint(ca.cert))
    return load_ca(directory)


def ca_file(settings: Settings) -> Path:
    """Path of the TLS CA certificate (made if missing): the trust anchor for clients."""
    center_tls_ca(settings)
    return tls_dir(settings) / CA_CERT_FILE


def _issue(ca: TLSCA, subject: x509.Name, *, usages: Sequence[x509.ObjectIdentifier],
           not_before: datetime, not_after: datetime,
           alt_names: Sequence[x509.GeneralName] = ()) -> IssuedCertificate:
    ca_end = ca.cert.not_valid_after_utc
    end = min(not_after, ca_end)
    if end <= not_before:
        raise InvalidInput(f"the TLS CA expires at {ca_end.isoformat()}: it cannot issue a "
                           f"certificate valid from {not_before.isoformat()}")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)),
                                        critical=False)
    return IssuedCertificate(builder.sign(ca.key, hashes.SHA256()), key)


def issue_site_certificate(ca: TLSCA, site_id: str, organization: str, *, days: int,
                           now: datetime | None = None) -> IssuedCertificate:
    """A site's client certificate: CN = site id (what the gateway binds to the site),
    OU = :data:`SITE_OU`, EKU clientAuth only (it cannot serve a TLS port)."""
    start = _now(now)
    return _issue(ca, _name(site_id, organization, SITE_OU),
                  usages=[ExtendedKeyUsageOID.CLIENT_AUTH], not_before=start,
                  not_after=start + timedelta(days=days))


def issue_server_certificate(ca: TLSCA, common_name: str, organization: str,
                             names: Sequence[str], *, days: int, unit: str | None = None,
                             client_auth: bool = False,
                             now: datetime | None = None) -> IssuedCertificate:
    """A TLS server certificate for ``names`` (DNS names or IP addresses); with
    ``client_auth`` it may also be presented as a client certificate."""
    start = _now(now)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return _issue(ca, _name(common_name, organization, unit), usages=usages,
                  not_before=start - timedelta(minutes=5),
                  not_after=start + timedelta(days=days),
                  alt_names=[_alt_name(n) for n in names])


def _alt_name(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def gateway_names(settings: Settings) -> list[str]:
    """Names the gateway's certificate is valid for: this host's names, loopback, the
    listening address when it is a specific one, and ``RDC_GATEWAY_TLS_NAMES``."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    if settings.gateway_host not in ("0.0.0.0", "::", ""):
        names.append(settings.gateway_host)
    names.extend(settings.gateway_tls_name_list)
    return list(dict.fromkeys(n for n in names if n))


def _gateway_cert_usable(directory: Path, ca: TLSCA, names: list[str]) -> bool:
    cert_path, key_path = directory / GATEWAY_CERT_FILE, directory / GATEWAY_KEY_FILE
    if not cert_path.is_file() or not key_path.is_file():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return (cert.issuer == ca.cert.subject
            and cert.not_valid_after_utc - datetime.now(UTC) > GATEWAY_RENEW_BEFORE
            and {str(_alt_name(n).value) for n in names} <= have)


def gateway_key_pair(settings: Settings) -> tuple[Path, Path]:
    """(certificate, key) paths of the gateway's TLS identity, issued or renewed when
    missing, close to expiry, issued by another CA or lacking a configured name."""
    ca = center_tls_ca(settings)
    directory = tls_dir(settings)
    names = gateway_names(settings)
    cert_path, key_path = directory / GATEWAY_CERT_FILE, directory / GATEWAY_KEY_FILE
    if not _gateway_cert_usable(directory, ca, names):
        with _locked(directory):
            if not _gateway_cert_usable(directory, ca, names):
                issued = issue_server_certificate(
                    ca, settings.gateway_ae, settings.center_name, names,
                    days=GATEWAY_CERT_DAYS, unit=GATEWAY_OU, client_auth=True)
                # Key first: a reader that sees the new certificate finds its key.
                write_private(key_path, issued.key_pem)
                write_private(cert_path, issued.cert_pem, 0o644)
                log.info("tls.gateway_cert_issued serial=%s names=%s", issued.serial, names)
    return cert_path, key_path
