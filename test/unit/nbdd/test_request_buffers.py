# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import pickle
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovirt_imageio.native import ioutil
from ovirt_imageio.nbdd.buffers import HEADROOM, Arenas, Buffers


def test_take_has_headroom_and_is_aligned() -> None:
    bufs = Buffers(1024**2)
    buf = bufs.take(1000)
    assert len(buf) == 8192
    view = memoryview(buf)
    assert ioutil.buffer_address(view[HEADROOM:]) % 4096 == 0
    view.release()
    bufs.give(buf)
    bufs.close()


def test_buffers_are_reused() -> None:
    bufs = Buffers(1024**2)
    first = bufs.take(4096)
    bufs.give(first)
    assert bufs.take(4096) is first
    bufs.close()


def test_request_over_budget_runs_alone() -> None:
    bufs = Buffers(16384)
    big = bufs.take(65536)
    assert len(big) == 65536 + HEADROOM
    bufs.give(big)
    bufs.close()


def test_take_waits_for_budget() -> None:
    bufs = Buffers(16384)
    held = bufs.take(8192)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(bufs.take(8192)))
    t.start()
    # 8 KiB + headroom twice is over the budget: the second take returns
    # once the first buffer is given back (it may or may not have started
    # waiting by then).
    bufs.give(held)
    t.join()
    assert len(got) == 1
    bufs.close()


def test_close_fails_waiting_takers() -> None:
    bufs = Buffers(8192)
    bufs.take(4096)
    errors: list[BaseException] = []

    def take() -> None:
        try:
            bufs.take(4096)
        except ConnectionAbortedError as e:
            errors.append(e)

    t = threading.Thread(target=take)
    t.start()
    bufs.close()
    t.join()
    assert len(errors) == 1
    with pytest.raises(ConnectionAbortedError):
        bufs.take(1)


def _address(buf: memoryview) -> int:
    return ioutil.buffer_address(buf)


def test_buffers_are_cut_from_a_huge_page_arena() -> None:
    bufs = Buffers(1024**2)
    size = HEADROOM + 256 * 1024
    taken = [bufs.take(256 * 1024) for _ in range(3)]
    first = _address(taken[0])
    # The arena starts on a huge page boundary, and buffers of one size
    # follow each other in it.
    assert first % ioutil.HUGE_PAGE_SIZE == 0
    assert [_address(b) - first for b in taken] == [0, size, 2 * size]
    for buf in taken:
        bufs.give(buf)
    bufs.close()


def test_sizes_the_arena_has_no_room_for_get_their_own_mapping() -> None:
    bufs = Buffers(65536)
    small = [bufs.take(4096) for _ in range(8)]
    for buf in small:
        bufs.give(buf)
    # The arena is all cut into 8 KiB buffers: a 16 KiB one maps its own.
    big = bufs.take(12288)
    assert len(big) == 16384
    assert _address(big) % 4096 == 0
    assert all(abs(_address(big) - _address(b)) >= 8192 for b in small)
    big[:] = b"x" * len(big)
    bufs.give(big)
    # And is kept for the next take of its size.
    assert bufs.take(12288) is big
    bufs.close()


def test_close_waits_for_lent_buffers_to_unmap_the_arena() -> None:
    bufs = Buffers(65536)
    lent = bufs.take(4096)
    idle = bufs.take(4096)
    bufs.give(idle)
    bufs.close()
    # Still usable until given back.
    lent[:] = b"y" * len(lent)
    assert bytes(lent[:1]) == b"y"
    bufs.give(lent)
    with pytest.raises(ValueError):
        lent[0]


def _connection(arenas: Arenas, budget: int = 65536) -> int:
    """A connection's life: take and give a buffer, close; the address of
    its arena."""
    bufs = Buffers(budget, arenas)
    buf = bufs.take(4096)
    address = _address(buf)
    bufs.give(buf)
    bufs.close()
    return address


def test_the_next_connection_takes_the_arena_kept() -> None:
    arenas = Arenas()
    first = _connection(arenas)
    assert arenas.idle() == 1
    assert _connection(arenas) == first
    arenas.close()
    assert arenas.idle() == 0


def test_an_arena_serves_only_budgets_of_its_size() -> None:
    arenas = Arenas()
    small = _connection(arenas, 65536)
    big = _connection(arenas, 131072)
    assert big != small
    assert arenas.idle() == 2
    assert _connection(arenas, 65536) == small
    assert _connection(arenas, 131072) == big
    arenas.close()


def test_arenas_keep_the_newest_up_to_keep() -> None:
    arenas = Arenas(keep=1)
    bufs = [Buffers(65536, arenas) for _ in range(2)]
    taken = [b.take(4096) for b in bufs]
    newest = _address(taken[1])
    for b, buf in zip(bufs, taken, strict=True):
        b.give(buf)
        b.close()
    assert arenas.idle() == 1
    assert _connection(arenas) == newest
    arenas.close()


def test_an_arena_still_exported_is_not_kept() -> None:
    arenas = Arenas()
    bufs = Buffers(65536, arenas)
    buf = bufs.take(4096)
    # Its memory held through the buffer protocol (by a cffi pointer in a
    # traceback's frame, say).
    held = pickle.PickleBuffer(buf)
    bufs.give(buf)
    bufs.close()
    assert arenas.idle() == 0
    held.release()
    arenas.close()


def test_closed_arenas_keep_nothing() -> None:
    arenas = Arenas()
    bufs = Buffers(65536, arenas)
    buf = bufs.take(4096)
    arenas.close()
    bufs.give(buf)
    bufs.close()
    assert arenas.idle() == 0
    with pytest.raises(ValueError):
        buf[0]


def test_invalid_keep() -> None:
    with pytest.raises(ValueError, match="kept arenas"):
        Arenas(keep=-1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(),
                          st.sampled_from([1, 4096, 60000, 65536, 200000])),
                max_size=40))
def test_lent_buffers_never_overlap(steps: list[tuple[bool, int]]) -> None:
    bufs = Buffers(262144)
    lent: list[memoryview] = []
    try:
        for give, length in steps:
            if give and lent:
                bufs.give(lent.pop(0))
                continue
            buf = bufs.try_take(length)
            if buf is None:
                # Only when the budget is spent (rule 1).
                assert lent
                continue
            assert len(buf) >= HEADROOM + length
            assert _address(buf) % 4096 == 0
            start = _address(buf)
            for other in lent:
                o = _address(other)
                assert start + len(buf) <= o or o + len(other) <= start
            lent.append(buf)
    finally:
        for buf in lent:
            bufs.give(buf)
        bufs.close()
