"""The audit event's wire format and the rules that keep one bad event from blocking a batch."""

from __future__ import annotations

import datetime
import uuid

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.audit.pipeline.events import (
    REASONS,
    STREAM_FIELD,
    EventDecodeError,
    LoginEvent,
    _UncheckedEvent,
    decode_entry,
    decode_event,
    encode_event,
    new_event,
    storable,
    stream_fields,
)
from app.audit.pipeline.metrics import AuditMetrics, shared_metrics
from app.audit.pipeline.writer import Backoff

# Text as JSON can carry it: no lone surrogates (msgspec refuses those on decode, as it should).
json_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
ips = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
)
events = st.builds(
    LoginEvent,
    event_id=st.uuids().map(str),
    created_at=st.datetimes(timezones=st.just(datetime.UTC)),
    phone_number=json_text,
    success=st.booleans(),
    reason=st.sampled_from(REASONS),
    auth_method=st.sampled_from([None, "password", "pin"]),
    user_id=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    ip_address=ips,
    user_agent=st.one_of(st.none(), json_text),
    request_id=st.one_of(st.none(), json_text),
)


@given(events)
def test_encode_decode_round_trip(event: LoginEvent) -> None:
    assert decode_event(encode_event(event)) == event


_EXAMPLE = LoginEvent(
    event_id="01a21d08-aef3-70e6-ae05-e2564d25253b",
    created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    phone_number="+250788123456",
    success=False,
    reason="invalid_credentials",
)
# Anything a stream entry may carry: naive times, unknown methods and reasons, addresses that are not.
any_events = st.builds(
    LoginEvent,
    event_id=st.uuids().map(str),
    created_at=st.one_of(st.datetimes(timezones=st.just(datetime.UTC)), st.datetimes()),
    phone_number=json_text,
    success=st.booleans(),
    reason=st.one_of(st.sampled_from(REASONS), st.text(max_size=5)),
    auth_method=st.sampled_from([None, "password", "pin", "sms"]),
    user_id=st.one_of(st.none(), st.integers(-(2**64), 2**64)),
    ip_address=st.one_of(ips, st.text(max_size=8)),
    user_agent=st.one_of(st.none(), json_text),
    request_id=st.one_of(st.none(), json_text),
)


@given(any_events)
@example(msgspec.structs.replace(_EXAMPLE, phone_number="07\x008"))  # NUL: JSON escapes it, Postgres cannot hold it
@example(msgspec.structs.replace(_EXAMPLE, user_agent='say "hi"'))  # an escape, but no NUL
def test_the_writers_fast_decoding_agrees_with_decoding_then_settling(event: LoginEvent) -> None:
    """decode_entry checks fitting events in one msgspec call; it must decide as the general path does."""
    payload = encode_event(event)
    try:
        expected = storable(decode_event(payload))
    except EventDecodeError:
        with pytest.raises(EventDecodeError):
            decode_entry({b"e": payload})
    else:
        assert decode_entry({b"e": payload}) == expected
        assert decode_entry({"e": payload.decode()}) == expected


def test_the_unchecked_twin_reads_the_same_wire_form() -> None:
    """decode_event's twin must take exactly LoginEvent's fields, names and defaults."""
    twin = msgspec.structs.fields(_UncheckedEvent)
    assert [(f.name, f.encode_name, f.default) for f in twin] == [
        (f.name, f.encode_name, f.default) for f in msgspec.structs.fields(LoginEvent)
    ]
    assert _UncheckedEvent.__struct_config__.forbid_unknown_fields == LoginEvent.__struct_config__.forbid_unknown_fields


def test_a_str_payload_that_cannot_be_utf8_is_refused_not_raised() -> None:
    with pytest.raises(EventDecodeError):
        decode_entry({"e": '{"phone_number": "\ud800"}'})


@given(events)
def test_storable_events_fit_the_columns_and_keep_what_fits(event: LoginEvent) -> None:
    stored = storable(event)
    assert len(stored.phone_number) <= 20 and "\x00" not in stored.phone_number
    assert stored.user_agent is None or (len(stored.user_agent) <= 255 and "\x00" not in stored.user_agent)
    assert stored.request_id is None or (len(stored.request_id) <= 64 and "\x00" not in stored.request_id)
    assert stored.created_at.tzinfo is not None
    assert stored.event_id == event.event_id and stored.reason == event.reason
    assert storable(stored) == stored  # settled once and for all
    if event.phone_number == stored.phone_number[:20] and "\x00" not in event.phone_number:
        assert stored.phone_number == event.phone_number[:20]


def test_stream_entry_is_the_event_json_under_one_field() -> None:
    event = new_event(phone_number="+250788123456", success=True, reason="ok", auth_method="pin", ip_address="10.1.2.3")
    fields = stream_fields(event)
    assert list(fields) == [STREAM_FIELD] == ["e"]
    assert msgspec.json.decode(fields["e"])["event_id"] == event.event_id
    assert decode_entry({b"e": fields["e"]}) == event  # as redis-py returns it (bytes keys)
    assert decode_entry({"e": fields["e"].decode()}) == event  # or str keys with decode_responses


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "no fields"),
        ({b"x": b"1"}, "no 'e' field"),
        ({b"e": b"garbage"}, "malformed"),
        ({b"e": b'{"event_id": "not-a-uuid"}'}, "event_id"),
        # A trailing newline passes a regex ending in "$"; asyncpg would then refuse the row forever.
        (
            {
                b"e": b'{"event_id": "01a21d08-aef3-70e6-ae05-e2564d25253b\\n", "created_at": "2026-01-01T00:00:00Z",'
                b' "phone_number": "+250788123456", "success": false, "reason": "ok"}'
            },
            "event_id",
        ),
    ],
)
def test_entries_that_are_not_events_are_refused(fields: dict[bytes, bytes], message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        decode_entry(fields)


def _event(**changes: object) -> LoginEvent:
    base = new_event(phone_number="+250788123456", success=False, reason="invalid_credentials")
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reason": "hacked"}, "unknown reason"),
        ({"auth_method": "sms"}, "unknown auth_method"),
        ({"ip_address": "999.1.1.1"}, "invalid ip_address"),
        ({"user_id": 2**63}, "user_id out of range"),
    ],
)
def test_events_postgres_cannot_store_faithfully_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(EventDecodeError, match=message):
        decode_entry({b"e": encode_event(_event(**changes))})


def test_storable_repairs_what_it_can_without_losing_the_attempt() -> None:
    naive = datetime.datetime(2025, 1, 2, 3, 4, 5)
    stored = storable(
        _event(phone_number="07\x008" + "9" * 30, user_agent="x" * 300, created_at=naive, ip_address="::FFFF:10.0.0.1")
    )
    assert stored.phone_number == "07\ufffd8" + "9" * 16
    assert stored.user_agent == "x" * 255
    assert stored.created_at == naive.replace(tzinfo=datetime.UTC)
    assert stored.ip_address == "::FFFF:10.0.0.1"  # valid; Postgres stores the address, not the text


def test_new_event_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event(phone_number="+250788123456", success=True, reason="ok").event_id for _ in range(200)]
    assert len(set(ids)) == 200
    parsed = [uuid.UUID(value) for value in ids]
    assert parsed == sorted(parsed, key=lambda value: value.bytes)
    assert all(str(value) == text and value.version == 7 for value, text in zip(parsed, ids, strict=True))


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.2, cap=5.0)
    delays = [backoff.next() for _ in range(10)]
    assert 0.16 <= delays[0] <= 0.24
    assert delays[1] > delays[0]
    assert all(delay <= 6.0 for delay in delays) and delays[-1] >= 4.0
    backoff.reset()
    assert backoff.next() <= 0.24


def test_metrics_instances_do_not_collide_and_the_shared_one_is_registered_once() -> None:
    first, second = AuditMetrics(), AuditMetrics()
    first.events_written.inc(3)
    assert first.value("events_written") == 3 and second.value("events_written") == 0
    assert shared_metrics() is shared_metrics()
    first.observe_backlog({"stream_length": 7, "pending": 2, "lag_seconds": 1.5})
    assert (first.value("stream_length"), first.value("pending"), first.value("lag_seconds")) == (7, 2, 1.5)
