# SPDX-License-Identifier: GPL-2.0-or-later
"""Writes of unknown length (chunked uploads) on a memory backend."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer.errors import BeyondEnd
from ovirt_imageio.transfer.streaming import StreamWrite


class Reader:
    """A body given in pieces; optionally failing after them."""

    def __init__(self, pieces: list[bytes], fail: bool = False) -> None:
        self._pieces = [p for p in pieces if p]
        self._fail = fail
        self.asked = 0

    def readinto(self, buf: memoryview) -> int:
        self.asked += 1
        if not self._pieces:
            if self._fail:
                raise ValueError("malformed body")
            return 0
        piece = self._pieces[0]
        n = min(len(buf), len(piece))
        buf[:n] = piece[:n]
        if n == len(piece):
            self._pieces.pop(0)
        else:
            self._pieces[0] = piece[n:]
        return n


@pytest.fixture(params=[False, True], ids=["inline", "pool"])
def pool(request: pytest.FixtureRequest
         ) -> Iterator[concurrent.futures.Executor | None]:
    if not request.param:
        yield None
        return
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        yield executor


def buffers(size: int) -> tuple[memoryview, memoryview]:
    return memoryview(bytearray(size)), memoryview(bytearray(size))


@given(data=st.binary(max_size=3000), cuts=st.integers(1, 500),
       offset=st.integers(0, 100), bufsize=st.integers(1, 700))
@settings(max_examples=60)
def test_writes_everything_in_order(data: bytes, cuts: int, offset: int,
                                    bufsize: int) -> None:
    pieces = [data[i:i + cuts] for i in range(0, len(data), cuts)]
    backend = MemoryBackend(bytearray(offset + len(data)))
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        op = StreamWrite(backend, Reader(pieces), offset, len(data),
                         buffers(bufsize), pool=executor)
        op.run()
    assert op.done == op.length == len(data)
    out = bytearray(offset + len(data))
    backend.readinto(0, memoryview(out))
    assert out[offset:] == data
    assert out[:offset] == bytes(offset)


def test_exactly_at_limit(pool: concurrent.futures.Executor | None) -> None:
    backend = MemoryBackend(bytearray(100))
    op = StreamWrite(backend, Reader([b"x" * 60, b"y" * 30]), 10, 90,
                     buffers(32), pool=pool)
    op.run()
    assert op.done == 90


def test_beyond_limit(pool: concurrent.futures.Executor | None) -> None:
    backend = MemoryBackend(bytearray(100))
    op = StreamWrite(backend, Reader([b"x" * 91]), 10, 90, buffers(32),
                     pool=pool)
    with pytest.raises(BeyondEnd) as e:
        op.run()
    assert e.value.size == 100
    # Up to the end written; the backend never saw a byte past it.
    out = bytearray(100)
    backend.readinto(0, memoryview(out))
    assert out == bytes(10) + b"x" * 90
    assert op.done == 90


def test_failure_keeps_data_before_it(
        pool: concurrent.futures.Executor | None) -> None:
    backend = MemoryBackend(bytearray(100))
    op = StreamWrite(backend, Reader([b"a" * 40, b"b" * 5], fail=True), 0,
                     100, buffers(32), pool=pool)
    with pytest.raises(ValueError):
        op.run()
    out = bytearray(100)
    backend.readinto(0, memoryview(out))
    assert out == b"a" * 40 + b"b" * 5 + bytes(55)
    assert op.done == 45


def test_flush(pool: concurrent.futures.Executor | None) -> None:
    backend = MemoryBackend(bytearray(10))
    StreamWrite(backend, Reader([b"abc"]), 0, 10, buffers(4), flush=True,
                pool=pool).run()
    assert backend.flush_count == 1
