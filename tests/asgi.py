"""The app driven in the test's own event loop, for tests whose requests must really overlap or are many.

Litestar's AsyncTestClient hands every request to a portal thread and blocks the test's event loop
until it is answered: requests it sends never overlap, and each pays a thread hop. Here the app's
lifespan runs in a task of the test's loop and httpx's ASGITransport calls the app (as
``create_asgi_app`` serves it: CORS, then the login gate) directly, from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from litestar import Litestar

from app.asgi import served


@contextlib.asynccontextmanager
async def lifespan_running(app: Litestar) -> AsyncIterator[None]:
    """The app's startup done and its shutdown pending, in a task of its own (its cancel scopes must be
    left by the task that entered them; pytest-asyncio sets fixtures up and down in different tasks)."""
    started, stopping = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with app.lifespan():
            started.set()
            await stopping.wait()

    lifespan = asyncio.create_task(run())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({lifespan, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if lifespan.done():
        waiting.cancel()
        lifespan.result()  # startup failed: raise its error
    try:
        yield
    finally:
        stopping.set()
        await lifespan


@contextlib.asynccontextmanager
async def in_loop_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with lifespan_running(app):
        transport = httpx.ASGITransport(app=served(app), client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client
