# SPDX-License-Identifier: GPL-2.0-or-later
"""
The checksum operation on a memory backend: with hash-on-write digests
it reads only blocks without one, and its answer is the full read's.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator

import pytest

from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.httpd.handlers.checksum import ChecksumOp
from ovirt_imageio.transfer.digests import BlockDigests
from ovirt_imageio.util import blkhash
from ovirt_imageio.util.extents import ZeroExtent

ALG = "blake2b"
BS = 4096
SIZE = 10 * BS + 100  # a short last block


class CountingBackend(MemoryBackend):
    """Counts the bytes read from it."""

    read_bytes = 0

    def readinto(self, offset: int, buf: memoryview) -> int:
        n = super().readinto(offset, buf)
        self.read_bytes += n
        return n


@pytest.fixture
def pool() -> Iterator[concurrent.futures.Executor]:
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        yield executor


def checksum(backend: MemoryBackend, pool: concurrent.futures.Executor,
             digests: BlockDigests | None) -> tuple[str, int]:
    slots = [memoryview(bytearray(BS)) for _ in range(4)]
    op = ChecksumOp(backend, SIZE, ALG, BS, slots, pool, digests=digests)
    result = op.run()
    assert result["algorithm"] == ALG and result["block_size"] == BS
    return result["checksum"], op.read


def full(image: bytearray) -> str:
    result = blkhash.compute(lambda o, n: bytes(image[o:o + n]), SIZE, [],
                             ALG, BS)
    checksum: str = result["checksum"]
    return checksum


def hashed_write(d: BlockDigests, image: bytearray, offset: int,
                 data: bytes) -> None:
    h = d.writing(offset, len(data))
    image[offset:offset + len(data)] = data
    h.update(data)
    h.commit()


def test_all_known_reads_nothing(pool: concurrent.futures.Executor) -> None:
    image = bytearray(SIZE)
    d = BlockDigests(ALG, BS, SIZE)
    hashed_write(d, image, 0, os.urandom(SIZE))
    backend = CountingBackend(image)
    assert checksum(backend, pool, d) == (full(image), 0)
    assert backend.read_bytes == 0


@pytest.mark.parametrize("offset, length, unread", [
    (0, SIZE - 1, 1),       # the short last block not written to its end
    (1, SIZE - 1, 1),       # block 0 cut
    (BS // 2, 3 * BS, 2),   # blocks 0 and 3 cut, the rest never written
])
def test_reads_only_unknown_blocks(pool: concurrent.futures.Executor,
                                   offset: int, length: int,
                                   unread: int) -> None:
    image = bytearray(os.urandom(SIZE))
    d = BlockDigests(ALG, BS, SIZE)
    hashed_write(d, image, offset, os.urandom(length))
    backend = CountingBackend(image)
    result, read = checksum(backend, pool, d)
    assert result == full(image)
    missing = [i for i in range(d.blocks) if d.digest(i) is None]
    assert len(missing) >= unread
    assert read == sum(d.block_length(i) for i in missing)
    assert backend.read_bytes == read


def test_zero_extents_still_skipped(
        pool: concurrent.futures.Executor) -> None:
    # Block 0 has a digest, blocks 1-9 are zero extents, the last one is
    # data without a digest: only it is read.
    image = bytearray(SIZE)
    image[0:BS] = os.urandom(BS)
    image[10 * BS:] = os.urandom(100)
    d = BlockDigests(ALG, BS, SIZE)
    hashed_write(d, image, 0, bytes(image[0:BS]))
    extents = [ZeroExtent(0, BS, False, False),
               ZeroExtent(BS, 9 * BS, True, False),
               ZeroExtent(10 * BS, 100, False, False)]
    backend = CountingBackend(image, extents=extents)
    assert checksum(backend, pool, d) == (full(image), 100)


def test_without_digests_reads_everything(
        pool: concurrent.futures.Executor) -> None:
    image = bytearray(os.urandom(SIZE))
    backend = CountingBackend(image)
    assert checksum(backend, pool, None) == (full(image), SIZE)
