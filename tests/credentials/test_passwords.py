import asyncio

import bcrypt
import pytest

from app.core.settings import Settings
from app.credentials.passwords import Hasher, common_passwords, password_problem, pin_problem


def settings(**overrides):
    values = {"jwt_secret": "j" * 40, "pin_pepper": "p" * 40, "app_env": "test", **overrides}
    return Settings.from_env({}, **values)


@pytest.mark.parametrize("pin", ["0000", "1111", "9999", "1234", "4321", "6789", "9876", "0123", "8901", "3210"])
def test_repeated_digits_and_runs_are_weak(pin):
    assert pin_problem(pin)


@pytest.mark.parametrize("pin", ["1212", "2580", "1004", "2000", "6969"])
def test_common_pins_are_weak(pin):
    assert pin_problem(pin)


@pytest.mark.parametrize("pin", ["123", "12345", "12a4", "", " 482", "\uff14\uff18\uff12\uff17"])
def test_pin_is_exactly_four_ascii_digits(pin):
    assert pin_problem(pin)


@pytest.mark.parametrize("pin", ["4827", "9513", "3068", "7140"])
def test_ordinary_pins_are_fine(pin):
    assert pin_problem(pin) is None


def test_common_password_list_is_large_and_used():
    words = common_passwords()
    assert len(words) >= 10_000
    assert password_problem("password1") and password_problem("qwerty123")
    assert password_problem("Iloveyou") is not None


@pytest.mark.parametrize(
    ("password", "kwargs"),
    [
        ("short", {}),
        ("x" * 129, {}),
        ("abc250788123456", {"phone_digits": "250788123456"}),
        ("my-788123456-pw", {"phone_digits": "250788123456"}),
        ("Clarisse2024!", {"name": "Clarisse Mukamana"}),
        ("MUKAMANA!!99", {"name": "Clarisse Mukamana"}),
    ],
)
def test_refused_passwords(password, kwargs):
    assert password_problem(password, **kwargs)


def test_good_password_passes():
    assert password_problem("Umuganda-Kigali-42", phone_digits="250788123456", name="Aline Uwase") is None


def test_default_hash_parameters_follow_owasp():
    hasher = Hasher(settings())
    try:
        stored = asyncio.run(hasher.hash_password("Umuganda-Kigali-42"))
    finally:
        hasher.close()
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


async def test_verify_and_rehash_flags():
    hasher = Hasher(settings(argon2_memory_kib=1024, argon2_time_cost=1))
    try:
        stored = await hasher.hash_password("Umuganda-Kigali-42")
        assert (await hasher.verify_password(stored, "Umuganda-Kigali-42")).ok
        assert not (await hasher.verify_password(stored, "umuganda-kigali-42")).ok
        assert not (await hasher.verify_password(None, "anything")).ok
        assert not (await hasher.verify_password("not-a-hash", "anything")).ok
        legacy = bcrypt.hashpw(b"Flask-Era-Pass1", bcrypt.gensalt(rounds=4)).decode()
        result = await hasher.verify_password(legacy, "Flask-Era-Pass1")
        assert result.ok and result.needs_rehash
        stronger = Hasher(settings(argon2_memory_kib=2048, argon2_time_cost=1))
        try:
            assert (await stronger.verify_password(stored, "Umuganda-Kigali-42")).needs_rehash
        finally:
            stronger.close()
    finally:
        hasher.close()


async def test_pin_hash_depends_on_the_pepper():
    first = Hasher(settings(argon2_memory_kib=1024, argon2_time_cost=1))
    second = Hasher(settings(argon2_memory_kib=1024, argon2_time_cost=1, pin_pepper="q" * 40))
    try:
        stored = await first.hash_pin("4827")
        assert (await first.verify_pin(stored, "4827")).ok
        assert not (await second.verify_pin(stored, "4827")).ok  # the database alone is not enough
        # A plain argon2 hash of the bare PIN (no pepper) must not verify either.
        unpeppered = await first.hash_password("4827")
        assert not (await first.verify_pin(unpeppered, "4827")).ok
    finally:
        first.close()
        second.close()
