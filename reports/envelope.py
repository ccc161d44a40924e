"""The signature envelope that travels inside every delivered report file.

An envelope is canonical JSON (ASCII, sorted keys, no spaces)::

    {"attributes":{"alg":"sm2","content_hash":"<hex>","hash_alg":"sm3",
                   "signed_at":"2026-11-23T10:00:00Z","signer_fingerprint":"<64 hex>"},
     "certificate":"-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n",
     "signature":"<base64>","version":"rdc-sig-1"}

The signature is over the canonical JSON of ``attributes`` (the "signed attributes",
as in CMS): they bind the content hash, the time and the signer's certificate
fingerprint, so the content, the time and the certificate are all covered by one
signature and the envelope stays small whatever the content size.

Every part has exactly one accepted encoding (canonical JSON, lowercase hex, one
time format, canonical PEM and base64, DER signatures), so a change to ANY byte of
the envelope fails verification, as does any change to the signed content: the
reliability test of an electronic signature under Chinese rules.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from core import crypto, pki
from core.crypto import PrivateKey, SignatureInvalid
from core.errors import InvalidInput
from core.timeutil import as_utc
from reports.document import Sealer, SignerInfo

__all__ = [
    "VERSION",
    "Envelope",
    "SignatureInvalid",
    "SignedAttributes",
    "Verified",
    "make_sealer",
    "open_envelope",
    "seal",
    "verify",
]

VERSION: Final = "rdc-sig-1"
_ENVELOPE_KEYS: Final = {"attributes", "certificate", "signature", "version"}
_ATTRIBUTE_KEYS: Final = {"alg", "content_hash", "hash_alg", "signed_at", "signer_fingerprint"}
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def _canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii")


def format_time(moment: datetime) -> str:
    """The one text form of an instant: UTC, ``Z``, microseconds only when non-zero."""
    moment = as_utc(moment)
    spec = "seconds" if moment.microsecond == 0 else "microseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


@dataclass(frozen=True)
class SignedAttributes:
    """What the signature covers."""

    alg: str
    hash_alg: str
    #: Hex digest of the signed content under ``hash_alg``.
    content_hash: str
    signed_at: datetime
    #: SHA-256 of the signer certificate's DER, lowercase hex.
    signer_fingerprint: str

    def to_json(self) -> dict[str, str]:
        return {"alg": self.alg, "content_hash": self.content_hash, "hash_alg": self.hash_alg,
                "signed_at": format_time(self.signed_at),
                "signer_fingerprint": self.signer_fingerprint}

    def canonical(self) -> bytes:
        """The exact bytes that are signed."""
        return _canonical_json(self.to_json())


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope; nothing in it is verified yet (see :func:`verify`)."""

    version: str
    attributes: SignedAttributes
    #: Canonical PEM of the signer's certificate.
    certificate_pem: bytes
    signature: bytes


@dataclass(frozen=True)
class Verified:
    """A signature that verified: who signed what, when, with which key."""

    signer_name: str
    reader_id: str
    fingerprint: str
    algorithm: str
    hash_algorithm: str
    content_hash: str
    signed_at: datetime
    #: When the signer's certificate was revoked, if it was, after ``signed_at``.
    revoked_at: datetime | None = None

    @property
    def status(self) -> str:
        """One line for people: valid, and whether the key was revoked since."""
        if self.revoked_at is None:
            return "valid"
        return f"valid; certificate revoked later at {self.revoked_at.isoformat()}"

    def signer_info(self) -> SignerInfo:
        """The signature block of the outputs, as :mod:`reports.document` shows it."""
        return SignerInfo(name=self.signer_name, reader_id=self.reader_id,
                          fingerprint=self.fingerprint, algorithm=self.algorithm,
                          signed_at=self.signed_at)


# --- sealing ------------------------------------------------------------------------------

def _check_key(private_key: PrivateKey, cert_pem: bytes, alg: str) -> pki.CertInfo:
    """Refuse a key that is not an ``alg`` key or does not belong to the certificate:
    such an envelope could never verify, and finding out at the county site is late."""
    crypto.check_algorithm(alg)
    key_alg = crypto.algorithm_of(private_key)
    if key_alg != alg:
        raise InvalidInput(f"the private key is an {key_alg} key, not {alg}")
    cert = pki.read_certificate(cert_pem)
    if cert.alg != alg or not crypto.same_public_key(crypto.public_key_of(private_key),
                                                     cert.public_key):
        raise InvalidInput(f"the private key does not belong to certificate "
                           f"{cert.fingerprint[:16]} of {cert.subject_name!r}")
    return cert


def seal(data: bytes, *, private_key: PrivateKey, cert_pem: bytes, alg: str,
         signed_at: datetime) -> bytes:
    """Sign ``data`` and return the envelope bytes (ASCII canonical JSON).

    ``signed_at`` is the trusted server time of the signing (naive means UTC); the
    same time goes into every output of one signing.
    """
    cert = _check_key(private_key, cert_pem, alg)
    hash_alg = crypto.hash_algorithm(alg)
    attributes = SignedAttributes(
        alg=alg, hash_alg=hash_alg, content_hash=crypto.digest(hash_alg, data).hex(),
        signed_at=as_utc(signed_at), signer_fingerprint=cert.fingerprint)
    signature = crypto.sign(alg, private_key, attributes.canonical())
    return _canonical_json({
        "attributes": attributes.to_json(),
        "certificate": pki.certificate_pem(cert_pem).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
        "version": VERSION,
    })


def make_sealer(private_key: PrivateKey, cert_pem: bytes, alg: str,
                signed_at: datetime) -> Sealer:
    """A :data:`~reports.document.Sealer` that seals with this key, certificate and
    time, so every output of one signing (SR, PDF) carries the same signer and time.
    The key is checked against the certificate here, before any output is rendered."""
    _check_key(private_key, cert_pem, alg)

    def sealer(data: bytes) -> bytes:
        return seal(data, private_key=private_key, cert_pem=cert_pem, alg=alg,
                    signed_at=signed_at)

    return sealer


# --- parsing ------------------------------------------------------------------------------

def _malformed(reason: str) -> SignatureInvalid:
    return SignatureInvalid(f"signature envelope is malformed: {reason}")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _malformed("a key appears twice")
    return dict(pairs)


def _check_keys(obj: object, expected: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _malformed(f"{what} is a {type(obj).__name__}, not an object")
    if set(obj) != expected:
        raise _malformed(f"{what} must have exactly the keys {sorted(expected)}, "
                         f"got {sorted(obj)}")
    return obj


def _string(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _malformed(f"{what} {key} is not a string")
    return value


def _parse_attributes(obj: object) -> SignedAttributes:
    raw = {k: _string(_check_keys(obj, _ATTRIBUTE_KEYS, "attributes"), k, "attribute")
           for k in _ATTRIBUTE_KEYS}
    alg = raw["alg"]
    if alg not in crypto.ALGORITHMS:
        raise _malformed(f"unknown signature algorithm {alg!r}")
    if raw["hash_alg"] != crypto.hash_algorithm(alg):
        raise _malformed(f"hash algorithm {raw['hash_alg']!r} does not go with {alg} "
                         f"(expected {crypto.hash_algorithm(alg)})")
    if not _HEX64.fullmatch(raw["content_hash"]):
        raise _malformed("content_hash is not 64 lowercase hex digits")
    if not _HEX64.fullmatch(raw["signer_fingerprint"]):
        raise _malformed("signer_fingerprint is not 64 lowercase hex digits")
    if not _TIME.fullmatch(raw["signed_at"]):
        raise _malformed(f"signed_at {raw['signed_at']!r} is not YYYY-MM-DDTHH:MM:SS[.ffffff]Z")
    try:
        signed_at = datetime.fromisoformat(raw["signed_at"][:-1]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise _malformed(f"signed_at {raw['signed_at']!r} is not a valid time") from exc
    if format_time(signed_at) != raw["signed_at"]:
        raise _malformed(f"signed_at {raw['signed_at']!r} is not in canonical form")
    return SignedAttributes(alg=alg, hash_alg=raw["hash_alg"], content_hash=raw["content_hash"],
                            signed_at=signed_at, signer_fingerprint=raw["signer_fingerprint"])


def open_envelope(envelope: bytes) -> Envelope:
    """Parse an envelope strictly: only the exact canonical form that :func:`seal` writes
    is accepted, so no byte of it can change unnoticed.  Verifies nothing else."""
    try:
        parsed = json.loads(envelope.decode("ascii"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _malformed(f"not ASCII JSON ({exc})") from exc
    top = _check_keys(parsed, _ENVELOPE_KEYS, "the envelope")
    version = _string(top, "version", "envelope")
    if version != VERSION:
        raise _malformed(f"unsupported version {version!r} (expected {VERSION})")
    attributes = _parse_attributes(top["attributes"])
    cert_text = _string(top, "certificate", "envelope")
    try:
        cert_pem = pki.certificate_pem(cert_text.encode("ascii"))
    except (SignatureInvalid, UnicodeEncodeError) as exc:
        raise _malformed(f"the certificate is not PEM ({exc})") from exc
    if cert_pem.decode("ascii") != cert_text:
        raise _malformed("the certificate is not in canonical PEM form")
    sig_text = _string(top, "signature", "envelope")
    try:
        signature = base64.b64decode(sig_text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _malformed(f"the signature is not base64 ({exc})") from exc
    if not signature or base64.b64encode(signature).decode("ascii") != sig_text:
        raise _malformed("the signature is not in canonical base64 form")
    if _canonical_json(top) != envelope:
        raise _malformed("not in canonical JSON form (sorted keys, no spaces, ASCII escapes)")
    return Envelope(version, attributes, cert_pem, signature)


# --- verification -------------------------------------------------------------------------

def verify(data: bytes, envelope: bytes, ca_cert_pem: bytes, *,
           revoked: Mapping[str, datetime] | None = None) -> Verified:
    """Verify that ``envelope`` is a valid signature over ``data`` by a reader of the
    center whose CA certificate is ``ca_cert_pem``.  Raises :class:`SignatureInvalid`
    whose message names the failed check.

    ``revoked`` maps certificate fingerprint (lowercase hex) to revocation time.  A
    signature made before its certificate was revoked stays valid
    (``Verified.revoked_at`` says so); one made at or after the revocation does not.

    Order: (1) parse; (2) the certificate is issued by the CA; (3) the signed
    attributes name this certificate; (4) the signature over the attributes
    verifies; (2b) the certificate and the CA were valid at the signing time, and the
    certificate was not revoked by then; (5) the content hash matches.  The signature
    is checked before anything that relies on the signed time, so that messages about
    the time speak of a time the signer really signed.
    """
    env = open_envelope(envelope)
    attrs = env.attributes
    cert = pki.check_issued_by(env.certificate_pem, ca_cert_pem)
    who = f"{cert.subject_name!r} ({cert.reader_id}, certificate {cert.fingerprint[:16]})"
    if not hmac.compare_digest(attrs.signer_fingerprint, cert.fingerprint):
        raise SignatureInvalid(
            f"certificate fingerprint does not match: the signed attributes name certificate "
            f"{attrs.signer_fingerprint[:16]}, the envelope carries {cert.fingerprint[:16]}")
    if cert.alg != attrs.alg:
        raise SignatureInvalid(f"signature algorithm {attrs.alg} does not match the {cert.alg} "
                               f"key of certificate {cert.fingerprint[:16]}")
    if not crypto.verify_signature(attrs.alg, cert.public_key, env.signature,
                                   attrs.canonical()):
        raise SignatureInvalid("signature does not verify: the signature or signed attributes "
                               f"were changed (signer {who})")
    pki.check_validity(pki.read_certificate(ca_cert_pem), attrs.signed_at,
                       what="CA certificate")
    pki.check_validity(cert, attrs.signed_at)
    revoked_at = None if not revoked else revoked.get(cert.fingerprint)
    if revoked_at is not None:
        revoked_at = as_utc(revoked_at)
        if attrs.signed_at >= revoked_at:
            raise SignatureInvalid(
                f"certificate {cert.fingerprint[:16]} of {cert.subject_name!r} was revoked at "
                f"{revoked_at.isoformat()}, before the signing time "
                f"{attrs.signed_at.isoformat()} (or at it)")
    actual = crypto.digest(attrs.hash_alg, data).hex()
    if not hmac.compare_digest(actual, attrs.content_hash):
        raise SignatureInvalid(
            f"content hash does not match: the signed content was changed ({attrs.hash_alg} "
            f"signed {attrs.content_hash[:16]}..., found {actual[:16]}...; signer {who})")
    return Verified(signer_name=cert.subject_name, reader_id=cert.reader_id or "",
                    fingerprint=cert.fingerprint, algorithm=attrs.alg,
                    hash_algorithm=attrs.hash_alg, content_hash=attrs.content_hash,
                    signed_at=attrs.signed_at, revoked_at=revoked_at)
