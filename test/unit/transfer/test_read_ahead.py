# SPDX-License-Identifier: GPL-2.0-or-later
"""transfer.stream.ReadAhead over a scripted stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer.stream import MockStream, ReadAhead


class Quiet(MockStream):
    """A scripted stream that says it has nothing to read, and records
    the reads asked of it."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        # ("into" | "full", size asked)
        self.calls: list[tuple[str, int]] = []

    def recv_into(self, buf: memoryview) -> int:
        self.calls.append(("into", len(buf)))
        return super().recv_into(buf)

    def recv_full(self, buf: memoryview) -> int:
        self.calls.append(("full", len(buf)))
        pos = 0
        while pos < len(buf) and (n := MockStream.recv_into(self, buf[pos:])):
            pos += n
        return pos

    def readable_now(self) -> bool:
        return False

    def wait_readable(self, wake: int) -> bool:
        return False

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        return False, write


def read_all(stream: ReadAhead, sizes: list[int], full: bool) -> bytes:
    """Read with these sizes in turn, the last one again until EOF."""
    out = bytearray()
    for i in itertools.count():
        buf = memoryview(bytearray(sizes[min(i, len(sizes) - 1)]))
        n = stream.recv_full(buf) if full else stream.recv_into(buf)
        if n == 0:
            return bytes(out)
        out += buf[:n]
    raise AssertionError("unreachable")


@given(data=st.binary(max_size=3000),
       cuts=st.lists(st.integers(1, 500), max_size=20),
       prefix=st.binary(max_size=100),
       sizes=st.lists(st.integers(1, 700), min_size=1, max_size=40),
       full=st.booleans())
def test_bytes_come_out_as_they_went_in(data: bytes, cuts: list[int],
                                        prefix: bytes, sizes: list[int],
                                        full: bool) -> None:
    chunks = []
    pos = 0
    for cut in cuts:
        chunks.append(data[pos:pos + cut])
        pos += cut
    chunks.append(data[pos:])
    stream = ReadAhead(MockStream(chunks), prefix, size=256)
    got = read_all(stream, sizes, full)
    assert got == prefix + data


@pytest.mark.parametrize("asked,calls", [
    # A header: one read ahead of up to size bytes.
    (28, [("into", 64)]),
    # Smaller than size: read ahead until filled.
    (63, [("into", 64)]),
    # size or more: straight into the caller's buffer.
    (64, [("full", 64)]),
    (1000, [("full", 1000)]),
])
def test_small_reads_read_ahead_large_ones_do_not(
        asked: int, calls: list[tuple[str, int]]) -> None:
    inner = Quiet([b"x" * 2000])
    stream = ReadAhead(inner, size=64)
    assert stream.recv_full(memoryview(bytearray(asked))) == asked
    assert inner.calls == calls


def test_data_after_a_header_copies_at_most_what_was_read_ahead() -> None:
    # A WRITE: its 28-byte header, then 1000 bytes of data sent at once.
    header, data = b"h" * 28, bytes(range(250)) * 4
    inner = Quiet([header + data])
    stream = ReadAhead(inner, size=64)
    head = memoryview(bytearray(28))
    assert stream.recv_full(head) == 28
    body = memoryview(bytearray(1000))
    assert stream.recv_full(body) == 1000
    assert bytes(head) + bytes(body) == header + data
    # The 36 data bytes read with the header came from the buffer, the
    # rest went straight into the body.
    assert inner.calls == [("into", 64), ("full", 964)]


def test_several_headers_in_one_read() -> None:
    headers = b"".join(bytes([i]) * 28 for i in range(5))
    inner = Quiet([headers])
    stream = ReadAhead(inner, size=4096)
    for i in range(5):
        buf = memoryview(bytearray(28))
        assert stream.recv_full(buf) == 28
        assert bytes(buf) == bytes([i]) * 28
    assert inner.calls == [("into", 4096)]


def test_ready_while_bytes_are_read_ahead() -> None:
    stream = ReadAhead(Quiet([b"abcdef"]), size=64)
    buf = memoryview(bytearray(2))
    # Nothing read ahead yet: the stream answers.
    assert not stream.readable_now()
    assert stream.wait_io(-1, True, True) == (False, True)
    stream.recv_full(buf)
    # Four bytes wait here, unseen by the kernel's poll.
    assert stream.readable_now()
    assert stream.wait_readable(-1)
    assert stream.wait_io(-1, True, True) == (True, False)
    # Not asked to read: the stream's answer.
    assert stream.wait_io(-1, False, True) == (False, True)
    stream.recv_full(memoryview(bytearray(4)))
    assert not stream.readable_now()


def test_prefix_first() -> None:
    stream = ReadAhead(Quiet([b"rest"]), b"early", size=4)
    # A prefix longer than the read-ahead size is kept whole.
    assert stream.readable_now()
    assert read_all(stream, [3, 3, 3, 3], full=False) == b"earlyrest"


def test_eof() -> None:
    stream = ReadAhead(Quiet([b"ab"]), size=64)
    buf = memoryview(bytearray(28))
    assert stream.recv_full(buf) == 2
    assert stream.recv_full(buf) == 0
    assert stream.recv_into(buf) == 0


def test_writes_and_the_rest_pass_through() -> None:
    inner = MockStream()
    stream = ReadAhead(inner)
    stream.sendall(b"one")
    assert stream.send_some(b"two") == 3
    stream.settimeout(5)
    assert inner.timeout == 5
    stream.close()
    assert inner.sent == b"onetwo"
    assert inner.closed


@pytest.mark.parametrize("chunks, first, back, want", [
    # Nothing read ahead: the stream's bytes follow what comes back.
    ([b"abcdef"], 0, b"", b"abcdef"),
    ([b"abcdef"], 0, b"XY", b"XYabcdef"),
    # Read ahead, taken by another reader, some given back.
    ([b"abcdef", b"gh"], 1, b"cdef", b"cdefgh"),
    ([b"abcdef", b"gh"], 1, b"", b"gh"),
    # Given back more than the read-ahead buffer holds.
    ([b"ab"], 1, b"x" * 10000, b"x" * 10000),
])
def test_take_buffered_and_unread(chunks: list[bytes], first: int,
                                  back: bytes, want: bytes) -> None:
    stream = ReadAhead(Quiet(chunks), size=4096)
    taken = bytearray(first)
    assert stream.recv_full(memoryview(taken)) == first
    rest = stream.take_buffered()
    assert bytes(taken) + rest == chunks[0][:first + len(rest)]
    assert stream.take_buffered() == b""
    stream.unread(back)
    got = bytearray(len(want))
    assert stream.recv_full(memoryview(got)) == len(want)
    assert bytes(got) == want
