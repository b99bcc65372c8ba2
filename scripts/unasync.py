"""Write the sync twins of the package's async code: `python scripts/unasync.py [--check]`.

Where the sync and the async code mirror each other line for line (the Redis stores' shared
operations, the near-cache store wrappers, the cache manager's plain operations), the async code
is the source and the sync code is generated from it, as httpcore and hishel do: each line goes
through a list of regex substitutions (`async def` -> `def`, `await ` -> ``, `AsyncX` -> `X`, plus
each target's own renames), and the result through `ruff format`. Every substitution of a target
must be used at least once, so a rename that no longer matches anything is noticed.

One addition to plain substitution: a line whose comment is `# unasync: async only` is left out
of the sync code, and when it opens a block (ends with `:`), so is the block. That is for the
event-loop bookkeeping the blocking code has no use for; everything else differs only in tokens.

Two kinds of target:
- a whole file: the source module gives the generated module (with a header saying so);
- a region inside one file: the lines between `# unasync: source begin` and
  `# unasync: source end` give the lines between `# unasync: generated begin` and
  `# unasync: generated end` (manager.py, whose twins share one module).

`--check` writes nothing and exits 1 when any generated code differs from what this script would
write (tests/test_unasync.py runs it, so `make test` and CI enforce it).
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORAGE = "cache_middleware/storage"

ASYNC_ONLY = re.compile(r"#\s*unasync:\s*async only\s*$")
SOURCE_BEGIN = "# unasync: source begin"
SOURCE_END = "# unasync: source end"
GENERATED_BEGIN = "# unasync: generated begin"
GENERATED_END = "# unasync: generated end"

# Every target's substitutions, applied in order after its own.
COMMON: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAwaitable, ", ""),
    (r"\bAwaitable\[([^\]]+)\]", r"\1"),
    (r"\baclose\b", "close"),
    (r"\bAsync([A-Z]\w*)", r"\1"),
]


@dataclass
class Target:
    source: str  # path from the repository root
    generated: str  # the same file for a region target
    subs: list[tuple[str, str]] = field(default_factory=list)  # this target's, before COMMON
    region: bool = False

    def rules(self) -> list[tuple[re.Pattern[str], str]]:
        return [(re.compile(pattern), repl) for pattern, repl in [*self.subs, *COMMON]]


TARGETS = [
    Target(
        f"{STORAGE}/redis_base_async.py",
        f"{STORAGE}/redis_base_sync.py",
        [
            (r"\bredis\.asyncio\.retry\b", "redis.retry"),
            (r"\bget_then_acquire_async\b", "get_then_acquire"),
            (r"\brun_async\b", "run_sync"),
            (r"\.pipelined_get\b", ".direct_get"),
            (r"\bPipelinedGetter\b", "DirectGetter"),
            (r"\b_getter\b", "_direct"),
            (r"\bgetter\b", "direct"),
        ],
    ),
    Target(
        f"{STORAGE}/near_store_async.py",
        f"{STORAGE}/near_store_sync.py",
        [
            (r"\bNearAsyncStore\b", "NearSyncStore"),
            (r"\bAsyncStore\b", "SyncStore"),
            (r"\bget_then_acquire_async\b", "get_then_acquire"),
        ],
    ),
    Target(
        "cache_middleware/manager.py",
        "cache_middleware/manager.py",
        [(r"\bAsyncStore\b", "SyncStore"), (r"\b_AsyncManagerBase\b", "_ManagerBase")],
        region=True,
    ),
]


class UnasyncError(Exception):
    pass


def unasync_lines(lines: list[str], target: Target, used: set[int]) -> list[str]:
    """The sync form of `lines` (each ending in a newline)."""
    rules = target.rules()
    out: list[str] = []
    skip_deeper_than: int | None = None  # dropping an async-only block: its opener's indent
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if ASYNC_ONLY.search(line):
            code = ASYNC_ONLY.sub("", line).rstrip()
            if code.endswith(":"):
                skip_deeper_than = indent
            continue
        for index, (pattern, repl) in enumerate(rules):
            line, count = pattern.subn(repl, line)
            if count:
                used.add(index)
        out.append(line)
    return out


def _ruff(args: list[str], text: str, path: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", path, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise UnasyncError(f"ruff {args[0]} failed on the code for {path}:\n{done.stderr}")
    return done.stdout


def ruff_format(text: str, path: str) -> str:
    """As `ruff check --fix` would sort the imports (renamed modules move) and `ruff format`
    would lay the code out (renamed code gets shorter), with the project's settings."""
    text = _ruff(["check", "--fix", "--select", "I", "--quiet", "--exit-zero"], text, path)
    return _ruff(["format", "--quiet"], text, path)


def header(target: Target) -> str:
    source = Path(target.source).name
    return (
        f"# Generated by scripts/unasync.py from {source}: do not edit this file.\n"
        f"# Edit {source}, then run `python scripts/unasync.py` (`--check` verifies).\n"
    )


def expected_file(target: Target, used: set[int]) -> str:
    lines = (ROOT / target.source).read_text().splitlines(keepends=True)
    body = "".join(unasync_lines(lines, target, used))
    return ruff_format(header(target) + body, target.generated)


def _between(lines: list[str], begin: str, end: str, path: str) -> tuple[int, int]:
    """Indexes of the marker lines `begin` and `end` (each present once)."""
    found = [i for i, line in enumerate(lines) if line.strip().startswith(begin)]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(found) != 1 or len(ends) != 1 or ends[0] < found[0]:
        raise UnasyncError(f"{path}: expected one {begin!r} ... {end!r} region")
    return found[0], ends[0]


def expected_region_file(target: Target, used: set[int]) -> str:
    """The whole file, its generated region rewritten from its source region."""
    path = ROOT / target.source
    lines = path.read_text().splitlines(keepends=True)
    start, stop = _between(lines, SOURCE_BEGIN, SOURCE_END, target.source)
    source = lines[start + 1 : stop]
    gen_start, gen_stop = _between(lines, GENERATED_BEGIN, GENERATED_END, target.source)
    if gen_start < stop:
        raise UnasyncError(f"{target.source}: the generated region must follow its source")
    body = ruff_format("".join(unasync_lines(source, target, used)), target.generated)
    marker = (
        f"{GENERATED_BEGIN}: the sync twin of the source region above, written by\n"
        "# scripts/unasync.py: do not edit; edit the source, then run scripts/unasync.py.\n"
    )
    return "".join([*lines[:gen_start], marker, "\n\n", body, "\n\n", *lines[gen_stop:]])


def expected(target: Target) -> str:
    used: set[int] = set()
    text = expected_region_file(target, used) if target.region else expected_file(target, used)
    rules = [*target.subs, *COMMON]
    unused = [rules[i][0] for i in range(len(target.subs)) if i not in used]
    if unused:
        raise UnasyncError(f"{target.source}: substitutions that match nothing: {unused}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    try:
        for target in TARGETS:
            want = expected(target)
            path = ROOT / target.generated
            have = path.read_text() if path.exists() else ""
            if have == want:
                continue
            if args.check:
                stale.append(target.generated)
                diff = difflib.unified_diff(
                    have.splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    f"{target.generated} (as it is)",
                    f"{target.generated} (as generated from {target.source})",
                )
                sys.stdout.writelines(diff)
            else:
                path.write_text(want)
                print(f"wrote {target.generated} from {target.source}")
    except UnasyncError as exc:
        print(f"unasync: {exc}", file=sys.stderr)
        return 2
    if stale:
        print(
            f"unasync: out of date: {', '.join(stale)} (run `python scripts/unasync.py`)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
