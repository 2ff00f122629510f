# SPDX-License-Identifier: GPL-2.0-or-later
"""Chunked request bodies over a scripted stream."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.http.errors import ProtocolError
from ovirt_imageio.httpd.chunked_body import ChunkedBody
from ovirt_imageio.transfer.stream import MockStream


def encode(chunks: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                    for c in chunks if c) + b"0\r\n\r\n"


def read_all(body: ChunkedBody, bufsize: int) -> bytes:
    out = bytearray()
    buf = bytearray(bufsize)
    while True:
        n = body.fill(memoryview(buf))
        out += buf[:n]
        if n < bufsize:
            return bytes(out)


@given(st.lists(st.binary(min_size=1, max_size=5000), max_size=6),
       st.lists(st.integers(1, 3000), min_size=1, max_size=8),
       st.integers(0, 200), st.integers(1, 9000))
def test_round_trip(chunks: list[bytes], cuts: list[int], prefix_len: int,
                    bufsize: int) -> None:
    wire = encode(chunks) + b"GET / HTTP/1.1\r\n"
    prefix, rest = wire[:prefix_len], wire[prefix_len:]
    # The rest arrives in pieces of the given sizes, cycling.
    pieces, pos, i = [], 0, 0
    while pos < len(rest):
        pieces.append(rest[pos:pos + cuts[i % len(cuts)]])
        pos += cuts[i % len(cuts)]
        i += 1
    stream = MockStream(pieces)
    body = ChunkedBody(stream, prefix)
    assert read_all(body, bufsize) == b"".join(chunks)
    assert body.done
    assert body.received == sum(map(len, chunks))
    # What followed the body is in leftover or still unread, never lost.
    assert body.leftover + unread(stream) == b"GET / HTTP/1.1\r\n"


def unread(stream: MockStream) -> bytes:
    out = bytearray()
    buf = bytearray(4096)
    while n := stream.recv_into(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def test_large_chunk_goes_straight_to_buffer() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = b"100000\r\n" + payload + b"\r\n0\r\n\r\n"
    stream = MockStream([wire[:8], wire[8:]])
    body = ChunkedBody(stream, b"")
    buf = bytearray(len(payload))
    assert body.fill(memoryview(buf)) == len(payload)
    assert buf == payload
    assert body.fill(memoryview(bytearray(10))) == 0
    assert body.done and body.leftover == b""


def test_first_read_callback_once() -> None:
    calls = []
    body = ChunkedBody(MockStream([encode([b"abc"])]), b"",
                       on_first_read=lambda: calls.append(1))
    read_all(body, 2)
    assert calls == [1]


@pytest.mark.parametrize("wire, message", [
    (b"3\r\nab", "Client closed the connection within a chunk after 2"),
    (b"3\r\nabc\r\n", "Client closed the connection within a chunked body"),
    (b"zz\r\n", "Invalid chunk size"),
    (b"3\r\nabcX\r\n", "Missing CRLF after chunk data"),
])
def test_errors(wire: bytes, message: str) -> None:
    body = ChunkedBody(MockStream([wire]), b"")
    with pytest.raises(ProtocolError) as e:
        read_all(body, 100)
    assert e.value.status == 400
    assert e.value.message.startswith(message)


def test_readinto_fills_across_chunks() -> None:
    chunks = [bytes([i]) * (100 + i) for i in range(20)]
    body = ChunkedBody(MockStream([encode(chunks)]), b"")
    payload = b"".join(chunks)
    buf = bytearray(len(payload) - 10)
    # One call fills the buffer, whatever the chunk boundaries.
    assert body.readinto(memoryview(buf)) == len(buf)
    assert buf == payload[:len(buf)]
    assert body.readinto(memoryview(buf)) == 10
    assert buf[:10] == payload[-10:]
    assert body.readinto(memoryview(buf)) == 0
    assert body.done


@pytest.mark.parametrize("wire, payload, message", [
    (b"3\r\nabc\r\nzz\r\n", b"abc", "Invalid chunk size"),
    (b"3\r\nabc\r\n5\r\nde", b"abcde",
     "Client closed the connection within a chunk after 5"),
    (b"3\r\nabcX\r\n", b"abc", "Missing CRLF after chunk data"),
])
def test_payload_before_error_is_returned_first(
        wire: bytes, payload: bytes, message: str) -> None:
    body = ChunkedBody(MockStream([wire]), b"")
    buf = bytearray(100)
    assert body.readinto(memoryview(buf)) == len(payload)
    assert buf[:len(payload)] == payload
    for _ in range(2):
        with pytest.raises(ProtocolError) as e:
            body.readinto(memoryview(buf))
        assert e.value.status == 400
        assert e.value.message.startswith(message)
