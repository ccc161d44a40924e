"""Report e-signature cryptography: algorithms, the center CA, reader keys, envelopes.

Real keys, real certificates, real signatures, for all three algorithms; nothing is
mocked.  The point under test is the legal one: any change to signed content or to
the signature is detected, and the failure says which check caught it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from asn1crypto import algos
from asn1crypto import x509 as asn1_x509
from cryptography import x509 as cx509
from gmssl import sm2 as gm_sm2
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from core import crypto, pki
from core.crypto import SignatureInvalid
from core.errors import ConfigurationError, Conflict, InvalidInput, RDCError
from reports import envelope, pdf
from reports.document import ReportDocument, Section, SignerInfo

ALGS = crypto.ALGORITHMS
T0 = datetime(2026, 6, 1, 8, 0, 0, tzinfo=UTC)
SIGNED_AT = T0 + timedelta(days=1)
PAYLOAD = bytes(range(40)) + "报告 impression: no acute finding".encode()
FAST_SCRYPT = 2**14  # the lowest cost unlock accepts; keeps the tests quick


@dataclass(frozen=True)
class Reader:
    alg: str
    ca: pki.CAMaterial
    issued: pki.IssuedKey
    key: crypto.PrivateKey
    passphrase: str


def _reader(alg: str) -> Reader:
    ca = pki.create_ca("RDC Test Center CA", alg, now=T0)
    passphrase = "correct horse 电池 staple"
    issued = pki.issue_reader_certificate(ca, "drwang", "王医生", alg, passphrase,
                                          now=T0 + timedelta(hours=1), scrypt_n=FAST_SCRYPT)
    key = pki.unlock_private_key(issued.encrypted_private_key, passphrase, alg)
    return Reader(alg, ca, issued, key, passphrase)


@pytest.fixture(scope="module", params=ALGS)
def reader(request: pytest.FixtureRequest) -> Reader:
    return _reader(str(request.param))


@pytest.fixture(scope="module")
def sealed(reader: Reader) -> bytes:
    return envelope.seal(PAYLOAD, private_key=reader.key, cert_pem=reader.issued.cert_pem,
                         alg=reader.alg, signed_at=SIGNED_AT)


def _verify(reader: Reader, data: bytes, env: bytes, **kw: object) -> envelope.Verified:
    return envelope.verify(data, env, reader.ca.cert_pem, **kw)  # type: ignore[arg-type]


def _fails(reader: Reader, data: bytes, env: bytes, match: str) -> str:
    with pytest.raises(SignatureInvalid, match=match) as info:
        _verify(reader, data, env)
    return str(info.value)


def _rebuild(env: bytes, **changes: object) -> bytes:
    """The envelope with some fields replaced, re-serialized canonically."""
    obj = json.loads(env)
    for key, value in changes.items():
        if key in obj["attributes"]:
            obj["attributes"][key] = value
        else:
            obj[key] = value
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --- hashes and algorithms ----------------------------------------------------------

SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
SM3_ABCD16 = "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def test_sm3_test_vectors_gb_t_32905() -> None:
    assert crypto.digest("sm3", b"abc").hex() == SM3_ABC
    assert crypto.sm3_gmssl(b"abc").hex() == SM3_ABC
    assert crypto.digest("sm3", b"abcd" * 16).hex() == SM3_ABCD16
    assert crypto.sm3_gmssl(b"abcd" * 16).hex() == SM3_ABCD16


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 1000])
def test_sm3_openssl_and_gmssl_agree(size: int) -> None:
    data = os.urandom(size)
    assert crypto.digest("sm3", data) == crypto.sm3_gmssl(data)


def test_sha256_and_hash_of_each_algorithm() -> None:
    assert crypto.digest("sha256", b"abc") == hashlib.sha256(b"abc").digest()
    assert crypto.hash_algorithm("sm2") == "sm3"
    assert crypto.hash_algorithm("ed25519") == "sha256"
    assert crypto.hash_algorithm("ecdsa-p256") == "sha256"


def test_unknown_algorithm_names_the_supported_ones() -> None:
    for call in (lambda: crypto.hash_algorithm("rsa"),
                 lambda: crypto.generate_private_key("rsa"),
                 lambda: pki.create_ca("CA", "rsa")):
        with pytest.raises(InvalidInput, match="sm2, ed25519, ecdsa-p256"):
            call()
    with pytest.raises(InvalidInput, match="sm3, sha256"):
        crypto.digest("md5", b"x")


@pytest.mark.parametrize("alg", ALGS)
def test_sign_verify_and_key_encodings(alg: str) -> None:
    key = crypto.generate_private_key(alg)
    public = crypto.public_key_of(key)
    sig = crypto.sign(alg, key, b"message")
    assert crypto.verify_signature(alg, public, sig, b"message")
    assert not crypto.verify_signature(alg, public, sig, b"messagE")
    other = crypto.public_key_of(crypto.generate_private_key(alg))
    assert not crypto.verify_signature(alg, other, sig, b"message")
    for i in range(len(sig)):  # any changed signature byte
        bad = sig[:i] + bytes([sig[i] ^ 0x01]) + sig[i + 1:]
        assert not crypto.verify_signature(alg, public, bad, b"message")
    raw = crypto.private_key_bytes(key)
    assert len(raw) == 32
    again = crypto.public_key_of(crypto.load_private_key(alg, raw))
    assert crypto.same_public_key(again, public)
    encoded = crypto.public_key_bytes(public)
    assert len(encoded) == (32 if alg == "ed25519" else 65)
    assert crypto.same_public_key(crypto.load_public_key(alg, encoded), public)
    if alg == "sm2":  # also the bare 64-byte x || y
        assert crypto.same_public_key(crypto.load_public_key(alg, encoded[1:]), public)
    if alg != "ed25519":  # DER SEQUENCE { r, s }
        parsed = algos.DSASignature.load(sig)
        assert parsed.dump(force=True) == sig


def test_sign_refuses_a_key_of_another_algorithm() -> None:
    with pytest.raises(InvalidInput, match="not sm2"):
        crypto.sign("sm2", crypto.generate_private_key("ed25519"), b"x")


def test_sm2_key_whose_x_starts_with_04() -> None:
    """gmssl's CryptSM2 strips a "04" prefix with lstrip("04"), which corrupts such keys;
    our wrapper must not pass the public key through that constructor."""
    key = crypto.load_private_key("sm2", (11).to_bytes(32, "big"))
    assert isinstance(key, crypto.SM2PrivateKey)
    assert key.public.raw()[0] == 0x04
    sig = crypto.sign("sm2", key, b"x")
    assert crypto.verify_signature("sm2", key.public, sig, b"x")


def test_sm2_verifies_an_openssl_signature() -> None:
    """Known answer from OpenSSL 3 (pkeyutl -rawin -digest sm3, distid 1234567812345678)
    with the private key d = 11: SM2 here is the standard SM2 with Z and SM3."""
    public = crypto.load_private_key("sm2", (11).to_bytes(32, "big"))
    assert isinstance(public, crypto.SM2PrivateKey)
    sig = bytes.fromhex(
        "304402202ebc9cb4cb1559440ade7eec9ff4e2b6ab59c9e04924b312fd275d7f23998a44"
        "02200c93f9cb3da6655976fb3105727e3544dbd6f35c72e1ef01b927707e53692d63")
    assert crypto.verify_signature("sm2", public.public, sig, b"message digest")
    assert not crypto.verify_signature("sm2", public.public, sig, b"message digesT")


def test_sm2_public_key_must_be_on_the_curve() -> None:
    with pytest.raises(InvalidInput, match="not a point on the SM2 curve"):
        crypto.load_public_key("sm2", b"\x04" + b"\x01" * 64)


# --- reader keys ----------------------------------------------------------------------

def test_issued_key_and_unlock(reader: Reader) -> None:
    issued = reader.issued
    der = pki.certificate_der(issued.cert_pem)
    assert issued.fingerprint == hashlib.sha256(der).hexdigest()
    assert issued.serial == f"{asn1_x509.Certificate.load(der).serial_number:x}"
    assert issued.not_before == T0 + timedelta(hours=1)
    assert issued.not_after == issued.not_before + timedelta(days=730)
    assert (issued.reader_id, issued.display_name, issued.alg) == ("drwang", "王医生",
                                                                   reader.alg)
    blob = json.loads(issued.encrypted_private_key)
    assert blob["kdf"] == "scrypt" and blob["cipher"] == "aes-256-gcm"
    assert blob["alg"] == reader.alg and blob["fingerprint"] == issued.fingerprint
    raw_hex = crypto.private_key_bytes(reader.key).hex()
    assert raw_hex not in issued.encrypted_private_key
    assert base64.b64encode(crypto.private_key_bytes(reader.key)).decode() \
        not in issued.encrypted_private_key
    cert = pki.read_certificate(issued.cert_pem)
    assert crypto.same_public_key(crypto.public_key_of(reader.key), cert.public_key)
    # The key really signs for the certificate.
    sig = crypto.sign(reader.alg, reader.key, b"m")
    assert crypto.verify_signature(reader.alg, cert.public_key, sig, b"m")


def test_wrong_passphrase_refused(reader: Reader) -> None:
    blob = reader.issued.encrypted_private_key
    with pytest.raises(pki.WrongPassphrase, match="wrong passphrase for key of reader "
                                                  "'drwang'") as info:
        pki.unlock_private_key(blob, reader.passphrase + "x", reader.alg)
    assert isinstance(info.value, InvalidInput) and info.value.http_status == 422
    with pytest.raises(InvalidInput, match="empty"):
        pki.unlock_private_key(blob, "", reader.alg)


def test_key_blob_header_is_bound_to_the_ciphertext(reader: Reader) -> None:
    blob = json.loads(reader.issued.encrypted_private_key)
    blob["reader_id"] = "someone-else"
    with pytest.raises(pki.WrongPassphrase):
        pki.unlock_private_key(json.dumps(blob), reader.passphrase, reader.alg)
    other = next(a for a in ALGS if a != reader.alg)
    with pytest.raises(InvalidInput, match=f"not {other}"):
        pki.unlock_private_key(reader.issued.encrypted_private_key, reader.passphrase, other)


def test_passphrase_is_unicode_normalized() -> None:
    ca = pki.create_ca("CA", "ed25519")
    composed = "caf\u00e9 passphrase"
    issued = pki.issue_reader_certificate(ca, "r1", "R One", "ed25519", composed,
                                          scrypt_n=FAST_SCRYPT)
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    pki.unlock_private_key(issued.encrypted_private_key, decomposed, "ed25519")


# --- certificates -----------------------------------------------------------------------

def test_certificate_chain_ok(reader: Reader) -> None:
    info = pki.verify_certificate(reader.issued.cert_pem, reader.ca.cert_pem, at=SIGNED_AT)
    assert info.subject_name == "王医生" and info.reader_id == "drwang"
    assert info.serial == reader.issued.serial
    assert info.fingerprint == reader.issued.fingerprint
    assert info.alg == reader.alg and not info.is_ca
    # DER in, DER out: the same answer.
    der = pki.certificate_der(reader.issued.cert_pem)
    assert pki.verify_certificate(der, reader.ca.cert_der, at=SIGNED_AT) == info


def test_certificate_from_another_ca_refused(reader: Reader) -> None:
    # Same name, same algorithm: only the key differs.
    impostor = pki.create_ca("RDC Test Center CA", reader.alg, now=T0)
    issued = pki.issue_reader_certificate(impostor, "drwang", "王医生", reader.alg, "pw",
                                          now=T0, scrypt_n=FAST_SCRYPT)
    with pytest.raises(SignatureInvalid, match=r"is not issued by this center's CA.*does not "
                                               r"verify"):
        pki.verify_certificate(issued.cert_pem, reader.ca.cert_pem, at=SIGNED_AT)
    other_name = pki.create_ca("Other CA", reader.alg, now=T0)
    with pytest.raises(SignatureInvalid, match=r"not issued by this center's CA.*issuer is"):
        pki.verify_certificate(reader.issued.cert_pem, other_name.cert_pem, at=SIGNED_AT)


def test_certificate_validity_period(reader: Reader) -> None:
    issued = reader.issued
    pki.verify_certificate(issued.cert_pem, reader.ca.cert_pem, at=issued.not_after)
    with pytest.raises(SignatureInvalid, match="expired at 2028"):
        pki.verify_certificate(issued.cert_pem, reader.ca.cert_pem,
                               at=issued.not_after + timedelta(seconds=1))
    with pytest.raises(SignatureInvalid, match="is not valid before"):
        pki.verify_certificate(issued.cert_pem, reader.ca.cert_pem,
                               at=issued.not_before - timedelta(seconds=1))


def test_ca_and_reader_certificates_are_not_interchangeable(reader: Reader) -> None:
    with pytest.raises(SignatureInvalid, match="is not a CA certificate"):
        pki.verify_certificate(reader.issued.cert_pem, reader.issued.cert_pem, at=SIGNED_AT)
    with pytest.raises(SignatureInvalid, match="is not a signing certificate"):
        pki.verify_certificate(reader.ca.cert_pem, reader.ca.cert_pem, at=SIGNED_AT)


def test_malformed_certificate(reader: Reader) -> None:
    der = bytearray(pki.certificate_der(reader.issued.cert_pem))
    with pytest.raises(SignatureInvalid, match="certificate is malformed"):
        pki.verify_certificate(bytes(der[:-10]), reader.ca.cert_pem, at=SIGNED_AT)


@pytest.mark.parametrize("ca_alg", ALGS)
def test_every_ca_and_reader_algorithm_combination(ca_alg: str) -> None:
    ca = pki.create_ca("Mixed CA", ca_alg)
    for alg in ALGS:
        issued = pki.issue_reader_certificate(ca, "r9", "Reader Nine", alg, "pw",
                                              scrypt_n=FAST_SCRYPT)
        info = pki.verify_certificate(issued.cert_pem, ca.cert_pem)
        assert (info.alg, info.reader_id) == (alg, "r9")
        key = pki.unlock_private_key(issued.encrypted_private_key, "pw", alg)
        env = envelope.seal(b"data", private_key=key, cert_pem=issued.cert_pem, alg=alg,
                            signed_at=datetime.now(UTC))
        assert envelope.verify(b"data", env, ca.cert_pem).algorithm == alg
        if "sm2" not in (alg, ca_alg):
            # An independent X.509 implementation accepts the same certificates.
            cert = cx509.load_pem_x509_certificate(issued.cert_pem)
            cert.verify_directly_issued_by(cx509.load_pem_x509_certificate(ca.cert_pem))
            assert cert.subject.get_attributes_for_oid(
                cx509.NameOID.USER_ID)[0].value == "r9"
            assert cert.extensions.get_extension_for_class(cx509.KeyUsage).value \
                .content_commitment


def test_sm2_certificate_parses_back_and_its_signature_verifies() -> None:
    ca = pki.create_ca("SM2 CA", "sm2")
    issued = pki.issue_reader_certificate(ca, "drli", "李明", "sm2", "pw",
                                          scrypt_n=FAST_SCRYPT)
    der = pki.certificate_der(issued.cert_pem)
    cert = asn1_x509.Certificate.load(der, strict=True)
    tbs = cert["tbs_certificate"]
    assert cert["signature_algorithm"]["algorithm"].dotted == "1.2.156.10197.1.501"
    assert tbs["signature"]["algorithm"].dotted == "1.2.156.10197.1.501"
    spki = tbs["subject_public_key_info"]["algorithm"]
    assert spki["algorithm"].dotted == "1.2.840.10045.2.1"
    assert spki["parameters"].chosen.dotted == "1.2.156.10197.1.301"
    assert tbs["subject"].native == {"common_name": "李明", "user_id": "drli"}
    point = tbs["subject_public_key_info"]["public_key"].native
    assert len(point) == 65 and point[0] == 4
    # The signature value is DER SEQUENCE { r, s } ...
    signature = cert["signature_value"].native
    rs = algos.DSASignature.load(signature, strict=True)
    r, s = int(rs["r"].native), int(rs["s"].native)
    # ... and verifies with gmssl directly against the CA key over the TBS bytes.
    ca_point = asn1_x509.Certificate.load(ca.cert_der)["tbs_certificate"][
        "subject_public_key_info"]["public_key"].native
    engine = gm_sm2.CryptSM2(private_key="", public_key="")
    engine.public_key = bytes(ca_point[1:]).hex()
    assert engine.verify_with_sm3(f"{r:064x}{s:064x}", tbs.dump())
    assert not engine.verify_with_sm3(f"{r:064x}{s:064x}", tbs.dump() + b"\x00")
    # Another X.509 implementation reads it (it cannot check SM2 signatures).
    loaded = cx509.load_der_x509_certificate(der)
    assert loaded.signature_algorithm_oid.dotted_string == "1.2.156.10197.1.501"
    assert loaded.serial_number == int(issued.serial, 16)


def test_ca_save_and_load(reader: Reader, tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    cert_path, key_path = pki.save_ca(reader.ca, directory)
    assert (cert_path.name, key_path.name) == ("ca-cert.pem", "ca-key.pem")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = pki.load_ca(directory)
    assert loaded == reader.ca
    with pytest.raises(Conflict, match="refusing to replace"):
        pki.save_ca(reader.ca, directory)
    key_path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        pki.load_ca(directory)
    other = tmp_path / "other"
    pki.save_ca(pki.create_ca("Other", reader.alg), other)
    key_path.write_bytes((other / "ca-key.pem").read_bytes())
    key_path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="does not belong"):
        pki.load_ca(directory)


# --- envelopes ------------------------------------------------------------------------

def test_seal_and_verify(reader: Reader, sealed: bytes) -> None:
    assert sealed.isascii()
    obj = json.loads(sealed)
    assert json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() == sealed
    assert obj["version"] == "rdc-sig-1"
    hash_alg = crypto.hash_algorithm(reader.alg)
    assert obj["attributes"] == {
        "alg": reader.alg, "hash_alg": hash_alg,
        "content_hash": crypto.digest(hash_alg, PAYLOAD).hex(),
        "signed_at": "2026-06-02T08:00:00Z",
        "signer_fingerprint": reader.issued.fingerprint}
    assert obj["certificate"].encode() == reader.issued.cert_pem
    result = _verify(reader, PAYLOAD, sealed)
    assert result == envelope.Verified(
        signer_name="王医生", reader_id="drwang", fingerprint=reader.issued.fingerprint,
        algorithm=reader.alg, hash_algorithm=hash_alg,
        content_hash=crypto.digest(hash_alg, PAYLOAD).hex(), signed_at=SIGNED_AT,
        revoked_at=None)
    assert result.status == "valid"
    assert result.signer_info().fingerprint == reader.issued.fingerprint
    parsed = envelope.open_envelope(sealed)
    assert parsed.attributes.signed_at == SIGNED_AT and parsed.version == "rdc-sig-1"


def test_make_sealer(reader: Reader) -> None:
    seal = envelope.make_sealer(reader.key, reader.issued.cert_pem, reader.alg, SIGNED_AT)
    for data in (b"", b"one", PAYLOAD):
        assert _verify(reader, data, seal(data)).signed_at == SIGNED_AT


def test_seal_refuses_a_key_that_does_not_fit_the_certificate(reader: Reader) -> None:
    stranger = crypto.generate_private_key(reader.alg)
    with pytest.raises(InvalidInput, match="does not belong to certificate"):
        envelope.make_sealer(stranger, reader.issued.cert_pem, reader.alg, SIGNED_AT)
    other = next(a for a in ALGS if a != reader.alg)
    with pytest.raises(InvalidInput, match=f"not {other}"):
        envelope.seal(b"x", private_key=reader.key, cert_pem=reader.issued.cert_pem,
                      alg=other, signed_at=SIGNED_AT)


def test_every_changed_byte_of_the_content_is_detected(reader: Reader, sealed: bytes) -> None:
    for i in range(len(PAYLOAD)):
        for mask in (0x01, 0x80):
            changed = PAYLOAD[:i] + bytes([PAYLOAD[i] ^ mask]) + PAYLOAD[i + 1:]
            _fails(reader, changed, sealed, "^content hash does not match: the signed "
                                            "content was changed")
    _fails(reader, PAYLOAD + b"\x00", sealed, "content hash does not match")
    _fails(reader, PAYLOAD[:-1], sealed, "content hash does not match")


def _region(env: bytes, field: str) -> range:
    """Byte positions of a top-level or attribute string value in the envelope."""
    start = env.index(f'"{field}":"'.encode()) + len(field) + 4
    return range(start, env.index(b'"', start))


def test_every_changed_byte_of_the_envelope_is_detected(reader: Reader,
                                                        sealed: bytes) -> None:
    signature = _region(sealed, "signature")
    # Keys sort as attributes, certificate, signature, version.
    attributes = range(0, _region(sealed, "certificate").start)
    # Every byte of the attributes and signature; every 3rd of the certificate PEM
    # (each changed certificate costs a CA signature check, slow for SM2 in Python).
    positions = [*attributes, *signature, *range(attributes.stop, signature.start, 3),
                 *range(signature.stop, len(sealed))]
    messages = set()
    for i in positions:
        changed = sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1:]
        with pytest.raises(SignatureInvalid) as info:
            _verify(reader, PAYLOAD, changed)
        message = str(info.value)
        if i in signature:
            assert message.startswith(("signature does not verify: the signature or signed "
                                       "attributes were changed",
                                       "signature envelope is malformed: the signature")), \
                (i, message)
        messages.add(message.split(":")[0])
    assert "signature does not verify" in messages
    assert "signature envelope is malformed" in messages


def test_changed_attributes_are_detected(reader: Reader, sealed: bytes) -> None:
    attrs = json.loads(sealed)["attributes"]
    hash_alg = attrs["hash_alg"]
    tampered = PAYLOAD.replace(b"no acute", b"an acute")
    # The forger recomputes the content hash of the changed content.
    forged = _rebuild(sealed, content_hash=crypto.digest(hash_alg, tampered).hex())
    _fails(reader, tampered, forged, "^signature does not verify: the signature or signed "
                                     "attributes were changed")
    # ... or back-dates the signature.
    _fails(reader, PAYLOAD, _rebuild(sealed, signed_at="2026-06-02T07:59:59Z"),
           "^signature does not verify")
    # ... or names another algorithm.
    other = next(a for a in ALGS if a != reader.alg)
    _fails(reader, PAYLOAD, _rebuild(sealed, alg=other, hash_alg=crypto.hash_algorithm(other)),
           "^signature algorithm .* does not match")
    _fails(reader, PAYLOAD, _rebuild(sealed, signer_fingerprint="0" * 64),
           "^certificate fingerprint does not match")


def test_substituted_certificate_is_detected(reader: Reader, sealed: bytes) -> None:
    colleague = pki.issue_reader_certificate(reader.ca, "drzhao", "赵医生", reader.alg, "pw",
                                             now=T0, scrypt_n=FAST_SCRYPT)
    swapped = _rebuild(sealed, certificate=colleague.cert_pem.decode())
    _fails(reader, PAYLOAD, swapped, "^certificate fingerprint does not match")
    both = _rebuild(swapped, signer_fingerprint=colleague.fingerprint)
    _fails(reader, PAYLOAD, both, "^signature does not verify")


def test_verify_against_another_ca_fails(reader: Reader, sealed: bytes) -> None:
    other = pki.create_ca("RDC Test Center CA", reader.alg, now=T0)
    with pytest.raises(SignatureInvalid, match="not issued by this center's CA"):
        envelope.verify(PAYLOAD, sealed, other.cert_pem)


def test_malformed_envelopes(reader: Reader, sealed: bytes) -> None:
    obj = json.loads(sealed)
    cases = {
        b"not json": "not ASCII JSON",
        sealed + b" ": "not in canonical JSON form",
        json.dumps(obj, sort_keys=True).encode(): "not in canonical JSON form",
        sealed.replace(b'"version":"rdc-sig-1"', b'"version":"rdc-sig-2"'): "unsupported version",
        sealed[:-1] + b',"extra":"x"}': "exactly the keys",
        sealed[:-1] + b',"version":"rdc-sig-1"}': "a key appears twice",
        _rebuild(sealed, signature=""): "canonical base64",
        _rebuild(sealed, signature=obj["signature"] + "="): "base64",
        _rebuild(sealed, signed_at="2026-06-02 08:00:00"): "signed_at",
        _rebuild(sealed, signed_at="2026-06-02T08:00:00.000000Z"): "canonical form",
        _rebuild(sealed, content_hash=obj["attributes"]["content_hash"].upper()): "lowercase",
        _rebuild(sealed, hash_alg="md5"): "does not go with",
        _rebuild(sealed, certificate=obj["certificate"].replace("\n", "\r\n")): "canonical PEM",
        "é".encode() + sealed: "not ASCII JSON",
        b"[]": "not an object",
    }
    for env, reason in cases.items():
        with pytest.raises(SignatureInvalid,
                           match=rf"^signature envelope is malformed: .*{reason}"):
            envelope.open_envelope(env)
        with pytest.raises(SignatureInvalid, match=r"^signature envelope is malformed"):
            _verify(reader, PAYLOAD, env)


def test_signature_invalid_is_an_rdc_error() -> None:
    err = SignatureInvalid("x")
    assert isinstance(err, RDCError) and err.http_status == 422 and err.exit_code == 5


# --- time: validity and revocation ------------------------------------------------------

def test_revocation_after_signing_keeps_the_signature(reader: Reader, sealed: bytes) -> None:
    fp = reader.issued.fingerprint
    later = SIGNED_AT + timedelta(seconds=1)
    result = _verify(reader, PAYLOAD, sealed, revoked={fp: later})
    assert result.revoked_at == later
    assert result.status == f"valid; certificate revoked later at {later.isoformat()}"
    # Naive revocation times are UTC, as SQLite returns them.
    naive = _verify(reader, PAYLOAD, sealed, revoked={fp: later.replace(tzinfo=None)})
    assert naive.revoked_at == later
    # Other certificates' revocations do not matter.
    assert _verify(reader, PAYLOAD, sealed, revoked={"0" * 64: T0}).revoked_at is None


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=-1), timedelta(days=-1)])
def test_signature_at_or_after_revocation_fails(reader: Reader, sealed: bytes,
                                                offset: timedelta) -> None:
    with pytest.raises(SignatureInvalid, match="was revoked at"):
        _verify(reader, PAYLOAD, sealed,
                revoked={reader.issued.fingerprint: SIGNED_AT + offset})


def test_signature_outside_the_certificate_validity_fails(reader: Reader) -> None:
    late = reader.issued.not_after + timedelta(seconds=1)
    env = envelope.seal(PAYLOAD, private_key=reader.key, cert_pem=reader.issued.cert_pem,
                        alg=reader.alg, signed_at=late)
    _fails(reader, PAYLOAD, env, "^certificate .* expired at")
    early = reader.issued.not_before - timedelta(seconds=1)
    env = envelope.seal(PAYLOAD, private_key=reader.key, cert_pem=reader.issued.cert_pem,
                        alg=reader.alg, signed_at=early)
    _fails(reader, PAYLOAD, env, "^certificate .* is not valid before")


def test_signed_at_with_microseconds_and_other_zones_round_trip(reader: Reader) -> None:
    beijing = timezone(timedelta(hours=8))
    moment = datetime(2026, 6, 2, 16, 0, 0, 123456, tzinfo=beijing)
    env = envelope.seal(b"x", private_key=reader.key, cert_pem=reader.issued.cert_pem,
                        alg=reader.alg, signed_at=moment)
    assert json.loads(env)["attributes"]["signed_at"] == "2026-06-02T08:00:00.123456Z"
    assert _verify(reader, b"x", env).signed_at == moment


# --- a signed, DICOM-wrapped PDF cannot be relabelled -------------------------------
#
# A receiving PACS files an Encapsulated PDF by its wrapper's attributes, not by what
# the PDF shows: the PDF's seal records them, and `rdc reports verify` checks them.

REPO = Path(__file__).resolve().parent.parent


def _signed_report(reader: Reader) -> tuple[ReportDocument, bytes, Dataset]:
    """A report signed with the reader's real key: (document, sealed PDF, evidence)."""
    evidence = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    evidence.PatientBirthDate, evidence.AccessionNumber = "19700101", "ACC0001"
    doc = ReportDocument(
        report_id=7, version=1, kind="report", title="CT 胸部平扫诊断报告",
        center_name="江北区域影像诊断中心", site_id="county-a", site_name="甲县人民医院",
        patient_id=str(evidence.PatientID), patient_name=str(evidence.PatientName),
        study_uid=str(evidence.StudyInstanceUID), accession_number="ACC0001", modality="CT",
        sections=(Section("impression", "印象", "右肺上叶结节，建议复查。"),),
        signer=SignerInfo(name="王医生", reader_id="drwang",
                          fingerprint=reader.issued.fingerprint, algorithm=reader.alg,
                          signed_at=SIGNED_AT),
        content_hash=crypto.digest(crypto.hash_algorithm(reader.alg), PAYLOAD).hex(),
        hash_algorithm=crypto.hash_algorithm(reader.alg),
        pdf_sop_uid=generate_uid(), pdf_series_uid=generate_uid())
    seal = envelope.make_sealer(reader.key, reader.issued.cert_pem, reader.alg, SIGNED_AT)
    return doc, pdf.render_pdf(doc, seal, evidence), evidence


def _dicom_bytes(ds: Dataset, *, implicit: bool = False) -> bytes:
    if implicit:  # as a store may keep it: another transfer syntax, same attributes
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _relabelled(data: bytes, keyword: str, value: str | None) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    if value is None:
        del ds[keyword]
    else:
        setattr(ds, keyword, value)
    return _dicom_bytes(ds)


#: Each edit moves the signed report to another patient, study or document.
RELABELS = {
    "PatientID": "OTHER-PATIENT-9",
    "PatientName": "Other^Patient",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1234567890",
    "DocumentTitle": "Chest X-ray report",
}


def test_relabelled_dicom_pdf_fails_and_names_the_attribute(reader: Reader) -> None:
    from reports.verify import verify_bytes

    doc, sealed_pdf, evidence = _signed_report(reader)
    wrapped = _dicom_bytes(pdf.encapsulated_pdf_dataset(sealed_pdf, doc, evidence))
    ca = reader.ca.cert_pem
    ok = verify_bytes(wrapped, ca)
    assert ok.kind == "dicom-pdf" and ok.result.signer_name == "王医生"
    assert ok.subject is not None and ok.subject["PatientID"] == doc.patient_id
    assert ok.subject["PatientBirthDate"] == "19700101"
    # Another transfer syntax changes no attribute: it still verifies.
    assert verify_bytes(_dicom_bytes(pydicom.dcmread(BytesIO(wrapped)), implicit=True),
                        ca).kind == "dicom-pdf"
    # The bare PDF verifies as before, and says what it was sealed for.
    bare = verify_bytes(sealed_pdf, ca)
    assert bare.kind == "pdf" and bare.subject == ok.subject

    edits: list[tuple[str, str | None]] = [
        *RELABELS.items(), ("PatientBirthDate", "19991231"), ("PatientSex", "F"),
        ("AccessionNumber", "ACC9999"), ("SeriesInstanceUID", "1.2.3.4"),
        ("SOPInstanceUID", "1.2.3.5"), ("ContentDate", "20260101"), ("ContentTime", "120000"),
        ("InstanceNumber", "2"), ("SpecificCharacterSet", "GB18030"),
        ("PatientID", None),  # removed altogether
    ]
    for keyword, value in edits:
        changed = _relabelled(wrapped, keyword, value)
        with pytest.raises(SignatureInvalid, match=rf"\b{keyword} (differs from|is missing)"
                                                   r".* the seal"):
            verify_bytes(changed, ca)
    # Several at once: every one is named.
    both = _relabelled(_relabelled(wrapped, "PatientID", "X1"), "PatientName", "Doe^Jane")
    with pytest.raises(SignatureInvalid, match=r"PatientID differs.*PatientName differs"):
        verify_bytes(both, ca)


def test_a_wrapper_without_sealed_attributes_is_refused(reader: Reader) -> None:
    """A PDF sealed as before (its seal records no wrapper attributes) still verifies
    bare, but not inside a DICOM wrapper: nothing there ties the patient to the seal."""
    from reports.verify import verify_bytes

    doc, sealed_pdf, evidence = _signed_report(reader)
    signed, _ = pdf.sealed_content_of_pdf(sealed_pdf)
    plain = signed[: signed.rindex(b"\n" + pdf.SUBJECT_MARKER)]
    seal = envelope.make_sealer(reader.key, reader.issued.cert_pem, reader.alg, SIGNED_AT)
    old = (plain + b"\n" + pdf.SIGNATURE_MARKER + b" " + base64.b64encode(seal(plain))
           + b"\n%%EOF\n")
    assert verify_bytes(old, reader.ca.cert_pem).subject is None
    wrapped = _dicom_bytes(pdf.encapsulated_pdf_dataset(old, doc, evidence))
    with pytest.raises(SignatureInvalid, match=r"identifying attributes .* are not sealed"):
        verify_bytes(wrapped, reader.ca.cert_pem)


def test_a_pdf_sealed_for_another_document_is_not_wrapped(reader: Reader) -> None:
    doc, sealed_pdf, evidence = _signed_report(reader)
    other = dataclasses.replace(doc, pdf_sop_uid=generate_uid())
    with pytest.raises(InvalidInput, match="sealed for another document: its SOPInstanceUID"):
        pdf.encapsulated_pdf_dataset(sealed_pdf, other, evidence)


def test_rdc_reports_verify_refuses_a_relabelled_dicom_pdf(tmp_path: Path) -> None:
    """The real command, as a county site runs it: exit 0 for the delivered file, exit
    5 naming the attribute for each relabelled copy."""
    reader = _reader("sm2")
    doc, sealed_pdf, evidence = _signed_report(reader)
    delivered = tmp_path / "report.dcm"
    delivered.write_bytes(_dicom_bytes(pdf.encapsulated_pdf_dataset(sealed_pdf, doc,
                                                                    evidence)))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(reader.ca.cert_pem)
    env = {**os.environ, "RDC_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    env.pop("RDC_DATABASE_URL", None)

    def verify(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rdc", "reports", "verify", "--ca",
                               str(ca), *map(str, files)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)

    ok = verify(delivered)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = " ".join(ok.stdout.split())
    assert "OK " in out and "signed by 王医生" in out and "(dicom-pdf)" in out, out

    for keyword, value in RELABELS.items():
        moved = tmp_path / f"relabelled-{keyword}.dcm"
        moved.write_bytes(_relabelled(delivered.read_bytes(), keyword, value))
        result = verify(moved)
        text = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 5, text
        assert "FAILED" in text and "OK " not in text, text
        assert f"{keyword} differs from the sealed value" in text, text
