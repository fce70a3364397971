"""CORS_ALLOW_ORIGINS: the documented syntax, and what each kind of entry admits."""

import secrets

import pytest

from app.core.cors import DEVELOPMENT_ORIGINS, CorsPolicy
from app.core.settings import ConfigError, Settings

FIELD = ["https://lady.example.org", "https://*.vercel.app", r"^https?://localhost(:\d+)?$", "capacitor://localhost"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://lady.example.org",
        "https://ladys-essence-git-main-team.vercel.app",
        "https://localhost",
        "https://localhost:41237",
        "http://localhost:3000",
        "capacitor://localhost",
    ],
)
def test_the_field_clients_origins_are_admitted_with_credentials(origin):
    policy = CorsPolicy.parse(FIELD)
    headers = policy.headers_for(origin)
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.org",
        "http://lady.example.org",  # another scheme is another origin
        "https://lady.example.org:8443",
        "https://a.b.vercel.app",  # '*' is one label
        "https://vercel.app",
        "https://evil.com/.vercel.app",
        "https://localhost.evil.com",
        "http://localhost:3000.evil.com",
        "null",
    ],
)
def test_other_origins_get_no_cors_headers(origin):
    policy = CorsPolicy.parse(FIELD)
    assert not policy.allows(origin)
    assert policy.headers_for(origin) == {}
    assert policy.preflight_headers(origin) == {}


def test_any_port_pattern():
    policy = CorsPolicy.parse(["https://localhost:*"])
    assert policy.allows("https://localhost") and policy.allows("https://localhost:5000")
    assert not policy.allows("http://localhost:5000")


def test_star_admits_any_origin_without_credentials():
    policy = CorsPolicy.parse(["*"])
    headers = policy.preflight_headers("https://anything.example")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers


@pytest.mark.parametrize("entry", ["lady.example.org", "https://lady*.example.org", "^https://(unclosed", "https://"])
def test_entries_that_mean_nothing_are_a_startup_error(entry):
    with pytest.raises(ConfigError, match="CORS_ALLOW_ORIGINS"):
        Settings.from_env({"CORS_ALLOW_ORIGINS": entry}, app_env="test", jwt_secret="j" * 40, pin_pepper="p" * 40)


PRODUCTION_SECRETS = {
    "APP_ENV": "production",
    # Generated per run, as `openssl rand -hex 32` would: a literal here would be a published secret.
    "JWT_SECRET": secrets.token_hex(32),
    "PIN_PEPPER": secrets.token_hex(32),
    "SIGNING_KEYS_SECRET": secrets.token_hex(32),
    "DATABASE_URL": "postgresql://db.invalid/app",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "PUBLIC_URL": "https://auth.example.org",
}


def test_development_default_and_production_requirement(tmp_path):
    dev = Settings.from_env({}, data_dir=str(tmp_path))
    assert dev.cors_allow_origins == list(DEVELOPMENT_ORIGINS)
    assert "http://localhost:5173" in dev.cors_allow_origins
    with pytest.raises(ConfigError, match="CORS_ALLOW_ORIGINS is required"):
        Settings.from_env(PRODUCTION_SECRETS)
    prod = Settings.from_env({**PRODUCTION_SECRETS, "CORS_ALLOW_ORIGINS": FIELD[0]})
    assert prod.cors_allow_origins == [FIELD[0]]
