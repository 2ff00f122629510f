# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hash-on-write in the operations: what Write, StreamWrite, WriteFrom and
Zero leave in a ticket's block digests, on a memory backend.

Block sizes here are tiny (the ticket spec is replaced after
validation, which allows 1 MiB at least) so that every case of a block
cut by chunks, heads and tails fits in a few hundred bytes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.transfer import ops
from ovirt_imageio.transfer.digests import BlockDigests
from ovirt_imageio.transfer.errors import ShortData
from ovirt_imageio.transfer.streaming import StreamWrite
from ovirt_imageio.transfer.tickets import Ticket
from ovirt_imageio.transfer.ticketspec import parse
from ovirt_imageio.util import blkhash

ALG = "sha256"
BS = 16
SIZE = 100  # 6 whole blocks and a short one of 4 bytes


def ticket(size: int = SIZE, block_size: int | None = BS) -> Ticket:
    spec = parse({"uuid": "ticket-0123456789", "size": size,
                  "url": "file:///disk", "timeout": 60,
                  "ops": ["read", "write"]})
    if block_size is not None:
        spec = dataclasses.replace(spec, checksum=(ALG, block_size))
    return Ticket(spec)


class Body:
    """A sized request body; fails when asked for more than it has."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readinto_full(self, buf: memoryview) -> None:
        if len(buf) > len(self._data):
            raise ConnectionError("client gone")
        buf[:] = self._data[:len(buf)]
        self._data = self._data[len(buf):]


class Stream:
    """A chunked body, in pieces of n bytes."""

    def __init__(self, data: bytes, n: int = 7) -> None:
        self._data = memoryview(data)
        self._n = n

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._data), self._n)
        buf[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class FailingBackend(MemoryBackend):
    """Fails the write or zero call number ``fail`` (counting from 1)."""

    def __init__(self, data: bytearray, fail: int) -> None:
        super().__init__(data)
        self._calls = 0
        self._fail = fail

    def _count(self) -> None:
        self._calls += 1
        if self._calls == self._fail:
            raise OSError("storage failed")

    def write(self, offset: int, buf: memoryview) -> None:
        self._count()
        super().write(offset, buf)

    def zero(self, offset: int, length: int) -> None:
        self._count()
        super().zero(offset, length)


@pytest.fixture(params=[False, True], ids=["inline", "pool"])
def pool(request: pytest.FixtureRequest
         ) -> Iterator[concurrent.futures.Executor | None]:
    if not request.param:
        yield None
        return
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        yield executor


def bufs(n: int = 24) -> tuple[memoryview, memoryview]:
    # Not a multiple of the block size: blocks are cut across chunks.
    return memoryview(bytearray(n)), memoryview(bytearray(n))


def data(n: int, seed: int = 1) -> bytes:
    return bytes((seed + i * 7) % 251 + 1 for i in range(n))


def digests(t: Ticket) -> BlockDigests:
    assert t.digests is not None
    return t.digests


def known(t: Ticket) -> set[int]:
    d = digests(t)
    return {i for i in range(d.blocks) if d.digest(i) is not None}


def assert_true(t: Ticket, image: bytearray) -> None:
    """Every kept digest is the digest of the block's content."""
    d = digests(t)
    for i in range(d.blocks):
        digest = d.digest(i)
        if digest is not None:
            block = bytes(image[i * d.block_size:(i + 1) * d.block_size])
            assert digest == blkhash.block_digest(ALG, block), i


def write(t: Ticket, backend: MemoryBackend, offset: int, payload: bytes,
          pool: concurrent.futures.Executor | None = None) -> ops.Write:
    op = ops.Write(backend, Body(payload), offset, len(payload), bufs(),
                   pool=pool)
    t.run(op)
    return op


@pytest.mark.parametrize("offset, length, expected", [
    (0, SIZE, {0, 1, 2, 3, 4, 5, 6}),   # the whole image
    (0, 32, {0, 1}),
    (5, 40, {1}),                       # head and tail cut
    (16, 16, {1}),
    (3, 10, set()),                     # inside one block
    (96, 4, {6}),                       # the short last block
    (90, 10, {6}),
])
def test_write_keeps_whole_blocks(pool: concurrent.futures.Executor | None,
                                  offset: int, length: int,
                                  expected: set[int]) -> None:
    t = ticket()
    image = bytearray(SIZE)
    write(t, MemoryBackend(image), offset, data(length), pool)
    assert known(t) == expected
    assert_true(t, image)


def test_checksum_from_digests_equals_full_read() -> None:
    t = ticket()
    image = bytearray(SIZE)
    write(t, MemoryBackend(image), 0, data(SIZE))
    d = digests(t)
    hasher = blkhash.Hasher(ALG, BS)
    for i in range(d.blocks):
        digest = d.digest(i)
        assert digest is not None
        hasher.update(digest)
    full = blkhash.compute(lambda o, n: bytes(image[o:o + n]), SIZE, [],
                           ALG, BS)
    assert hasher.hexdigest() == full["checksum"]


def test_rewrite_replaces_digest() -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    write(t, backend, 0, data(SIZE, seed=1))
    write(t, backend, 16, data(16, seed=9))
    assert known(t) == set(range(7))
    assert_true(t, image)
    # A partial write over a known block forgets it.
    write(t, backend, 40, b"x")
    assert known(t) == {0, 1, 3, 4, 5, 6}
    assert_true(t, image)


def test_failed_body_keeps_nothing(
        pool: concurrent.futures.Executor | None) -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    write(t, backend, 0, data(SIZE))
    # The client sends 40 of 64 bytes: blocks 0-3 stay unknown, even the
    # two whose bytes arrived, and the others keep their digests.
    op = ops.Write(backend, Body(data(40, seed=5)), 0, 64, bufs(),
                   pool=pool)
    with pytest.raises(ConnectionError):
        t.run(op)
    assert known(t) == {4, 5, 6}
    assert_true(t, image)


def test_cut_body_keeps_nothing(
        pool: concurrent.futures.Executor | None) -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    write(t, backend, 0, data(SIZE))
    # Cut after 40 of 64 bytes: the prefix reaches storage (and the
    # ledger) but the write failed, so its blocks keep no digest.
    payload = data(40, seed=6)

    class Cut:
        def __init__(self) -> None:
            self._pos = 0

        def readinto_full(self, buf: memoryview) -> None:
            n = min(len(buf), len(payload) - self._pos)
            buf[:n] = payload[self._pos:self._pos + n]
            self._pos += n
            if n < len(buf):
                raise ShortData(len(buf), n)

    op = ops.Write(backend, Cut(), 0, 64, bufs(), pool=pool)
    with pytest.raises(ShortData):
        t.run(op)
    assert op.done == 40
    assert known(t) == {4, 5, 6}
    assert_true(t, image)


def test_failed_storage_keeps_nothing(
        pool: concurrent.futures.Executor | None) -> None:
    t = ticket()
    image = bytearray(SIZE)
    write(t, MemoryBackend(image), 0, data(SIZE))
    backend = FailingBackend(image, fail=2)
    op = ops.Write(backend, Body(data(48, seed=3)), 0, 48, bufs(),
                   pool=pool)
    with pytest.raises(OSError):
        t.run(op)
    assert known(t) == {3, 4, 5, 6}
    assert_true(t, image)


def test_canceled_write_keeps_nothing() -> None:
    t = ticket()
    image = bytearray(SIZE)
    op = ops.Write(MemoryBackend(image), Body(data(SIZE)), 0, SIZE, bufs())
    op.cancel()
    with pytest.raises(ops.Canceled):
        t.run(op)
    assert known(t) == set()


def test_zero_keeps_zero_digests() -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    write(t, backend, 0, data(SIZE))
    t.run(ops.Zero(backend, 8, 92))
    # Block 0 was cut: unknown; the rest are known zero blocks, the
    # short last one included.
    assert known(t) == set(range(1, 7))
    assert_true(t, image)
    assert digests(t).digest(6) == blkhash.block_digest(ALG, bytes(4))


def test_failed_zero_keeps_nothing() -> None:
    t = ticket()
    image = bytearray(SIZE)
    write(t, MemoryBackend(image), 0, data(SIZE))
    with pytest.raises(OSError):
        t.run(ops.Zero(FailingBackend(image, fail=1), 0, 48))
    assert known(t) == {3, 4, 5, 6}


def test_stream_write_keeps_whole_blocks(
        pool: concurrent.futures.Executor | None) -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    write(t, backend, 0, data(SIZE))
    # 40 bytes from offset 16: blocks 1 and 2 whole, 3 cut. Blocks past
    # the body's end lose their digests, since the length was unknown
    # when the write began; block 0 is before it and keeps its own.
    op = StreamWrite(backend, Stream(data(40, seed=4)), 16, SIZE - 16,
                     bufs(), pool=pool)
    t.run(op)
    assert op.done == 40
    assert known(t) == {0, 1, 2}
    assert_true(t, image)


def test_stream_write_to_the_end() -> None:
    t = ticket()
    image = bytearray(SIZE)
    t.run(StreamWrite(MemoryBackend(image), Stream(data(SIZE)), 0, SIZE,
                      bufs()))
    assert known(t) == set(range(7))
    assert_true(t, image)


def test_write_from_keeps_whole_blocks() -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    t.run(ops.WriteFrom(backend, 10, memoryview(data(50))))
    assert known(t) == {1, 2}
    assert_true(t, image)
    with pytest.raises(OSError):
        t.run(ops.WriteFrom(FailingBackend(image, fail=1), 16,
                            memoryview(data(16, seed=2))))
    assert known(t) == {2}


def test_without_checksum_field_no_digests() -> None:
    t = ticket(block_size=None)
    assert t.digests is None
    image = bytearray(SIZE)
    op = write(t, MemoryBackend(image), 0, data(SIZE))
    assert op.digests is None
    zero = ops.Zero(MemoryBackend(image), 0, SIZE)
    t.run(zero)
    assert zero.digests is None


def test_reads_are_not_given_digests() -> None:
    t = ticket()
    image = bytearray(data(SIZE))
    op = ops.ReadInto(MemoryBackend(image), 0, memoryview(bytearray(SIZE)))
    t.run(op)
    assert op.digests is None


@given(st.lists(st.tuples(st.sampled_from(["write", "stream", "nbd",
                                           "zero", "fail"]),
                          st.integers(0, SIZE), st.integers(0, 60)),
                max_size=10))
@settings(max_examples=80)
def test_kept_digests_are_true(steps: list[tuple[str, int, int]]) -> None:
    t = ticket()
    image = bytearray(SIZE)
    backend = MemoryBackend(image)
    for n, (kind, offset, length) in enumerate(steps):
        length = min(length, SIZE - offset)
        payload = data(length, seed=n)
        if kind == "write":
            write(t, backend, offset, payload)
        elif kind == "stream":
            t.run(StreamWrite(backend, Stream(payload), offset,
                              SIZE - offset, bufs()))
        elif kind == "nbd":
            t.run(ops.WriteFrom(backend, offset, memoryview(payload)))
        elif kind == "zero":
            t.run(ops.Zero(backend, offset, length))
        elif length:
            # With more than one chunk, the first reaches storage.
            failing = FailingBackend(image, fail=2 if length > 8 else 1)
            with pytest.raises(OSError):
                t.run(ops.Write(failing, Body(payload), offset, length,
                                bufs(8)))
    assert_true(t, image)
