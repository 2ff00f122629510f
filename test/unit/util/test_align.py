# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util import align
from ovirt_imageio.util.align import Split, round_down, round_up, split


@pytest.mark.parametrize("n, block, down, up", [
    (0, 512, 0, 0),
    (1, 512, 0, 512),
    (511, 512, 0, 512),
    (512, 512, 512, 512),
    (513, 512, 512, 1024),
    (4095, 4096, 0, 4096),
    (7, 1, 7, 7),
])
def test_round(n: int, block: int, down: int, up: int) -> None:
    assert round_down(n, block) == down
    assert round_up(n, block) == up


@pytest.mark.parametrize("offset, length, block, parts", [
    # Empty ranges, aligned or not.
    (0, 0, 512, (0, 0, 0)),
    (100, 0, 512, (0, 0, 0)),
    # Aligned both ends: all middle.
    (0, 512, 512, (0, 512, 0)),
    (1024, 2048, 512, (0, 2048, 0)),
    # Unaligned start: a head up to the boundary.
    (100, 412, 512, (412, 0, 0)),
    (100, 924, 512, (412, 512, 0)),
    # Unaligned end: a tail from the last boundary.
    (0, 100, 512, (0, 0, 100)),
    (0, 600, 512, (0, 512, 88)),
    # Both.
    (100, 1000, 512, (412, 512, 76)),
    (511, 2, 512, (1, 0, 1)),
    # Inside one block, starting unaligned: all head.
    (100, 10, 512, (10, 0, 0)),
    # Block 1: everything is aligned.
    (3, 5, 1, (0, 5, 0)),
    # 4k blocks.
    (4095, 8194, 4096, (1, 8192, 1)),
])
def test_split(offset: int, length: int, block: int,
               parts: tuple[int, int, int]) -> None:
    s = split(offset, length, block)
    assert (s.head, s.middle, s.tail) == parts


def test_split_positions() -> None:
    s = split(1100, 2000, 512)
    assert s == Split(offset=1100, head=436, middle=1536, tail=28,
                      block=512)
    assert s.head_block == 1024
    assert s.skip == 76
    assert s.middle_offset == 1536
    assert s.tail_offset == 3072


@pytest.mark.parametrize("offset, length, block", [
    (-1, 10, 512),
    (0, -1, 512),
    (0, 10, 0),
])
def test_split_invalid(offset: int, length: int, block: int) -> None:
    with pytest.raises(ValueError):
        split(offset, length, block)


blocks = st.sampled_from([1, 2, 512, 4096, 65536]) | st.integers(1, 10000)


@given(offset=st.integers(0, 2**44), length=st.integers(0, 2**24),
       block=blocks)
def test_split_properties(offset: int, length: int, block: int) -> None:
    s = split(offset, length, block)
    # The pieces tile the range exactly, in order.
    assert s.head + s.middle + s.tail == length
    assert min(s.head, s.middle, s.tail) >= 0
    assert s.tail_offset + s.tail == offset + length
    # The head lies in one block and ends on a boundary unless it is
    # the whole range.
    assert s.head < block
    assert s.head_block <= offset < s.head_block + block
    assert s.skip + s.head <= block
    if s.middle or s.tail:
        assert s.middle_offset % block == 0
    # The middle is whole blocks, the tail starts a block.
    assert s.middle % block == 0
    assert s.tail < block
    if s.tail:
        assert s.tail_offset % block == 0
    # Nothing is split that was aligned.
    if offset % block == 0:
        assert s.head == 0
    if (offset + length) % block == 0:
        assert s.tail == 0


@given(n=st.integers(0, 2**50), block=blocks)
def test_round_properties(n: int, block: int) -> None:
    down, up = align.round_down(n, block), align.round_up(n, block)
    assert down % block == 0 and up % block == 0
    assert down <= n <= up
    assert up - down in (0, block)
    assert (up == down) == (n % block == 0)
