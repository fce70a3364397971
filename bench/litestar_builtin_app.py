"""Litestar's own RateLimitMiddleware on a Redis store: the baseline the login gate is compared with."""

from __future__ import annotations

import os
from typing import Any

from litestar import Litestar, Response, get, post
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.stores.redis import RedisStore


@post("/api/auth/login")
async def login(data: dict[str, Any]) -> Response[dict[str, str]]:
    return Response({"message": "Incorrect phone number, password or PIN.", "code": "invalid_credentials"}, 401)


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}


def create_app() -> Litestar:
    store = RedisStore.with_client(url=os.environ["REDIS_URL"], namespace="bench-builtin")
    limit = RateLimitConfig(rate_limit=("minute", 5), store="rate_limit", exclude=["/health"])
    return Litestar([login, health], stores={"rate_limit": store}, middleware=[limit.middleware])
