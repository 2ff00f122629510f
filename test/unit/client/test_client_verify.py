# SPDX-License-Identifier: GPL-2.0-or-later
"""
Digests collected by the copy engine (client._checksum.Digests): the
checksum they finish equals a full read's, and only the blocks no copy
request covered whole are read again.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.client import _checksum, _io
from ovirt_imageio.util import blkhash
from ovirt_imageio.util.extents import ZeroExtent

KiB = 1024
MiB = 1024**2
BLOCK = MiB
# Extents at qcow2 cluster granularity, so blocks mix data and zeros.
UNIT = 64 * KiB


class Reads(MemoryBackend):
    """A source counting the bytes read from it, by offset."""

    def __init__(self, data: bytearray, extents: list[ZeroExtent]) -> None:
        super().__init__(data, "r", extents=extents)
        self.lock = threading.Lock()
        self.reads: list[tuple[int, int]] = []

    def readinto(self, offset: int, buf: memoryview) -> int:
        n = super().readinto(offset, buf)
        with self.lock:
            self.reads.append((offset, n))
        return n


class Streaming(MemoryBackend):
    """
    A destination streaming PUTs, like the http backend. A repeatable
    body is first cut after its first chunk, then sent again whole (or,
    with resend, only after the chunk written before the cut), as when a
    retry sends a PUT again after a broken connection: the observer must
    see each byte once all the same.
    """

    def put_stream(self, offset: int, length: int, send: Any,
                   repeatable: bool = False, resend: Any = None) -> None:
        done = 0

        def send_data(chunk: memoryview) -> None:
            nonlocal done
            self.write(offset + done, chunk)
            done += len(chunk)

        if resend is not None:
            # Like a retry to a server with a ledger: the first chunk is
            # written, the cut loses the second, and the retry sends only
            # what follows the written prefix.
            def write_then_cut(chunk: memoryview) -> None:
                if done:
                    raise ConnectionResetError("cut by the test")
                send_data(chunk)
            try:
                send(write_then_cut)
            except ConnectionResetError:
                pass
            if done < length:
                resend(done)(send_data)
            return
        if repeatable:
            def cut(chunk: memoryview) -> None:
                raise ConnectionResetError("cut by the test")
            try:
                send(cut)
            except ConnectionResetError:
                pass
        send(send_data)


# Images as (kinds of UNIT-sized pieces, length of a short last piece):
# data, zero areas reported as data, holes; sizes not block aligned.
images = st.tuples(st.lists(st.sampled_from(["data", "zeros", "hole"]),
                            min_size=1, max_size=64),
                   st.integers(0, UNIT - 1))


def build(units: list[str], tail: int
          ) -> tuple[bytearray, list[ZeroExtent]]:
    data = bytearray()
    extents: list[ZeroExtent] = []
    for i, kind in enumerate(units):
        length = UNIT if i < len(units) - 1 or not tail else tail
        start = len(data)
        if kind == "data":
            data += bytes([i % 250 + 1]) * length
        else:
            data += bytes(length)
        zero = kind == "hole"
        last = extents[-1] if extents else None
        # Merged as backends report them: one extent per run.
        if last is not None and last.zero == zero:
            extents[-1] = ZeroExtent(last.start, last.length + length, zero,
                                     zero)
        else:
            extents.append(ZeroExtent(start, length, zero, zero))
    return data, extents


def expected_reads(data: bytearray, extents: list[ZeroExtent]) -> set[int]:
    """Blocks neither in zero extents nor inside one copy request."""
    size = len(data)
    covered: set[int] = set()
    for req in _io.plan(extents):
        if req.op == "copy":
            covered.update(blkhash.whole_blocks(req.start, req.length, size,
                                                BLOCK))
    return {off // BLOCK for off, _, zero in
            blkhash.plan(extents, size, BLOCK)
            if not zero} - covered


@settings(max_examples=40, deadline=None)
@given(images, st.integers(1, 3), st.sampled_from([64 * KiB, 384 * KiB,
                                                     MiB]),
       st.booleans(), st.booleans())
def test_collected_digests_finish_the_checksum(
        img: tuple[list[str], int], workers: int,
        buffer_size: int, streaming: bool, zero: bool) -> None:
    data, extents = build(*img)
    size = len(data)
    digests = _checksum.Digests("sha256", BLOCK, size)
    src = MemoryBackend(data, "r", extents=extents)
    target = bytearray(size)
    kind = Streaming if streaming else MemoryBackend
    _io.copy(src, kind(target), open_src=lambda: MemoryBackend(data, "r"),
             open_dst=lambda: kind(target), max_workers=workers,
             buffer_size=buffer_size, zero=zero, observer=digests)
    assert target == data

    full = _checksum.compute(MemoryBackend(data, "r", extents=extents),
                             algorithm="sha256", block_size=BLOCK)
    reader = Reads(data, extents)
    fast = _checksum.compute(reader, algorithm="sha256", block_size=BLOCK,
                             known=digests)
    assert fast == full
    read = {off // BLOCK for off, _ in reader.reads}
    assert read == expected_reads(data, extents)


def test_whole_data_image_is_not_read_again() -> None:
    # A long data extent: requests cut at MAX_REQUEST multiples cover
    # whole blocks even when the extent starts unaligned, so only the
    # two blocks it shares with the hole before it and the tail are read.
    size = _io.MAX_REQUEST + 3 * MiB + 4 * KiB
    data = bytearray(b"x") * size
    data[:UNIT] = bytes(UNIT)
    extents = [ZeroExtent(0, UNIT, True, True),
               ZeroExtent(UNIT, size - UNIT, False, False)]
    digests = _checksum.Digests("blake2b", 4 * MiB, size)
    src = MemoryBackend(data, "r", extents=extents)
    target = bytearray(size)
    _io.copy(src, Streaming(target),
             open_src=lambda: MemoryBackend(data, "r"),
             open_dst=lambda: Streaming(target), max_workers=2,
             observer=digests)
    reader = Reads(data, extents)
    fast = _checksum.compute(reader, algorithm="blake2b",
                             block_size=4 * MiB, known=digests)
    assert fast == _checksum.compute(MemoryBackend(data, "r",
                                                   extents=extents),
                                     algorithm="blake2b",
                                     block_size=4 * MiB)
    assert {off // (4 * MiB) for off, _ in reader.reads} == {0}
    assert digests.count() == -(-size // (4 * MiB)) - 1


def test_digests_of_another_block_size_are_refused() -> None:
    digests = _checksum.Digests("sha256", BLOCK, MiB)
    with pytest.raises(ValueError):
        _checksum.compute(MemoryBackend(bytearray(MiB), "r"),
                          algorithm="sha256", block_size=2 * MiB,
                          known=digests)


def test_reader_rewound_shows_each_byte_once() -> None:
    # A PUT sent again after a broken connection reads its range again
    # from the start; the observer must not see those bytes twice.
    src = MemoryBackend(bytearray(b"abcdefgh"), mode="r")
    seen: list[bytes] = []
    reader = _io._Reader(src, 2, lambda view: seen.append(bytes(view)))

    def send_next() -> None:
        buf = memoryview(bytearray(2))
        n = reader.readinto(buf)
        reader.sending(buf[:n])

    send_next()
    send_next()
    reader.rewind()
    for _ in range(3):
        send_next()
    assert b"".join(seen) == b"cdefgh"


def test_reader_shows_bytes_as_they_are_sent() -> None:
    # Reading runs ahead of sending (the next chunk is read while one is
    # sent): the observer gets a chunk when it goes out, in order; one
    # read but never sent (the connection broke) is seen once re-read.
    src = MemoryBackend(bytearray(b"abcdefgh"), mode="r")
    seen: list[bytes] = []
    reader = _io._Reader(src, 0, lambda view: seen.append(bytes(view)))
    a, b = memoryview(bytearray(3)), memoryview(bytearray(3))
    reader.readinto(a)
    reader.readinto(b)
    assert seen == []
    reader.sending(a)
    assert seen == [b"abc"]
    reader.rewind(2)  # b never went out; the server has 2 bytes
    reader.readinto(a)
    reader.sending(a)
    reader.readinto(b)
    reader.sending(b)
    assert b"".join(seen) == b"abcdefgh"
