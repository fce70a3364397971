"""The coalescer on its own: what goes into one batch, and that every caller hears back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from app.core.errors import LimiterUnavailable
from app.ratelimit.coalescer import Coalescer


class Recorder:
    """A ``run_batch`` that remembers its batches and answers each call with a function of it."""

    def __init__(self, answer: Any = lambda call: call * 10) -> None:
        self.batches: list[list[int]] = []
        self.answer = answer

    async def __call__(self, calls: Sequence[int]) -> list[Any]:
        self.batches.append(list(calls))
        await asyncio.sleep(0)
        return [self.answer(call) for call in calls]


async def test_calls_of_one_loop_turn_share_one_batch_and_each_gets_its_own_reply():
    recorder = Recorder()
    coalescer: Coalescer[int] = Coalescer(recorder)
    replies = await asyncio.gather(*(coalescer.submit(n) for n in range(7)))
    assert replies == [n * 10 for n in range(7)]
    assert recorder.batches == [list(range(7))]


async def test_calls_of_later_turns_go_in_later_batches():
    recorder = Recorder()
    coalescer: Coalescer[int] = Coalescer(recorder)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0.01)
    second = await coalescer.submit(2)
    assert (await first, second) == (10, 20)
    assert recorder.batches == [[1], [2]]


async def test_a_full_batch_goes_out_at_once():
    recorder = Recorder()
    coalescer: Coalescer[int] = Coalescer(recorder, max_batch=3)
    replies = await asyncio.gather(*(coalescer.submit(n) for n in range(8)))
    assert replies == [n * 10 for n in range(8)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 2]
    assert sorted(call for batch in recorder.batches for call in batch) == list(range(8))


async def test_an_error_in_one_reply_fails_only_its_caller():
    recorder = Recorder(answer=lambda call: ValueError(f"bad {call}") if call == 2 else call)
    coalescer: Coalescer[int] = Coalescer(recorder)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(4)), return_exceptions=True)
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad 2"


async def test_a_failed_batch_fails_every_caller_with_its_error():
    async def unreachable(calls: Sequence[int]) -> list[Any]:
        raise LimiterUnavailable("connection refused")

    coalescer: Coalescer[int] = Coalescer(unreachable)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(5)), return_exceptions=True)
    assert len(results) == 5 and all(isinstance(result, LimiterUnavailable) for result in results)


async def test_a_caller_that_gives_up_does_not_disturb_the_others():
    started = asyncio.Event()

    async def slow(calls: Sequence[int]) -> list[Any]:
        started.set()
        await asyncio.sleep(0.05)
        return list(calls)

    coalescer: Coalescer[int] = Coalescer(slow)
    quitter = asyncio.ensure_future(coalescer.submit(1))
    stayer = asyncio.ensure_future(coalescer.submit(2))
    await started.wait()
    quitter.cancel()
    assert await stayer == 2
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_a_cancelled_batch_still_resolves_every_caller():
    async def cancelled(calls: Sequence[int]) -> list[Any]:
        raise asyncio.CancelledError

    coalescer: Coalescer[int] = Coalescer(cancelled)
    results = await asyncio.gather(*(coalescer.submit(n) for n in range(3)), return_exceptions=True)
    assert all(isinstance(result, LimiterUnavailable) for result in results)


async def test_with_one_batch_in_flight_the_calls_made_meanwhile_go_together_next():
    release = asyncio.Event()
    batches: list[list[int]] = []

    async def slow(calls: Sequence[int]) -> list[Any]:
        batches.append(list(calls))
        await release.wait()
        return [call * 10 for call in calls]

    coalescer: Coalescer[int] = Coalescer(slow, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0.01)  # the first batch is in flight
    later = [asyncio.ensure_future(coalescer.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    later.append(asyncio.ensure_future(coalescer.submit(4)))  # another turn of the loop: still waiting
    await asyncio.sleep(0.01)
    assert batches == [[1]]
    release.set()
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert batches == [[1], [2, 3, 4]]
