"""Phone numbers: parsed with ``phonenumbers``, stored and compared in E.164."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import phonenumbers


class PhoneNumberError(ValueError):
    """The text is not a phone number we can use."""


@functools.lru_cache(maxsize=16384)
def normalise_phone(raw: str, default_region: str, *, strict: bool = True) -> str:
    """``0788123456``, ``+250 788 123 456`` and ``+250788123456`` all give ``+250788123456``.

    ``strict`` (registration) needs a number valid for its region; login only needs a possible
    one, so a number registered under older numbering rules can still sign in. Login reads a
    number the way registration did whenever registration could have taken it (``648(16954`` is a
    valid +64 number, though a possible Rwandan one), so an account always signs in as typed.
    Cached: parsing costs more than the rest of a refused login, and attacks repeat their numbers.
    """
    text = raw.strip()
    if not text or len(text) > 32:
        raise PhoneNumberError("Enter a phone number, e.g. 0788123456 or +250788123456.")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneNumberError("Enter a phone number, e.g. 0788123456 or +250788123456.") from exc
    checks = (
        (phonenumbers.is_valid_number,) if strict else (phonenumbers.is_valid_number, phonenumbers.is_possible_number)
    )
    for check in checks:
        found = _read_as(number, text, default_region, check)
        if found is not None:
            return phonenumbers.format_number(found, phonenumbers.PhoneNumberFormat.E164)
    raise PhoneNumberError("This phone number is not valid. Check the digits and the country code.")


def _read_as(
    number: phonenumbers.PhoneNumber, text: str, region: str, check: Callable[[phonenumbers.PhoneNumber], bool]
) -> phonenumbers.PhoneNumber | None:
    """``number`` if it passes ``check``; else, for digits typed without a plus, the same with one."""
    if check(number):
        return number
    if not text.startswith("+"):
        # "250788123456": the country code typed without its plus sign.
        with contextlib.suppress(phonenumbers.NumberParseException):
            with_plus = phonenumbers.parse("+" + text, region)
            if check(with_plus):
                return with_plus
    return None
