"""Signature algorithms for report e-signatures: SM2/SM3, Ed25519 and ECDSA P-256.

Chinese sites need the national algorithms (SM2 signatures with SM3 hashing, as the
electronic-signature rules accept them); sites elsewhere use Ed25519 or ECDSA P-256
with SHA-256.  Everything above this module (certificates, envelopes) names an
algorithm by one of the strings in :data:`ALGORITHMS` and calls the functions here,
so that no other module needs to know which library implements which algorithm.

Key and signature formats, the same wherever they are stored or sent:

- a private key is 32 raw bytes for every algorithm (Ed25519 seed, P-256 or SM2
  scalar big-endian), so one encryption scheme fits all three (see :mod:`.pki`);
- an SM2 or P-256 public key is the 65-byte uncompressed point ``04 || x || y``
  (:func:`public_key_bytes`); :func:`load_public_key` also takes the 64-byte ``x || y``
  for SM2.  An Ed25519 public key is its 32 raw bytes;
- an SM2 or ECDSA signature is DER ``SEQUENCE { r INTEGER, s INTEGER }`` (what X.509
  and GM/T 0009 use); an Ed25519 signature is its 64 raw bytes.

SM2 signs ``SM3(Z || message)`` where Z binds the signer's public key and the default
user ID ``1234567812345678`` (GM/T 0009), which is what other SM2 implementations
(OpenSSL, GmSSL) assume for certificates.  SM2 arithmetic is done by :mod:`gmssl`
(pure Python, a few milliseconds per operation).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Final

from asn1crypto import algos
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from gmssl import sm2 as gm_sm2
from gmssl import sm3 as gm_sm3

from core.errors import InvalidInput, RDCError

SM2: Final = "sm2"
ED25519: Final = "ed25519"
ECDSA_P256: Final = "ecdsa-p256"
#: Every supported signature algorithm name, in the order they are offered.
ALGORITHMS: Final = (SM2, ED25519, ECDSA_P256)

SM3: Final = "sm3"
SHA256: Final = "sha256"
HASH_ALGORITHMS: Final = (SM3, SHA256)

_HASH_OF: Final = {SM2: SM3, ED25519: SHA256, ECDSA_P256: SHA256}

#: The SM2 user ID that GM/T 0009 sets as the default; gmssl's ``sign_with_sm3`` uses it.
SM2_DEFAULT_USER_ID: Final = b"1234567812345678"

# The SM2 curve (GM/T 0003.5, "sm2p256v1"), from gmssl's own table so both agree.
_SM2_P: Final = int(gm_sm2.default_ecc_table["p"], 16)
_SM2_A: Final = int(gm_sm2.default_ecc_table["a"], 16)
_SM2_B: Final = int(gm_sm2.default_ecc_table["b"], 16)
_SM2_N: Final = int(gm_sm2.default_ecc_table["n"], 16)
_SM2_G: Final = gm_sm2.default_ecc_table["g"]


class SignatureInvalid(RDCError):
    """A signature, envelope or certificate does not verify; the message says which check."""

    http_status = 422
    exit_code = 5


@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public key: a point on the SM2 curve, checked to be on it when built."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (0 <= self.x < _SM2_P and 0 <= self.y < _SM2_P) or (
            (self.y * self.y - (self.x**3 + _SM2_A * self.x + _SM2_B)) % _SM2_P != 0
        ):
            raise InvalidInput("SM2 public key is not a point on the SM2 curve")

    def raw(self) -> bytes:
        """The 64 bytes ``x || y`` (what gmssl and the SM2 Z value use)."""
        return self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    def uncompressed(self) -> bytes:
        """The 65 bytes ``04 || x || y`` (what X.509 SubjectPublicKeyInfo holds)."""
        return b"\x04" + self.raw()


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private scalar with its public point (SM2 signing needs both, for Z)."""

    d: int = field(repr=False)
    public: SM2PublicKey

    def raw(self) -> bytes:
        """The 32-byte big-endian scalar."""
        return self.d.to_bytes(32, "big")


PrivateKey = SM2PrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = SM2PublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def check_algorithm(alg: str) -> str:
    """Return ``alg`` if supported; otherwise refuse with the list of supported names."""
    if alg not in _HASH_OF:
        raise InvalidInput(
            f"unknown signature algorithm {alg!r}: supported are {', '.join(ALGORITHMS)}")
    return alg


def hash_algorithm(alg: str) -> str:
    """The content hash that goes with a signature algorithm: SM3 for SM2, else SHA-256."""
    return _HASH_OF[check_algorithm(alg)]


def _sm3_openssl(data: bytes) -> bytes | None:
    """SM3 through OpenSSL when the linked build has it: same digest, ~1000x faster."""
    try:
        h = hashes.Hash(hashes.SM3())
    except UnsupportedAlgorithm:
        return None
    h.update(data)
    return h.finalize()


def sm3_gmssl(data: bytes) -> bytes:
    """SM3 with gmssl's pure-Python implementation (the fallback and the reference)."""
    return bytes.fromhex(gm_sm3.sm3_hash(list(data)))


def digest(hash_alg: str, data: bytes) -> bytes:
    """Hash ``data`` with ``"sm3"`` or ``"sha256"``.

    SM3 uses OpenSSL (via ``cryptography``) when available, because gmssl hashes only
    ~300 KB/s and reports embed multi-megabyte PDFs; otherwise gmssl.  Both compute the
    standard digest (the tests check them against the GB/T 32905 vector and each other).
    """
    if hash_alg == SHA256:
        return hashlib.sha256(data).digest()
    if hash_alg == SM3:
        fast = _sm3_openssl(data)
        return fast if fast is not None else sm3_gmssl(data)
    raise InvalidInput(
        f"unknown hash algorithm {hash_alg!r}: supported are {', '.join(HASH_ALGORITHMS)}")


# --- keys ---------------------------------------------------------------------------

def _sm2_point_mul(k: int) -> SM2PublicKey:
    """``k * G`` on the SM2 curve, with gmssl's scalar multiplication."""
    engine = gm_sm2.CryptSM2(private_key=f"{k:064x}", public_key="")
    point = engine._kg(k, _SM2_G)
    if point is None:  # only for k == 0 mod n, which callers never pass
        raise InvalidInput("SM2 scalar gives the point at infinity")
    return SM2PublicKey(int(point[:64], 16), int(point[64:128], 16))


def _sm2_private_from_scalar(d: int) -> SM2PrivateKey:
    # SM2 signing inverts (1 + d), so d = n - 1 is excluded as well as 0 (GM/T 0003.2).
    if not 1 <= d <= _SM2_N - 2:
        raise InvalidInput("SM2 private key is out of range [1, n-2]")
    return SM2PrivateKey(d, _sm2_point_mul(d))


def generate_private_key(alg: str) -> PrivateKey:
    """A new key pair for ``alg`` from the operating system's secure random source."""
    check_algorithm(alg)
    if alg == SM2:
        return _sm2_private_from_scalar(secrets.randbelow(_SM2_N - 2) + 1)
    if alg == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """Which supported algorithm a key object belongs to (P-256 only among EC curves)."""
    if isinstance(key, SM2PrivateKey | SM2PublicKey):
        return SM2
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
            key.curve, ec.SECP256R1):
        return ECDSA_P256
    raise InvalidInput(f"unsupported key type {type(key).__name__}: supported are "
                       f"{', '.join(ALGORITHMS)}")


def _check_key_alg(key: PrivateKey | PublicKey, alg: str) -> None:
    actual = algorithm_of(key)
    if actual != check_algorithm(alg):
        raise InvalidInput(f"key is an {actual} key, not {alg}")


def public_key_of(key: PrivateKey) -> PublicKey:
    """The public half of a private key."""
    if isinstance(key, SM2PrivateKey):
        return key.public
    return key.public_key()


def private_key_bytes(key: PrivateKey) -> bytes:
    """The 32 raw private-key bytes (see the module docstring); keep them secret."""
    if isinstance(key, SM2PrivateKey):
        return key.raw()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    algorithm_of(key)  # refuses curves other than P-256
    return key.private_numbers().private_value.to_bytes(32, "big")


def load_private_key(alg: str, raw: bytes) -> PrivateKey:
    """Rebuild a private key from its 32 raw bytes."""
    check_algorithm(alg)
    if len(raw) != 32:
        raise InvalidInput(f"{alg} private key must be 32 bytes, got {len(raw)}")
    if alg == SM2:
        return _sm2_private_from_scalar(int.from_bytes(raw, "big"))
    if alg == ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    try:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise InvalidInput(f"P-256 private key is out of range: {exc}") from exc


def public_key_bytes(key: PublicKey) -> bytes:
    """The encoded public key: 65-byte ``04||x||y`` for SM2/P-256, 32 raw bytes for Ed25519.

    This is exactly the BIT STRING content of an X.509 SubjectPublicKeyInfo.
    """
    if isinstance(key, SM2PublicKey):
        return key.uncompressed()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    algorithm_of(key)
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def load_public_key(alg: str, data: bytes) -> PublicKey:
    """Rebuild a public key from :func:`public_key_bytes` (SM2 also takes 64-byte x||y)."""
    check_algorithm(alg)
    if alg == SM2:
        if len(data) == 65 and data[0] == 4:
            data = data[1:]
        if len(data) != 64:
            raise InvalidInput(
                f"SM2 public key must be 64 bytes x||y or 65 bytes 04||x||y, got {len(data)}")
        return SM2PublicKey(int.from_bytes(data[:32], "big"), int.from_bytes(data[32:], "big"))
    try:
        if alg == ED25519:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError as exc:
        raise InvalidInput(f"{alg} public key is invalid: {exc}") from exc


def same_public_key(a: PublicKey, b: PublicKey) -> bool:
    """Whether two public keys are the same key (of the same algorithm)."""
    return algorithm_of(a) == algorithm_of(b) and public_key_bytes(a) == public_key_bytes(b)


# --- SM2 signatures -----------------------------------------------------------------

def _sm2_engine(public: SM2PublicKey, d: int | None = None) -> gm_sm2.CryptSM2:
    engine = gm_sm2.CryptSM2(private_key=f"{d:064x}" if d is not None else "", public_key="")
    # Set after construction: gmssl's constructor strips a "04" prefix with lstrip("04"),
    # which also eats leading '0'/'4' digits of x and corrupts about 1 key in 8.
    engine.public_key = public.raw().hex()
    return engine


def _encode_rs(r: int, s: int) -> bytes:
    return bytes(algos.DSASignature({"r": r, "s": s}).dump())


def _decode_rs(signature: bytes) -> tuple[int, int] | None:
    """``(r, s)`` from a DER signature, or None unless it is the one canonical DER form."""
    try:
        parsed = algos.DSASignature.load(signature, strict=True)
        r, s = int(parsed["r"].native), int(parsed["s"].native)
    except (ValueError, TypeError, KeyError):
        return None
    if _encode_rs(r, s) != signature:
        return None
    return r, s


def _sm2_sign(key: SM2PrivateKey, message: bytes) -> bytes:
    engine = _sm2_engine(key.public, key.d)
    while True:
        # gmssl's default K comes from the non-cryptographic ``random`` module; a
        # predictable K reveals the private key, so K is drawn from ``secrets``.
        k = secrets.randbelow(_SM2_N - 1) + 1
        rs_hex = engine.sign_with_sm3(message, f"{k:064x}")
        if rs_hex is not None:  # None when r == 0, r + k == n or s == 0: retry with new K
            return _encode_rs(int(rs_hex[:64], 16), int(rs_hex[64:], 16))


def _sm2_verify(key: SM2PublicKey, signature: bytes, message: bytes) -> bool:
    rs = _decode_rs(signature)
    if rs is None:
        return False
    r, s = rs
    # gmssl does not check the ranges that GM/T 0003.2 requires before verifying.
    if not (1 <= r < _SM2_N and 1 <= s < _SM2_N):
        return False
    try:
        return bool(_sm2_engine(key).verify_with_sm3(f"{r:064x}{s:064x}", message))
    except (TypeError, ValueError):  # degenerate points inside gmssl: not a valid signature
        return False


# --- signing and verification -------------------------------------------------------

def sign(alg: str, key: PrivateKey, message: bytes) -> bytes:
    """Sign ``message`` (SM2 with SM3 and Z, ECDSA with SHA-256, Ed25519 pure)."""
    _check_key_alg(key, alg)
    if isinstance(key, SM2PrivateKey):
        return _sm2_sign(key, message)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_signature(alg: str, key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies with ``key``; never raises for a
    bad signature, only for a key that is not an ``alg`` key."""
    _check_key_alg(key, alg)
    if isinstance(key, SM2PublicKey):
        return _sm2_verify(key, signature, message)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            # Only canonical DER: the signature bytes are then unique for (r, s).
            if _decode_rs(signature) is None:
                return False
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
