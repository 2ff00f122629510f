# SPDX-License-Identifier: GPL-2.0-or-later
"""
libsodium's BLAKE2b (``native.blake2b``) gives hashlib's digests for any
data fed in any pieces, so checksums made with it (the daemon's, the
client's) equal checksums made with hashlib (upstream's, other clients').
"""

from __future__ import annotations

import hashlib
import itertools
import mmap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.native import blake2b
from ovirt_imageio.native.blake2b import Blake2b
from ovirt_imageio.util import blkhash


@given(data=st.binary(max_size=2000),
       cuts=st.lists(st.integers(0, 2000), max_size=6),
       digest_size=st.integers(16, 64))
def test_same_digest_as_hashlib_in_any_pieces(
        data: bytes, cuts: list[int], digest_size: int) -> None:
    h = Blake2b(digest_size=digest_size)
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for start, end in itertools.pairwise(bounds):
        h.update(data[start:end])
    want = hashlib.blake2b(data, digest_size=digest_size)
    assert h.digest() == want.digest()
    assert h.hexdigest() == want.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 4096, 4 * 1024**2])
def test_block_sizes_around_the_compression_block(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    h = blake2b.block_hash()
    h.update(data)
    assert h.digest() == hashlib.blake2b(data, digest_size=32).digest()


def test_buffers_of_every_kind() -> None:
    data = bytes(range(256)) * 64
    want = hashlib.blake2b(data, digest_size=32).digest()
    with mmap.mmap(-1, len(data)) as m:
        m[:] = data
        view = memoryview(m)
        words = view.cast("Q")
        try:
            for buf in (data, bytearray(data), view, words):
                h = blake2b.block_hash()
                h.update(buf)
                assert h.digest() == want
        finally:
            words.release()
            view.release()


def test_digest_does_not_end_the_hash() -> None:
    h = Blake2b(b"abc", digest_size=32)
    first = h.digest()
    assert h.digest() == first
    h.update(b"def")
    assert h.digest() == hashlib.blake2b(b"abcdef", digest_size=32).digest()


def test_copy_is_independent() -> None:
    h = Blake2b(b"abc", digest_size=32)
    c = h.copy()
    c.update(b"x")
    assert h.digest() == hashlib.blake2b(b"abc", digest_size=32).digest()
    assert c.digest() == hashlib.blake2b(b"abcx", digest_size=32).digest()


@pytest.mark.parametrize("digest_size", [0, 15, 65, -1])
def test_invalid_digest_size(digest_size: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        Blake2b(digest_size=digest_size)


def test_block_checksum_same_with_either_implementation() -> None:
    data = bytes(range(256)) * 8192 * 3  # 6 MiB: 2 blocks, one short
    results = []
    for factory in (None, blake2b.block_hash):
        previous = blkhash._IMPLEMENTATIONS.get("blake2b")
        blkhash.use("blake2b", factory)
        try:
            assert (type(blkhash.new("blake2b")) is Blake2b) == (
                factory is not None)
            results.append(blkhash.compute(
                lambda off, n: data[off:off + n], len(data), [],
                block_size=4 * 1024**2))
        finally:
            blkhash.use("blake2b", previous)
    assert results[0] == results[1]


def test_client_library_hashes_with_libsodium() -> None:
    import importlib

    from ovirt_imageio.client import _checksum
    previous = blkhash._IMPLEMENTATIONS.pop("blake2b", None)
    try:
        assert type(blkhash.new("blake2b")) is not Blake2b
        importlib.reload(_checksum)
        assert type(blkhash.new("blake2b")) is Blake2b
    finally:
        blkhash.use("blake2b", previous)
