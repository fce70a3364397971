import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import uuid

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization

from app.core.errors import InvalidToken
from app.core.settings import Settings
from app.keys.keyring import KeyRing, LoadedKey
from app.keys.material import generate
from app.sessions.tokens import TokenIssuer

SECRET = "s" * 40
SETTINGS = Settings.from_env({}, jwt_secret=SECRET, pin_pepper="p" * 40, signing_keys_secret="k" * 40, app_env="test")


def loaded_key(alg="ES256", activates_in=datetime.timedelta(0)):
    """A key as the key ring holds it after reading its row."""
    key = generate(alg)
    now = datetime.datetime.now(datetime.UTC)
    return LoadedKey(
        kid=key.kid,
        alg=alg,
        public_jwk=key.public_jwk,
        verify_key=key.private_key.public_key(),
        private_key=key.private_key,
        created_at=now - datetime.timedelta(hours=1),
        activates_at=now + activates_in - datetime.timedelta(minutes=30),
        retired_at=None,
    )


@pytest.fixture
def key():
    return loaded_key()


@pytest.fixture
def issuer(key):
    return TokenIssuer(SETTINGS, KeyRing([key], SETTINGS))


def claims(**overrides):
    now = datetime.datetime.now(datetime.UTC)
    payload = {
        "sub": "1",
        "type": "access",
        "jti": str(uuid.uuid4()),
        "sid": str(uuid.uuid4()),
        "role": "user",
        "iat": now,
        "nbf": now,
        "exp": now + datetime.timedelta(minutes=5),
        "iss": "ladys-essence-auth",
        "aud": "ladys-essence",
    }
    payload.update(overrides)
    return payload


def test_round_trip_carries_every_claim(issuer, key):
    issued = issuer.issue_access(auth_time=None, user_id=7, role="security", session_id=uuid.uuid4())
    assert jwt.get_unverified_header(issued.token) == {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}  # RFC 9068
    payload = jwt.decode(issued.token, key.verify_key, algorithms=["ES256"], audience="ladys-essence")
    assert {"sub", "type", "jti", "iat", "exp", "iss", "aud", "role"} <= payload.keys()
    decoded = issuer.decode(issued.token, "access")
    assert decoded.user_id == 7 and decoded.role == "security"
    assert (decoded.expires_at - decoded.issued_at) == datetime.timedelta(minutes=15)


def _unsigned(payload):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj, default=str).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: _unsigned({**claims(), "iat": 1, "exp": 4_000_000_000, "nbf": 1}),
        lambda: jwt.encode(claims(), "another-secret-of-enough-length-000000", algorithm="HS256"),
        lambda: jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"),
        lambda: jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256"),
        lambda: jwt.encode(
            claims(exp=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)), SECRET, algorithm="HS256"
        ),
        lambda: jwt.encode(
            claims(nbf=datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)), SECRET, algorithm="HS256"
        ),
        lambda: jwt.encode(claims(type="refresh"), SECRET, algorithm="HS256"),
        lambda: jwt.encode({k: v for k, v in claims().items() if k != "jti"}, SECRET, algorithm="HS256"),
        lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
        lambda: "not.a.token",
    ],
    ids=[
        "alg-none", "wrong-key", "wrong-aud", "wrong-iss", "expired", "not-yet-valid", "wrong-type",
        "missing-jti", "other-alg", "garbage",
    ],
)  # fmt: skip
# The forged HS512 token is signed with our (HS256-sized) key on purpose; PyJWT warns about its length.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_forged_or_unfit_tokens_are_refused(issuer, make_token):
    with pytest.raises(InvalidToken):
        issuer.decode(make_token(), "access")


def test_tampered_signature_is_refused(issuer):
    token = issuer.issue_access(auth_time=None, user_id=1, role="user", session_id=uuid.uuid4()).token
    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["role"] = "admin"
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        issuer.decode(f"{head}.{forged_body}.{signature}", "access")


def test_eddsa_keys_sign_and_verify():
    key = loaded_key("EdDSA")
    issuer = TokenIssuer(SETTINGS, KeyRing([key], SETTINGS))
    token = issuer.issue_access(auth_time=None, user_id=3, role="user", session_id=uuid.uuid4()).token
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert issuer.decode(token, "access").user_id == 3


def test_legacy_hs256_tokens_verify_until_the_setting_ends_them(issuer, key):
    legacy = jwt.encode(claims(), SECRET, algorithm="HS256")  # what the service issued before the switch
    assert issuer.decode(legacy, "access").user_id == 1
    switched_off = msgspec.structs.replace(SETTINGS, jwt_accept_legacy_hs256=False)
    with pytest.raises(InvalidToken):
        TokenIssuer(switched_off, KeyRing([key], switched_off)).decode(legacy, "access")


def _public_pem(key):
    return key.verify_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _hmac_signed(header, payload, secret):
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj, default=str).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "make_header",
    [
        lambda key: {"alg": "HS256", "typ": "JWT", "kid": key.kid},  # our kid, HMAC with the public key
        lambda key: {"alg": "HS256", "typ": "JWT"},  # the legacy path, HMAC with the public key
        lambda key: {"alg": "ES256", "typ": "JWT", "kid": "no-such-key"},
        lambda key: {"alg": "ES256", "typ": "JWT", "kid": 7},
        lambda key: {"alg": "ES256", "typ": "JWT", "kid": [key.kid]},
    ],
    ids=["hs256-public-key-our-kid", "hs256-public-key-no-kid", "unknown-kid", "numeric-kid", "list-kid"],
)
def test_the_token_cannot_choose_key_or_algorithm(issuer, key, make_header):
    payload = {**claims(), "iat": 1, "nbf": 1, "exp": 4_000_000_000}
    with pytest.raises(InvalidToken):
        issuer.decode(_hmac_signed(make_header(key), payload, _public_pem(key)), "access")


def test_a_key_signs_only_once_active_and_verifies_while_published():
    current, upcoming = loaded_key(), loaded_key(activates_in=datetime.timedelta(hours=1))
    issuer = TokenIssuer(SETTINGS, KeyRing([current, upcoming], SETTINGS))
    token = issuer.issue_access(auth_time=None, user_id=5, role="user", session_id=uuid.uuid4()).token
    assert jwt.get_unverified_header(token)["kid"] == current.kid
    # A token of the published next key (a host whose clock runs ahead) verifies too.
    ring_with_upcoming_active = KeyRing([dataclasses.replace(upcoming, activates_at=current.activates_at)], SETTINGS)
    early = TokenIssuer(SETTINGS, ring_with_upcoming_active)
    assert issuer.decode(
        early.issue_access(auth_time=None, user_id=5, role="user", session_id=uuid.uuid4()).token, "access"
    )


# ---- the verified-token cache (decode_access) ------------------------------------------------------


def test_a_cached_token_is_refused_once_its_key_is_retired_or_gone(key):
    ring = KeyRing([key], SETTINGS)
    issuer = TokenIssuer(SETTINGS, ring)
    token = issuer.issue_access(auth_time=None, user_id=7, role="user", session_id=uuid.uuid4()).token
    assert issuer.decode_access(token).user_id == 7
    assert issuer.decode_access(token).user_id == 7  # from the cache now
    retired = dataclasses.replace(key, retired_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    for keys in ([retired], []):
        ring.replace(keys)
        with pytest.raises(InvalidToken):
            issuer.decode_access(token)
        ring.replace([key])
        assert issuer.decode_access(token).user_id == 7


def _std_alphabet(token):
    """The signature in standard base64 with its padding: the same bytes, spelt otherwise."""
    head, body, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return f"{head}.{body}.{base64.b64encode(raw).decode()}"


def _flip_last(token):
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize(
    "variant",
    [
        lambda t: t + "=", lambda t: t + "==", lambda t: t + " ", lambda t: t + "\n", lambda t: t + ".",
        lambda t: t + "A", lambda t: " " + t, _std_alphabet, _flip_last, lambda t: t.replace(".", "=.", 1),
        lambda t: t[:-1], str.swapcase,
    ],
    ids=["pad1", "pad2", "space", "newline", "dot", "char", "leading-space", "std-alphabet", "flipped", "inner-pad",
         "cut", "swapcase"],
)  # fmt: skip
def test_no_variant_of_a_cached_token_rides_on_its_entry(key, variant):
    """A token that differs from a cached one in any way is judged by a full verification, never the cache."""
    cached = TokenIssuer(SETTINGS, KeyRing([key], SETTINGS))
    token = cached.issue_access(auth_time=None, user_id=7, role="user", session_id=uuid.uuid4()).token
    cached.decode_access(token)
    changed = variant(token)
    assert changed != token
    fresh = TokenIssuer(SETTINGS, KeyRing([key], SETTINGS))  # nothing cached
    outcomes = []
    for issuer in (fresh, cached):
        try:
            outcomes.append(issuer.decode_access(changed).jti)
        except InvalidToken:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("role", ['a"b', "a\\b", "a\u2028b", "a\x00b", "a\U0001f600b", '","role":"admin', "\u00e9"])
def test_a_hand_assembled_token_carries_any_string_exactly(issuer, key, role):
    """The payload JSON is built by the service (msgspec); no value can break out of its string."""
    token = issuer.issue_access(auth_time=None, user_id=7, role=role, session_id=uuid.uuid4()).token
    payload = jwt.decode(token, key.verify_key, algorithms=["ES256"], audience="ladys-essence")
    assert payload["role"] == role
    assert issuer.decode_access(token).role == role
