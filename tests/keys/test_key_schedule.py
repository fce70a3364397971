"""The signing-key schedule against what rotation promises, for any sequence of rotations (hypothesis).

Promises: at any moment at most one key signs; a key is published before it first signs (for the
publish interval, unless it is the very first key); and whatever a key signed at moment t still
verifies (its key is published) until t + the token lifetime.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from app.keys.schedule import PUBLISHED, KeyState, schedule

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
LIFETIME = datetime.timedelta(days=30)
PUBLISH = datetime.timedelta(seconds=335)


@dataclass(frozen=True)
class Row:
    kid: str
    created_at: datetime.datetime
    activates_at: datetime.datetime
    retired_at: datetime.datetime | None = None


def rotations(gaps: list[int]) -> list[Row]:
    """What `keys rotate` makes when run after each gap (seconds): the first key at once, later ones delayed."""
    rows, now = [], T0
    for n, gap in enumerate(gaps):
        now += datetime.timedelta(seconds=gap)
        rows.append(Row(f"k{n}", now, now if n == 0 else now + PUBLISH))
    return rows


def at(rows, moment):
    return schedule(rows, moment, lifetime=LIFETIME, publish=PUBLISH)


gaps = st.lists(st.integers(min_value=1, max_value=40 * 86400), min_size=1, max_size=6)
offsets = st.lists(st.integers(min_value=0, max_value=200 * 86400), min_size=1, max_size=30)


@given(gaps, offsets)
def test_at_most_one_key_signs(gap_list, offset_list):
    rows = rotations(gap_list)
    for offset in offset_list:
        states = at(rows, T0 + datetime.timedelta(seconds=offset)).values()
        assert sum(placement.state is KeyState.ACTIVE for placement in states) <= 1


@given(gaps, offsets)
def test_what_a_key_signed_verifies_until_it_expires(gap_list, offset_list):
    rows = rotations(gap_list)
    for offset in offset_list:
        signed_at = T0 + datetime.timedelta(seconds=offset)
        signer = [kid for kid, p in at(rows, signed_at).items() if p.state is KeyState.ACTIVE]
        if not signer:
            continue
        for later in (signed_at, signed_at + LIFETIME / 2, signed_at + LIFETIME):
            assert at(rows, later)[signer[0]].state in PUBLISHED


@given(gaps)
def test_a_key_is_published_for_the_interval_before_it_signs(gap_list):
    rows = rotations(gap_list)
    for row in rows[1:]:
        assert at(rows, row.created_at)[row.kid].state is KeyState.NEXT
        assert at(rows, row.activates_at - datetime.timedelta(seconds=1))[row.kid].state is KeyState.NEXT
        assert at(rows, row.activates_at)[row.kid].state is KeyState.ACTIVE


def test_a_replaced_key_disappears_after_its_last_token_expired():
    rows = rotations([10, 86400])
    replaced_at = rows[1].activates_at
    assert at(rows, replaced_at + LIFETIME)[rows[0].kid].state is KeyState.RETIRING
    assert at(rows, replaced_at + LIFETIME + PUBLISH)[rows[0].kid].state is KeyState.RETIRED


def test_retired_by_hand_is_gone_at_once_and_the_previous_key_signs_again():
    first, second = rotations([10, 86400])
    moment = second.activates_at + datetime.timedelta(hours=1)
    states = at([first, Row(second.kid, second.created_at, second.activates_at, retired_at=moment)], moment)
    assert states[second.kid].state is KeyState.RETIRED
    assert states[first.kid].state is KeyState.ACTIVE


@given(gaps, offsets)
def test_the_keyrings_remembered_placements_are_the_schedule_at_every_moment(gap_list, offset_list):
    """The key ring works the schedule out again only when a key's state can have changed: asked at
    moments in time order, it answers what the schedule says at each of them."""
    from types import SimpleNamespace
    from unittest import mock

    from app.keys import keyring

    rows = rotations(gap_list)
    loaded = [
        keyring.LoadedKey(row.kid, "ES256", {}, None, None, row.created_at, row.activates_at, row.retired_at)
        for row in rows
    ]
    settings = SimpleNamespace(token_lifetime_seconds=int(LIFETIME.total_seconds()), key_publish_seconds=335)
    ring = keyring.KeyRing(loaded, settings)  # type: ignore[arg-type]
    for offset in sorted(offset_list):
        moment = T0 + datetime.timedelta(seconds=offset)
        for instant in (moment, moment + PUBLISH, moment + LIFETIME + PUBLISH):  # transitions among them
            with mock.patch.object(keyring, "utcnow", return_value=instant):
                assert ring.placements() == at(rows, instant)
