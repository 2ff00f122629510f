# SPDX-License-Identifier: GPL-2.0-or-later
"""blkhash against a naive independent implementation."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.util import blkhash
from ovirt_imageio.util.extents import ZeroExtent


def naive(data: bytes, algorithm: str, block_size: int) -> str:
    kw: dict[str, Any] = (
        {"digest_size": 32} if algorithm.startswith("blake2") else {})
    outer = hashlib.new(algorithm, **kw)
    for i in range(0, len(data), block_size):
        outer.update(hashlib.new(algorithm, data[i:i + block_size],
                                 **kw).digest())
    return outer.hexdigest()


def extents_of(data: bytes, unit: int) -> list[ZeroExtent]:
    """Zero extents describing data at unit granularity."""
    out = []
    for i in range(0, len(data), unit):
        chunk = data[i:i + unit]
        out.append(ZeroExtent(i, len(chunk), not any(chunk), False))
    return out


@pytest.mark.parametrize("algorithm", ["blake2b", "blake2s", "sha1",
                                       "sha256"])
def test_matches_naive(algorithm: str) -> None:
    block = 1024**2
    data = (b"\0" * block + b"x" * 1000 + b"\0" * (block - 1000)
            + b"\0" * block + b"y" * 500)
    expected = naive(data, algorithm, block)
    for unit in (4096, block, len(data)):
        result = blkhash.compute(lambda o, n: data[o:o + n], len(data),
                                 extents_of(data, unit), algorithm, block)
        assert result == {"algorithm": algorithm, "block_size": block,
                          "checksum": expected}


def test_zero_blocks_not_read() -> None:
    block = 1024**2
    size = 10 * block + 123
    reads: list[int] = []

    def read(offset: int, length: int) -> bytes:
        reads.append(offset)
        return bytes(length)

    result = blkhash.compute(read, size,
                             [ZeroExtent(0, size, True, True)], "blake2b",
                             block)
    assert reads == []
    assert result["checksum"] == naive(bytes(size), "blake2b", block)


@pytest.mark.parametrize("algorithm,block_size,ok", [
    ("blake2b", 4 * 1024**2, True),
    ("sha256", 1024**2, True),
    ("sha256", 16 * 1024**2, True),
    ("nope", 4 * 1024**2, False),
    ("blake2b", 1024**2 - 4096, False),
    ("blake2b", 16 * 1024**2 + 4096, False),
    ("blake2b", 1024**2 + 1, False),
])
def test_validate(algorithm: str, block_size: int, ok: bool) -> None:
    assert (blkhash.validate(algorithm, block_size) is None) == ok


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.booleans()), max_size=12),
       st.integers(1, 16))
def test_plan_properties(spec: list[tuple[int, bool]], block: int) -> None:
    extents = []
    pos = 0
    for length, zero in spec:
        extents.append(ZeroExtent(pos, length, zero, False))
        pos += length
    size = pos
    blocks = list(blkhash.plan(extents, size, block))
    # Blocks tile the image.
    assert sum(n for _, n, _ in blocks) == size
    for offset, length, is_zero in blocks:
        covered = all(
            any(e.start <= b < e.start + e.length and e.zero
                for e in extents)
            for b in range(offset, offset + length))
        assert is_zero == covered


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_range_hasher_hashes_whole_blocks(data: Any) -> None:
    # Any range fed in any pieces yields the digests of exactly the
    # blocks it covers whole, as hashed from the image directly.
    block_size = data.draw(st.integers(1, 8), label="block_size")
    image = data.draw(st.binary(min_size=1, max_size=64), label="image")
    size = len(image)
    offset = data.draw(st.integers(0, size - 1), label="offset")
    length = data.draw(st.integers(1, size - offset), label="length")
    h = blkhash.RangeHasher("sha256", block_size, size, offset, length)
    pos = offset
    while pos < offset + length:
        n = data.draw(st.integers(1, offset + length - pos))
        h.update(memoryview(image)[pos:pos + n])
        pos += n
    expected = {}
    for i in range(0, -(-size // block_size)):
        start, end = i * block_size, min(size, (i + 1) * block_size)
        if offset <= start and end <= offset + length:
            expected[i] = hashlib.sha256(image[start:end]).digest()
    assert h.digests == expected
    assert list(h.whole) == sorted(expected)
    assert h.complete
