"""The center's certificate authority, reader certificates and encrypted reader keys.

Everything here works on bytes and returns values; nothing touches the database, so
the caller (the signing service) decides where certificates and key blobs are stored.

Certificates are X.509 v3 and built with :mod:`asn1crypto` for all three algorithms:
``cryptography`` can neither hold an SM2 public key nor sign with SM2, and one builder
lets the CA's algorithm and a reader's algorithm vary independently (an SM2 reader
under an Ed25519 CA and every other combination).  The DER is standard: the tests
load the Ed25519 and P-256 certificates with ``cryptography`` and check them there.

SM2 certificates follow GM/T 0015: SubjectPublicKeyInfo is id-ecPublicKey
(1.2.840.10045.2.1) with the named curve sm2p256v1 (1.2.156.10197.1.301), and the
signature algorithm is SM2-with-SM3 (1.2.156.10197.1.501) with the signature value a
DER ``SEQUENCE { r, s }`` over the TBSCertificate, made with the default SM2 user ID.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from asn1crypto import algos, keys, pem, x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from core import crypto
from core.crypto import (
    ECDSA_P256,
    ED25519,
    SM2,
    PrivateKey,
    PublicKey,
    SignatureInvalid,
)
from core.errors import ConfigurationError, Conflict, InvalidInput
from core.settings import Settings
from core.timeutil import as_utc
from core.tls_ca import ca_files, write_private

__all__ = [
    "CAMaterial",
    "CertInfo",
    "IssuedKey",
    "SignatureInvalid",
    "WrongPassphrase",
    "certificate_der",
    "certificate_pem",
    "check_issued_by",
    "check_validity",
    "create_ca",
    "encrypt_private_key",
    "fingerprint",
    "issue_reader_certificate",
    "load_ca",
    "read_certificate",
    "save_ca",
    "unlock_private_key",
    "verify_certificate",
]

SM2_CURVE_OID: Final = "1.2.156.10197.1.301"
SM2_WITH_SM3_OID: Final = "1.2.156.10197.1.501"
# asn1crypto refuses to encode an EC private key on a curve it has no size for; this
# only adds SM2 to its table of named curves (idempotent).
keys.NamedCurve.register("sm2p256v1", SM2_CURVE_OID, 32)

#: X.509 signatureAlgorithm for a certificate signed by a key of each algorithm.
_SIGNATURE_OID: Final = {
    SM2: SM2_WITH_SM3_OID,
    ED25519: "1.3.101.112",
    ECDSA_P256: "1.2.840.10045.4.3.2",  # ecdsa-with-SHA256
}

CA_CERT_FILE: Final = "ca-cert.pem"
CA_KEY_FILE: Final = "ca-key.pem"

_KEY_FORMAT: Final = "rdc-key-1"
#: scrypt cost: 2**15 * 8 * 128 B = 32 MiB and ~0.1 s per unlock, OWASP's floor.
DEFAULT_SCRYPT_N: Final = 2**15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


class WrongPassphrase(InvalidInput):
    """The passphrase does not open a reader's private key."""


# --- encrypted reader keys ------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput(f"encrypted key: {what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidInput(f"encrypted key: {what} is not valid base64") from exc


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFC so that the same passphrase typed on different systems gives the same bytes.
    if not passphrase:
        raise InvalidInput("the passphrase must not be empty")
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(_passphrase_bytes(passphrase))


def encrypt_private_key(key: PrivateKey, passphrase: str, *, reader_id: str,
                        fingerprint: str, scrypt_n: int = DEFAULT_SCRYPT_N) -> str:
    """Encrypt a private key under a passphrase into one self-describing ASCII JSON blob.

    scrypt (memory-hard, so guessing passphrases on stolen blobs is costly) derives an
    AES-256-GCM key; every field but the ciphertext is the GCM associated data, so the
    algorithm, owner and KDF parameters cannot be changed without the unlock failing.
    """
    alg = crypto.algorithm_of(key)
    header: dict[str, Any] = {
        "format": _KEY_FORMAT, "alg": alg, "reader_id": reader_id,
        "fingerprint": fingerprint, "kdf": "scrypt", "n": scrypt_n, "r": _SCRYPT_R,
        "p": _SCRYPT_P, "salt": _b64(secrets.token_bytes(16)), "cipher": "aes-256-gcm",
        "nonce": _b64(secrets.token_bytes(12)),
    }
    kek = _scrypt(passphrase, _unb64(header["salt"], "salt"), scrypt_n, _SCRYPT_R, _SCRYPT_P)
    sealed = AESGCM(kek).encrypt(_unb64(header["nonce"], "nonce"),
                                 crypto.private_key_bytes(key), _canonical(header))
    return _canonical({**header, "ciphertext": _b64(sealed)}).decode("ascii")


def _bounded_int(blob: dict[str, Any], name: str, low: int, high: int) -> int:
    value = blob.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"encrypted key: {name} must be an integer in [{low}, {high}]")
    return value


def unlock_private_key(blob: str | bytes, passphrase: str, alg: str) -> PrivateKey:
    """Decrypt a blob from :func:`encrypt_private_key`; a wrong passphrase raises
    :class:`WrongPassphrase`.  ``alg`` is what the caller expects the key to be."""
    crypto.check_algorithm(alg)
    try:
        parsed = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("encrypted key is not a JSON key blob") from exc
    if not isinstance(parsed, dict) or parsed.get("format") != _KEY_FORMAT:
        raise InvalidInput(f"encrypted key is not in the {_KEY_FORMAT} format")
    if parsed.get("kdf") != "scrypt" or parsed.get("cipher") != "aes-256-gcm":
        raise InvalidInput("encrypted key uses an unsupported KDF or cipher")
    if parsed.get("alg") != alg:
        raise InvalidInput(f"encrypted key is an {parsed.get('alg')!r} key, not {alg}")
    n = _bounded_int(parsed, "n", 2**14, 2**20)
    if n & (n - 1):
        raise InvalidInput("encrypted key: scrypt n must be a power of two")
    r = _bounded_int(parsed, "r", 1, 16)
    p = _bounded_int(parsed, "p", 1, 4)
    header = {k: v for k, v in parsed.items() if k != "ciphertext"}
    kek = _scrypt(passphrase, _unb64(parsed.get("salt"), "salt"), n, r, p)
    try:
        raw = AESGCM(kek).decrypt(_unb64(parsed.get("nonce"), "nonce"),
                                  _unb64(parsed.get("ciphertext"), "ciphertext"),
                                  _canonical(header))
    except (InvalidTag, ValueError) as exc:
        raise WrongPassphrase(
            f"wrong passphrase for key of reader {parsed.get('reader_id')!r} "
            f"(certificate {str(parsed.get('fingerprint'))[:16]}), "
            "or the stored key blob was altered") from exc
    return crypto.load_private_key(alg, raw)


# --- certificate encoding -------------------------------------------------------------

def certificate_der(cert: bytes) -> bytes:
    """DER of a certificate given as PEM or DER."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        try:
            type_name, _headers, der = pem.unarmor(cert.strip())
        except ValueError as exc:
            raise SignatureInvalid(f"certificate PEM is malformed: {exc}") from exc
        if type_name != "CERTIFICATE":
            raise SignatureInvalid(f"PEM block is a {type_name}, not a CERTIFICATE")
        return bytes(der)
    return cert


def certificate_pem(cert: bytes) -> bytes:
    """The canonical PEM of a certificate (64-character lines, LF line ends)."""
    return bytes(pem.armor("CERTIFICATE", certificate_der(cert)))


def fingerprint(cert: bytes) -> str:
    """SHA-256 of the certificate DER, lowercase hex: the identity of a reader key."""
    return hashlib.sha256(certificate_der(cert)).hexdigest()


def _spki(key: PublicKey) -> keys.PublicKeyInfo:
    alg = crypto.algorithm_of(key)
    if alg == ED25519:
        algorithm: dict[str, Any] = {"algorithm": "ed25519"}
    else:
        curve = "sm2p256v1" if alg == SM2 else "secp256r1"
        algorithm = {"algorithm": "ec",
                     "parameters": keys.ECDomainParameters(name="named", value=curve)}
    return keys.PublicKeyInfo({"algorithm": algorithm,
                               "public_key": crypto.public_key_bytes(key)})


def _spki_key(spki: keys.PublicKeyInfo) -> tuple[str, PublicKey]:
    """The algorithm and public key of a SubjectPublicKeyInfo we support."""
    oid = spki["algorithm"]["algorithm"].dotted
    if oid == "1.3.101.112":
        alg = ED25519
    elif oid == "1.2.840.10045.2.1":
        params = spki["algorithm"]["parameters"]
        curve = params.chosen.dotted if params.name == "named" else None
        if curve == SM2_CURVE_OID:
            alg = SM2
        elif curve == "1.2.840.10045.3.1.7":
            alg = ECDSA_P256
        else:
            raise InvalidInput(f"unsupported elliptic curve {curve}")
    else:
        raise InvalidInput(f"unsupported public key algorithm {oid}")
    point = spki["public_key"]
    data = point.native if alg == ED25519 else point.contents[1:]  # skip unused-bits byte
    return alg, crypto.load_public_key(alg, bytes(data))


def _x509_time(moment: datetime) -> x509.Time:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds.
    moment = moment.astimezone(UTC).replace(microsecond=0)
    return x509.Time({"utc_time" if moment.year < 2050 else "general_time": moment})


def _key_id(key: PublicKey) -> bytes:
    # RFC 7093 method 1: the leftmost 160 bits of SHA-256 of the subjectPublicKey.
    return hashlib.sha256(crypto.public_key_bytes(key)).digest()[:20]


def _build_certificate(*, issuer: x509.Name, issuer_key: PrivateKey, subject: x509.Name,
                       subject_key: PublicKey, serial: int, not_before: datetime,
                       not_after: datetime, extensions: list[dict[str, Any]]) -> bytes:
    issuer_alg = crypto.algorithm_of(issuer_key)
    sig_alg = algos.SignedDigestAlgorithm({"algorithm": _SIGNATURE_OID[issuer_alg]})
    tbs = x509.TbsCertificate({
        "version": "v3",
        "serial_number": serial,
        "signature": sig_alg,
        "issuer": issuer,
        "validity": {"not_before": _x509_time(not_before), "not_after": _x509_time(not_after)},
        "subject": subject,
        "subject_public_key_info": _spki(subject_key),
        "extensions": extensions,
    })
    signature = crypto.sign(issuer_alg, issuer_key, tbs.dump())
    cert = x509.Certificate({"tbs_certificate": tbs, "signature_algorithm": sig_alg,
                             "signature_value": signature})
    return bytes(cert.dump())


def _new_serial() -> int:
    # RFC 5280: positive, at most 20 octets; CA/B forum: at least 64 random bits.
    return secrets.randbits(159) | 1 << 158


# --- the center CA ----------------------------------------------------------------------

@dataclass(frozen=True)
class CAMaterial:
    """The center CA: its certificate and its private key (raw bytes; keep them secret)."""

    alg: str
    cert_der: bytes
    private_key_raw: bytes = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return certificate_pem(self.cert_der)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_der)

    def private_key(self) -> PrivateKey:
        return crypto.load_private_key(self.alg, self.private_key_raw)

    def subject(self) -> x509.Name:
        return x509.Certificate.load(self.cert_der)["tbs_certificate"]["subject"]


def create_ca(common_name: str, alg: str, *, valid_days: int = 3650,
              organization: str | None = None, now: datetime | None = None) -> CAMaterial:
    """A new self-signed CA for the center (basicConstraints CA, path length 0)."""
    crypto.check_algorithm(alg)
    if not common_name.strip():
        raise InvalidInput("the CA common name must not be empty")
    key = crypto.generate_private_key(alg)
    public = crypto.public_key_of(key)
    name_parts = {"common_name": common_name}
    if organization:
        name_parts["organization_name"] = organization
    name = x509.Name.build(name_parts)
    start = as_utc(now).replace(microsecond=0)
    der = _build_certificate(
        issuer=name, issuer_key=key, subject=name, subject_key=public, serial=_new_serial(),
        not_before=start, not_after=start + timedelta(days=valid_days),
        extensions=[
            {"extn_id": "basic_constraints", "critical": True,
             "extn_value": {"ca": True, "path_len_constraint": 0}},
            {"extn_id": "key_usage", "critical": True,
             "extn_value": {"key_cert_sign", "crl_sign"}},
            {"extn_id": "key_identifier", "critical": False, "extn_value": _key_id(public)},
        ])
    return CAMaterial(alg, der, crypto.private_key_bytes(key))


def _private_key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, readable by OpenSSL (SM2 as id-ecPublicKey on sm2p256v1)."""
    if not isinstance(key, crypto.SM2PrivateKey):
        return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    ec_key = keys.ECPrivateKey({"version": "ecPrivkeyVer1"})
    ec_key.set_key_size(32)
    ec_key["private_key"] = key.d
    info = keys.PrivateKeyInfo({
        "version": 0,
        "private_key_algorithm": {
            "algorithm": "ec",
            "parameters": keys.ECDomainParameters(name="named", value="sm2p256v1")},
        "private_key": ec_key})
    return bytes(pem.armor("PRIVATE KEY", info.dump()))


def _load_private_key_pem(data: bytes, alg: str) -> PrivateKey:
    try:
        if alg != SM2:
            loaded = load_pem_private_key(data, password=None)
            if not isinstance(loaded, Ed25519PrivateKey | EllipticCurvePrivateKey):
                raise ValueError(f"it holds a {type(loaded).__name__}")
            crypto.algorithm_of(loaded)
            return loaded
        type_name, _headers, der = pem.unarmor(data.strip())
        if type_name != "PRIVATE KEY":
            raise ValueError(f"PEM block is a {type_name}, not a PRIVATE KEY")
        info = keys.PrivateKeyInfo.load(der, strict=True)
        curve = info["private_key_algorithm"]["parameters"].chosen.dotted
        if curve != SM2_CURVE_OID:
            raise ValueError(f"it is a key on curve {curve}, not SM2")
        d = int(info["private_key"].parsed["private_key"].native)
        return crypto.load_private_key(SM2, d.to_bytes(32, "big"))
    except (ValueError, TypeError, KeyError, OverflowError, InvalidInput) as exc:
        raise ConfigurationError(f"CA private key file is malformed: {exc}") from exc


def save_ca(ca: CAMaterial, directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``ca-cert.pem`` (0644) and ``ca-key.pem`` (0600, unencrypted PKCS#8) under
    ``directory``; returns (certificate path, key path).

    The CA key is stored without a passphrase on purpose: it is the center's service
    key, used unattended by the signing service to issue reader certificates, so a
    passphrase would have to sit next to it anyway.  It is protected by the operating
    system instead: owner-only file mode in an owner-only directory, checked again
    by :func:`load_ca`.  Replacing an existing CA orphans every reader certificate,
    hence ``overwrite`` must be asked for.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise Conflict(f"a CA already exists in {directory}; refusing to replace it")
    write_private(key_path, _private_key_pem(ca.private_key()), 0o600)
    write_private(cert_path, ca.cert_pem, 0o644)
    return cert_path, key_path


def load_ca(directory: Path) -> CAMaterial:
    """Read the CA written by :func:`save_ca`, refusing a key file others can read."""
    cert_path, key_path = ca_files(directory, CA_CERT_FILE, CA_KEY_FILE, "CA")
    try:
        cert_der = certificate_der(cert_path.read_bytes())
        info = _parse(cert_der, "CA certificate")
    except SignatureInvalid as exc:
        raise ConfigurationError(f"{cert_path}: {exc}") from exc
    key = _load_private_key_pem(key_path.read_bytes(), info.alg)
    if not crypto.same_public_key(crypto.public_key_of(key), info.public_key):
        raise ConfigurationError(f"{key_path} does not belong to {cert_path}")
    return CAMaterial(info.alg, cert_der, crypto.private_key_bytes(key))


# --- reader certificates ------------------------------------------------------------

@dataclass(frozen=True)
class IssuedKey:
    """A reader's new certificate and encrypted private key, for the caller to store."""

    alg: str
    reader_id: str
    display_name: str
    cert_pem: bytes
    #: Certificate serial number, lowercase hex.
    serial: str
    #: SHA-256 of the certificate DER, lowercase hex.
    fingerprint: str
    not_before: datetime
    not_after: datetime
    #: ASCII JSON blob from :func:`encrypt_private_key`; opened by :func:`unlock_private_key`.
    encrypted_private_key: str = field(repr=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(value: str, what: str, max_len: int) -> None:
    if not value.strip() or len(value) > max_len or _CONTROL.search(value):
        raise InvalidInput(f"{what} must be 1 to {max_len} characters without control "
                           f"characters, got {value!r}")


def issue_reader_certificate(ca: CAMaterial, reader_id: str, display_name: str, alg: str,
                             passphrase: str, *, valid_days: int = 730,
                             now: datetime | None = None,
                             scrypt_n: int = DEFAULT_SCRYPT_N) -> IssuedKey:
    """Generate a reader's key pair, certify it with the CA, encrypt the private key.

    The subject is CN = display name plus UID (0.9.2342.19200300.100.1.1) = reader_id,
    so that a certificate renewal or a name change keeps the account identity.  Key
    usage is digitalSignature + nonRepudiation: the key signs reports, nothing else.
    The certificate never outlives the CA.
    """
    crypto.check_algorithm(alg)
    _check_text(reader_id, "reader_id", 128)
    _check_text(display_name, "display_name", 200)
    _passphrase_bytes(passphrase)  # refuse an empty passphrase before any work
    ca_cert = _parse(ca.cert_der, "CA certificate")
    start = as_utc(now).replace(microsecond=0)
    end = min(start + timedelta(days=valid_days), ca_cert.not_after)
    if end <= start:
        raise InvalidInput(f"the CA expires at {ca_cert.not_after.isoformat()}; "
                           "it cannot issue certificates any more")
    key = crypto.generate_private_key(alg)
    public = crypto.public_key_of(key)
    serial = _new_serial()
    der = _build_certificate(
        issuer=ca.subject(), issuer_key=ca.private_key(),
        subject=x509.Name.build({"common_name": display_name, "user_id": reader_id}),
        subject_key=public, serial=serial, not_before=start, not_after=end,
        extensions=[
            {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}},
            {"extn_id": "key_usage", "critical": True,
             "extn_value": {"digital_signature", "non_repudiation"}},
            {"extn_id": "key_identifier", "critical": False, "extn_value": _key_id(public)},
            {"extn_id": "authority_key_identifier", "critical": False,
             "extn_value": {"key_identifier": _key_id(ca_cert.public_key)}},
        ])
    fp = fingerprint(der)
    return IssuedKey(
        alg=alg, reader_id=reader_id, display_name=display_name,
        cert_pem=certificate_pem(der), serial=f"{serial:x}", fingerprint=fp,
        not_before=start, not_after=end,
        encrypted_private_key=encrypt_private_key(key, passphrase, reader_id=reader_id,
                                                  fingerprint=fp, scrypt_n=scrypt_n))


# --- reading and verifying certificates ---------------------------------------------

@dataclass(frozen=True)
class CertInfo:
    """What a certificate says, as far as report signing cares."""

    subject_name: str
    #: The UID attribute (reader account id); None for a certificate without one (a CA).
    reader_id: str | None
    #: Serial number, lowercase hex.
    serial: str
    #: SHA-256 of the certificate DER, lowercase hex.
    fingerprint: str
    #: Algorithm of the certified key.
    alg: str
    not_before: datetime
    not_after: datetime
    issuer_name: str
    is_ca: bool
    public_key: PublicKey = field(repr=False, compare=False)


def _name_attr(name: x509.Name, attr: str) -> str | None:
    for rdn in name.chosen:
        for type_value in rdn:
            if type_value["type"].native == attr:
                return str(type_value["value"].native)
    return None


def _describe(info: CertInfo) -> str:
    return f"{info.subject_name!r} (serial {info.serial}, fingerprint {info.fingerprint[:16]})"


_KNOWN_CRITICAL: Final = {"basic_constraints", "key_usage"}


def _parse_cert(cert: bytes, what: str) -> tuple[CertInfo, x509.Certificate]:
    der = certificate_der(cert)
    try:
        parsed = x509.Certificate.load(der, strict=True)
        _ = parsed.native  # asn1crypto parses lazily: surface every encoding error here
        tbs = parsed["tbs_certificate"]
        alg, public = _spki_key(tbs["subject_public_key_info"])
        validity = tbs["validity"]
        critical = {ext["extn_id"].native for ext in tbs["extensions"]
                    if ext["critical"].native}
        info = CertInfo(
            subject_name=_name_attr(tbs["subject"], "common_name") or "",
            reader_id=_name_attr(tbs["subject"], "user_id"),
            serial=f"{int(tbs['serial_number'].native):x}",
            fingerprint=hashlib.sha256(der).hexdigest(),
            alg=alg,
            not_before=as_utc(validity["not_before"].native),
            not_after=as_utc(validity["not_after"].native),
            issuer_name=_name_attr(tbs["issuer"], "common_name") or "",
            is_ca=bool(parsed.ca),
            public_key=public,
        )
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
            InvalidInput) as exc:
        raise SignatureInvalid(f"{what} is malformed: {exc}") from exc
    unknown = critical - _KNOWN_CRITICAL
    if unknown:
        raise SignatureInvalid(f"{what} {_describe(info)} has unsupported critical "
                               f"extensions: {', '.join(sorted(unknown))}")
    return info, parsed


def _parse(cert: bytes, what: str) -> CertInfo:
    return _parse_cert(cert, what)[0]


def read_certificate(cert: bytes) -> CertInfo:
    """What a certificate (PEM or DER) says, WITHOUT checking who issued it."""
    return _parse(cert, "certificate")


@functools.lru_cache(maxsize=1024)
def _signed_by(ca_alg: str, ca_public: bytes, signature: bytes, tbs: bytes) -> bool:
    # Cached on the exact bytes (so it is exact, not approximate): a reader certificate
    # is checked once per verified report, and an SM2 check costs ~15 ms in Python.
    key = crypto.load_public_key(ca_alg, ca_public)
    return crypto.verify_signature(ca_alg, key, signature, tbs)


def check_issued_by(cert: bytes, ca_cert: bytes) -> CertInfo:
    """Check that a reader certificate was issued by the center CA, at no particular
    time (see :func:`verify_certificate` for the full check).  Raises
    :class:`SignatureInvalid` naming the failed check.

    Checks: the CA certificate is a CA; the issuer name is the CA's subject; the
    signature algorithm fits the CA key and the CA's signature over the
    TBSCertificate verifies; the certificate is an end-entity signing certificate.
    """
    ca_info, ca_parsed = _parse_cert(ca_cert, "CA certificate")
    if not ca_info.is_ca:
        raise SignatureInvalid(f"CA certificate {_describe(ca_info)} is not a CA certificate")
    info, parsed = _parse_cert(cert, "certificate")
    not_ours = (f"certificate {_describe(info)} is not issued by this center's CA "
                f"{_describe(ca_info)}")
    tbs = parsed["tbs_certificate"]
    if tbs["issuer"].dump() != ca_parsed["tbs_certificate"]["subject"].dump():
        raise SignatureInvalid(f"{not_ours}: its issuer is {info.issuer_name!r}")
    sig_oid = parsed["signature_algorithm"]["algorithm"].dotted
    if (sig_oid != _SIGNATURE_OID[ca_info.alg]
            or tbs["signature"].dump() != parsed["signature_algorithm"].dump()):
        raise SignatureInvalid(f"{not_ours}: signature algorithm {sig_oid} does not fit the "
                               f"CA's {ca_info.alg} key")
    if not _signed_by(ca_info.alg, crypto.public_key_bytes(ca_info.public_key),
                      bytes(parsed["signature_value"].native), bytes(tbs.dump())):
        raise SignatureInvalid(f"{not_ours}: the CA's signature on it does not verify")
    usage = parsed.key_usage_value.native if parsed.key_usage_value is not None else set()
    if info.is_ca or not {"digital_signature", "non_repudiation"} & set(usage):
        raise SignatureInvalid(f"certificate {_describe(info)} is not a signing certificate")
    return info


def check_validity(cert: CertInfo, at: datetime, *, what: str = "certificate") -> None:
    """Refuse a certificate outside its validity period at ``at`` (naive means UTC)."""
    moment = as_utc(at)
    if moment < cert.not_before:
        raise SignatureInvalid(f"{what} {_describe(cert)} is not valid before "
                               f"{cert.not_before.isoformat()} (checked at "
                               f"{moment.isoformat()})")
    if moment > cert.not_after:
        raise SignatureInvalid(f"{what} {_describe(cert)} expired at "
                               f"{cert.not_after.isoformat()} (checked at {moment.isoformat()})")


def verify_certificate(cert: bytes, ca_cert: bytes, *, at: datetime | None = None) -> CertInfo:
    """Check that a reader certificate was issued by the center CA
    (:func:`check_issued_by`) and that it and the CA were both valid at ``at``
    (default now; naive means UTC).  Raises :class:`SignatureInvalid` naming the
    failed check, e.g. "certificate ... is not issued by this center's CA ...",
    "certificate ... expired at ...".
    """
    moment = as_utc(at)
    info = check_issued_by(cert, ca_cert)
    check_validity(_parse(ca_cert, "CA certificate"), moment, what="CA certificate")
    check_validity(info, moment)
    return info


log = logging.getLogger(__name__)


def center_ca(settings: Settings) -> CAMaterial:
    """The center's CA, created with ``settings.signing_algorithm`` on first use."""
    directory = settings.ca_dir
    if not (directory / CA_CERT_FILE).exists():
        ca = create_ca(f"{settings.center_name} CA", settings.signing_algorithm,
                       organization=settings.center_name)
        try:
            save_ca(ca, directory)
            log.info("ca.created alg=%s fingerprint=%s", ca.alg, ca.fingerprint)
        except Conflict:
            pass  # another process made it first; read theirs
    return load_ca(directory)
