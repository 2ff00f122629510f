# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest

import pytest

from ovirt_imageio.http import headers as http_headers
from ovirt_imageio.http.errors import ProtocolError
from ovirt_imageio.http.headers import (
    Headers,
    check_transfer_encoding,
    connection_tokens,
    content_length,
    expects_continue,
    keep_alive,
)


def test_doctests() -> None:
    assert doctest.testmod(http_headers).failed == 0


def test_lookup_ignores_case() -> None:
    h = Headers([("Content-Type", "text/plain")])
    assert h.get("content-type") == "text/plain"
    assert h.get("CONTENT-TYPE") == "text/plain"
    assert "content-TYPE" in h
    assert h.get_all("Content-type") == ["text/plain"]


def test_missing() -> None:
    h = Headers([("A", "1")])
    assert h.get("b") is None
    assert h.get("b", "default") == "default"
    assert h.get_all("b") == []
    assert "b" not in h
    assert 42 not in h


def test_items_keep_order_and_spelling() -> None:
    pairs = [("B", "1"), ("a", "2"), ("b", "3")]
    h = Headers(pairs)
    assert h.items() == pairs
    assert list(h) == ["B", "a", "b"]
    assert len(h) == 3
    assert h.get_all("b") == ["1", "3"]


def test_items_is_a_copy() -> None:
    h = Headers([("A", "1")])
    h.items().append(("B", "2"))
    assert h.items() == [("A", "1")]


def test_equality_and_hash() -> None:
    a = Headers([("A", "1"), ("B", "2")])
    b = Headers([("A", "1"), ("B", "2")])
    c = Headers([("B", "2"), ("A", "1")])
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert a != [("A", "1"), ("B", "2")]


def test_repeated_list_field_is_combined() -> None:
    h = Headers([("Accept", "a"), ("accept", "b")])
    assert h.get("accept") == "a, b"


@pytest.mark.parametrize("name", sorted(http_headers.SINGLETONS))
def test_repeated_singleton_same_value(name: str) -> None:
    h = Headers([(name, "1"), (name.upper(), "1")])
    assert h.get(name) == "1"


@pytest.mark.parametrize("name", sorted(http_headers.SINGLETONS))
def test_repeated_singleton_different_values(name: str) -> None:
    h = Headers([(name, "1"), (name, "2")])
    with pytest.raises(ProtocolError) as e:
        h.get(name)
    assert e.value.status == 400
    assert e.value.message == f"Duplicate header: {name}"


@pytest.mark.parametrize("pairs,expected", [
    ([], None),
    ([("Content-Length", "0")], 0),
    ([("Content-Length", "42")], 42),
    ([("content-length", "007")], 7),
    ([("Content-Length", "1099511627776")], 1 << 40),
    ([("Content-Length", "5"), ("Content-Length", "5")], 5),
])
def test_content_length(pairs: list[tuple[str, str]],
                        expected: int | None) -> None:
    assert content_length(Headers(pairs)) == expected


@pytest.mark.parametrize("value", [
    "-1",
    "+5",
    "",
    " 5",
    "1.5",
    "1e3",
    "0x10",
    "5_000",
    "5, 5",
    "abc",
    "\u0663",       # ARABIC-INDIC DIGIT THREE: int() would accept it.
    "9" * 5000,     # Beyond int()'s default digit limit.
])
def test_content_length_invalid(value: str) -> None:
    with pytest.raises(ProtocolError) as e:
        content_length(Headers([("Content-Length", value)]))
    assert e.value.status == 400
    assert "Invalid Content-Length" in e.value.message
    assert value[:20] in e.value.message


def test_content_length_conflicting() -> None:
    h = Headers([("Content-Length", "5"), ("Content-Length", "6")])
    with pytest.raises(ProtocolError) as e:
        content_length(h)
    assert e.value.status == 400


@pytest.mark.parametrize("pairs,status", [
    ([("Transfer-Encoding", "identity")], 501),
    ([("Transfer-Encoding", "gzip")], 501),
    ([("Transfer-Encoding", "gzip, chunked")], 501),
    ([("Transfer-Encoding", "chunked, chunked")], 501),
    ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
     501),
    ([("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")], 501),
    # Both framings: request smuggling.
    ([("Transfer-Encoding", "chunked"), ("Content-Length", "5")], 400),
    ([("Content-Length", "0"), ("transfer-encoding", "chunked")], 400),
])
def test_transfer_encoding_rejected(pairs: list[tuple[str, str]],
                                    status: int) -> None:
    h = Headers(pairs)
    for check in (check_transfer_encoding, content_length):
        with pytest.raises(ProtocolError) as e:
            check(h)
        assert e.value.status == status


def test_transfer_encoding_message_names_value() -> None:
    with pytest.raises(ProtocolError) as e:
        check_transfer_encoding(Headers([("Transfer-Encoding", "gzip")]))
    assert e.value.message == "Transfer-Encoding 'gzip' is not supported"


@pytest.mark.parametrize("value", ["chunked", "Chunked", " CHUNKED "])
def test_chunked(value: str) -> None:
    h = Headers([("Transfer-Encoding", value)])
    assert check_transfer_encoding(h) is True
    assert content_length(h) is None


def test_chunked_refused_in_http10() -> None:
    h = Headers([("Transfer-Encoding", "chunked")])
    with pytest.raises(ProtocolError) as e:
        check_transfer_encoding(h, "HTTP/1.0")
    assert e.value.status == 400


def test_no_transfer_encoding() -> None:
    assert check_transfer_encoding(Headers([("Content-Length", "1")])) is \
        False


@pytest.mark.parametrize("pairs,expected", [
    ([], False),
    ([("Expect", "100-continue")], True),
    ([("expect", "100-Continue")], True),
    ([("Expect", "100-CONTINUE"), ("Expect", "100-CONTINUE")], True),
])
def test_expects_continue(pairs: list[tuple[str, str]],
                          expected: bool) -> None:
    assert expects_continue(Headers(pairs)) is expected


@pytest.mark.parametrize("value", ["200-ok", "100-continue, foo", ""])
def test_unsupported_expectation(value: str) -> None:
    with pytest.raises(ProtocolError) as e:
        expects_continue(Headers([("Expect", value)]))
    assert e.value.status == 417
    assert repr(value) in e.value.message


def test_connection_tokens() -> None:
    h = Headers([("Connection", "Keep-Alive, Upgrade"),
                 ("connection", " ,CLOSE\t")])
    assert connection_tokens(h) == {"keep-alive", "upgrade", "close"}


@pytest.mark.parametrize("version,connection,expected", [
    ("HTTP/1.1", None, True),
    ("HTTP/1.1", "keep-alive", True),
    ("HTTP/1.1", "close", False),
    ("HTTP/1.1", "Close", False),
    ("HTTP/1.1", "upgrade, close", False),
    ("HTTP/1.1", "closed", True),
    ("HTTP/1.1", "keep-alive, close", False),
    ("HTTP/1.0", None, False),
    ("HTTP/1.0", "keep-alive", True),
    ("HTTP/1.0", "Keep-Alive", True),
    ("HTTP/1.0", "foo,keep-alive", True),
    ("HTTP/1.0", "keep-alive, close", False),
    ("HTTP/1.0", "keep-alive-ish", False),
])
def test_keep_alive(version: str, connection: str | None,
                    expected: bool) -> None:
    pairs = [] if connection is None else [("Connection", connection)]
    assert keep_alive(version, Headers(pairs)) is expected
