"""A polling loop in the background of a process: the account-event relay and the webhook deliverer.

Each runs as a task of the API process's event loop (``start`` / ``stop``) or as the whole of a CLI
command (``run``, with ``request_stop`` on SIGTERM). A step that fails on an outage (Postgres, Redis, the
network) is retried with a capped, jittered backoff; any other error is logged with its traceback and
retried too, so a bug never ends a loop silently while work piles up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

# What an outage raises: retried with backoff, logged as a warning without a traceback.
OUTAGES: tuple[type[BaseException], ...] = (RedisError, SQLAlchemyError, OSError, TimeoutError)
BACKOFF_FIRST_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
AFTER_A_BUG_SECONDS = 5.0


class PollingLoop:
    """Subclasses name the loop, set ``poll_seconds`` and write :meth:`step`."""

    name = "background loop"
    poll_seconds = 1.0

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> bool:
        """One round of work; True when there is nothing more to do until the next poll."""
        raise NotImplementedError

    def start(self) -> asyncio.Task[None]:
        """Run in the background of the current event loop."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)
        return self._task

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop after the step in hand."""
        self.request_stop()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait([task])

    async def run(self) -> None:
        """Step until :meth:`stop`, outliving outages (capped backoff) and bugs (logged)."""
        failures = 0
        while not self._stopping.is_set():
            try:
                idle = await self.step()
            except OUTAGES as exc:
                failures += 1
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** min(failures, 5))
                delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
                logger.warning("%s: %s (%s); retrying in %.1f s", self.name, type(exc).__name__, exc, delay)
                await self.pause(delay)
                continue
            except Exception:
                logger.exception("%s: unexpected error; retrying", self.name)
                await self.pause(AFTER_A_BUG_SECONDS)
                continue
            failures = 0
            if idle:
                await self.pause(self.poll_seconds)

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
