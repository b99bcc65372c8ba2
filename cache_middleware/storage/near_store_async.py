"""The near-cache in front of a store: reads through it, writes and deletions drop its copies.

near_store_sync.py is generated from near_store_async.py by scripts/unasync.py: edit the async
one, then run `python scripts/unasync.py`. The near-cache itself, and the rules that keep its
copies coherent, are near.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .base import AsyncStore, Fill, Indexed, get_then_acquire_async

if TYPE_CHECKING:
    from .near import NearCache

__all__ = ["NearAsyncStore"]


class NearAsyncStore:
    """A store that reads through a `NearCache`: everything else goes to `inner` (an
    `AsyncStore`), and this process's own writes and deletions drop the copies they touch."""

    # The near-cache's copy, without a coroutine; None: ask `get` (Redis may have it). The
    # near-cache's own method, bound once: a near-cache HIT makes no call in between.
    local_get: Callable[[str], bytes | None]

    def __init__(self, inner: AsyncStore, near: NearCache) -> None:
        self.inner = inner
        self.near = near
        self.local_get = near.get

    def __getattr__(self, name: str) -> Any:
        # Housekeeping, figures and anything a concrete store adds (breaker, monitor...).
        return getattr(self.inner, name)

    async def get(self, key: str) -> bytes | None:
        value = self.near.get(key)
        if value is not None:
            return value
        token = self.near.begin(key)
        try:
            value = await self.inner.get(key)
        except BaseException:
            self.near.abandon(key, token)
            raise
        self.near.offer(key, value, token)
        return value

    async def get_or_acquire(
        self, key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None = None
    ) -> tuple[bytes | None, int | None]:
        """`get`, and the fill lease when nothing is found (`AsyncRedisStore.get_or_acquire`;
        the two calls when the inner store has no such thing)."""
        value = self.near.get(key)
        if value is not None:
            return value, None
        merged = getattr(self.inner, "get_or_acquire", None)
        if merged is None:
            return await get_then_acquire_async(self, key, lock_key, token, ttl_ms, index_key)
        pending = self.near.begin(key)
        try:
            value, epoch = await merged(key, lock_key, token, ttl_ms, index_key)
        except BaseException:
            self.near.abandon(key, pending)
            raise
        self.near.offer(key, value, pending)
        return value, epoch

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        try:
            await self.inner.set(key, value, ttl)
        finally:
            self.near.invalidate((key,))

    async def delete(self, *keys: str) -> int:
        try:
            return await self.inner.delete(*keys)
        finally:
            self.near.invalidate(keys)

    async def delete_matching(self, pattern: str) -> int:
        try:
            return await self.inner.delete_matching(pattern)
        finally:
            self.near.invalidate_matching(pattern)

    async def delete_index(self, index_key: str) -> int:
        try:
            return await self.inner.delete_index(index_key)
        finally:
            # The index's members are not known here: drop every copy of this process (the
            # other processes drop exactly the members, when Redis reports them).
            self.near.flush()

    async def forget(self, key: str) -> None:
        try:
            await self.inner.forget(key)
        finally:
            self.near.invalidate((key,))

    async def store_fill(self, fill: Fill) -> bool:
        try:
            return await self.inner.store_fill(fill)
        finally:
            self.near.invalidate([key for key, _, _ in fill.writes])

    async def set_indexed(self, entry: Indexed) -> None:
        try:
            await self.inner.set_indexed(entry)
        finally:
            self.near.invalidate((entry.key,))

    async def aclose(self) -> None:
        await self.inner.aclose()
