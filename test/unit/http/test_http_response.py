# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http import response as http_response
from ovirt_imageio.http.chunked import ChunkedDecoder
from ovirt_imageio.http.response import (
    CONTINUE,
    LAST_CHUNK,
    REASONS,
    chunk,
    format_head,
    http_date,
    reason,
)

USED_STATUSES = [100, 200, 204, 206, 400, 403, 404, 405, 409, 411, 413,
                 414, 416, 417, 431, 500, 501, 503, 505]


def test_doctests() -> None:
    assert doctest.testmod(http_response).failed == 0


@pytest.mark.parametrize("status", USED_STATUSES)
def test_reasons(status: int) -> None:
    assert REASONS[status]
    assert reason(status) == REASONS[status]
    head = format_head(status, [])
    assert head == f"HTTP/1.1 {status} {REASONS[status]}\r\n\r\n".encode()


@pytest.mark.parametrize("status,expected", [
    (418, "I'm a Teapot"),
    (299, ""),
])
def test_reason_not_in_table(status: int, expected: str) -> None:
    assert reason(status) == expected


def test_continue() -> None:
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("status,headers,version,expected", [
    (200, [("Content-Length", "0")], "HTTP/1.1",
     b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (206, [("content-range", "bytes 0-9/100"), ("content-length", "10")],
     "HTTP/1.1",
     b"HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-9/100\r\n"
     b"content-length: 10\r\n\r\n"),
    (404, [("A", "1"), ("A", "2")], "HTTP/1.0",
     b"HTTP/1.0 404 Not Found\r\nA: 1\r\nA: 2\r\n\r\n"),
    (299, [("X", "")], "HTTP/1.1", b"HTTP/1.1 299 \r\nX: \r\n\r\n"),
    (200, [("X", "a\tb")], "HTTP/1.1", b"HTTP/1.1 200 OK\r\nX: a\tb\r\n\r\n"),
])
def test_format_head(status: int, headers: list[tuple[str, str]],
                     version: str, expected: bytes) -> None:
    assert format_head(status, headers, version) == expected


@pytest.mark.parametrize("value,encoded", [
    # latin-1 when the value fits: one byte per character.
    ("attachment; filename=caf\u00e9", b"attachment; filename=caf\xe9"),
    # Otherwise UTF-8.
    ("attachment; filename=\u05e9\u05dc\u05d5\u05dd.raw",
     "attachment; filename=\u05e9\u05dc\u05d5\u05dd.raw".encode("utf-8")),
])
def test_value_encoding(value: str, encoded: bytes) -> None:
    head = format_head(200, [("Content-Disposition", value)])
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Disposition: " + encoded
                    + b"\r\n\r\n")


@pytest.mark.parametrize("name,value", [
    ("X", "a\r\nInjected: yes"),
    ("X", "a\nb"),
    ("X", "a\rb"),
    ("X", "a\x00b"),
    ("X", "a\x7f"),
    ("X\r\nInjected", "yes"),
    ("X: Y", "z"),
    ("X Y", "z"),
    ("", "z"),
    ("N\u00e4me", "z"),
])
def test_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        format_head(200, [(name, value)])


@pytest.mark.parametrize("status,version", [
    (99, "HTTP/1.1"),
    (1000, "HTTP/1.1"),
    (200, "HTTP/2"),
    (200, "HTTP/1.1\r\nX: y"),
])
def test_invalid_status_line(status: int, version: str) -> None:
    with pytest.raises(ValueError):
        format_head(status, [], version)


@given(st.lists(st.tuples(st.sampled_from(["A", "Content-Disposition"]),
                          st.text(max_size=20)), max_size=5))
def test_no_injection(headers: list[tuple[str, str]]) -> None:
    # Whatever the values, either they are refused or every header takes
    # exactly one line.
    try:
        head = format_head(200, headers)
    except ValueError:
        return
    lines = head.split(b"\r\n")
    assert len(lines) == len(headers) + 3
    assert lines[-2:] == [b"", b""]
    assert b"\r" not in head.replace(b"\r\n", b"")
    assert b"\n" not in head.replace(b"\r\n", b"")


@pytest.mark.parametrize("timestamp,expected", [
    (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
    (784111777, "Sun, 06 Nov 1994 08:49:37 GMT"),
    (784111777.9, "Sun, 06 Nov 1994 08:49:37 GMT"),
    (1709251200, "Fri, 01 Mar 2024 00:00:00 GMT"),
])
def test_http_date(timestamp: float, expected: str) -> None:
    assert http_date(timestamp) == expected


@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trip(timestamp: int) -> None:
    parsed = email.utils.parsedate_to_datetime(http_date(timestamp))
    assert parsed.timestamp() == timestamp


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_chunks_decode_back(pieces: list[bytes]) -> None:
    # What the daemon frames, a chunked decoder reads back exactly, and
    # finds the end of the body at LAST_CHUNK.
    wire = b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    d = ChunkedDecoder()
    body = b""
    pos = 0
    while not d.done:
        if d.chunk_left:
            n = d.chunk_left
            body += wire[pos:pos + n]
            d.consume(n)
            pos += n
        else:
            used = d.feed(wire[pos:])
            assert used > 0
            pos += used
    assert body == b"".join(pieces)
    assert pos == len(wire)


def test_empty_chunk_refused() -> None:
    # It would end the body early.
    with pytest.raises(ValueError):
        chunk(b"")
