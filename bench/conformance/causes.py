"""Why each cache-tests test that the project does not pass fails, grouped by cause.

Hand-written from reading each failing test against the code (issue 20); report.py groups the
failures of a run by these causes and ranks the causes by how many required tests each blocks.
A test that fails and is not listed here shows up as "unclassified": read it with
`run.sh -i TEST_ID` (every request and response printed), then add it below.
A test listed here that passes is simply not shown, so fixed tests need no edit.
"""

from __future__ import annotations

from typing import NamedTuple


class Cause(NamedTuple):
    title: str
    why: str


UNCLASSIFIED = "unclassified"

CAUSES: dict[str, Cause] = {
    "standard-mode": Cause(
        "No standard mode: a response without explicit freshness is reused",
        "Every route stores a response for its TTL even when it has no `max-age`, `s-maxage` "
        "or `Expires` (gateway mode), so `freshness-none` says the cache reuses such a "
        "response; 310 of the suite's tests list it as a prerequisite. Fix: the standard "
        "shared-cache mode (freshness from the response, else heuristic per RFC 9111 4.2.2, "
        "else not reused), selected by bench/conformance/cache.yaml.",
    ),
    "statuses": Cause(
        "Statuses a route may not store",
        "Standard mode stores any final status but 206 and 304 when the app gives it explicit "
        "freshness, and uses heuristic freshness only for the heuristically cacheable "
        "statuses (RFC 9110 15.1): a `599` with only `Cache-Control: public` and "
        "`Last-Modified` is not stored (the cache-poisoned denial-of-service guard of "
        "docs/security.md; optimal only).",
    ),
    "revalidation": Cause(
        "No revalidation (RFC 9111 4.3)",
        "A stale entry, a `no-cache` or `must-revalidate` response is never revalidated: the "
        "cache sends an unconditional request and replaces the entry, so the origin (which "
        "expects `If-None-Match` / `If-Modified-Since`) answers its 999 marker or a full "
        "200, and a 304 never updates stored headers (4.3.4). Fix: keep stale entries with "
        "validators, send a conditional request (with the stored Vary'd request headers), "
        "merge a 304's headers, serve.",
    ),
    "age-current": Cause(
        "Age: the upstream age is dropped",
        "On a MISS the upstream `Age` is not passed on, on a HIT `Age` is the time spent in "
        "this cache only (RFC 9111 4, 5.1: current_age includes the upstream age), and an "
        "upstream `Age` shortens a `max-age` lifetime but not an `Expires - Date` one "
        "(4.2.1, 4.2.3).",
    ),
    "age-parse": Cause(
        "Age: a list or several lines count as 0 or the last",
        "`Age: 7200, 0` counts as 0 and of several `Age` lines the last wins; RFC 9111 5.1: "
        "use the first member (an invalid value makes the response stale).",
    ),
    "cdn-cache-control": Cause(
        "CDN-Cache-Control (RFC 9213) ignored",
        "`CDN-Cache-Control` is not read, so its `max-age`, `no-store`, `no-cache` and "
        "`private` do not override `Cache-Control` / `Expires` for this cache (and, in standard "
        "mode, a response fresh by it alone is not reused). Fix: honour it (and "
        "`Surrogate-Control`) as this cache's own directives, first, when present.",
    ),
    "stale-on-error": Cause(
        "No stale answer when the origin connection drops",
        "`stale-close` expects a stale entry to be served when the origin closes the "
        "connection (RFC 9111 4.2.4 allows it when disconnected); the configuration has no "
        "`stale_if_error` window, so the entry is gone once its lifetime ends and the "
        "forwarding app's 502 goes out. Four required tests (`stale-close-must-revalidate`, "
        "`-proxy-revalidate`, `-no-cache`, `-s-maxage=2`: that those are *not* served stale) "
        "list it as a prerequisite. Fix: standard mode keeps stale entries (revalidation needs "
        "them too) and serves one when the app fails (never one that must be revalidated), or "
        "the standard configuration sets `stale_if_error`.",
    ),
    "range": Cause(
        "No Range answers from a stored response",
        "A Range request is answered from a stored whole 200 (RFC 9110 14), but a 206 is "
        "never stored: partial content is neither kept, combined nor completed (optimal "
        "only; at most one published cache does any of it).",
    ),
    "unknown-method": Cause(
        "Unknown methods invalidate nothing",
        "Only POST, PUT, PATCH and DELETE invalidate; RFC 9111 4.4 includes methods whose "
        "safety is unknown (`M-SEARCH`, custom ones).",
    ),
    "location-invalidation": Cause(
        "Location / Content-Location not invalidated",
        "An unsafe method's successful response invalidates the request URI only, not the "
        "URIs in its `Location` / `Content-Location` (RFC 9111 4.4, same origin).",
    ),
    "set-cookie": Cause(
        "A response with Set-Cookie is never stored",
        "A deliberate guard (policy.md, `detail=set-cookie`): one client's session must not "
        "be replayed to another. RFC 9111 lets a shared cache store and replay `Set-Cookie` "
        "when the response is otherwise storable, and `headers-store-Set-Cookie` requires it "
        "to be kept when stored. Decide: store it in standard mode only (documented), or "
        "keep the guard and the failure.",
    ),
    "vary-normalise": Cause(
        "Vary values compared byte for byte",
        "Selecting values are normalised (list whitespace, Accept-Language order and case), "
        "but the variant is not chosen by `Content-Language` against the request's "
        "`Accept-Language` q-values (optimal only; no published cache does it).",
    ),
    "conditional-from-cache": Cause(
        "Conditional requests answered from a stored entry",
        "A request's `If-Modified-Since` against a fresh stored response with no "
        "`Last-Modified` is passed on or answered 200 instead of 304; after a revalidation the "
        "client's own `If-Modified-Since` is answered with the refreshed 200 rather than a 304 "
        "(optimal only).",
    ),
    "method-post": Cause(
        "POST responses not reused",
        "A POST response with `Content-Location` equal to its URL and explicit freshness may "
        "be reused for GET (RFC 9111 4; optimal only, no published cache does it).",
    ),
    "must-understand": Cause(
        "must-understand not honoured",
        "`no-store, must-understand` on a recognised status should be stored (RFC 9111 "
        "5.2.2.3); `no-store` wins (optimal only).",
    ),
    "harness": Cause(
        "Limits of the harness's proxy (h11 / httpx / ASGI), not of the cache",
        "The shared harness forwards through httpx under uvicorn: httpx refuses a "
        "`Transfer-Encoding` other than chunked (the proxy answers 502), and neither httpx nor "
        "ASGI passes 1xx interim responses (102, 103) on. Only a different forwarding stack "
        "would change these.",
    ),
}

TEST_CAUSE: dict[str, str] = {
    "freshness-none": "standard-mode",
    # statuses
    **{
        f"status-{code}-fresh": "statuses"
        for code in (299, 302, 303, 307, 400, 499, 500, 502, 503, 504, 599)
    },
    "heuristic-599-cached": "statuses",
    "status-200-must-understand": "must-understand",
    # revalidation
    "cc-resp-must-revalidate-stale": "revalidation",
    "cc-resp-no-cache-revalidate": "revalidation",
    "cc-resp-no-cache-revalidate-fresh": "revalidation",
    "conditional-etag-vary-headers": "revalidation",
    "conditional-etag-strong-generate": "revalidation",
    "conditional-etag-weak-generate-weak": "revalidation",
    "304-lm-use-stored-Test-Header": "revalidation",
    **{
        f"304-etag-update-response-{field}": "revalidation"
        for field in (
            "Test-Header",
            "X-Test-Header",
            "Content-Foo",
            "X-Content-Foo",
            "Cache-Control",
            "Content-Length",
        )
    },
    # Age
    "freshness-max-age-age": "age-current",
    "freshness-expires-age-slow-date": "age-current",
    "freshness-expires-age-fast-date": "age-current",
    "other-age-update-expires": "age-current",
    "other-age-update-max-age": "age-current",
    "age-parse-suffix": "age-parse",
    "age-parse-suffix-twoline": "age-parse",
    "age-parse-prefix-twoline": "age-parse",
    # CDN-Cache-Control
    **{
        f"cdn-{name}": "cdn-cache-control"
        for name in (
            "max-age-age",
            "max-age-0",
            "max-age-0-expires",
            "max-age-long-cc-max-age",
            "private",
            "no-cache",
            "no-store-cc-fresh",
            "fresh-cc-nostore",
            "max-age-expires",
            "max-age-cc-max-age-invalid-expires",
            "max-age-short-cc-max-age",
            # Stored only for CDN-Cache-Control's max-age: fail once standard mode stops reusing
            # responses without Cache-Control freshness.
            "max-age",
            "max-age-max",
            "max-age-max-plus",
            "max-age-extension",
        )
    },
    "stale-close": "stale-on-error",
    # Range
    **{
        f"partial-{name}": "range"
        for name in (
            "use-headers",
            "use-stored-headers",
            "store-partial-reuse-partial",
            "store-complete-reuse-partial",
            "store-complete-reuse-partial-no-last",
            "store-complete-reuse-partial-suffix",
            "store-partial-reuse-partial-byterange",
            "store-partial-reuse-partial-absent",
            "store-partial-reuse-partial-suffix",
            "store-partial-complete",
        )
    },
    "invalidate-M-SEARCH": "unknown-method",
    **{
        f"invalidate-{method}-{field}": "location-invalidation"
        for method in ("POST", "PUT", "DELETE", "M-SEARCH")
        for field in ("location", "cl")
    },
    "headers-store-Set-Cookie": "set-cookie",
    "other-set-cookie": "set-cookie",
    **{
        f"vary-normalise-{name}": "vary-normalise"
        for name in ("lang-order", "lang-case", "lang-space", "lang-select", "space")
    },
    "conditional-lm-fresh-no-lm": "conditional-from-cache",
    "conditional-lm-stale": "conditional-from-cache",
    "method-POST": "method-post",
    "headers-store-Transfer-Encoding": "harness",
    "interim-102": "harness",
    "interim-103": "harness",
    "interim-not-cached": "harness",
    "interim-no-header-reuse": "harness",
}
