"""The writer's pure batching: decoding stream entries, event order across reads, batch cuts."""

from __future__ import annotations

import datetime
import random

from hypothesis import given
from hypothesis import strategies as st

from app.audit.pipeline.batcher import Batch, Batcher, Decoded, decode_messages
from app.audit.pipeline.events import STREAM_FIELD, LoginEvent, encode_event

START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def event(n: int) -> LoginEvent:
    """The ``n``-th event in time: its id sorts as ``n`` does (UUIDv7 ids are time-ordered too)."""
    return LoginEvent(
        event_id=f"{n:08x}-0000-7000-8000-000000000000",
        created_at=START + datetime.timedelta(milliseconds=n),
        phone_number=f"+2507881{n:05d}",
        success=False,
        reason="invalid_credentials",
    )


def item(n: int, stream: str = "s0") -> tuple[str, bytes, LoginEvent]:
    return (stream, f"{n}-0".encode(), event(n))


def numbers(batch: Batch) -> list[int]:
    return [int(e.event_id[:8], 16) for _, _, e in batch]


def test_events_of_every_stream_come_out_in_event_order():
    # Each shard stream is in order by itself; together they interleave.
    rng = random.Random(15)
    shard_of = {n: f"shard-{rng.randrange(4)}" for n in range(40)}
    decoded = Decoded()
    for stream in sorted(set(shard_of.values())):
        messages = [(f"{n}-0".encode(), [b"e", encode_event(event(n))]) for n in range(40) if shard_of[n] == stream]
        decode_messages(stream, messages, decoded)
    batcher = Batcher(100)
    assert batcher.add(decoded.events) == []
    partial = batcher.take()
    assert numbers(partial) == list(range(40))
    assert all(stream == shard_of[n] for (stream, _, _), n in zip(partial, range(40), strict=True))
    assert batcher.take() == []


def test_a_read_older_than_the_partial_batch_is_merged_into_it():
    batcher = Batcher(4)
    assert batcher.add([item(1), item(3), item(5)]) == []
    full = batcher.add([item(6, "s1"), item(0, "s1"), item(4, "s1"), item(2, "s1")])
    assert [numbers(batch) for batch in full] == [[0, 1, 2, 3]]
    assert numbers(batcher.partial) == [4, 5, 6]


def test_a_batch_handed_out_is_never_appended_to():
    batcher = Batcher(2)
    (first,) = batcher.add([item(0), item(1), item(2)])
    batcher.add([item(3), item(4), item(5)])
    assert numbers(first) == [0, 1]


@given(st.lists(st.lists(st.integers(0, 10_000), max_size=60), max_size=8), st.integers(1, 50))
def test_cuts_are_full_batches_in_order_and_nothing_is_lost(reads: list[list[int]], size: int):
    batcher = Batcher(size)
    out: list[Batch] = []
    for read in reads:
        random.shuffle(read)
        out += batcher.add([item(n) for n in read])
        assert len(batcher.partial) < size
        assert numbers(batcher.partial) == sorted(numbers(batcher.partial))
    for batch in out:
        assert len(batch) == size
        assert numbers(batch) == sorted(numbers(batch))
    sent = [n for read in reads for n in read]
    assert sorted(n for batch in [*out, batcher.take()] for n in numbers(batch)) == sorted(sent)
    if len(reads) == 1:  # one read: exactly its events in order, cut every ``size``
        flat = sorted(sent)
        assert [numbers(batch) for batch in out] == [flat[i : i + size] for i in range(0, len(flat) - size + 1, size)]


def test_undecodable_and_deleted_entries_are_kept_apart_with_their_fields():
    good, other = encode_event(event(1)), encode_event(event(2))
    messages = [
        (b"1-0", [b"e", good]),  # the common entry
        (b"2-0", [b"e", b"{not json"]),  # the fast path's field, not an event
        (b"3-0", [b"x", b"y"]),  # no event field at all
        (b"4-0", None),  # deleted while pending
        (b"5-0", []),  # nothing left of it either
        (b"6-0", [b"e", other, b"extra", b"1"]),  # an event with a field too many: the general path
        (b"7-0", [b"e", encode_event(event(3))[:-1]]),  # cut short
    ]
    decoded = Decoded()
    decode_messages("s0", messages, decoded)
    assert [(stream, entry_id) for stream, entry_id, _ in decoded.events] == [("s0", b"1-0"), ("s0", b"6-0")]
    assert [e for _, _, e in decoded.events] == [event(1), event(2)]
    invalid = {entry.entry_id: (entry.fields, reason) for entry, reason in decoded.invalid}
    assert set(invalid) == {b"2-0", b"3-0", b"7-0"}
    assert invalid[b"2-0"][0] == {b"e": b"{not json"}
    assert invalid[b"3-0"][0] == {b"x": b"y"}
    assert all(reason for _, reason in invalid.values())
    assert [entry.entry_id for entry in decoded.vanished] == [b"4-0", b"5-0"]


def test_entries_read_with_decoded_responses_decode_too():
    decoded = Decoded()
    decode_messages("s0", [("1-0", [STREAM_FIELD, encode_event(event(7)).decode()])], decoded)
    assert [e for _, _, e in decoded.events] == [event(7)]
