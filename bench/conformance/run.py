"""Run the public HTTP caching suite against this checkout and regenerate docs/conformance.md.

usage: python bench/conformance/run.py [--store memory|redis] [--from-results DIR] [--no-docs]

Calls the shared harness (`run.sh` of ../shared/conformance beside this checkout, or
CONFORMANCE_HARNESS) with CT_CONFIG=bench/conformance/cache.yaml and PROJECT=this checkout,
then writes the table, the work queue and the failing tests between the markers of
docs/conformance.md (the text outside them is kept). Needs what the harness needs: git, node >= 18
with npm, python3 >= 3.10; without network access to GitHub, CACHE_TESTS_GIT pointing at a clone
or bare mirror of http-tests/cache-tests. Its other knobs (CT_WORK, ORIGIN_PORT, PROXY_PORT,
CACHE_TESTS_REF...) pass through. Standard library only: it runs from a clean clone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from report import render, replace_generated

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
DOC = PROJECT / "docs" / "conformance.md"
COMMAND = "python bench/conformance/run.py"


def harness_dir() -> Path:
    found = Path(os.environ.get("CONFORMANCE_HARNESS", PROJECT.parent / "shared" / "conformance"))
    if not (found / "run.sh").is_file():
        sys.exit(
            f"no harness at {found} (run.sh): set CONFORMANCE_HARNESS to the shared "
            "conformance folder"
        )
    return found


def run_harness(store: str) -> Path:
    """One run of the suite; returns the fresh folder holding its results."""
    work = Path(os.environ.get("CT_WORK", "/tmp/ct"))
    work.mkdir(parents=True, exist_ok=True)
    # A new folder per run, so that a failed run can never be read as this one's results.
    out = Path(tempfile.mkdtemp(prefix="conformance-", dir=work))
    env = dict(
        os.environ,
        PROJECT=str(PROJECT),
        CT_CONFIG=str(HERE / "cache.yaml"),
        CT_OUT=str(out),
        CT_WORK=str(work),
    )
    if "CACHE_TESTS_GIT" not in env:
        print(
            "CACHE_TESTS_GIT is not set: the harness clones the suite from GitHub", file=sys.stderr
        )
    subprocess.run(["bash", str(harness_dir() / "run.sh"), "--store", store], env=env, check=True)
    shutil.copy(work / "catalogue.json", out / "catalogue.json")  # the folder stands alone
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--store",
        choices=["memory", "redis"],
        default="memory",
        help="the store the cache uses (the issue's targets are on memory)",
    )
    ap.add_argument(
        "--from-results",
        type=Path,
        metavar="DIR",
        help="regenerate the docs from an earlier run's folder, without running",
    )
    ap.add_argument("--no-docs", action="store_true", help="run, but leave the docs as they are")
    a = ap.parse_args()

    out = a.from_results or run_harness(a.store)
    summary = json.loads((out / f"{a.store}.summary.json").read_text())
    catalogue = {t["id"]: t for t in json.loads((out / "catalogue.json").read_text())}
    meta = (out / f"{a.store}.meta.txt").read_text()
    print(f"results: {out}", file=sys.stderr)
    if a.no_docs:
        return
    generated = render(summary, catalogue, meta, COMMAND)
    DOC.write_text(replace_generated(DOC.read_text(), generated))
    print(f"wrote {DOC.relative_to(PROJECT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
