# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http import ranges
from ovirt_imageio.http.errors import ProtocolError
from ovirt_imageio.http.ranges import (
    ContentRange,
    Range,
    format_content_range,
    format_unsatisfied_range,
    parse_content_range,
    parse_range,
    resolve_range,
)


def test_doctests() -> None:
    assert doctest.testmod(ranges).failed == 0


@pytest.mark.parametrize("value,expected", [
    ("bytes=0-0", Range(0, 0)),
    ("bytes=0-99", Range(0, 99)),
    ("bytes=100-", Range(100)),
    ("bytes=0-", Range(0)),
    ("bytes=5-5", Range(5, 5)),
    ("bytes=007-010", Range(7, 10)),
    ("bytes=1099511627776-", Range(1 << 40)),
    (" bytes = 1 - 2 ", Range(1, 2)),
    ("bytes=\t1-\t", Range(1)),
    ("BYTES=1-2", Range(1, 2)),
])
def test_parse_range(value: str, expected: Range) -> None:
    assert parse_range(value) == expected


@pytest.mark.parametrize("value,message", [
    ("bytes=-5", "Suffix range is not supported"),
    ("bytes= - 5", "Suffix range is not supported"),
    ("bytes=0-1,5-6", "Multiple ranges are not supported"),
    ("bytes=0-1,", "Multiple ranges are not supported"),
    ("bytes=-", "Invalid range"),
    ("bytes=", "Invalid range"),
    ("bytes=a-b", "Invalid range"),
    ("bytes=1", "Invalid range"),
    ("bytes=1-2-3", "Invalid range"),
    ("bytes=+1-2", "Invalid range"),
    ("bytes=1 2-3", "Invalid range"),
    ("bytes=\u0661-2", "Invalid range"),     # Non-ASCII digit.
    ("bytes=5-4", "Range first byte is after last byte"),
    ("items=0-1", "Unsupported range"),
    ("bytes 0-1", "Unsupported range"),
    ("0-1", "Unsupported range"),
    ("", "Unsupported range"),
    ("garbage", "Unsupported range"),
    ("byte\u017f=0-1", "Unsupported range"),  # LATIN SMALL LETTER LONG S.
])
def test_parse_range_invalid(value: str, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_range(value)
    assert e.value.status == 416
    assert e.value.message.startswith(message)
    assert repr(value)[:40] in e.value.message


@pytest.mark.parametrize("first,last", [(-1, None), (5, 4), (-2, -1)])
def test_range_invariant(first: int, last: int | None) -> None:
    with pytest.raises(ValueError):
        Range(first, last)


@pytest.mark.parametrize("rng,available,expected", [
    (None, 1000, (0, 1000, False)),
    (None, 0, (0, 0, False)),
    (Range(0, 99), 1000, (0, 100, True)),
    (Range(0, 0), 1, (0, 1, True)),
    (Range(999, 999), 1000, (999, 1, True)),
    (Range(100), 1000, (100, 900, True)),
    (Range(999), 1000, (999, 1, True)),
    # The end is clamped to the available size (RFC 7233 2.1).
    (Range(0, 1000), 1000, (0, 1000, True)),
    (Range(500, 10**20), 1000, (500, 500, True)),
])
def test_resolve_range(rng: Range | None, available: int,
                       expected: tuple[int, int, bool]) -> None:
    assert resolve_range(rng, available) == expected


@pytest.mark.parametrize("rng,available", [
    (Range(1000, 1000), 1000),
    (Range(1000), 1000),
    (Range(1001), 1000),
    (Range(10**30), 1000),
    (Range(0), 0),
    (Range(0, 0), 0),
])
def test_resolve_range_unsatisfiable(rng: Range, available: int) -> None:
    with pytest.raises(ProtocolError) as e:
        resolve_range(rng, available)
    assert e.value.status == 416
    assert e.value.headers == {"Content-Range": f"bytes */{available}"}
    assert str(rng.first) in e.value.message


def test_resolve_range_negative_size() -> None:
    with pytest.raises(ValueError):
        resolve_range(None, -1)


@pytest.mark.parametrize("value,expected", [
    ("bytes 0-99/1000", ContentRange(0, 99, 1000)),
    ("bytes 100-199/*", ContentRange(100, 199, None)),
    ("bytes 100-*/1000", ContentRange(100, None, 1000)),
    ("bytes 100-*/*", ContentRange(100, None, None)),
    ("bytes 0-0/1", ContentRange(0, 0, 1)),
    ("bytes 5-5/*", ContentRange(5, 5, None)),
    (" bytes  1 - 2 / 3 ", ContentRange(1, 2, 3)),
    ("Bytes 1-2/3", ContentRange(1, 2, 3)),
])
def test_parse_content_range(value: str, expected: ContentRange) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize("value,message", [
    ("bytes */1000", "Content-Range without first byte"),
    ("bytes */*", "Content-Range without first byte"),
    ("bytes 0-99", "Invalid Content-Range"),
    ("bytes 0/100", "Invalid Content-Range"),
    ("bytes=0-99/100", "Invalid Content-Range"),
    ("bytes0-99/100", "Invalid Content-Range"),
    ("items 0-99/100", "Invalid Content-Range"),
    ("bytes -99/100", "Invalid Content-Range"),
    ("bytes 0-99/100,", "Invalid Content-Range"),
    ("bytes a-b/c", "Invalid Content-Range"),
    ("bytes \u0661-2/3", "Invalid Content-Range"),
    ("", "Invalid Content-Range"),
    ("bytes 100-99/1000", "Content-Range last byte before first"),
    ("bytes 0-100/100", "Content-Range last byte not before complete"),
    ("bytes 0-0/0", "Content-Range last byte not before complete"),
    ("bytes 0-" + "9" * 5000 + "/*", "Number too large"),
])
def test_parse_content_range_invalid(value: str, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_content_range(value)
    assert e.value.status == 400
    assert e.value.message.startswith(message)


@pytest.mark.parametrize("args,expected", [
    ((0, 99, 1000), "bytes 0-99/1000"),
    ((0, 0, 1), "bytes 0-0/1"),
    ((5, 9, None), "bytes 5-9/*"),
])
def test_format_content_range(args: tuple[int, int, int | None],
                              expected: str) -> None:
    assert format_content_range(*args) == expected


@pytest.mark.parametrize("args", [
    (-1, 5, None),
    (5, 4, None),
    (0, 10, 10),
    (0, 0, 0),
])
def test_format_content_range_invalid(args: tuple[int, int, int | None]
                                      ) -> None:
    with pytest.raises(ValueError):
        format_content_range(*args)


def test_format_unsatisfied_range() -> None:
    assert format_unsatisfied_range(0) == "bytes */0"
    assert format_unsatisfied_range(1000) == "bytes */1000"
    with pytest.raises(ValueError):
        format_unsatisfied_range(-1)


# Property tests.

range_text = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(["bytes", "=", "-", ",", " ", "\t", "0", "1",
                              "9", "*", "/", "x"]),
             max_size=12).map("".join),
)


@given(range_text, st.integers(min_value=0, max_value=2**64))
def test_range_never_outside_available(value: str, available: int) -> None:
    try:
        rng = parse_range(value)
        offset, length, partial = resolve_range(rng, available)
    except ProtocolError as e:
        assert e.status == 416
        return
    assert partial
    assert 0 <= offset < available
    assert 1 <= length <= available - offset
    if rng.last is not None:
        assert offset + length - 1 <= rng.last


ws = st.sampled_from(["", " ", "\t", "  "])


# Numbers up to ranges.MAX_NUMBER (2**63 - 1), sums included.
@given(st.integers(min_value=0, max_value=2**62),
       st.one_of(st.none(), st.integers(min_value=0, max_value=2**62 - 1)),
       st.integers(min_value=0, max_value=2**64), ws, ws, ws, ws)
def test_valid_range_resolves(first: int, extra: int | None, available: int,
                              w1: str, w2: str, w3: str, w4: str) -> None:
    last = None if extra is None else first + extra
    value = f"{w1}bytes{w2}={w3}{first}-{'' if last is None else last}{w4}"
    rng = parse_range(value)
    assert rng == Range(first, last)
    if first >= available:
        with pytest.raises(ProtocolError) as e:
            resolve_range(rng, available)
        assert e.value.headers["Content-Range"] == f"bytes */{available}"
        return
    offset, length, partial = resolve_range(rng, available)
    end = available if last is None else min(last + 1, available)
    assert (offset, length, partial) == (first, end - first, True)


@given(range_text)
def test_content_range_arbitrary_text(value: str) -> None:
    try:
        cr = parse_content_range(value)
    except ProtocolError as e:
        assert e.status == 400
        return
    assert cr.first >= 0
    if cr.last is not None:
        assert cr.last >= cr.first
        assert cr.complete is None or cr.complete > cr.last


@given(st.integers(min_value=0, max_value=2**61),
       st.integers(min_value=0, max_value=2**61),
       st.one_of(st.none(), st.integers(min_value=1, max_value=2**61)))
def test_content_range_round_trip(first: int, size: int,
                                  extra: int | None) -> None:
    last = first + size
    complete = None if extra is None else last + extra
    value = format_content_range(first, last, complete)
    assert parse_content_range(value) == ContentRange(first, last, complete)


@given(st.integers(min_value=ranges.MAX_NUMBER + 1, max_value=10**4000),
       st.sampled_from(["bytes {}-*/*", "bytes 0-{}/*", "bytes 0-1/{}"]))
def test_content_range_numbers_beyond_off_t_refused(
        number: int, template: str) -> None:
    # Found with the fuzz harness: a first byte of 4300 digits made the
    # 416 message of a PUT overflow str(). No number past the largest
    # offset passes.
    with pytest.raises(ProtocolError) as e:
        parse_content_range(template.format(number))
    assert "Number too large" in e.value.message
    assert len(e.value.message) < 200


@given(st.integers(min_value=ranges.MAX_NUMBER + 1, max_value=10**4000),
       st.integers(min_value=0, max_value=2**40))
def test_range_first_beyond_off_t_is_unsatisfiable(number: int,
                                                   size: int) -> None:
    # RFC 9110 14.4: a 416 names the current length, however far past
    # the end the range starts.
    with pytest.raises(ProtocolError) as e:
        resolve_range(parse_range(f"bytes={number}-"), size)
    assert e.value.status == 416
    assert e.value.headers == {"Content-Range": f"bytes */{size}"}
    assert len(e.value.message) < 200


@given(st.integers(min_value=ranges.MAX_NUMBER + 1, max_value=10**4000),
       st.integers(min_value=1, max_value=2**40))
def test_range_last_beyond_off_t_is_clamped(number: int, size: int) -> None:
    # RFC 9110 14.1.2: a last position past the end means the end.
    assert resolve_range(parse_range(f"bytes=0-{number}"), size) == (
        0, size, True)


@pytest.mark.parametrize("value, first, last", [
    ("bytes=" + "0" * 30 + "7-", 7, None),
    ("bytes=0-" + "0" * 30 + "9", 0, 9),
    ("bytes=0-" + "9" * 5000, 0, ranges.MAX_NUMBER + 1),
])
def test_parse_range_long_digit_strings(value: str, first: int,
                                        last: int | None) -> None:
    assert parse_range(value) == Range(first, last)
