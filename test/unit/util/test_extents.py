# SPDX-License-Identifier: GPL-2.0-or-later
"""Extent merging and clipping (util/extents)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent, clip, merge


def Z(start: int, length: int, zero: bool = False,
      hole: bool = False) -> ZeroExtent:
    return ZeroExtent(start, length, zero, hole)


@pytest.mark.parametrize("extents, merged", [
    ([], []),
    ([Z(0, 0)], []),
    ([Z(0, 5)], [Z(0, 5)]),
    # Equal flags merge; different ones do not.
    ([Z(0, 5), Z(5, 5)], [Z(0, 10)]),
    ([Z(0, 5), Z(5, 5, zero=True)], [Z(0, 5), Z(5, 5, zero=True)]),
    ([Z(0, 5, True, True), Z(5, 5, True, False)],
     [Z(0, 5, True, True), Z(5, 5, True, False)]),
    # Empty extents vanish, and do not stop a merge.
    ([Z(0, 5), Z(5, 0, zero=True), Z(5, 5)], [Z(0, 10)]),
    # A gap stops a merge.
    ([Z(0, 5), Z(6, 5)], [Z(0, 5), Z(6, 5)]),
    # Many at once.
    ([Z(0, 1), Z(1, 2), Z(3, 3), Z(6, 1, zero=True), Z(7, 1, zero=True)],
     [Z(0, 6), Z(6, 2, zero=True)]),
])
def test_merge(extents: list[ZeroExtent], merged: list[ZeroExtent]) -> None:
    assert list(merge(extents)) == merged


def test_merge_dirty() -> None:
    extents = [DirtyExtent(0, 4, True, False), DirtyExtent(4, 4, True, False),
               DirtyExtent(8, 4, True, True)]
    assert list(merge(extents)) == [DirtyExtent(0, 8, True, False),
                                    DirtyExtent(8, 4, True, True)]


@pytest.mark.parametrize("extents, size, clipped", [
    ([], 10, []),
    ([Z(0, 10)], 10, [Z(0, 10)]),
    ([Z(0, 10)], 4, [Z(0, 4)]),
    ([Z(0, 10)], 20, [Z(0, 10)]),
    ([Z(0, 4), Z(4, 4, zero=True), Z(8, 4)], 6, [Z(0, 4), Z(4, 2, zero=True)]),
    # Cut exactly at a boundary.
    ([Z(0, 4), Z(4, 4, zero=True)], 4, [Z(0, 4)]),
    ([Z(0, 4)], 0, []),
])
def test_clip(extents: list[ZeroExtent], size: int,
              clipped: list[ZeroExtent]) -> None:
    assert list(clip(extents, size)) == clipped


# Contiguous extents from 0, some empty, with few distinct flags so that
# neighbours often match.
@st.composite
def extent_lists(draw: st.DrawFn) -> list[ZeroExtent]:
    items = draw(st.lists(st.tuples(st.integers(0, 100), st.booleans(),
                                    st.booleans()), max_size=30))
    result = []
    pos = 0
    for length, zero, hole in items:
        result.append(ZeroExtent(pos, length, zero, hole))
        pos += length
    return result


def flags_at(extents: list[ZeroExtent]) -> list[tuple[bool, ...]]:
    """The flags of every byte."""
    return [e.flags() for e in extents for _ in range(e.length)]


@given(extents=extent_lists())
def test_merge_properties(extents: list[ZeroExtent]) -> None:
    merged = list(merge(extents))
    # Merging is idempotent.
    assert list(merge(merged)) == merged
    # Every byte keeps its flags.
    assert flags_at(merged) == flags_at(extents)
    # The result follows the extent rules: contiguous from 0, non empty,
    # neighbours differ.
    pos = 0
    for e in merged:
        assert e.start == pos and e.length > 0
        pos = e.end
    for a, b in zip(merged, merged[1:], strict=False):
        assert a.flags() != b.flags()


@given(extents=extent_lists(), size=st.integers(0, 4000))
def test_clip_properties(extents: list[ZeroExtent], size: int) -> None:
    merged = list(merge(extents))
    clipped = list(clip(merged, size))
    # Clipping stays in bounds and keeps what was inside them.
    assert all(e.start < size and e.end <= size for e in clipped)
    total = merged[-1].end if merged else 0
    assert flags_at(clipped) == flags_at(merged)[:size]
    assert (clipped[-1].end if clipped else 0) == min(size, total)
    # Clipping is idempotent and keeps merged extents merged.
    assert list(clip(clipped, size)) == clipped
    assert list(merge(clipped)) == clipped
