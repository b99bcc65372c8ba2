"""A refused config under ASGI: the startup fails with its one-line message, and every other
scope raises it (DESIGN.md invariant 5)."""

from __future__ import annotations

from ..errors import ConfigError
from .request import Receive, Scope, Send

__all__ = ["RefusedConfig", "refuse"]


class RefusedConfig:
    """The policy of a middleware whose config was refused: the first question raises it."""

    def __init__(self, error: ConfigError) -> None:
        self.error = error

    def covers(self, path: str) -> bool:
        raise fresh(self.error)


async def refuse(error: ConfigError, scope: Scope, receive: Receive, send: Send) -> None:
    """A refused config at the server's startup: `lifespan.startup.failed` with its one-line
    message (uvicorn, hypercorn and gunicorn's uvicorn worker log it and stop), then raised, as
    Starlette's own lifespan does (its TestClient raises it; servers ignore an error after a
    failure reported). Any other scope raises it. The app's own startup never runs."""
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": str(error)})
    raise fresh(error)


def fresh(error: ConfigError) -> ConfigError:
    # A new instance per raise: the kept one would gather every request's traceback.
    return type(error)(*error.args)
