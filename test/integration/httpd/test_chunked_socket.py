# SPDX-License-Identifier: GPL-2.0-or-later
"""
Chunked bodies over a real socket, where the C receive loop
(``ext/chunked.c``) parses the common framing and hands anything else to
the Python decoder: every body gives the payload, the leftover and the
error the pure Python loop (a scripted stream) gives for the same bytes,
however the bytes are split between sends.
"""

from __future__ import annotations

import fcntl
import socket
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.httpd.chunked_body import ChunkedBody
from ovirt_imageio.transfer.stream import MockStream, SocketStream

NEXT = b"GET / HTTP/1.1\r\n"


def outcome(body: ChunkedBody, bufsize: int) -> tuple[bytes, str | None]:
    """The payload read, and the error that ended it (None at the end)."""
    out = bytearray()
    buf = bytearray(bufsize)
    while True:
        try:
            n = body.readinto(memoryview(buf))
        except Exception as e:
            return bytes(out), f"{type(e).__name__}: {e}"
        if n == 0:
            return bytes(out), None
        out += buf[:n]


@contextmanager
def sender(pieces: list[bytes], close: bool = True
           ) -> Iterator[socket.socket]:
    """A socket receiving pieces, sent one by one by a thread."""
    reader, writer = socket.socketpair()
    reader.settimeout(10)

    def send() -> None:
        try:
            for piece in pieces:
                writer.sendall(piece)
        except OSError:
            pass  # The reader stopped early (an error); fine.
        if close:
            writer.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    try:
        yield reader
    finally:
        reader.close()
        t.join()
        writer.close()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        pieces.append(data[pos:pos + step])
        pos += step
        i += 1
    return pieces


def size_line(n: int, style: int) -> bytes:
    """A chunk-size line in one of the forms clients send (or must not)."""
    if style == 0:
        return b"%x\r\n" % n
    if style == 1:
        return b"%X\r\n" % n
    if style == 2:
        return b"%016x\r\n" % n           # 16 digits: still the fast form
    if style == 3:
        return b"%017x\r\n" % n           # 17 digits: refused
    if style == 4:
        return b"%x;name=value\r\n" % n   # extension
    if style == 5:
        return b"%x\n" % n                # bare LF: tolerated
    if style == 6:
        return b"%x \r\n" % n             # whitespace before CRLF
    return b"%xg\r\n" % n                 # not hex


framings = st.lists(st.tuples(st.binary(min_size=1, max_size=3000),
                              st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6,
                                               7])),
                    max_size=6)


@settings(max_examples=150, deadline=None)
@given(chunks=framings,
       trailer=st.sampled_from([b"", b"X-Sum: 1\r\n", b"bad trailer\r\n"]),
       end=st.sampled_from([b"\r\n", b"\n", b"xx"]),
       cuts=st.lists(st.integers(1, 4000), min_size=1, max_size=6),
       bufsize=st.integers(1, 9000), cut_at=st.none() | st.integers(0, 9000))
def test_same_as_python_loop(chunks: list[tuple[bytes, int]], trailer: bytes,
                             end: bytes, cuts: list[int], bufsize: int,
                             cut_at: int | None) -> None:
    wire = b"".join(size_line(len(c), style) + c + end
                    for c, style in chunks)
    wire += b"0\r\n" + trailer + b"\r\n" + NEXT
    if cut_at is not None:
        wire = wire[:cut_at]  # the client vanished
    mock = MockStream(split(wire, cuts))
    expected_body = ChunkedBody(mock, b"")
    expected = outcome(expected_body, bufsize)
    with sender(split(wire, cuts)) as sock:
        body = ChunkedBody(SocketStream(sock), b"")
        assert outcome(body, bufsize) == expected
        assert body.received == expected_body.received
        assert body.done == expected_body.done
        if body.done:
            # What followed the body: in leftover or still unread.
            assert body.leftover + rest(sock) == (
                expected_body.leftover + unread(mock))


def unread(stream: MockStream) -> bytes:
    out = bytearray()
    buf = bytearray(4096)
    while n := stream.recv_into(memoryview(buf)):
        out += buf[:n]
    return bytes(out)


def rest(sock: socket.socket) -> bytes:
    out = bytearray()
    while data := sock.recv(4096):
        out += data
    return bytes(out)


def wait_drained(sock: socket.socket) -> None:
    """Until the reader took every byte sent so far."""
    deadline = time.monotonic() + 10
    while fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4) != \
            b"\0" * 4:
        assert time.monotonic() < deadline
        time.sleep(0.001)


@pytest.mark.parametrize("head", [
    b"\r",                   # the CRLF ending a chunk, split
    b"\r\n",                 # the next size line not started
    b"\r\n4",                # inside the size
    b"\r\n4\r",              # the size line's CRLF, split
])
def test_framing_split_between_receives(head: bytes) -> None:
    # The reader blocks between the two sends, so the framing arrives
    # in two receives for sure.
    first = b"3\r\nabc" + head
    rest = (b"\r\n4\r\nwxyz\r\n0\r\n\r\n")[len(head):]
    reader, writer = socket.socketpair()
    reader.settimeout(10)
    result: list[tuple[bytes, str | None]] = []
    body = ChunkedBody(SocketStream(reader), b"")
    t = threading.Thread(target=lambda: result.append(outcome(body, 100)))
    try:
        t.start()
        writer.sendall(first)
        wait_drained(reader)
        writer.sendall(rest)
        t.join()
    finally:
        t.join()
        reader.close()
        writer.close()
    assert result == [(b"abcwxyz", None)]
    assert body.done


def test_client_gone_within_a_chunk_keeps_what_came() -> None:
    wire = b"a\r\n0123456789\r\n" + b"10\r\nabcdef"
    with sender([wire]) as sock:
        body = ChunkedBody(SocketStream(sock), b"")
        buf = bytearray(100)
        # What arrived first is returned, the error raised by the next call.
        assert body.readinto(memoryview(buf)) == 16
        assert bytes(buf[:16]) == b"0123456789abcdef"
        with pytest.raises(Exception, match="within a chunk after 16 bytes"):
            body.readinto(memoryview(buf))


def test_silent_client_times_out() -> None:
    reader, writer = socket.socketpair()
    try:
        reader.settimeout(0.2)
        writer.sendall(b"5\r\nab")
        body = ChunkedBody(SocketStream(reader), b"")
        buf = bytearray(10)
        assert body.readinto(memoryview(buf)) == 2
        with pytest.raises(TimeoutError):
            body.readinto(memoryview(buf))
    finally:
        reader.close()
        writer.close()


def test_large_body_in_large_buffers() -> None:
    # curl's shape: 64 KiB chunks less the framing, 8 MiB buffers.
    piece = bytes(range(256)) * 255
    wire = (b"%x\r\n" % len(piece) + piece + b"\r\n") * 200 + b"0\r\n\r\n"
    with sender(split(wire, [65536])) as sock:
        body = ChunkedBody(SocketStream(sock), b"")
        assert outcome(body, 8 * 1024**2) == (piece * 200, None)
        assert body.done and body.leftover == b""
