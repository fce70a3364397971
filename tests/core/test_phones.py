import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.phones import PhoneNumberError, normalise_phone

# Rwandan mobile prefixes (MTN 078/079, Airtel 072/073).
rwandan_subscriber = (
    st.tuples(st.sampled_from(["78", "79", "72", "73"]), st.integers(0, 9_999_999))
    .map(lambda parts: f"{parts[0]}{parts[1]:07d}")
    .filter(lambda subscriber: phonenumbers.is_valid_number(phonenumbers.parse("+250" + subscriber)))
)


def spaced(digits: str, draw_spaces: list[bool]) -> str:
    spaces = [*draw_spaces, *([False] * len(digits))]
    return "".join(ch + (" " if space else "") for ch, space in zip(digits, spaces, strict=False))


@given(rwandan_subscriber, st.lists(st.booleans(), min_size=9, max_size=9))
def test_every_way_of_typing_a_number_gives_one_e164(subscriber, spaces):
    expected = "+250" + subscriber
    forms = ["0" + subscriber, "+250" + subscriber, "250" + subscriber, spaced("0" + subscriber, spaces)]
    forms.append("+250 " + spaced(subscriber, spaces))
    assert {normalise_phone(form, "RW") for form in forms} == {expected}


@given(rwandan_subscriber)
def test_e164_is_a_fixed_point(subscriber):
    once = normalise_phone("0" + subscriber, "RW")
    assert normalise_phone(once, "RW") == once
    assert normalise_phone(once, "KE") == once  # an explicit country code wins over the default region
    assert phonenumbers.is_valid_number(phonenumbers.parse(once))


def test_default_region_applies_to_national_numbers():
    assert normalise_phone("0712 123456", "KE") == "+254712123456"


@pytest.mark.parametrize("raw", ["", "   ", "abc", "12", "+", "0788", "1" * 40, "+250 788 123 456 789 000"])
def test_garbage_is_refused(raw):
    with pytest.raises(PhoneNumberError):
        normalise_phone(raw, "RW")


def test_login_accepts_possible_numbers_registration_needs_valid_ones():
    possible_only = "+250712345678"  # right length, not an allocated range
    assert normalise_phone(possible_only, "RW", strict=False) == possible_only
    with pytest.raises(PhoneNumberError):
        normalise_phone(possible_only, "RW", strict=True)


@given(st.text(alphabet="0123456789+ ()-", min_size=6, max_size=16))
def test_a_number_that_registers_signs_in_as_typed(raw):
    """Login reads a number as registration did: ``648(16954`` registered as +64 but signed in as +250."""
    try:
        registered = normalise_phone(raw, "RW", strict=True)
    except PhoneNumberError:
        return
    assert normalise_phone(raw, "RW", strict=False) == registered


def test_a_possible_rwandan_reading_does_not_hide_a_valid_foreign_one():
    assert normalise_phone("648(16954", "RW", strict=True) == normalise_phone("648(16954", "RW", strict=False)
