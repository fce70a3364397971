import base64
import datetime
import json
import uuid

import jwt
import pytest

from app.accounts.tokens import TokenIssuer
from app.core.errors import InvalidToken
from app.core.settings import Settings

SECRET = "s" * 40


@pytest.fixture
def issuer():
    return TokenIssuer(Settings.from_env({}, jwt_secret=SECRET, pin_pepper="p" * 40, app_env="test"))


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


def test_round_trip_carries_every_claim(issuer):
    issued = issuer.issue("access", user_id=7, role="security", session_id=uuid.uuid4())
    payload = jwt.decode(issued.token, SECRET, algorithms=["HS256"], audience="ladys-essence")
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
    token = issuer.issue("access", user_id=1, role="user", session_id=uuid.uuid4()).token
    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["role"] = "admin"
    forged_body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        issuer.decode(f"{head}.{forged_body}.{signature}", "access")
