# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import doctest
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http import parser as http_parser
from ovirt_imageio.http.errors import ProtocolError
from ovirt_imageio.http.headers import Headers
from ovirt_imageio.http.parser import RequestHead, RequestParser


def parse(data: bytes, **limits: int) -> RequestHead | None:
    p = RequestParser(**limits)
    p.feed(data)
    return p.next_head()


def parse_error(data: bytes, **limits: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        parse(data, **limits)
    return e.value


def head(method: str = "GET", target: str = "/", path: str = "/",
         query: str = "", version: str = "HTTP/1.1",
         headers: list[tuple[str, str]] | None = None) -> RequestHead:
    return RequestHead(method, target, path, query, version,
                       Headers(headers or []))


def test_doctests() -> None:
    assert doctest.testmod(http_parser).failed == 0


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\n\r\n", head()),
    # Bare LF line endings, also mixed with CRLF.
    (b"GET / HTTP/1.1\n\n", head()),
    (b"GET / HTTP/1.1\r\nA: 1\n\r\n", head(headers=[("A", "1")])),
    # Empty lines before the request line are skipped (RFC 7230 3.5).
    (b"\r\n\n\r\nGET / HTTP/1.1\r\n\r\n", head()),
    (b"GET / HTTP/1.0\r\n\r\n", head(version="HTTP/1.0")),
    # Methods are case-sensitive and kept as sent.
    (b"get / HTTP/1.1\r\n\r\n", head(method="get")),
    (b"M-SEARCH / HTTP/1.1\r\n\r\n", head(method="M-SEARCH")),
    (b"PUT /images/abc?flush=n&close=y HTTP/1.1\r\n\r\n",
     head("PUT", "/images/abc?flush=n&close=y", "/images/abc",
          "flush=n&close=y")),
    (b"GET /a?b?c HTTP/1.1\r\n\r\n", head(target="/a?b?c", path="/a",
                                          query="b?c")),
    (b"GET /a? HTTP/1.1\r\n\r\n", head(target="/a?", path="/a")),
    (b"GET /a%20b%2Fc%C3%A9?x=%20 HTTP/1.1\r\n\r\n",
     head(target="/a%20b%2Fc%C3%A9?x=%20", path="/a b/c\u00e9",
          query="x=%20")),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", head("OPTIONS", "*", "*")),
    # absolute-form targets.
    (b"GET http://example.com:8080/images/x?y=1 HTTP/1.1\r\n\r\n",
     head(target="http://example.com:8080/images/x?y=1", path="/images/x",
          query="y=1")),
    (b"GET https://example.com HTTP/1.1\r\n\r\n",
     head(target="https://example.com", path="/")),
    (b"GET HTTP://h?q HTTP/1.1\r\n\r\n",
     head(target="HTTP://h?q", path="/", query="q")),
    # Field values lose surrounding whitespace, keep inner whitespace.
    (b"GET / HTTP/1.1\r\nA:  x \t y\t \r\nB:\r\nC:z\r\n\r\n",
     head(headers=[("A", "x \t y"), ("B", ""), ("C", "z")])),
    # Repeated fields are kept in order with their spelling.
    (b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
     head(headers=[("X-A", "1"), ("x-a", "2")])),
    # obs-text bytes survive as latin-1 characters.
    (b"GET / HTTP/1.1\r\nA: caf\xe9\xff\r\n\r\n",
     head(headers=[("A", "caf\u00e9\u00ff")])),
    (b"GET / HTTP/1.1\r\nA: \"q\" (c) ~!\r\n\r\n",
     head(headers=[("A", "\"q\" (c) ~!")])),
])
def test_valid(data: bytes, expected: RequestHead) -> None:
    assert parse(data) == expected


@pytest.mark.parametrize("data,status,message", [
    (b"GET /\r\n\r\n", 400, "Invalid request line"),
    (b"GET\r\n\r\n", 400, "Invalid request line"),
    (b"GET  / HTTP/1.1\r\n\r\n", 400, "Invalid request line"),
    (b"GET / HTTP/1.1 \r\n\r\n", 400, "Invalid request line"),
    (b"GET\t/ HTTP/1.1\r\n\r\n", 400, "Invalid request line"),
    (b" GET / HTTP/1.1\r\n\r\n", 400, "Invalid request line"),
    (b"G(T / HTTP/1.1\r\n\r\n", 400, "Invalid method"),
    (b"GET /a\x00 HTTP/1.1\r\n\r\n", 400, "Invalid request target"),
    (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400, "Invalid request target"),
    (b"GET /\r HTTP/1.1\r\n\r\n", 400, "Invalid request target"),
    (b"GET images HTTP/1.1\r\n\r\n", 400, "Invalid request target"),
    (b"GET ://x/ HTTP/1.1\r\n\r\n", 400, "Invalid request target"),
    (b"GET /%zz HTTP/1.1\r\n\r\n", 400, "Invalid percent-encoding"),
    (b"GET /a%2 HTTP/1.1\r\n\r\n", 400, "Invalid percent-encoding"),
    (b"GET /%ff HTTP/1.1\r\n\r\n", 400, "Invalid UTF-8"),
    (b"GET / HTTP/1.1\r\r\n\r\n", 400, "Invalid HTTP version"),
    (b"GET / http/1.1\r\n\r\n", 400, "Invalid HTTP version"),
    (b"GET / FOO\r\n\r\n", 400, "Invalid HTTP version"),
    (b"GET / HTTP/1.1.1\r\n\r\n", 400, "Invalid HTTP version"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP Version Not Supported"),
    (b"GET / HTTP/2\r\n\r\n", 505, "HTTP Version Not Supported"),
    (b"GET / HTTP/1.2\r\n\r\n", 505, "HTTP Version Not Supported"),
    (b"GET / HTTP/0.9\r\n\r\n", 505, "HTTP Version Not Supported"),
    (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400, "line folding"),
    (b"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", 400, "line folding"),
    (b"GET / HTTP/1.1\r\n A: b\r\n\r\n", 400, "line folding"),
    (b"GET / HTTP/1.1\r\nA : b\r\n\r\n", 400, "Whitespace before colon"),
    (b"GET / HTTP/1.1\r\nA\t: b\r\n\r\n", 400, "Whitespace before colon"),
    (b"GET / HTTP/1.1\r\nA b\r\n\r\n", 400, "Invalid header line"),
    (b"GET / HTTP/1.1\r\n: b\r\n\r\n", 400, "Invalid header name"),
    (b"GET / HTTP/1.1\r\nA(b): c\r\n\r\n", 400, "Invalid header name"),
    (b"GET / HTTP/1.1\r\nA b: c\r\n\r\n", 400, "Invalid header name"),
    (b"GET / HTTP/1.1\r\n\xe9: c\r\n\r\n", 400, "Invalid header name"),
    (b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400, "Invalid character"),
    (b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", 400, "Invalid character"),
    (b"GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n", 400, "Invalid character"),
    (b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n", 400, "Invalid character"),
])
def test_invalid(data: bytes, status: int, message: str) -> None:
    e = parse_error(data)
    assert e.status == status
    assert message in e.message


def test_message_names_the_problem() -> None:
    e = parse_error(b"GET / HTTP/1.1\r\nBad Name: c\r\n\r\n")
    assert "'Bad Name'" in e.message


def test_incomplete() -> None:
    p = RequestParser()
    for chunk in (b"", b"\r\n", b"GET / HT", b"TP/1.1\r", b"\nA: 1\r\n",
                  b"\r"):
        p.feed(chunk)
        assert p.next_head() is None
    p.feed(b"\n")
    assert p.next_head() == head(headers=[("A", "1")])


# Limits: (limit keyword, limit value, builder of a head whose measured
# part is exactly n bytes, status when over the limit).

def request_line(n: int) -> bytes:
    return b"GET /" + b"a" * (n - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def test_request_line_limit() -> None:
    assert len(request_line(100)) == 100
    assert parse(request_line(100) + b"\r\n\r\n", max_line=100) is not None
    assert parse(request_line(100) + b"\n\n", max_line=100) is not None
    e = parse_error(request_line(101) + b"\r\n\r\n", max_line=100)
    assert (e.status, e.message) == (414, "Request-URI Too Long")


def test_request_line_limit_without_line_feed() -> None:
    # 101 bytes may still be 100 bytes and a CR.
    assert parse(request_line(100) + b"\r", max_line=100) is None
    e = parse_error(request_line(102), max_line=100)
    assert (e.status, e.message) == (414, "Request-URI Too Long")


def test_request_line_limit_fed_bytewise() -> None:
    p = RequestParser(max_line=100)
    data = request_line(200)
    for i in range(101):
        p.feed(data[i:i + 1])
        assert p.next_head() is None
    p.feed(data[101:102])
    with pytest.raises(ProtocolError) as e:
        p.next_head()
    assert e.value.status == 414


def header_line(n: int) -> bytes:
    return b"A: " + b"v" * (n - 3)


def test_header_line_limit() -> None:
    start = b"GET / HTTP/1.1\r\n"
    ok = start + header_line(50) + b"\r\n\r\n"
    assert parse(ok, max_header_line=50) is not None
    e = parse_error(start + header_line(51) + b"\r\n\r\n",
                    max_header_line=50)
    assert e.status == 431
    assert e.message.startswith("Request Header Fields Too Large")
    assert parse(start + header_line(50) + b"\r", max_header_line=50) is None
    e = parse_error(start + header_line(52), max_header_line=50)
    assert e.status == 431


def test_header_count_limit() -> None:
    def request(n: int) -> bytes:
        return b"GET / HTTP/1.1\r\n" + b"A: 1\r\n" * n + b"\r\n"

    result = parse(request(5), max_headers=5)
    assert result is not None
    assert len(result.headers) == 5
    e = parse_error(request(6), max_headers=5)
    assert e.status == 431


def test_head_bytes_limit() -> None:
    data = b"GET / HTTP/1.1\r\nA: 1\r\n\r\n"
    n = len(data)
    assert parse(data, max_head_bytes=n) is not None
    # Bytes after the head do not count.
    assert parse(data + b"x" * 100, max_head_bytes=n) is not None
    assert parse_error(data, max_head_bytes=n - 1).status == 431
    # Known too large before the head ends.
    assert parse(data[:n - 1], max_head_bytes=n - 1) is None
    assert parse_error(data[:n - 1] + b"B", max_head_bytes=n - 1).status == 431


def test_blank_line_flood() -> None:
    p = RequestParser(max_head_bytes=1000)
    with pytest.raises(ProtocolError) as e:
        for _ in range(1000):
            p.feed(b"\r\n")
            assert p.next_head() is None
    assert e.value.status == 431


def test_body_and_pipelined_request() -> None:
    p = RequestParser()
    p.feed(b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1")
    first = p.next_head()
    assert first is not None and first.path == "/a"
    assert p.buffered_size == 18
    rest = p.take_buffered()
    assert rest == b"abcGET /b HTTP/1.1"
    assert p.buffered_size == 0
    # The caller consumed the body and feeds back the rest.
    p.feed(rest[3:])
    assert p.next_head() is None
    assert p.buffered_size == 15
    p.feed(b"\r\n\r\n")
    second = p.next_head()
    assert second is not None and second.path == "/b"
    assert p.take_buffered() == b""


def test_feed_in_body_state() -> None:
    p = RequestParser()
    p.feed(b"PUT / HTTP/1.1\r\n\r\nab")
    assert p.next_head() is not None
    p.feed(b"cd")
    assert p.buffered_size == 4
    assert p.take_buffered() == b"abcd"


def test_next_head_before_take_buffered() -> None:
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert p.next_head() is not None
    with pytest.raises(RuntimeError):
        p.next_head()


def test_take_buffered_without_head() -> None:
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(RuntimeError):
        p.take_buffered()


def test_error_is_sticky() -> None:
    p = RequestParser()
    p.feed(b"GET / HTTP/3.0\r\n\r\n")
    with pytest.raises(ProtocolError) as e1:
        p.next_head()
    p.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert p.buffered_size == 0
    with pytest.raises(ProtocolError) as e2:
        p.next_head()
    assert e2.value is e1.value


class CountingBuffer(bytearray):
    """bytearray recording how many bytes find() searched."""

    scanned = 0

    def find(self, sub: object, start: object = None,
             end: object = None) -> int:
        assert isinstance(start, int)
        CountingBuffer.scanned += len(self) - start
        return super().find(sub, start)  # type: ignore[arg-type]


def test_bytewise_feeding_scans_each_byte_once() -> None:
    data = (b"PUT /" + b"a" * 1000 + b" HTTP/1.1\r\n"
            + b"X-Long: " + b"v" * 5000 + b"\r\n" * 2)
    p = RequestParser()
    p._buf = CountingBuffer()
    CountingBuffer.scanned = 0
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        result = p.next_head()
    assert result is not None
    assert result.headers.get("x-long") == "v" * 5000
    # Every search starts where the previous one stopped.
    assert CountingBuffer.scanned <= len(data)


# Property tests.

tokens = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
    min_size=1, max_size=12)

path_text = st.text(
    alphabet=st.characters(codec="utf-8"), max_size=10)

query_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
    max_size=30)

field_value = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7e),
        st.characters(min_codepoint=0x80, max_codepoint=0xff),
        st.just("\t")),
    max_size=40).map(lambda s: s.strip(" \t"))

line_ends = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, RequestHead]:
    """A valid request head as bytes and the head it must parse to."""
    method = draw(tokens)
    path = "/" + "/".join(draw(st.lists(path_text, max_size=5)))
    query = draw(st.one_of(st.none(), query_text))
    version = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    fields = draw(st.lists(st.tuples(tokens, field_value), max_size=20))

    target = urllib.parse.quote(path, safe="/")
    if query is not None:
        target += "?" + query
    data = draw(line_ends) * draw(st.integers(0, 2))
    data += f"{method} {target} {version}".encode("ascii") + draw(line_ends)
    for name, value in fields:
        sep = draw(st.sampled_from([b":", b": ", b":\t ", b":  "]))
        trail = draw(st.sampled_from([b"", b" ", b"\t"]))
        data += (name.encode("ascii") + sep + value.encode("latin-1")
                 + trail + draw(line_ends))
    data += draw(line_ends)
    expected = RequestHead(method, target, path, query or "", version,
                           Headers(fields))
    return data, expected


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)],
                                          strict=True)]


@given(requests(), st.binary(max_size=50),
       st.lists(st.integers(min_value=0), max_size=20))
def test_round_trip(request: tuple[bytes, RequestHead], body: bytes,
                    cuts: list[int]) -> None:
    data, expected = request
    p = RequestParser()
    result = None
    received = b""
    for chunk in split(data + body, cuts):
        if result is None:
            p.feed(chunk)
            result = p.next_head()
        else:
            received += chunk
    assert result == expected
    assert p.take_buffered() + received == body


@given(requests(), requests())
def test_pipelined_round_trip(first: tuple[bytes, RequestHead],
                              second: tuple[bytes, RequestHead]) -> None:
    p = RequestParser()
    p.feed(first[0] + second[0])
    assert p.next_head() == first[1]
    p.feed(p.take_buffered())
    assert p.next_head() == second[1]
    assert p.take_buffered() == b""


def outcome(chunks: list[bytes]) -> object:
    p = RequestParser(max_line=64, max_headers=4, max_header_line=64,
                      max_head_bytes=256)
    try:
        for i, chunk in enumerate(chunks):
            p.feed(chunk)
            result = p.next_head()
            if result is not None:
                return result, p.take_buffered() + b"".join(chunks[i + 1:])
        return None
    except ProtocolError as e:
        return e.status


arbitrary_heads = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([
        b"GET", b"/", b"?", b" ", b"\r", b"\n", b"\r\n", b":", b"\t",
        b"HTTP/1.1", b"HTTP/1.0", b"A", b"%", b"%41", b"\x00", b"\xff",
    ]), max_size=80).map(b"".join),
)


@given(arbitrary_heads, st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    # Only ProtocolError may escape, and how the bytes were split does
    # not matter: a split head never parses differently.
    assert outcome(split(data, cuts)) == outcome([data])
