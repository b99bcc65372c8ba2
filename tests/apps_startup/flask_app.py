"""A Flask app with `app.wsgi_app = WSGICacheMiddleware(app.wsgi_app, config=...)`."""

from __future__ import annotations

import os

from flask import Flask

from cache_middleware import WSGICacheMiddleware

app = Flask(__name__)


@app.get("/cached")
def cached() -> str:
    return "hello"


app.wsgi_app = WSGICacheMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, config=os.environ["STARTUP_CACHE_YAML"]
)
