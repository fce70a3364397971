"""The per-row rules on their own: phones as sign-in normalises them, event ids, addresses."""

from __future__ import annotations

import datetime
import uuid

from hypothesis import given
from hypothesis import strategies as st

from app.accounts.forms import clean_login
from app.accounts.names import name_problem, normalise_name
from app.accounts.schemas import LoginRequest
from app.core.errors import ValidationFailed
from app.legacy.rules import HistoryStats, clean_name, history_records, ip_or_note, legacy_event_id, sign_in_phone

UTC = datetime.UTC


@given(st.sampled_from(["0788123456", "+250788123456", "250788123456", " 0788 123 456 ", "12345", "+254712345678"]))
def test_phones_normalise_as_sign_in_does(raw: str) -> None:
    try:
        signed_in = clean_login(LoginRequest(phone_number=raw, password="x" * 8), "RW").phone_number
    except ValidationFailed:
        signed_in = None
    assert sign_in_phone(raw.strip(), "RW") == signed_in


@given(st.integers(min_value=1, max_value=2**62 - 1), st.datetimes(min_value=datetime.datetime(1971, 1, 1)))
def test_event_ids_are_uuid7_shaped_deterministic_and_carry_the_source_id(
    source_id: int, when: datetime.datetime
) -> None:
    created = when.replace(tzinfo=UTC)
    event_id = uuid.UUID(legacy_event_id(created, source_id))
    assert event_id.version == 7 and event_id.variant == uuid.RFC_4122
    assert event_id.int & ((1 << 62) - 1) == source_id
    assert event_id.int >> 80 == int(created.timestamp() * 1000)
    assert legacy_event_id(created, source_id) == str(event_id)


def test_addresses_and_things_that_are_not() -> None:
    assert ip_or_note("41.186.1.2") == ("41.186.1.2", None)
    assert ip_or_note(" ::1 ") == ("::1", None)
    assert ip_or_note("") == (None, None)
    assert ip_or_note(None) == (None, None)
    assert ip_or_note("10.0.0.1, 41.2.3.4") == (None, "10.0.0.1, 41.2.3.4")
    assert ip_or_note("unknown") == (None, "unknown")


def test_a_row_without_a_time_takes_the_time_of_the_row_before() -> None:
    stats = HistoryStats()
    t = datetime.datetime(2024, 5, 1, 8)
    records = history_records(
        [(1, "0788123456", True, "1.2.3.4", None, t), (2, "x", False, None, None, None)], "RW", stats
    )
    assert records[0][1] == records[1][1] == t.replace(tzinfo=UTC)
    assert records[0][2] == "+250788123456" and records[1][2] == "x"
    assert (records[0][4], records[1][4]) == ("ok", "legacy")
    assert stats.created_at_missing == 1 and stats.phone_as_typed == 1 and stats.ip_empty == 1


@given(st.text(max_size=300))
def test_a_cleaned_name_is_one_registration_accepts_and_an_accepted_name_is_kept(raw: str) -> None:
    cleaned = clean_name(raw)
    assert name_problem(cleaned) is None and clean_name(cleaned) == cleaned
    accepted = normalise_name(raw)
    if accepted and name_problem(accepted) is None:
        assert cleaned == accepted
