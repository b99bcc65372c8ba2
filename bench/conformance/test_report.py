"""report.py on small hand-made runs: `.venv/bin/pytest bench/conformance` (no node, no suite)."""

from __future__ import annotations

from typing import Any

import pytest
from causes import CAUSES, TEST_CAUSE, UNCLASSIFIED
from report import (
    BEGIN,
    END,
    blockers,
    comparison_table,
    describe_run,
    render,
    replace_generated,
    work_queue,
)


def _test(tid: str, kind: str, result: str, official: str | None = None) -> dict[str, Any]:
    raw: Any = True if result in ("pass", "yes") else ["Assertion", f"{tid} failed"]
    return {
        "id": tid,
        "suite": "s",
        "kind": kind,
        "result": result,
        "official": official or result,
        "raw": raw,
        "others_pass": 3,
    }


# freshness-none (a check, cause standard-mode) fails; everything depends on it.
# age-a fails its own assertions (age-current); age-b passes but depends on age-a;
# cdn-a fails (cdn-cache-control) and depends on nothing; plain passes under both scorings.
CATALOGUE: dict[str, dict[str, Any]] = {
    "freshness-none": {"name": "none", "depends_on": []},
    "age-a": {"name": "age a", "depends_on": ["freshness-none"]},
    "age-b": {"name": "age b", "depends_on": ["age-a"]},
    "cdn-a": {"name": "cdn a", "depends_on": []},
    "plain": {"name": "plain", "depends_on": []},
    "opt": {"name": "opt", "depends_on": ["freshness-none"]},
}
TESTS = [
    _test("freshness-none", "check", "no"),
    _test("age-a", "required", "fail", "dependency_fail"),
    _test("age-b", "required", "pass", "dependency_fail"),
    _test("cdn-a", "required", "fail"),
    _test("plain", "required", "pass"),
    _test("opt", "optimal", "optional_fail", "dependency_fail"),
]
RESULTS = {t["id"]: t for t in TESTS}
CAUSE_OF = {
    "freshness-none": "standard-mode",
    "age-a": "age-current",
    "cdn-a": "cdn-cache-control",
    "opt": "standard-mode",
}


@pytest.fixture(autouse=True)
def _causes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("report.TEST_CAUSE", CAUSE_OF)


def test_every_listed_test_names_a_known_cause() -> None:
    assert set(TEST_CAUSE.values()) <= set(CAUSES)
    assert UNCLASSIFIED not in CAUSES


def test_blockers_are_own_cause_plus_every_failed_prerequisites() -> None:
    assert blockers("plain", RESULTS, CATALOGUE) == frozenset()
    assert blockers("cdn-a", RESULTS, CATALOGUE) == {"cdn-cache-control"}
    assert blockers("age-a", RESULTS, CATALOGUE) == {"age-current", "standard-mode"}
    # age-b passes its own assertions: only its prerequisites hold it back.
    assert blockers("age-b", RESULTS, CATALOGUE) == {"age-current", "standard-mode"}


def test_a_failing_test_with_no_cause_is_unclassified() -> None:
    results = {**RESULTS, "plain": _test("plain", "required", "fail")}
    assert blockers("plain", results, CATALOGUE) == {UNCLASSIFIED}


def test_work_queue_orders_by_official_gain_after_the_causes_above() -> None:
    queue = work_queue(RESULTS, CATALOGUE)
    # cdn alone gains 1; standard-mode alone gains nothing (age-a still fails) but blocks 2,
    # age-current alone gains nothing either; after cdn, neither gains alone: ties go to blocks.
    assert [r.cause for r in queue] == ["cdn-cache-control", "age-current", "standard-mode"]
    assert [r.official_after for r in queue] == [2, 2, 4]
    assert queue[2].gains == ["age-a", "age-b"]
    assert queue[0].own_required == ["cdn-a"]
    standard = queue[2]
    assert standard.blocks == ["age-a", "age-b"] and standard.own_optimal == ["opt"]


def test_untested_tests_are_not_scored() -> None:
    results = {**RESULTS, "cdn-a": _test("cdn-a", "required", "untested")}
    assert "cdn-cache-control" not in [r.cause for r in work_queue(results, CATALOGUE)]


def _summary() -> dict[str, Any]:
    def counts(req: int, opt: int) -> dict[str, int]:
        return {"required_pass": req, "required": 160, "optimal_pass": opt, "optimal": 105}

    ours = "cache-middleware (memory)"
    own = {ours: counts(129, 66), "nginx 1.28.0": counts(115, 66), "ATS 9.2.5": counts(136, 74)}
    official = {ours: counts(16, 8), "nginx 1.28.0": counts(99, 59), "ATS 9.2.5": counts(132, 70)}
    return {
        "name": ours,
        "tests": TESTS,
        "own_assertions": {"comparison": own},
        "official": {"comparison": official},
    }


def test_comparison_table_puts_ours_first_and_the_published_in_the_issues_order() -> None:
    lines = comparison_table(_summary()).splitlines()
    assert lines[0] == "| | cache-middleware | ATS | nginx |"
    assert lines[2] == "| required, each test on its own assertions | **129/160** | 136 | 115 |"
    assert lines[3] == "| required, official (dependencies honoured) | **16/160** | 132 | 99 |"
    assert lines[4] == "| optimal, own assertions | **66/105** | 74 | 66 |"
    assert "ATS 9.2.5, nginx 1.28.0" in lines[-1]


def test_describe_run_reads_the_harness_meta() -> None:
    meta = (
        "cache-middleware: ea10b31+dirty    cache-tests: b55b8bda3dbb    store: memory    "
        "strip-noise: 0\nnode: v20.20.2    python: Python 3.11.7    run: 2026-01-01T00:00:00Z\n"
    )
    assert describe_run(meta) == (
        "cache-middleware ea10b31+dirty, cache-tests b55b8bd, memory "
        "store, node v20.20.2, Python 3.11.7, 2026-01-01T00:00:00Z"
    )


def test_render_lists_failures_by_cause_between_the_markers() -> None:
    text = render(_summary(), CATALOGUE, "store: memory", "python bench/conformance/run.py")
    assert text.startswith(BEGIN) and text.endswith(END)
    assert "| `cdn-a` | required | cdn a |" in text
    assert CAUSES["cdn-cache-control"].why in text
    assert "Also holds back 1 required tests that pass their own assertions: `age-b`." in text
    assert "`plain`" not in text


def test_replace_generated_keeps_the_hand_written_text() -> None:
    doc = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    assert replace_generated(doc, f"{BEGIN}\nnew\n{END}") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"


def test_replace_generated_refuses_a_document_without_markers() -> None:
    with pytest.raises(ValueError, match="markers not found"):
        replace_generated("no markers here\n", f"{BEGIN}\n{END}")
