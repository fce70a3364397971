"""slowapi on FastAPI, Redis storage, 5 a minute: the limiter a Python user would pick, as a baseline.

Only imported when slowapi and FastAPI are installed (``pip install slowapi fastapi``). No
``from __future__ import annotations``: FastAPI reads the handler's annotations at runtime.
"""

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address


def create_app() -> FastAPI:
    limiter = Limiter(key_func=get_remote_address, storage_uri=os.environ["REDIS_URL"])
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.post("/api/auth/login")
    @limiter.limit("5/minute")
    async def login(request: Request) -> JSONResponse:
        body = {"message": "Incorrect phone number, password or PIN.", "code": "invalid_credentials"}
        return JSONResponse(body, status_code=401)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app
