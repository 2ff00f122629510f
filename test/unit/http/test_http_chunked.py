# SPDX-License-Identifier: GPL-2.0-or-later
"""The chunked body decoder: tables of framings, and round trips."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http import chunked
from ovirt_imageio.http.chunked import ChunkedDecoder, State
from ovirt_imageio.http.errors import ProtocolError


def decode(data: bytes, step: int | None = None) -> tuple[bytes, bytes]:
    """
    Decode a whole body fed in pieces of ``step`` bytes (all at once by
    default); return (payload, bytes after the body).
    """
    d = ChunkedDecoder()
    payload = bytearray()
    pending = b""
    pos = 0
    while not d.done:
        if not pending:
            if pos >= len(data):
                raise EOFError("body ended early")
            end = len(data) if step is None else pos + step
            pending, pos = data[pos:end], min(end, len(data))
        if d.chunk_left:
            n = min(d.chunk_left, len(pending))
            payload += pending[:n]
            d.consume(n)
            pending = pending[n:]
        else:
            used = d.feed(pending)
            pending = pending[used:]
    assert d.total == len(payload)
    return bytes(payload), pending + data[pos:]


def encode(chunks: list[bytes], trailers: Sequence[bytes] = ()) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


@pytest.mark.parametrize("body, payload", [
    (b"0\r\n\r\n", b""),
    (b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
    (b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
    # Upper and lower case hex, leading zeros.
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"a\r\n0123456789\r\n0000\r\n\r\n", b"0123456789"),
    (b"0000000000000000000003\r\nabc\r\n0\r\n\r\n", b"abc"),
    # Extensions and trailers are accepted and ignored.
    (b"3;ext=1\r\nabc\r\n0;last\r\n\r\n", b"abc"),
    (b"3 ;ext\r\nabc\r\n0\r\n\r\n", b"abc"),
    (b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n", b"abc"),
    # Bare LF, as tolerated in heads.
    (b"3\nabc\n0\n\n", b"abc"),
])
def test_decode(body: bytes, payload: bytes) -> None:
    for step in (None, 1, 2, 7):
        assert decode(body + b"NEXT", step) == (payload, b"NEXT")


@pytest.mark.parametrize("body, message", [
    (b"\r\n", "Invalid chunk size: ''"),
    (b"x\r\n", "Invalid chunk size: 'x'"),
    (b"-1\r\n", "Invalid chunk size: '-1'"),
    (b"+1\r\n", "Invalid chunk size: '+1'"),
    (b"0x10\r\n", "Invalid chunk size: '0x10'"),
    (b" 1\r\n", "Invalid chunk size: ' 1'"),
    (b"1\r\nab\r\n", "Missing CRLF after chunk data"),
    (b"1\r\naXY", "Missing CRLF after chunk data"),
    (b"1\r\na\rX\r\n", "Invalid CR in chunked framing"),
    (b"1\r\r\n", "Invalid CR in chunked framing"),
    (b"1" * 17 + b"\r\n", "Chunk size too large"),
    (b"8000000000000000\r\n", "Chunk size too large"),
    (b"1;" + b"x" * chunked.MAX_LINE + b"\r\n", "Chunk size line too long"),
    (b"0\r\nno colon\r\n", "Invalid chunked trailer line: 'no colon'"),
    (b"0\r\n" + b"X: " + b"y" * chunked.MAX_TRAILER,
     "Chunked trailer section too large"),
])
def test_malformed(body: bytes, message: str) -> None:
    for step in (None, 1, 5):
        with pytest.raises(ProtocolError) as e:
            decode(body + b"\r\n" * 3, step)
        assert e.value.status == 400
        assert e.value.message.startswith(message)


def test_error_is_sticky() -> None:
    d = ChunkedDecoder()
    with pytest.raises(ProtocolError):
        d.feed(b"zz\r\n")
    with pytest.raises(ProtocolError):
        d.feed(b"0\r\n\r\n")
    assert d.state is chunked.State.ERROR


def test_long_line_rejected_before_its_end() -> None:
    # A client sending a size line without end is stopped at the limit,
    # not buffered forever.
    d = ChunkedDecoder()
    d.feed(b"1;" + b"x" * (chunked.MAX_LINE - 2))
    with pytest.raises(ProtocolError):
        d.feed(b"xx")


def test_feed_stops_at_payload() -> None:
    d = ChunkedDecoder()
    assert d.feed(b"4\r\ndata\r\n0\r\n\r\n") == 3
    assert d.chunk_left == 4
    # Nothing is consumed while payload is due.
    assert d.feed(b"data") == 0
    d.consume(4)
    assert d.feed(b"\r\n0\r\n\r\nNEXT") == 7
    assert d.done
    assert d.feed(b"NEXT") == 0


@pytest.mark.parametrize("n", [0, 5, -1])
def test_consume_checks(n: int) -> None:
    d = ChunkedDecoder()
    d.feed(b"4\r\n")
    with pytest.raises(RuntimeError):
        d.consume(n)


@given(st.lists(st.binary(max_size=300), max_size=8),
       st.lists(st.from_regex(rb"\A[A-Za-z-]{1,8}: [a-z0-9]{0,8}\Z"),
                max_size=3),
       st.integers(min_value=1, max_value=64))
def test_round_trip(chunks: list[bytes], trailers: list[bytes],
                    step: int) -> None:
    body = encode(chunks, trailers)
    assert decode(body + b"GET /", step) == (b"".join(chunks), b"GET /")


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=16))
def test_garbage_never_crashes(data: bytes, step: int) -> None:
    # Any input ends in a payload, a clean ProtocolError, or a wait for
    # more bytes: never another exception.
    try:
        decode(data, step)
    except (ProtocolError, EOFError):
        pass


@pytest.mark.parametrize("framing, size", [
    (b"\r\n10000\r\n", 0x10000),
    (b"\r\nFFF4\r\n", 0xfff4),
    (b"\r\n7fffffffffffffff\r\n", chunked.MAX_CHUNK),
])
def test_common_framing_in_one_feed(framing: bytes, size: int) -> None:
    # The framing between chunks, whole in one feed (the fast path), and
    # byte by byte (the line machinery) give the same chunk.
    for step in (len(framing), 1):
        d = ChunkedDecoder()
        assert d.feed(b"1\r\nx") == 3
        d.consume(1)
        wire = framing + b"data"
        used = 0
        while not d.chunk_left:
            used += d.feed(wire[used:used + step])
        assert used == len(framing)
        assert d.chunk_left == size


@pytest.mark.parametrize("fed, between", [
    (b"", True),                  # before the first size line
    (b"5\r\n", True),             # in a chunk's payload
    (b"5\r\nhello", True),        # the CRLF ending it to come
    (b"5", False),                # a size line begun
    (b"5\r\nhello\r", False),     # its end begun
    (b"0\r\n", False),            # trailers
    (b"0\r\n\r\n", False),        # done
])
def test_between_chunks(fed: bytes, between: bool) -> None:
    d = ChunkedDecoder()
    pos = d.feed(fed)
    if d.chunk_left:
        taken = min(d.chunk_left, len(fed) - pos)
        if taken:
            d.consume(taken)
            pos += d.feed(fed[pos + taken:])
    assert d.between_chunks is between


@pytest.mark.parametrize("chunk_left, after_data, state", [
    (7, False, State.DATA),
    (0, True, State.DATA_END),
    (0, False, State.SIZE),
])
def test_skip_continues_where_the_c_loop_stopped(
        chunk_left: int, after_data: bool, state: State) -> None:
    d = ChunkedDecoder()
    d.skip(chunk_left, 100, after_data)
    assert (d.state, d.chunk_left, d.total) == (state, chunk_left, 100)
    # The decoder goes on from there with its own rules.
    if state is State.DATA:
        d.consume(7)
        assert d.feed(b"\r\n0\r\n\r\n") == 7
    elif state is State.DATA_END:
        assert d.feed(b"\r\n0\r\n\r\n") == 7
    else:
        assert d.feed(b"0\r\n\r\n") == 5
    assert d.done and d.total == 100 + (7 if chunk_left else 0)


def test_skip_refused_outside_the_common_framing() -> None:
    d = ChunkedDecoder()
    d.feed(b"5")  # a size line begun: its bytes are the decoder's
    with pytest.raises(RuntimeError):
        d.skip(0, 0, False)
    d = ChunkedDecoder()
    d.feed(b"2\r\n")
    with pytest.raises(RuntimeError):
        d.skip(1, -1, False)  # total going back
