"""A FastAPI app with `add_middleware(CacheMiddleware, config=...)`."""

from __future__ import annotations

import os

from fastapi import FastAPI

from cache_middleware import CacheMiddleware

app = FastAPI()


@app.get("/cached")
async def cached() -> dict[str, str]:
    return {"hello": "cached"}


app.add_middleware(CacheMiddleware, config=os.environ["STARTUP_CACHE_YAML"])
