"""One-time temporary passwords for support: easy to read out on a phone call, hard to guess.

Ten characters from an alphabet without look-alikes (no 0/O, 1/I/L, 5/S, 2/Z, 8/B), shown in two
groups of five (``K7QXM-4HRWT``): 25 symbols, ten draws from ``secrets``, about 46 bits. Wrong
guesses go through the login endpoint's budgets like any password, so at most ``ACCOUNT_MAX_FAILURES``
guesses per hour per number are ever verified. Only an argon2id hash of the code is stored.
Sign-in accepts it in the password field with or without the dash, in either case
(:meth:`app.accounts.service.AuthService.signs_in_with_recovery_code`).
"""

from __future__ import annotations

import secrets

from app.accounts.service import canonical_recovery_code

__all__ = ["canonical_recovery_code", "new_recovery_code"]

ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"
CODE_LENGTH = 10


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"
