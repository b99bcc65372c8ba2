"""Fill-lease tokens: unique, and cheap enough for every MISS.

A token proves which request holds a fill lease (`acquire_fill` stores it under the lock key;
`store_fill` and `release_fill` act only if it is still there), so two requests must never draw
the same one. A random prefix per process plus a counter gives that without a system call per
MISS (`secrets.token_hex` reads the kernel's random source each time). The prefix is drawn again
in a forked child: workers forked from one parent must not share it, or two of them could count
their way to the same token for the same key.
"""

from __future__ import annotations

import itertools
import os
import secrets

__all__ = ["lease_token"]

_prefix = secrets.token_hex(12)
_counter = itertools.count()


def lease_token() -> str:
    """A token no other lease of any process draws (next() on a count is atomic in CPython)."""
    return f"{_prefix}{next(_counter):x}"


def _redraw() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(12)
    _counter = itertools.count()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork to guard against
    os.register_at_fork(after_in_child=_redraw)
