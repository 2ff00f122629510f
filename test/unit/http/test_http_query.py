# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http import query as http_query
from ovirt_imageio.http.errors import ProtocolError
from ovirt_imageio.http.query import parse_flag, parse_int, parse_query


def test_doctests() -> None:
    assert doctest.testmod(http_query).failed == 0


@pytest.mark.parametrize("qs,expected", [
    ("", {}),
    ("a=1", {"a": "1"}),
    ("a=1&b=2", {"a": "1", "b": "2"}),
    # Last duplicate wins.
    ("flush=n&flush=y", {"flush": "y"}),
    # Blank values are kept; a name without "=" has a blank value.
    ("a=&b", {"a": "", "b": ""}),
    ("a=1&&b=2&", {"a": "1", "b": "2"}),
    ("a=b=c", {"a": "b=c"}),
    ("a%20b=c%2Fd", {"a b": "c/d"}),
    ("name=caf%C3%A9+x", {"name": "caf\u00e9 x"}),
    ("a=1;b=2", {"a": "1;b=2"}),
    # Bad escapes are kept, bad UTF-8 replaced: the value fails later.
    ("a=%zz", {"a": "%zz"}),
    ("a=%ff", {"a": "\ufffd"}),
])
def test_parse_query(qs: str, expected: dict[str, str]) -> None:
    assert parse_query(qs) == expected


@given(st.dictionaries(st.text(min_size=1), st.text()))
def test_parse_query_round_trip(params: dict[str, str]) -> None:
    qs = urllib.parse.urlencode(params)
    assert parse_query(qs) == params


@pytest.mark.parametrize("query,default,expected", [
    ({}, True, True),
    ({}, False, False),
    ({"flush": "y"}, False, True),
    ({"flush": "n"}, True, False),
    ({"other": "n"}, True, True),
])
def test_parse_flag(query: dict[str, str], default: bool,
                    expected: bool) -> None:
    assert parse_flag(query, "flush", default) is expected


@pytest.mark.parametrize("value", ["x", "", "Y", "N", "yes", "no", "1",
                                   "true", " y"])
def test_parse_flag_invalid(value: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_flag({"flush": value}, "flush", True)
    assert e.value.status == 400
    assert e.value.message == f"Invalid value for 'flush': {value!r}"


@pytest.mark.parametrize("query,expected", [
    ({}, 4194304),
    ({"block_size": "0"}, 0),
    ({"block_size": "1048576"}, 1048576),
    ({"block_size": "007"}, 7),
])
def test_parse_int(query: dict[str, str], expected: int) -> None:
    assert parse_int(query, "block_size", 4194304) == expected


@pytest.mark.parametrize("value", ["", "-1", "+1", "1.0", "1e6", "0x10",
                                   " 1", "1_000", "a", "\u0661",
                                   "9" * 5000])
def test_parse_int_invalid(value: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_int({"block_size": value}, "block_size", 0)
    assert e.value.status == 400
    assert e.value.message.startswith("Invalid value for 'block_size': ")
    assert e.value.message.endswith(" (expecting a non-negative integer)")
    assert value[:20] in e.value.message
