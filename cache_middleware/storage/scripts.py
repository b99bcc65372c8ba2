"""The Lua scripts behind the Redis stores' compound operations, shared by sync and async.

Each compound operation (deletion + epoch bump, lease check + writes + index, ...) is one script,
so it is atomic and costs one round trip. Scripts run by EVALSHA and fall back to EVAL when the
server does not know them yet (first use, or after a restart or SCRIPT FLUSH).

Keys the scripts read or write are declared in KEYS, except the members of an index set, which
only the set knows: fine on a single Redis (what the stores support), not Redis Cluster.

Numbers cross as decimal strings: the epoch is compared as the string Redis stores, so a Lua
double never rounds it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .base import EPOCH_REGISTRY, Fill, Indexed, fill_epoch
from .health import is_wrong_type
from .resp import encode_arg

__all__ = [
    "ACQUIRE_FILL",
    "DELETE_INDEX",
    "DELETE_KEYS",
    "DRAIN_INDEX",
    "LOOKUP_OR_ACQUIRE",
    "RELEASE_FILL",
    "SET_INDEXED",
    "STORE_FILL",
    "Script",
    "acquire_fill_call",
    "detached_index_name",
    "evalsha_command",
    "lookup_or_acquire_call",
    "lookup_result",
    "peek_result",
    "run_async",
    "run_sync",
    "set_indexed_call",
    "store_fill_call",
]


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)
    # `EVALSHA <sha>` as RESP bulk strings: the start of every call, encoded once.
    evalsha_head: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode()).hexdigest()
        object.__setattr__(self, "sha", sha)
        object.__setattr__(self, "evalsha_head", b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % sha.encode())


# Lua 5.1's unpack() fails past a few thousand values (the C stack limit): big key lists go to
# UNLINK/SADD in slices of this size.
_LUA_HELPERS = """
local SLICE = 1000
local function unlink_all(list, from, protect)
  local n = 0
  local slice = {}
  for i = from, #list do
    if list[i] ~= protect then
      slice[#slice + 1] = list[i]
      if #slice == SLICE then
        n = n + redis.call('UNLINK', unpack(slice))
        slice = {}
      end
    end
  end
  if #slice > 0 then n = n + redis.call('UNLINK', unpack(slice)) end
  return n
end
local PRUNE_AT = 256
local PRUNE_SAMPLE = 32
local PRUNE_EVERY = 8
local function index_add(index, list, from, last, ttl)
  for i = from, last, SLICE do
    redis.call('SADD', index, unpack(list, i, math.min(i + SLICE - 1, last)))
  end
  -- Members outlive their entries (expired, evicted): a big index sheds a sample of dead ones
  -- every PRUNE_EVERY adds (up to PRUNE_SAMPLE / PRUNE_EVERY per add, more than the one an add
  -- brings), so it stays near the size of what is live instead of growing for ever, without
  -- costing every fill of a busy route a sample of EXISTS calls.
  local size = redis.call('SCARD', index)
  if size > PRUNE_AT and size % PRUNE_EVERY == 0 then
    for _, member in ipairs(redis.call('SRANDMEMBER', index, PRUNE_SAMPLE)) do
      if redis.call('EXISTS', member) == 0 then redis.call('SREM', index, member) end
    end
  end
  -- NX gives a new set its TTL; GT then only ever extends it: the index outlives its
  -- longest-lived member, and a shorter write never cuts it short (Redis >= 7).
  redis.call('EXPIRE', index, ttl, 'NX')
  redis.call('EXPIRE', index, ttl, 'GT')
end
"""


def _script(name: str, body: str) -> Script:
    return Script(name, f"-- cache-middleware {name}\n{_LUA_HELPERS}{body}")


# KEYS: epoch..., key...   ARGV: number of epochs   -> number of keys that existed.
# The epochs move even when nothing matched: the caller meant to invalidate, and a fill that
# read the data before this call must not store it after.
DELETE_KEYS = _script(
    "DELETE_KEYS",
    """
local epochs = tonumber(ARGV[1])
for i = 1, epochs do redis.call('INCR', KEYS[i]) end
if #KEYS == epochs then return 0 end
return unlink_all(KEYS, epochs + 1, KEYS[1])
""",
)

# KEYS: lock, epoch   ARGV: token, ttl_ms   -> epoch (string) if the lease was taken, else nil.
# KEYS: lock, epoch, epoch registry, [index]   ARGV: token, ttl_ms, index_ttl seconds or ''
# The lock joins the path's index, so that deleting the index (an unsafe method on the path)
# also takes the lease away: the fill under way can then no longer write (STORE_FILL).
_ACQUIRE = """
local function acquire(lock, epoch, registry, index, token, ttl_ms, index_ttl)
  if redis.call('SET', lock, token, 'NX', 'PX', ttl_ms) then
    redis.call('SADD', registry, epoch)
    if index_ttl ~= '' then
      redis.call('SADD', index, lock)
      redis.call('EXPIRE', index, index_ttl, 'NX')
      redis.call('EXPIRE', index, index_ttl, 'GT')
    end
    return redis.call('GET', epoch) or '0'
  end
  return false
end
"""

ACQUIRE_FILL = _script(
    "ACQUIRE_FILL",
    _ACQUIRE
    + """
return acquire(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
""",
)

# KEYS: key, lock, epoch, epoch registry, [index]   ARGV: as ACQUIRE_FILL's
# -> {value} when the key holds a string ('' when it holds another type: the caller reads that as
# an unreadable entry, as get() reports it); else {nil, epoch} with the lease taken, or {nil, nil}
# when someone else holds it. The lookup and the lease of a MISS in one round trip.
LOOKUP_OR_ACQUIRE = _script(
    "LOOKUP_OR_ACQUIRE",
    _ACQUIRE
    + """
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' and value.err then return {''} end
if value then return {value} end
return {false, acquire(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])}
""",
)

# KEYS: lock, epoch, index..., key...   ARGV: token, epoch, index_ttl, #indexes, value, ttl, ...
# -> 1 stored, 0 not (lease lost or an invalidation since acquire_fill: nothing written).
STORE_FILL = _script(
    "STORE_FILL",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 0
end
local indexes = tonumber(ARGV[4])
local first = 3 + indexes
for i = first, #KEYS do
  local j = 5 + 2 * (i - first)
  redis.call('SET', KEYS[i], ARGV[j], 'EX', ARGV[j + 1])
end
if #KEYS >= first then
  for x = 3, first - 1 do
    index_add(KEYS[x], KEYS, first, #KEYS, ARGV[3])
  end
end
-- The lease joined the path index (ACQUIRE_FILL); it leaves it with the lock.
for x = 3, first - 1 do
  redis.call('SREM', KEYS[x], KEYS[1])
end
redis.call('DEL', KEYS[1])
return 1
""",
)

# KEYS: lock   ARGV: token   -> 1 released, 0 not ours (expired, or someone else's now).
RELEASE_FILL = _script(
    "RELEASE_FILL",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)

# KEYS: key, index   ARGV: value, ttl, index_ttl
SET_INDEXED = _script(
    "SET_INDEXED",
    """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
index_add(KEYS[2], KEYS, 1, 1, ARGV[3])
return 1
""",
)

# Pops up to `batch` members off a detached index and unlinks them.
_DRAIN = """
local function drain(set, batch, protect)
  local members = redis.call('SPOP', set, batch)
  local n = 0
  if #members > 0 then n = unlink_all(members, 1, protect) end
  return {n, redis.call('SCARD', set)}
end
"""

# KEYS: epoch, index, detached   ARGV: batch   -> {deleted, members left in `detached`}.
# The index is renamed away first, so fills that store after this call start a fresh index
# instead of adding to one that is being torn down (their members would be lost with it).
# A big index is then drained by DRAIN_INDEX one batch per round trip, never blocking Redis
# for long; if the caller dies midway, the detached set still expires with the index's TTL.
DELETE_INDEX = _script(
    "DELETE_INDEX",
    _DRAIN
    + """
if redis.call('TYPE', KEYS[2])['ok'] ~= 'set' then
  return {0, 0}
end
redis.call('RENAME', KEYS[2], KEYS[3])
return drain(KEYS[3], ARGV[1], KEYS[1])
""",
)

# KEYS: epoch, detached   ARGV: batch   -> {deleted, members left}.
DRAIN_INDEX = _script(
    "DRAIN_INDEX",
    _DRAIN
    + """
return drain(KEYS[2], ARGV[1], KEYS[1])
""",
)


def acquire_fill_call(
    lock_key: str, token: str, ttl_ms: int, index_key: str | None
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ACQUIRE_FILL; the index outlives the lock by at least the lock's TTL."""
    epoch, lock_ttl = fill_epoch(lock_key), b"%d" % ttl_ms
    if index_key is None:
        return [lock_key, epoch, EPOCH_REGISTRY], [token, lock_ttl, ""]
    return [lock_key, epoch, EPOCH_REGISTRY, index_key], [
        token,
        lock_ttl,
        b"%d" % max(1, -(-ttl_ms // 1000)),
    ]


def lookup_or_acquire_call(
    key: str, lock_key: str, token: str, ttl_ms: int, index_key: str | None
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for LOOKUP_OR_ACQUIRE: the entry's key ahead of ACQUIRE_FILL's."""
    keys, args = acquire_fill_call(lock_key, token, ttl_ms, index_key)
    return [key, *keys], args


def lookup_result(reply: Any) -> tuple[bytes | None, int | None]:
    """LOOKUP_OR_ACQUIRE's reply as (value, epoch of the lease taken)."""
    if not isinstance(reply, list) or not 1 <= len(reply) <= 2:
        raise ConnectionError(f"unexpected reply to LOOKUP_OR_ACQUIRE: {reply!r}")
    if len(reply) == 1:
        value = reply[0]
        return (value if isinstance(value, bytes) else str(value).encode()), None
    epoch = reply[1]
    return None, None if epoch is None else int(epoch)


def store_fill_call(fill: Fill) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for STORE_FILL."""
    lock_key, indexes = fill.lock_key, fill.index_keys
    keys = [lock_key, fill_epoch(lock_key), *indexes]
    index_ttl = b"%d" % fill.index_ttl if indexes else b"0"
    args: list[Any] = [fill.token, b"%d" % fill.epoch, index_ttl, b"%d" % len(indexes)]
    for key, value, ttl in fill.writes:
        keys.append(key)
        args += [value, b"%d" % ttl]
    return keys, args


def set_indexed_call(entry: Indexed) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for SET_INDEXED."""
    return [entry.key, entry.index_key], [entry.value, entry.ttl, entry.index_ttl]


def evalsha_command(script: Script, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """EVALSHA of `script` in RESP, as the lean connections send it (pipelined_get.py,
    direct_get.py): built in one list, the script's head encoded once (a MISS sends two)."""
    count = b"%d" % len(keys)
    out = [
        b"*%d\r\n" % (3 + len(keys) + len(args)),
        script.evalsha_head,
        b"$%d\r\n%b\r\n" % (len(count), count),
    ]
    append = out.append
    for key in keys:
        data = key.encode()
        append(b"$%d\r\n%b\r\n" % (len(data), data))
    # The fill scripts' builders above give their numbers as bytes: no encode_arg call on
    # the MISS path (each one a tenth of this function's cost).
    for item in args:
        kind = type(item)
        data = item if kind is bytes else item.encode() if kind is str else encode_arg(item)
        append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def run_sync(client: redis.Redis, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(script.source, len(keys), *keys, *args)


async def run_async(
    client: redis.asyncio.Redis, script: Script, keys: Sequence[str], args: Sequence[Any]
) -> Any:
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.source, len(keys), *keys, *args)


def detached_index_name(index_key: str) -> str:
    """A name no other call uses, for an index being torn down (see DELETE_INDEX)."""
    return f"{index_key}:deleting:{uuid.uuid4().hex}"


def peek_result(value: Any, exists: Any) -> tuple[bytes | None, bool]:
    """peek_fill's pipeline replies (GET, EXISTS), errors raised as get() would raise them."""
    if isinstance(exists, Exception):
        raise exists
    if isinstance(value, Exception):
        if not is_wrong_type(value):
            raise value
        value = b""  # a foreign value under the key, reported as get() reports it
    return value, bool(exists)
