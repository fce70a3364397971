import secrets

import pytest

from app.core.settings import ConfigError, Settings, asyncpg_url

STRONG = secrets.token_hex(32)  # what `openssl rand -hex 32` prints; a literal here would be a published secret
SERVERS = {
    "DATABASE_URL": "postgresql://db.invalid/app",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "PUBLIC_URL": "https://auth.example.org",
}


def test_production_requires_secrets(tmp_path):
    keys = {"SIGNING_KEYS_SECRET": STRONG * 2}
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Settings.from_env({"APP_ENV": "production", "PIN_PEPPER": STRONG, "DATA_DIR": str(tmp_path), **keys, **SERVERS})
    with pytest.raises(ConfigError, match="PIN_PEPPER"):
        Settings.from_env({"APP_ENV": "production", "JWT_SECRET": STRONG, "DATA_DIR": str(tmp_path), **keys, **SERVERS})
    with pytest.raises(ConfigError, match="SIGNING_KEYS_SECRET"):
        Settings.from_env({"APP_ENV": "production", "JWT_SECRET": STRONG, "PIN_PEPPER": STRONG[::-1], **SERVERS})


def test_jwt_secret_is_needed_only_while_legacy_tokens_are_accepted():
    env = {
        "APP_ENV": "production",
        "PIN_PEPPER": STRONG,
        "SIGNING_KEYS_SECRET": STRONG[::-1],
        "CORS_ALLOW_ORIGINS": "https://a.rw",
        **SERVERS,
    }
    settings = Settings.from_env({**env, "JWT_ACCEPT_LEGACY_HS256": "false"})
    assert settings.jwt_secret is None and not settings.jwt_accept_legacy_hs256


def test_development_adds_the_signing_keys_secret_to_an_older_secrets_file(tmp_path):
    (tmp_path / "secrets.json").write_text('{"jwt_secret": "' + "a" * 64 + '", "pin_pepper": "' + "b" * 64 + '"}')
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert (settings.jwt_secret, settings.pin_pepper) == ("a" * 64, "b" * 64)
    assert settings.signing_keys_secret and len(settings.signing_keys_secret) == 64
    assert Settings.from_env({"DATA_DIR": str(tmp_path)}).signing_keys_secret == settings.signing_keys_secret


@pytest.mark.parametrize("secret", ["changeme", "your-secret-key", "short-secret"])
def test_production_refuses_placeholders_and_short_secrets(secret, tmp_path):
    with pytest.raises(ConfigError):
        Settings.from_env({"APP_ENV": "production", "JWT_SECRET": secret, "PIN_PEPPER": STRONG, **SERVERS})


def test_production_with_real_secrets_starts():
    settings = Settings.from_env(
        {
            "APP_ENV": "production",
            "JWT_SECRET": STRONG,
            "PIN_PEPPER": STRONG[::-1],
            "SIGNING_KEYS_SECRET": STRONG * 2,
            "CORS_ALLOW_ORIGINS": "https://a.rw",
            **SERVERS,
        }
    )
    assert settings.jwt_secret == STRONG


def test_development_generates_secrets_once_and_keeps_them(tmp_path):
    first = Settings.from_env({"DATA_DIR": str(tmp_path)})
    second = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert first.jwt_secret and len(first.jwt_secret) >= 32
    assert (first.jwt_secret, first.pin_pepper) == (second.jwt_secret, second.pin_pepper)
    assert first.jwt_secret != first.pin_pepper
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0


def test_typed_values_from_strings(tmp_path):
    settings = Settings.from_env(
        {"PORT": "9001", "ACCESS_TOKEN_MINUTES": "5", "CORS_ALLOW_ORIGINS": "https://a.rw, https://b.rw"},
        data_dir=str(tmp_path),
    )
    assert settings.port == 9001 and settings.access_token_minutes == 5
    assert settings.cors_allow_origins == ["https://a.rw", "https://b.rw"]


def test_bad_values_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({"PORT": "eighty", "DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError):
        Settings.from_env({"REFRESH_ROTATION": "sometimes", "DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u:p@h:5/db", "postgresql+asyncpg://u:p@h:5/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_database_url_forms(given, expected):
    assert asyncpg_url(given) == expected


def test_nothing_is_read_at_import_time(monkeypatch):
    import importlib

    import app.asgi

    monkeypatch.setenv("APP_ENV", "production")  # would fail validation if anything read it on import
    importlib.reload(app.asgi)


PRODUCTION = {
    "APP_ENV": "production",
    "JWT_SECRET": STRONG,
    "PIN_PEPPER": STRONG[::-1],
    "SIGNING_KEYS_SECRET": STRONG * 2,
    "CORS_ALLOW_ORIGINS": "https://a.rw",
    **SERVERS,
}


def test_the_issuer_is_the_public_url(tmp_path):
    local = Settings.from_env({"DATA_DIR": str(tmp_path), "PORT": "8123"})
    assert local.public_url == local.jwt_issuer == "http://127.0.0.1:8123"
    deployed = Settings.from_env({**PRODUCTION, "PUBLIC_URL": "https://auth.example.org/"})
    assert deployed.public_url == deployed.jwt_issuer == "https://auth.example.org"
    assert deployed.accepted_issuers == ["https://auth.example.org", "ladys-essence-auth"]
    closed = Settings.from_env({**PRODUCTION, "JWT_ACCEPT_LEGACY_ISSUER": "false"})
    assert closed.accepted_issuers == ["https://auth.example.org"]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"PUBLIC_URL": ""}, "PUBLIC_URL must be set"),
        ({"PUBLIC_URL": "http://auth.example.org"}, "PUBLIC_URL must be an https URL"),
        ({"JWT_ISSUER": "ladys-essence-auth"}, "JWT_ISSUER must be an https URL"),
        ({"JWKS_MAX_AGE_SECONDS": "5"}, "JWKS_MAX_AGE_SECONDS must be at least 30"),
        ({"JWKS_MAX_AGE_SECONDS": "29"}, "JWKS_MAX_AGE_SECONDS must be at least 30"),
    ],
)
def test_production_refuses_an_issuer_or_key_schedule_peers_cannot_use(changes, complaint):
    with pytest.raises(ConfigError, match=complaint):
        Settings.from_env({**PRODUCTION, **changes})
    assert Settings.from_env({**PRODUCTION, "JWKS_MAX_AGE_SECONDS": "30"}).jwks_max_age_seconds == 30
