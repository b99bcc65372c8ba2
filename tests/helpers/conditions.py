"""Import targets for `condition:` in test configs."""

from __future__ import annotations

from cache_middleware._core.policy import RequestView


def only_without_nocache(request: RequestView) -> bool:
    return request.query_params.get("fresh") != "1"


NOT_CALLABLE = 42


def explodes(request: RequestView) -> bool:
    raise RuntimeError("bug in user code")
