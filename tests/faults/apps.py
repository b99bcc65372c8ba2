"""The apps the fault tests serve with real servers (gunicorn for Flask, uvicorn for
Starlette): `/item/<n>` cached for a minute, the cache's log lines on stderr, config from the
YAML file named by FAULT_CACHE_YAML."""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cache_middleware import CacheMiddleware, WSGICacheMiddleware

# The log lines the tests count: the middleware's own, one per line, on stderr.
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
_logger = logging.getLogger("cache_middleware")
_logger.addHandler(_handler)
_logger.setLevel(logging.INFO)

_CONFIG = os.environ.get("FAULT_CACHE_YAML", "")

flask_app = Flask(__name__)


@flask_app.get("/item/<int:n>")
def flask_item(n: int) -> str:
    return f"item {n}"


@flask_app.get("/ready")
def flask_ready() -> str:
    return "ok"


async def _item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['n']}")


async def _ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


starlette_app = Starlette(routes=[Route("/item/{n:int}", _item), Route("/ready", _ready)])

if _CONFIG:  # imported by the tests themselves for the helpers only: no config then
    flask_app.wsgi_app = WSGICacheMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, config=_CONFIG
    )
    starlette_app.add_middleware(CacheMiddleware, config=_CONFIG)
