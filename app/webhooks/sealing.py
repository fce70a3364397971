"""Signing secrets at rest: AES-GCM under a key derived from SIGNING_KEYS_SECRET (as app/keys seals keys).

A webhook secret signs every delivery, so it is kept in a form that can be read back, never a hash;
encrypted, a copy of the database alone does not let anyone forge deliveries. The endpoint's id is
the associated data: a sealed secret copied onto another endpoint's row does not open.
"""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_PREFIX = "whsec_"  # noqa: S105 - Standard Webhooks' prefix; the rest is the base64 of the HMAC key
SECRET_BYTES = 32
NONCE_BYTES = 12


class SecretUnreadable(ValueError):
    """A sealed secret that does not open with this SIGNING_KEYS_SECRET (another secret, or damaged)."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _box(key_secret: str) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ladys-essence webhook secrets").derive(
        key_secret.encode()
    )
    return AESGCM(derived)


def seal(secret: str, endpoint_id: int, key_secret: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _box(key_secret).encrypt(nonce, secret.encode(), str(endpoint_id).encode())


def unseal(sealed: bytes, endpoint_id: int, key_secret: str) -> str:
    try:
        plain = _box(key_secret).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], str(endpoint_id).encode())
    except InvalidTag as exc:
        raise SecretUnreadable(
            f"webhook endpoint {endpoint_id}: its secret does not open with SIGNING_KEYS_SECRET"
        ) from exc
    return plain.decode()
