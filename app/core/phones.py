"""Phone numbers: parsed with ``phonenumbers``, stored and compared in E.164."""

from __future__ import annotations

import contextlib
import functools

import phonenumbers


class PhoneNumberError(ValueError):
    """The text is not a phone number we can use."""


@functools.lru_cache(maxsize=16384)
def normalise_phone(raw: str, default_region: str, *, strict: bool = True) -> str:
    """``0788123456``, ``+250 788 123 456`` and ``+250788123456`` all give ``+250788123456``.

    ``strict`` (registration) needs a number valid for its region; login only needs a possible
    one, so a number registered under older numbering rules can still sign in. Cached: parsing
    costs more than the rest of a refused login, and attacks repeat their numbers.
    """
    text = raw.strip()
    if not text or len(text) > 32:
        raise PhoneNumberError("Enter a phone number, e.g. 0788123456 or +250788123456.")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneNumberError("Enter a phone number, e.g. 0788123456 or +250788123456.") from exc
    check = phonenumbers.is_valid_number if strict else phonenumbers.is_possible_number
    if not check(number) and not text.startswith("+"):
        # "250788123456": the country code typed without its plus sign.
        with contextlib.suppress(phonenumbers.NumberParseException):
            number = phonenumbers.parse("+" + text, default_region)
    if not check(number):
        raise PhoneNumberError("This phone number is not valid. Check the digits and the country code.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
