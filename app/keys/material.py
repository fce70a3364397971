"""Key material: generate a signing key, its public JWK and ``kid``, and its private half sealed at rest.

The private half is PKCS#8 DER, sealed with AES-256-GCM (``cryptography``) under a key derived from
SIGNING_KEYS_SECRET by HKDF, with the ``kid`` as associated data: a sealed key copied onto another
row does not open. The secret lives in the environment, the sealed keys in Postgres, so every API
process on every host reads the same key set and none of them keeps key files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt import PyJWK
from jwt.exceptions import PyJWTError

Algorithm = Literal["ES256", "EdDSA"]
ALGORITHMS: tuple[Algorithm, ...] = ("ES256", "EdDSA")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
NONCE_BYTES = 12
# The members RFC 7638 hashes for each key type, in its lexicographic order.
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


class KeyMaterialError(ValueError):
    """A stored key that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class NewKey:
    kid: str
    alg: Algorithm
    public_jwk: dict[str, Any]
    private_key: PrivateKey


def generate(alg: Algorithm) -> NewKey:
    private: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    )
    jwk = public_jwk_of(private)
    kid = thumbprint(jwk)
    return NewKey(kid=kid, alg=alg, public_jwk={**jwk, "kid": kid, "alg": alg, "use": "sig"}, private_key=private)


def public_jwk_of(private: PrivateKey) -> dict[str, Any]:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm

    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256): a ``kid`` that names the key itself, the same everywhere."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _sealing_key(secret: str) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ladys-essence signing keys").derive(
        secret.encode()
    )
    return AESGCM(derived)


def seal(private: PrivateKey, kid: str, secret: str) -> bytes:
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _sealing_key(secret).encrypt(nonce, der, kid.encode())


def unseal(sealed: bytes, kid: str, alg: str, secret: str) -> PrivateKey:
    try:
        der = _sealing_key(secret).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], kid.encode())
    except InvalidTag as exc:
        raise KeyMaterialError(
            f"signing key {kid}: its private key does not open with SIGNING_KEYS_SECRET (another secret, or damaged)"
        ) from exc
    try:
        private = serialization.load_der_private_key(der, password=None)
    except ValueError as exc:
        raise KeyMaterialError(f"signing key {kid}: its private key is not a PKCS#8 key") from exc
    expected = ec.EllipticCurvePrivateKey if alg == "ES256" else ed25519.Ed25519PrivateKey
    if not isinstance(private, expected):
        raise KeyMaterialError(f"signing key {kid}: its private key is not an {alg} key")
    return private


def verifying_key(kid: str, alg: str, jwk: Any) -> Any:
    """The public key of a stored JWK, checked against the row's algorithm and ``kid``."""
    if alg not in ALGORITHMS:
        raise KeyMaterialError(
            f"signing key {kid}: unknown algorithm {alg!r} (expected one of {', '.join(ALGORITHMS)})"
        )
    if not isinstance(jwk, dict):
        raise KeyMaterialError(f"signing key {kid}: its public JWK is not a JSON object")
    try:
        parsed = PyJWK(jwk, algorithm=alg)
        if thumbprint(jwk) != kid:
            raise KeyMaterialError(f"signing key {kid}: its public JWK does not match its kid")
    except (PyJWTError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, KeyMaterialError):
            raise
        raise KeyMaterialError(f"signing key {kid}: its public JWK cannot be parsed ({exc})") from exc
    return parsed.key
