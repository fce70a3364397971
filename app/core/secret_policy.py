"""What a production secret must be: not public, not a placeholder, long and unpredictable enough.

``secret_problem`` is the one rule; ``Settings.validated`` applies it to every secret setting.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 128
# zxcvbn's matching is quadratic in the length; past this, the prefix already says enough.
_ESTIMATE_CHARS = 256

# Values copied from tutorials and .env examples.
PLACEHOLDER_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "your-secret-key",
        "your_secret_key",
        "jwt-secret",
        "jwt_secret_key",
        "super-secret",
        "supersecret",
        "dev-secret",
        "development",
        "replace-me",
        "please-change-me",
    }
)

# Every secret value written in this repository (compose defaults, test and documentation examples):
# anyone who reads the repository knows them. tests/adversarial/test_config_attacks.py greps the
# repository for secret-looking values and checks that each one is refused.
PUBLIC_SECRETS = frozenset(
    {
        "local-compose-only-jwt-secret-0123456789abcdef",
        "local-compose-only-pin-pepper-0123456789abcdef",
        "test-jwt-secret-" + "x" * 32,
        "test-pin-pepper-" + "y" * 32,
    }
)


def estimated_bits(value: str) -> float:
    """A conservative entropy estimate: the lower of Shannon entropy times length and zxcvbn's guesses.

    Shannon entropy of the string's own symbol frequencies misses repeated patterns (``"8f3a" * 16``
    scores 128 bits); zxcvbn finds repeats, sequences and words but counts any character as one of
    ten. Taking the lower of the two refuses what either recognises as guessable.
    """
    if not value:
        return 0.0
    sample = value[:_ESTIMATE_CHARS]
    counts = Counter(sample)
    shannon = -sum(n / len(sample) * math.log2(n / len(sample)) for n in counts.values()) * len(sample)
    from zxcvbn import zxcvbn

    guesses_log10: float = zxcvbn(sample, max_length=_ESTIMATE_CHARS)["guesses_log10"]
    return min(shannon, guesses_log10 * math.log2(10))


def secret_problem(value: str | None) -> str | None:
    """Why ``value`` cannot be a production secret, or None when it can."""
    if not value:
        return "is required when APP_ENV=production"
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        return "is a well-known placeholder; generate one with `openssl rand -hex 32`"
    if value.strip() in PUBLIC_SECRETS:
        return "is published in this service's repository; generate one with `openssl rand -hex 32`"
    if len(value.encode()) < MIN_SECRET_BYTES:
        return f"must be at least {MIN_SECRET_BYTES} bytes"
    if estimated_bits(value) < MIN_SECRET_BITS:
        return f"is too predictable (under {MIN_SECRET_BITS} bits of estimated entropy); use `openssl rand -hex 32`"
    return None
