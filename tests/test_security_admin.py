"""Security: what an admin token can reach, and what an admin request can cost (issue #17).

* 6: a venue token's glob is read as Redis parses it: `*[:venue:t1` (an unbalanced class) and
  `*[^:venue:t1` are refused; a glob naming the venue's Vary variants deletes only keys whose
  venue segment really is the token's (a query value may read `venue`); so do `paths`, `keys`
  and `clear`.
* 7: the whole-cache token touches only the cache's namespaces (the key prefix and
  `manager_namespaces`): `{"keys": ["session:abc"]}`, `{"patterns": ["*"]}` are 400s.
* 8: a glob's length and wildcards are bounded (400), and a catastrophic glob on the memory
  store is quick.
* 10: a body over 64 KiB is a 413, read no further than the limit (declared, chunked, or lying
  about its length).

Against the admin app through httpx's ASGI transport on the real Redis (a redis-server of this
module's own: a broken namespace check would let `*` delete a shared database) and the memory
store, and through a Flask mount (a2wsgi).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from a2wsgi import ASGIMiddleware
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from cache_middleware import create_admin_app
from cache_middleware.admin import operations
from cache_middleware.admin.auth import Principal
from cache_middleware.admin.requests import MAX_BODY, BodyLimit, InvalidateRequest
from cache_middleware.config import load_config
from cache_middleware.storage.memory import AsyncMemoryStore

from .test_admin import TOKEN, VENUE_TOKENS, Site, open_site, own_redis, real_redis, seed_events

__all__ = ["own_redis", "real_redis"]  # fixtures, imported for this module's use


@pytest.fixture(params=["redis", "memory"])
async def site(request: pytest.FixtureRequest, prefix: str, memory_url: str) -> AsyncIterator[Site]:
    url = request.getfixturevalue("real_redis") if request.param == "redis" else memory_url
    opened = open_site(request.param, url, prefix, manager_namespaces=["ev" + prefix[-6:]])
    yield opened
    await opened.aclose()


def manager_namespace(site: Site) -> str:
    return str(site.config["manager_namespaces"][0])


async def refused(site: Site, body: dict[str, Any], token: str, status: int) -> str:
    """Send `body` as is and as a dry run; both must be refused with `status`."""
    message = ""
    for dry_run in (False, True):
        reply = await site.admin("POST", "/invalidate", {**body, "dry_run": dry_run}, token=token)
        assert reply.status_code == status, (body, reply.json())
        assert reply.json()["success"] is False
        message = reply.json()["error"]
    return message


# -- 6: venue tokens stay in their venue --------------------------------------------------------


async def test_a_venue_glob_that_escapes_through_a_class_is_refused(site: Site) -> None:
    await seed_events(site, ("1", "2"), (None, "t1", "t10", "t2"))
    before = site.entries()
    p, t1 = site.prefix, VENUE_TOKENS["t1"]
    escapes = [
        f"{p}:GET:*[:venue:t1",  # unbalanced: a class of the characters of ':venue:t1'
        f"{p}:GET:*[^:venue:t1",  # its negation: every venue's, and the venue-less
        f"{p}:GET:*[:venue:t1]",
        f"{p}:GET:*:venue:t?",
        f"{p}:GET:*:venue:t[1]",
        f"{p}:GET:*:venue:[t]1",
        f"{p}:GET:*:venue:t1[",
        f"{p}:GET:*:venue:t1*",
        f"{p}:GET:*?venue:t1",
        f"{p}:GET:*:venue:t1:vary*",
        f"{p}:GET:*:venue:t1?vary:*",
        f"{p}:GET[:]*:venue:t1",
        f"{p}:GET*:venue:t1",
    ]
    for pattern in escapes:
        message = await refused(site, {"patterns": [pattern]}, t1, 403)
        assert "reaches outside venue 't1'" in message
    assert site.entries() == before
    assert site.events() == []
    # Escaped text is text: the same glob with its colons escaped stays in the venue.
    reply = await site.admin(
        "POST", "/invalidate", {"patterns": [f"{p}:GET:*\\:venue\\:t1"]}, token=t1
    )
    assert reply.json()["invalidated"] == 2
    assert before - site.entries() == {site.key(f"/api/events/{i}", "t1") for i in ("1", "2")}


async def test_a_query_value_reading_venue_does_not_make_an_entry_the_venues(site: Site) -> None:
    """`?a=venue&t1=vary&x=1` gives a venue-less entry whose key holds ':venue:t1:vary:'."""
    await site.get("/api/events/1?a=venue&t1=vary&x=1")
    forged = site.key("/api/events/1?a=venue&t1=vary&x=1")
    assert ":venue:t1:vary:" in forged and forged in site.entries()
    genuine = site.key("/api/events/1", "t1") + ":vary:accept:text%2Fhtml"
    t1 = VENUE_TOKENS["t1"]
    p = site.prefix

    async def invalidate(body: dict[str, Any]) -> int:
        site.db.put(genuine, b"variant")
        reply = await site.admin("POST", "/invalidate", body, token=t1)
        assert reply.status_code == 200, reply.json()
        assert site.db.exists(forged)
        return int(reply.json()["invalidated"])

    variants = {"patterns": [f"{p}:GET:*:venue:t1:vary:*"]}
    assert await invalidate({**variants, "dry_run": True}) == 1
    assert await invalidate(variants) == 1
    assert not site.db.exists(genuine)
    assert await invalidate({"paths": ["/api/events/1"]}) == 1
    assert await invalidate({"paths": ["/api/events/*"]}) == 1
    site.db.put(genuine, b"variant")
    reply = await site.admin("POST", "/clear", {"confirm": True}, token=t1)
    assert reply.json()["cleared"] == 1 and site.db.exists(forged) and not site.db.exists(genuine)
    message = await refused(site, {"keys": [forged]}, t1, 403)
    assert "not an entry of venue 't1'" in message
    assert site.db.exists(forged)


def test_entry_venue_reads_components_in_pairs() -> None:
    p = "g:r"
    assert operations.entry_venue(f"{p}:GET:/x:venue:t1", p) == "t1"
    assert operations.entry_venue(f"{p}:GET:/x:q:1:host:h:venue:t1:vary:a:b", p) == "t1"
    assert operations.entry_venue(f"{p}:GET:/x:a:venue:t1:vary:x:1:host:h", p) is None
    assert operations.entry_venue(f"{p}:GET:/x:venue", p) is None
    assert operations.entry_venue(f"{p}:IDX:/x:venue:t1", p) is None
    assert operations.entry_venue("other:GET:/x:venue:t1", p) is None


# -- 7: the whole-cache token stays in the cache's namespaces -----------------------------------


async def test_the_whole_cache_token_cannot_touch_other_applications_keys(site: Site) -> None:
    await seed_events(site, ("1",), (None,))
    ns = manager_namespace(site)
    foreign = [f"session:{site.prefix}", f"other-app:{site.prefix}:config", f"{site.prefix}x:1"]
    for key in foreign:
        site.db.put(key, b"someone else's")
    managed = f"{ns}:42"
    site.db.put(managed, b"manager's")
    before = site.entries()
    try:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"keys": [foreign[0]]}, "is not the cache's"),
            ({"keys": [site.key("/api/events/1"), foreign[1]]}, "keys[1]"),
            ({"patterns": ["*"]}, "every key in the Redis database"),
            ({"patterns": ["**"]}, "every key in the Redis database"),
            ({"patterns": ["*:config"]}, "reaches outside the cache's namespaces"),
            ({"patterns": ["session:*"]}, "reaches outside the cache's namespaces"),
            ({"patterns": [f"{site.prefix}*"]}, "reaches outside"),  # `{prefix}x:...` too
            ({"patterns": [f"[s]ession:{site.prefix}"]}, "reaches outside"),
            ({"patterns": [f"{ns}*"]}, "reaches outside"),
            ({"patterns": [f"{site.prefix}:GET:*", "*"]}, "patterns[1]"),
        ]
        for body, message in cases:
            error = await refused(site, body, TOKEN, 400)
            assert message in error, (body, error)
            assert f"'{site.prefix}:'" in error and f"'{ns}:'" in error  # says what is allowed
        assert site.entries() == before
        assert all(site.db.exists(key) for key in [*foreign, managed])
        assert site.events() == []
        # The manager's declared namespace, and the prefix, are the cache's.
        reply = await site.admin("POST", "/invalidate", {"patterns": [f"{ns}:*"]})
        assert reply.json()["invalidated"] == 1 and not site.db.exists(managed)
        reply = await site.admin("POST", "/invalidate", {"keys": [site.key("/api/events/1")]})
        assert reply.json()["invalidated"] == 1
        assert all(site.db.exists(key) for key in foreign)
    finally:
        for key in foreign:
            site.db.unlink(key)


async def test_without_manager_namespaces_only_the_prefix_is_the_caches(memory_url: str) -> None:
    settings = load_config({"redis_url": memory_url, "key_prefix": "shop:cache"})
    store = AsyncMemoryStore()
    await store.set("events:1", b"x", 60)

    async def run(**items: Any) -> int:
        return await operations.invalidate(
            store, settings, Principal(None), InvalidateRequest(**items)
        )

    with pytest.raises(operations.OutsideNamespaces, match="manager_namespaces"):
        await run(patterns=["events:*"])
    with pytest.raises(ValueError, match="is not the cache's"):  # what a CLI prints
        await run(keys=["events:1"])
    assert await store.get("events:1") == b"x"
    assert await run(patterns=["shop:cache:*"]) == 0


def test_manager_namespaces_are_validated() -> None:
    assert load_config({}).manager_namespaces == ()
    assert load_config({"manager_namespaces": ["events", "user"]}).manager_namespaces == (
        "events",
        "user",
    )
    for bad in (["ev*"], ["a b"], ["events:"], "events", [""], ["a", "a"], [1]):
        with pytest.raises(Exception, match="manager_namespaces"):
            load_config({"manager_namespaces": bad})


# -- 8: what a glob may cost ----------------------------------------------------------------


async def test_globs_with_too_many_wildcards_are_a_400(site: Site) -> None:
    await seed_events(site, ("1",), (None, "t1"))
    before = site.entries()
    p = site.prefix
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"patterns": [f"{p}:GET:" + "*a" * 17]}, TOKEN, "at most 16 wildcards"),
        ({"patterns": [f"{p}:GET:" + "?" * 17]}, TOKEN, "at most 16 wildcards"),
        ({"patterns": [f"{p}:GET:" + "[a]" * 17]}, TOKEN, "at most 16 wildcards"),
        ({"paths": ["/api/" + "*a" * 17]}, TOKEN, "paths[0]: at most 16 wildcards"),
        ({"paths": ["/api/" + "*a" * 17]}, VENUE_TOKENS["t1"], "at most 16 wildcards"),
        (
            {"patterns": [f"{p}:GET:" + "*a" * 17 + ":venue:t1"]},
            VENUE_TOKENS["t1"],
            "at most 16 wildcards",
        ),
    ]
    for body, token, message in cases:
        assert message in await refused(site, body, token, 400)
    assert site.entries() == before
    at_limit = {"patterns": [f"{p}:GET:" + "*a" * 16], "dry_run": True}
    assert (await site.admin("POST", "/invalidate", at_limit)).status_code == 200


def test_the_glob_bounds_are_value_errors_a_cli_can_print() -> None:
    with pytest.raises(ValueError, match="at most 16 wildcards"):
        operations.check_glob("p:" + "*a" * 17)
    with pytest.raises(ValueError, match="at most 256 characters"):
        operations.check_glob("p:" + "x" * 256)


async def test_a_catastrophic_venue_glob_on_the_memory_store_is_quick(memory_url: str) -> None:
    prefix = f"cmtest:{uuid.uuid4().hex[:8]}"
    site = open_site("memory", memory_url, prefix)
    try:
        site.db.put(f"{prefix}:GET:/api/events/" + "a" * 60 + ":venue:t1", b"x")
        start = time.perf_counter()
        reply = await site.admin(
            "POST",
            "/invalidate",
            {"paths": ["/api/events/*a*a*a*a*a*a*!"]},
            token=VENUE_TOKENS["t1"],
        )
        assert reply.status_code == 200
        assert time.perf_counter() - start < 1.0
    finally:
        await site.aclose()


# -- 10: the body limit -----------------------------------------------------------------------


class Body:
    """An endless-enough request body, counting what was pulled from it."""

    def __init__(self, total: int, chunk: int = 16 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0

    async def stream(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            self.sent += self.chunk
            yield b" " * self.chunk


def limited_admin(prefix: str, url: str) -> Any:
    config = {"redis_url": url, "key_prefix": prefix, "venue_header": "X-Venue"}
    return BodyLimit(
        create_admin_app(config, token=TOKEN, venue_tokens=VENUE_TOKENS), limit=MAX_BODY
    )


async def post(app: Any, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(
            "/invalidate",
            content=body,
            headers={"Authorization": f"Bearer {VENUE_TOKENS['t1']}", **(headers or {})},
        )


def assert_413(reply: httpx.Response) -> None:
    assert reply.status_code == 413
    assert reply.json() == {"success": False, "error": f"request body over {MAX_BODY} bytes"}
    assert reply.headers["cache-control"] == "no-store"


async def test_a_chunked_body_is_cut_off_at_the_limit(prefix: str, memory_url: str) -> None:
    body = Body(64 * 1024 * 1024)
    assert_413(await post(limited_admin(prefix, memory_url), body.stream()))
    assert body.sent <= MAX_BODY + body.chunk  # 64 KiB read, not 64 MiB


async def test_a_declared_length_over_the_limit_reads_nothing(prefix: str, memory_url: str) -> None:
    body = Body(64 * 1024 * 1024)
    headers = {"Content-Length": str(64 * 1024 * 1024)}
    assert_413(await post(limited_admin(prefix, memory_url), body.stream(), headers))
    assert body.sent <= body.chunk  # the transport's first chunk at most: the app read none


async def test_a_lying_content_length_is_cut_off_too(prefix: str, memory_url: str) -> None:
    body = Body(8 * 1024 * 1024)
    headers = {"Content-Length": "10"}
    assert_413(await post(limited_admin(prefix, memory_url), body.stream(), headers))
    assert body.sent <= MAX_BODY + body.chunk


async def test_bodies_within_the_limit_are_served(prefix: str, memory_url: str) -> None:
    app = limited_admin(prefix, memory_url)
    exact = json.dumps({"paths": ["/api/x"], "dry_run": True}).encode()
    reply = await post(app, exact.ljust(MAX_BODY))  # JSON allows the trailing spaces
    assert reply.status_code == 200, reply.text
    assert_413(await post(app, exact.ljust(MAX_BODY + 1)))


async def test_the_admin_app_applies_the_body_limit(prefix: str, memory_url: str) -> None:
    config = {"redis_url": memory_url, "key_prefix": prefix}
    body = Body(64 * 1024 * 1024)
    reply = await post(
        create_admin_app(config, token=TOKEN, venue_tokens=VENUE_TOKENS), body.stream()
    )
    assert reply.status_code == 413
    assert body.sent <= MAX_BODY + body.chunk


# -- through a Flask mount --------------------------------------------------------------------


@pytest.fixture
def flask_admin(memory_url: str, prefix: str) -> Iterator[tuple[Flask, Any]]:
    config = {
        "redis_url": memory_url,
        "key_prefix": prefix,
        "venue_header": "X-Venue",
        "routes": {"/api/items/{item_id}": {"ttl": 60}},
    }
    admin = create_admin_app(config, token=TOKEN, venue_tokens=VENUE_TOKENS)
    mounted = ASGIMiddleware(BodyLimit(admin))  # type: ignore[arg-type]
    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/admin/cache": mounted})  # type: ignore[method-assign]
    store = admin.state.store
    asyncio.run(store.set(f"{prefix}:GET:/api/items/1:venue:t2", b"x", 60))
    asyncio.run(store.set(f"session:{prefix}", b"x", 60))
    yield app, store


def test_through_a_flask_mount(flask_admin: tuple[Flask, Any], prefix: str) -> None:
    app, store = flask_admin
    client = app.test_client()

    def invalidate(body: Any, token: str) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return client.post(
            "/admin/cache/invalidate",
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            buffered=True,
        )

    reply = invalidate({"patterns": [f"{prefix}:GET:*[:venue:t1"]}, VENUE_TOKENS["t1"])
    assert reply.status_code == 403
    reply = invalidate({"keys": [f"session:{prefix}"]}, TOKEN)
    assert reply.status_code == 400 and "is not the cache's" in reply.json["error"]
    reply = invalidate({"patterns": ["*"]}, TOKEN)
    assert reply.status_code == 400
    reply = invalidate(b" " * (MAX_BODY + 1), TOKEN)
    assert reply.status_code == 413
    sizes = asyncio.run(store.sizes([f"{prefix}:GET:/api/items/1:venue:t2", f"session:{prefix}"]))
    assert sizes == [1, 1]
