"""Readers' signing keys over the database (the center's CA itself is core.pki).

The CA lives under ``$RDC_HOME/secrets/ca`` and is made on first use with the
configured algorithm.  Each reader key row keeps the certificate and the
private key encrypted under the reader's passphrase; the passphrase itself is
never stored, so only the reader can sign with their key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit, pki
from core.crypto import PrivateKey
from core.db import get_database
from core.errors import Conflict, Forbidden, NotFound
from core.models import ReaderKey
from core.settings import Settings

log = logging.getLogger(__name__)
MIN_PASSPHRASE = 8


center_ca = pki.center_ca  # the CA lives in the kernel (audit anchoring signs with it)


def ca_certificate_pem(settings: Settings) -> bytes:
    return center_ca(settings).cert_pem


def issue_key(session: Session, settings: Settings, *, reader_id: str, display_name: str,
              passphrase: str, algorithm: str | None = None, actor: str) -> ReaderKey:
    """Issue a reader a key pair and certificate; refuses a weak passphrase."""
    from core.errors import InvalidInput

    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    issued = pki.issue_reader_certificate(center_ca(settings), reader_id, display_name,
                                          algorithm or settings.signing_algorithm, passphrase,
                                          valid_days=settings.reader_cert_days)
    key = ReaderKey(reader_id=issued.reader_id, display_name=issued.display_name,
                    algorithm=issued.alg, serial=issued.serial, fingerprint=issued.fingerprint,
                    cert_pem=issued.cert_pem.decode("ascii"),
                    encrypted_private_key=issued.encrypted_private_key,
                    issued_at=issued.not_before, not_after=issued.not_after)
    session.add(key)
    session.flush()
    audit.append(session, actor=actor, action="key.issue", object_type="reader_key",
                 object_id=str(key.id), detail={"reader_id": reader_id, "algorithm": key.algorithm,
                                                "fingerprint": key.fingerprint})
    return key


def list_keys(session: Session, reader_id: str | None = None) -> list[ReaderKey]:
    q = select(ReaderKey).order_by(ReaderKey.id)
    if reader_id:
        q = q.where(ReaderKey.reader_id == reader_id)
    return list(session.scalars(q))


def key_state(key: ReaderKey, at: datetime | None = None) -> str:
    at = at or datetime.now(UTC)
    if key.revoked_at is not None:
        return "revoked"
    if key.not_after <= at:
        return "expired"
    return "active"


def get_key(session: Session, key_id: int) -> ReaderKey:
    key = session.get(ReaderKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id}")
    return key


def revoke_key(session: Session, key_id: int, *, reason: str, actor: str) -> ReaderKey:
    """Revoke a key from now on; signatures made before stay valid as of their time."""
    key = get_key(session, key_id)
    if key.revoked_at is not None:
        raise Conflict(f"key {key.id} was already revoked at {key.revoked_at}")
    key.revoked_at = datetime.now(UTC)
    key.revoke_reason = reason[:200]
    audit.append(session, actor=actor, action="key.revoke", object_type="reader_key",
                 object_id=str(key.id), detail={"reader_id": key.reader_id, "reason": reason,
                                                "fingerprint": key.fingerprint})
    return key


def certificate_pem(session: Session, settings: Settings, key_id: int | None) -> bytes:
    """A reader's certificate, or the CA's when ``key_id`` is None (never a private key)."""
    if key_id is None:
        return ca_certificate_pem(settings)
    return get_key(session, key_id).cert_pem.encode("ascii")


def revocations(session: Session) -> dict[str, datetime]:
    """Fingerprint → revocation time of every revoked reader certificate."""
    return {k.fingerprint: k.revoked_at for k in session.scalars(
        select(ReaderKey).where(ReaderKey.revoked_at.is_not(None))) if k.revoked_at}


def revocations_if_available(settings: Settings) -> Mapping[str, datetime] | None:
    """The center's revocation list when its database can be read, else ``None``
    (a file checked away from the center is verified against the CA alone)."""
    try:
        with get_database(settings.database_url).session() as s:
            return revocations(s)
    except Exception as e:
        log.info("verify.no_revocation_list reason=%s", e)
        return None


@dataclass(frozen=True)
class SigningMaterial:
    key: ReaderKey
    private_key: PrivateKey


def unlock_for_signing(session: Session, *, reader_id: str, passphrase: str,
                       key_id: int | None = None) -> SigningMaterial:
    """The reader's usable key, unlocked; refuses revoked, expired or others' keys."""
    if key_id is not None:
        key = get_key(session, key_id)
        if key.reader_id != reader_id:
            raise Forbidden(f"key {key.id} belongs to {key.reader_id!r}, not {reader_id!r}: "
                            "a reader signs only with their own key")
    else:
        candidates = [k for k in list_keys(session, reader_id) if key_state(k) == "active"]
        if not candidates:
            states = {k.id: key_state(k) for k in list_keys(session, reader_id)}
            raise Conflict(f"reader {reader_id!r} has no active signing key"
                           f"{f' (keys: {states})' if states else ''}; issue one with "
                           "`rdc keys issue`")
        key = candidates[-1]
    state = key_state(key)
    if state != "active":
        raise Conflict(f"key {key.id} of {key.reader_id!r} is {state}"
                       f"{f' since {key.revoked_at}' if key.revoked_at else ''}: it cannot sign")
    private = pki.unlock_private_key(key.encrypted_private_key, passphrase, key.algorithm)
    return SigningMaterial(key, private)
