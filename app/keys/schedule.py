"""When each signing key is published, signs, verifies and disappears: a pure function of the rows and now.

No process changes a key's state: each reads the same rows and the clock and reaches the same
answer, so rotation needs no coordinator. A key is

- ``next`` from ``created_at``: published in the JWKS and trusted for verification, not signing yet;
- ``active`` from ``activates_at`` until a newer key activates: it signs;
- ``retiring`` after that, until the last token it can have signed has expired (``retire_after``:
  the newer key's activation + the longest token lifetime + the publish interval, for a process
  that saw the newer key late);
- ``retired`` after that, or once ``retired_at`` is set: gone from the JWKS, verifies nothing.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class KeyState(StrEnum):
    NEXT = "next"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


PUBLISHED = frozenset({KeyState.NEXT, KeyState.ACTIVE, KeyState.RETIRING})


class Scheduled(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def created_at(self) -> datetime.datetime: ...
    @property
    def activates_at(self) -> datetime.datetime: ...
    @property
    def retired_at(self) -> datetime.datetime | None: ...


@dataclass(frozen=True, slots=True)
class Placement:
    state: KeyState
    retire_after: datetime.datetime | None  # for a key a newer one replaced


def schedule(
    keys: Sequence[Scheduled], now: datetime.datetime, *, lifetime: datetime.timedelta, publish: datetime.timedelta
) -> dict[str, Placement]:
    live = [key for key in keys if key.retired_at is None]
    started = sorted((key for key in live if key.activates_at <= now), key=lambda k: (k.activates_at, k.created_at))
    placements = {key.kid: Placement(KeyState.RETIRED, None) for key in keys if key.retired_at is not None}
    for key in live:
        if key.activates_at > now:
            placements[key.kid] = Placement(KeyState.NEXT, None)
    for older, newer in itertools.pairwise(started):
        retire_after = newer.activates_at + lifetime + publish
        state = KeyState.RETIRING if now < retire_after else KeyState.RETIRED
        placements[older.kid] = Placement(state, retire_after)
    if started:
        placements[started[-1].kid] = Placement(KeyState.ACTIVE, None)
    return placements
