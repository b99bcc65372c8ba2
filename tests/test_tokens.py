"""Fill-lease tokens: unique within a process, across threads, and across forked workers."""

from __future__ import annotations

import os
import threading

import pytest

from cache_middleware._core.tokens import lease_token


def test_tokens_never_repeat_across_threads() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(lease_token() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [token for out in drawn for token in out]
    assert len(set(every)) == len(every) == 20000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_draws_tokens_of_its_own() -> None:
    """Two workers forked from one parent start from the same state: the child's prefix is
    drawn again, so the child's tokens are not the ones the parent (or a sibling) draws next."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next tokens and leave at once
        try:
            os.write(write, " ".join(lease_token() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [lease_token() for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)
    assert child[0][:24] != parent[0][:24]  # another prefix, not just another count
