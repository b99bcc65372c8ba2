"""HTTP-date parsing (RFC 9110 §5.6.7): the three forms a recipient must accept, nothing else.

The invalid forms are those of the public cache-tests suite (expires-parse.mjs): a cache that
reads them as dates stores an `Expires` response RFC 9111 §5.3 says is already expired.
"""

from __future__ import annotations

import calendar

import pytest

from cache_middleware._core.headers import parse_http_date

AUG_18_2050 = calendar.timegm((2050, 8, 18, 2, 1, 18, 0, 0, 0))
NOW_2026 = calendar.timegm((2026, 12, 5, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "value",
    [
        b"Thu, 18 Aug 2050 02:01:18 GMT",  # IMF-fixdate
        b"THU, 18 Aug 2050 02:01:18 GMT",  # names compare case-insensitively
        b"Thu, 18 AUG 2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 02:01:18 gMT",
        b"Thursday, 18-Aug-50 02:01:18 GMT",  # obsolete RFC 850 form
        b"Thu Aug 18 02:01:18 2050",  # asctime
        b"  Thu, 18 Aug 2050 02:01:18 GMT ",  # surrounding whitespace is not the value's
    ],
)
def test_the_three_forms_are_read(value: bytes) -> None:
    assert parse_http_date(value, now=NOW_2026) == AUG_18_2050


def test_asctime_pads_a_one_digit_day_with_a_space() -> None:
    assert parse_http_date(b"Thu Aug  8 02:01:18 2050") == calendar.timegm(
        (2050, 8, 8, 2, 1, 18, 0, 0, 0)
    )


@pytest.mark.parametrize(
    "value",
    [
        b"Thu, 18 Aug 2050 02:01:18 UTC",
        b"Thu, 18 Aug 2050 02:01:18 AEST",
        b"Thu, 18 Aug 50 02:01:18 GMT",  # two-digit year outside the RFC 850 form
        b"Thu 18 Aug 2050 02:01:18 GMT",  # no comma
        b"Thu, 18  Aug  2050 02:01:18 GMT",  # several spaces
        b"Thu, 18-Aug-2050 02:01:18 GMT",  # dashes in IMF-fixdate
        b"Thu, 18 Aug 2050 02.01.18 GMT",  # periods
        b"Thu, 18 Aug 2050 2:01:18 GMT",  # one-digit hour
        b"Thu, 18 Aug 2050 02:01:18 +0000",
        b"Xyz, 18 Aug 2050 02:01:18 GMT",
        b"Thu, 18 Foo 2050 02:01:18 GMT",
        b"Thu, 31 Feb 2050 02:01:18 GMT",
        b"Thu, 18 Aug 2050 24:01:18 GMT",
        b"0",
        b"-1",
        b"",
        b"\xff\xfe",
    ],
)
def test_anything_else_is_invalid(value: bytes) -> None:
    assert parse_http_date(value) is None


def test_an_rfc850_year_more_than_50_years_ahead_is_the_last_century() -> None:
    # RFC 9110 §5.6.7: from 2026, "80" is 1980, not 2080; "50" is 2050.
    assert parse_http_date(b"Sunday, 06-Nov-80 08:49:37 GMT", now=NOW_2026) == calendar.timegm(
        (1980, 11, 6, 8, 49, 37, 0, 0, 0)
    )


def test_far_future_and_32_bit_dates() -> None:
    assert parse_http_date(b"Tue, 19 Jan 2038 14:14:08 GMT") == calendar.timegm(
        (2038, 1, 19, 14, 14, 8, 0, 0, 0)
    )
    assert parse_http_date(b"Sun, 21 Nov 2286 04:46:39 GMT") == calendar.timegm(
        (2286, 11, 21, 4, 46, 39, 0, 0, 0)
    )
