"""Pure batching of the audit writer: stream entries in, batches of events in time order out.

No I/O here. The writer (``writer.py``) reads entries from Redis (``streams.py``), hands each
stream's entries to :func:`decode_messages`, and gives the decoded events to a :class:`Batcher`,
which keeps them in event-id order across reads and cuts them into batches.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from app.audit.pipeline.events import STREAM_FIELD, EventDecodeError, LoginEvent, decode_entry, decode_storable

_EVENT_FIELD = (STREAM_FIELD.encode(), STREAM_FIELD)  # as Redis sends it, with or without decode_responses


class Entry(NamedTuple):
    stream: str
    entry_id: bytes | str  # as Redis returned it
    fields: dict[Any, Any] | None


# What one read returns: per stream, its (entry id, fields) pairs, fields as Redis sent them.
StreamReply = list[tuple[str, list[Any]]]
# (stream, entry id, event): plain tuples, as the hot path builds one per event.
Batch = list[tuple[str, bytes | str, LoginEvent]]


def text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def entry_fields(raw: Any) -> dict[Any, Any] | None:
    """Entry fields from a raw reply: a flat [name, value, ...] list, or None for a deleted entry."""
    if raw is None or isinstance(raw, dict):
        return raw
    if len(raw) == 2:  # the one ``e`` field of every event: skip the general case's slicing
        return {raw[0]: raw[1]}
    return dict(zip(raw[::2], raw[1::2], strict=True))


def event_id(item: tuple[str, bytes | str, LoginEvent]) -> str:
    return item[2].event_id


@dataclass
class Decoded:
    """What a read held: events to write, entries that are not events, entries deleted while pending."""

    events: Batch = field(default_factory=list)
    invalid: list[tuple[Entry, str]] = field(default_factory=list)
    vanished: list[Entry] = field(default_factory=list)


def decode_messages(stream: str, messages: Sequence[tuple[Any, Any]], into: Decoded) -> None:
    """Decode one stream's (entry id, fields) pairs into ``into``; nothing is ever dropped."""
    events, invalid = into.events, into.invalid
    for entry_id, raw_fields in messages:
        # The common entry, [b"e", <event JSON>], goes straight to the decoder (no dict per
        # entry); anything else the general way below.
        if type(raw_fields) is list and len(raw_fields) == 2 and raw_fields[0] in _EVENT_FIELD:
            try:
                events.append((stream, entry_id, decode_storable(raw_fields[1])))
            except EventDecodeError as exc:
                invalid.append((Entry(stream, entry_id, entry_fields(raw_fields)), str(exc)))
            continue
        fields = entry_fields(raw_fields)
        if not fields:
            into.vanished.append(Entry(stream, entry_id, fields))  # deleted while pending: nothing to write
            continue
        try:
            events.append((stream, entry_id, decode_entry(fields)))
        except EventDecodeError as exc:
            invalid.append((Entry(stream, entry_id, fields), str(exc)))


class Batcher:
    """Events in time order (UUIDv7 ids), cut into batches of ``batch_size``; the rest waits.

    In time order, as the events happened: the shards interleave in time, and a batch cut stream
    by stream would insert all over the indexes' key ranges instead of at their right edges (see
    docs/audit.md for what that cost). The partial batch left by earlier reads is merged in:
    catching up, a read's head is often older than the last read's tail.
    """

    def __init__(self, batch_size: int) -> None:
        self.batch_size = max(1, batch_size)
        self.partial: Batch = []

    def add(self, events: Batch) -> list[Batch]:
        """Merge ``events`` (sorted here, in place) with the partial batch; return the full batches cut."""
        events.sort(key=event_id)
        full: list[Batch] = []
        # A new list each time: a batch handed out must never be appended to.
        batch: Batch = []
        for item in heapq.merge(self.partial, events, key=event_id):
            batch.append(item)
            if len(batch) == self.batch_size:
                full.append(batch)
                batch = []
        self.partial = batch
        return full

    def take(self) -> Batch:
        """The partial batch, to write now (its flush time came, or the writer is stopping)."""
        batch, self.partial = self.partial, []
        return batch
