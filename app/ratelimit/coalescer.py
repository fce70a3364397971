"""One round trip to Redis for all the script calls made during one turn of the event loop.

Under a login storm dozens of requests each need a script call at the same moment; sending them
as one pipeline costs Redis one read and one write instead of dozens. The coalescer knows nothing
of budgets: it takes calls, hands a batch to ``run_batch`` and resolves every caller's future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from app.core.errors import LimiterUnavailable

Call = TypeVar("Call")


class Coalescer(Generic[Call]):
    """Collects the script calls made during one turn of the event loop and runs them as one batch.

    Every submitted call gets its own future, and every future is resolved: with its reply, with
    its own error, or with the batch's error when Redis could not be reached.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Call]], Awaitable[list[Any]]],
        max_batch: int = 512,
        max_in_flight: int | None = None,
    ):
        """``max_in_flight``: at most this many batches at once; calls made meanwhile wait and go
        together as the next batch when one finishes (group commit: one transaction for all of them)."""
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, call: Call) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._max_in_flight is not None and len(self._tasks) >= self._max_in_flight:
            return  # the batch in flight sends what gathered meanwhile when it is done
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._run_batch([call for call, _ in batch])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else LimiterUnavailable("the batch was cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its request was cancelled; the reservation lapses by itself
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
