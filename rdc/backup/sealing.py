"""The backup passphrase, the keys derived from it, and what they seal.

One scrypt derivation gives two keys: an AES-256-GCM key that encrypts the secrets
bundle (the center's CA key, the Orthanc password, the TOTP key, ``rdc.toml``), and
an HMAC-SHA-256 key that seals the manifest.  The seal matters because the manifest
alone only detects accidents: someone who edits a file of the backup could rewrite
its checksum too, but not without the passphrase.  A key-check value in the manifest
tells a wrong passphrase apart from an altered manifest, so each gets its own error.

The passphrase never appears on a command line (``ps`` shows those to every local
user): it comes from a file, from ``RDC_BACKUP_PASSPHRASE``, or from a prompt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from core.errors import InvalidInput
from rdc.backup import BackupCorrupt, WrongPassphrase

#: Offline guessing against a stolen backup is bounded by scrypt's cost and this length.
MIN_PASSPHRASE = 12
PASSPHRASE_ENV = "RDC_BACKUP_PASSPHRASE"  # noqa: S105 (a variable name)
#: 2**17 * 8 * 128 B = 128 MiB and about half a second per try: a backup is opened
#: rarely, so it can afford four times the cost of a reader's key.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_CHECK_LABEL = b"rdc-backup key check"


def read_passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    """From ``--passphrase-file``, else ``RDC_BACKUP_PASSPHRASE``, else a prompt without echo."""
    if passphrase_file is not None:
        try:
            value = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise InvalidInput(f"cannot read the passphrase file {passphrase_file}: "
                               f"{e.strerror}") from e
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV]
    elif sys.stdin.isatty():
        value = str(typer.prompt("backup passphrase", hide_input=True,
                                 confirmation_prompt=confirm))
    else:
        raise InvalidInput(f"no backup passphrase: give --passphrase-file or set "
                           f"{PASSPHRASE_ENV}")
    if not value:
        raise InvalidInput("the backup passphrase is empty")
    return value


def check_strength(passphrase: str) -> None:
    """Refuse a passphrase too short to protect the center's CA key in a stolen backup."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(f"the backup passphrase must have at least {MIN_PASSPHRASE} "
                           f"characters (it has {len(passphrase)}); it protects the center's "
                           "CA key in every copy of the backup")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class KdfParams:
    """scrypt's salt and cost, kept in the manifest."""

    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def new(cls) -> KdfParams:
        return cls(salt=secrets.token_bytes(16))

    def to_json(self) -> dict[str, Any]:
        return {"kdf": "scrypt", "salt": _b64(self.salt), "n": self.n, "r": self.r,
                "p": self.p}

    @classmethod
    def from_json(cls, data: object) -> KdfParams:
        """Parse, bounding the cost so that a forged manifest cannot exhaust memory."""
        if not isinstance(data, dict) or data.get("kdf") != "scrypt":
            raise BackupCorrupt("manifest: the key derivation is missing or not scrypt")

        def bounded(name: str, low: int, high: int) -> int:
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise BackupCorrupt(f"manifest: scrypt {name} must be an integer in "
                                    f"[{low}, {high}]")
            return value

        n = bounded("n", 2**14, 2**20)
        if n & (n - 1):
            raise BackupCorrupt("manifest: scrypt n must be a power of two")
        try:
            salt = base64.b64decode(str(data.get("salt", "")).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            raise BackupCorrupt("manifest: the scrypt salt is not base64") from e
        if len(salt) < 16:
            raise BackupCorrupt("manifest: the scrypt salt is shorter than 16 bytes")
        return cls(salt=salt, n=n, r=bounded("r", 1, 16), p=bounded("p", 1, 4))


@dataclass(frozen=True)
class BackupKeys:
    """The two keys one passphrase gives for one backup."""

    encryption: bytes
    mac: bytes

    @classmethod
    def derive(cls, passphrase: str, params: KdfParams) -> BackupKeys:
        # NFC so that the same passphrase typed on another system gives the same bytes.
        raw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        material = Scrypt(salt=params.salt, length=64, n=params.n, r=params.r,
                          p=params.p).derive(raw)
        return cls(encryption=material[:32], mac=material[32:])

    def key_check(self) -> str:
        return hmac.new(self.mac, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()

    def check(self, expected: str) -> None:
        """Raise :class:`WrongPassphrase` unless these keys are the backup's."""
        if not hmac.compare_digest(self.key_check(), expected):
            raise WrongPassphrase("wrong passphrase: it does not open this backup "
                                  "(nothing was restored)")

    def seal_manifest(self, manifest_bytes: bytes) -> str:
        return hmac.new(self.mac, manifest_bytes, hashlib.sha256).hexdigest()

    def check_manifest(self, manifest_bytes: bytes, seal: str) -> None:
        if not hmac.compare_digest(self.seal_manifest(manifest_bytes), seal.strip()):
            raise BackupCorrupt("the manifest was altered after the backup was taken (its "
                                "seal does not match); this backup cannot be trusted")

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(self.encryption).encrypt(nonce, plaintext, associated)

    def decrypt(self, sealed: bytes, associated: bytes, what: str) -> bytes:
        if len(sealed) < 12 + 16:
            raise BackupCorrupt(f"{what} is truncated")
        try:
            return AESGCM(self.encryption).decrypt(sealed[:12], sealed[12:], associated)
        except InvalidTag as e:
            raise BackupCorrupt(f"{what} does not decrypt: it was altered") from e
