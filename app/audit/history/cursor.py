"""The keyset cursor of a page: the position of its last row, ``(created_at, id)``.

Pages are ordered newest first by ``(created_at, id)``, so a page that starts after the cursor
never repeats or skips a row however many newer rows arrive meanwhile (they sort before it). The
cursor is opaque to clients (URL-safe base64 of a small JSON object) and anything that does not
decode to one this module made is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime

import msgspec

from app.audit.history.params import INT64_MAX, Params

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
CURSOR_MAX_LENGTH = 200


class Cursor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The position of the last row of a page: its ``created_at`` (microseconds since 1970) and id."""

    t: int
    i: int

    @classmethod
    def after(cls, created_at: datetime.datetime, row_id: int) -> Cursor:
        delta = created_at - EPOCH
        return cls(t=(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, i=row_id)

    @property
    def created_at(self) -> datetime.datetime:
        return EPOCH + datetime.timedelta(microseconds=self.t)

    def encode(self) -> str:
        return base64.urlsafe_b64encode(msgspec.json.encode(self)).rstrip(b"=").decode()


_cursor_decoder = msgspec.json.Decoder(Cursor)


def decode_cursor(token: str) -> Cursor:
    """ValueError for anything that is not a cursor this module made (tampered, truncated, foreign)."""
    if len(token) > CURSOR_MAX_LENGTH:
        raise ValueError("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = _cursor_decoder.decode(raw)
        _ = cursor.created_at  # in datetime's range
    except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError, OverflowError, ValueError) as exc:
        raise ValueError("not a cursor") from exc
    if not 0 <= cursor.i <= INT64_MAX:
        raise ValueError("cursor id out of range")
    return cursor


def read_cursor(params: Params) -> Cursor | None:
    if (token := params.text("cursor", max_length=CURSOR_MAX_LENGTH)) is None:
        return None
    try:
        return decode_cursor(token)
    except ValueError:
        params.errors.add("cursor", "This cursor is not valid. Start again from the first page.")
        return None
