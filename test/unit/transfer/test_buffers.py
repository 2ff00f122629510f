# SPDX-License-Identifier: GPL-2.0-or-later
"""
server.buffers: the daemon's pool of aligned buffer pairs.
"""

from __future__ import annotations

import contextlib

import pytest

from ovirt_imageio.native import ioutil
from ovirt_imageio.transfer.buffers import KEEP_PAIRS, BufferPool

KiB = 1024


def addresses(pair: tuple[memoryview, memoryview]) -> tuple[int, int]:
    return ioutil.buffer_address(pair[0]), ioutil.buffer_address(pair[1])


@pytest.mark.parametrize("size", [4 * KiB, 128 * KiB, 4 * 1024**2])
def test_pair_is_aligned_writable_and_distinct(size: int) -> None:
    pool = BufferPool()
    with pool.borrow(size) as (a, b):
        assert len(a) == len(b) == size
        assert not a.readonly and not b.readonly
        assert ioutil.buffer_address(a) % 4096 == 0
        assert ioutil.buffer_address(b) % 4096 == 0
        a[:] = b"a" * size
        b[:] = b"b" * size
        assert a[0] == ord("a") and b[-1] == ord("b")
    pool.close()


def test_returned_pair_is_reused() -> None:
    pool = BufferPool()
    with pool.borrow(64 * KiB) as pair:
        first = addresses(pair)
    with pool.borrow(64 * KiB) as pair:
        assert addresses(pair) == first
    assert pool.idle() == 1
    pool.close()


def test_newest_pair_first() -> None:
    pool = BufferPool()
    with pool.borrow(8 * KiB) as one, pool.borrow(8 * KiB) as two:
        first, second = addresses(one), addresses(two)
    # The with statement gives two back first and one last: one is the
    # newest idle pair.
    with pool.borrow(8 * KiB) as pair:
        assert addresses(pair) == first
    with pool.borrow(8 * KiB) as a, pool.borrow(8 * KiB) as b:
        assert {addresses(a), addresses(b)} == {first, second}
    pool.close()


def test_sizes_are_pooled_apart() -> None:
    pool = BufferPool()
    with pool.borrow(8 * KiB) as pair:
        small = addresses(pair)
    with pool.borrow(16 * KiB) as pair:
        assert len(pair[0]) == 16 * KiB
        assert addresses(pair) != small
    assert pool.idle() == 2
    with pool.borrow(8 * KiB) as pair:
        assert addresses(pair) == small
    pool.close()


def test_kinds_are_pooled_apart() -> None:
    # "bytearray" pairs, for a binding that takes bytearrays only (rbd):
    # views of whole bytearrays, never handed to an "aligned" borrower.
    pool = BufferPool()
    with pool.borrow(8 * KiB, kind="bytearray") as pair:
        for v in pair:
            assert isinstance(v.obj, bytearray)
            assert len(v.obj) == 8 * KiB and not v.readonly
        arrays = addresses(pair)
    with pool.borrow(8 * KiB) as pair:
        assert addresses(pair) != arrays
        assert ioutil.buffer_address(pair[0]) % 4096 == 0
    assert pool.idle() == 2
    with pool.lease(8 * KiB, kind="bytearray") as lease:
        assert addresses(lease.pair) == arrays
        lease.renew()
        assert isinstance(lease.pair[0].obj, bytearray)
    pool.close()


def test_keep_limit_counts_all_sizes_and_evicts_the_oldest() -> None:
    # A kept pair still holds what was written; a new one is zeroed.
    pool = BufferPool(keep=2)
    with pool.borrow(8 * KiB) as (a, _):
        a[:3] = b"old"
    with pool.borrow(12 * KiB) as (a, _):
        a[:3] = b"mid"
    with pool.borrow(8 * KiB) as (a, _):
        assert a[:3] == b"old"
    # Many odd sizes never hold more than keep pairs, and push out the
    # oldest ones.
    for n in range(1, 10):
        with pool.borrow(n * 4 * KiB + 64 * KiB):
            pass
        assert pool.idle() == 2
    with pool.borrow(8 * KiB) as (a, _):
        assert a[:3] == b"\0\0\0"
    with pool.borrow(12 * KiB) as (a, _):
        assert a[:3] == b"\0\0\0"
    pool.close()


def test_concurrent_borrowers_get_different_pairs() -> None:
    pool = BufferPool()
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(pool.borrow(4 * KiB))
                 for _ in range(KEEP_PAIRS + 3)]
        seen = {a for p in pairs for a in addresses(p)}
        assert len(seen) == 2 * len(pairs)
    # Only KEEP_PAIRS of them are kept.
    assert pool.idle() == KEEP_PAIRS
    pool.close()


def test_kept_pairs_stay_usable() -> None:
    pool = BufferPool(keep=4)
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(pool.borrow(4 * KiB))
    assert pool.idle() == 3
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            a, b = stack.enter_context(pool.borrow(4 * KiB))
            a[0] = b[0] = 1


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_keep_limit(keep: int) -> None:
    pool = BufferPool(keep)
    with contextlib.ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(pool.borrow(4 * KiB))
    assert pool.idle() == keep
    pool.close()


def test_invalid_keep() -> None:
    with pytest.raises(ValueError):
        BufferPool(-1)


def test_returned_after_an_error() -> None:
    pool = BufferPool()
    with pytest.raises(RuntimeError):
        with pool.borrow(4 * KiB):
            raise RuntimeError("operation failed")
    assert pool.idle() == 1
    pool.close()


def test_close_unmaps_idle_pairs_and_later_returns() -> None:
    pool = BufferPool()
    with pool.borrow(4 * KiB) as lent:
        with pool.borrow(4 * KiB):
            pass
        assert pool.idle() == 1
        pool.close()
        assert pool.idle() == 0
        view = lent[0]
    # Returned after close: unmapped, not kept.
    assert pool.idle() == 0
    with pytest.raises(ValueError):
        view[0]


def test_a_slice_kept_alive_does_not_break_the_pool() -> None:
    pool = BufferPool(keep=0)
    with pool.borrow(4 * KiB) as (a, _):
        piece = a[:10]
    # The pair could not be unmapped while piece lives; that is fine.
    assert len(piece) == 10
    del piece
    pool.close()
