# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util.rangeset import RangeSet, union_size


@pytest.mark.parametrize("added, ranges, total", [
    # Nothing.
    ([], [], 0),
    # Empty ranges are ignored.
    ([(5, 5)], [], 0),
    ([(0, 10), (20, 20)], [(0, 10)], 10),
    # Disjoint, in any order.
    ([(0, 10), (20, 30)], [(0, 10), (20, 30)], 20),
    ([(20, 30), (0, 10)], [(0, 10), (20, 30)], 20),
    # Adjacent ranges merge, on either side.
    ([(0, 10), (10, 20)], [(0, 20)], 20),
    ([(10, 20), (0, 10)], [(0, 20)], 20),
    # Filling a gap merges three into one.
    ([(0, 10), (20, 30), (10, 20)], [(0, 30)], 30),
    # Overlaps counted once.
    ([(0, 10), (5, 15)], [(0, 15)], 15),
    ([(5, 15), (0, 10)], [(0, 15)], 15),
    # Contained in an existing range.
    ([(0, 100), (10, 20)], [(0, 100)], 100),
    # Containing several existing ranges.
    ([(10, 20), (30, 40), (50, 60), (0, 100)], [(0, 100)], 100),
    # Spanning some ranges but not all.
    ([(0, 5), (10, 20), (30, 40), (50, 60), (15, 35)],
     [(0, 5), (10, 40), (50, 60)], 45),
    # Duplicates.
    ([(0, 10), (0, 10)], [(0, 10)], 10),
    # One apart: not adjacent.
    ([(0, 10), (11, 20)], [(0, 10), (11, 20)], 19),
    # Negative offsets are just integers.
    ([(-10, 0), (0, 10)], [(-10, 10)], 20),
])
def test_add(added: list[tuple[int, int]], ranges: list[tuple[int, int]],
             total: int) -> None:
    s = RangeSet()
    for start, end in added:
        s.add(start, end)
    assert s.ranges() == ranges
    assert s.total() == total
    assert bool(s) == bool(ranges)
    assert union_size(added) == total
    assert RangeSet(added).ranges() == ranges


def test_add_invalid() -> None:
    s = RangeSet([(0, 10)])
    with pytest.raises(ValueError):
        s.add(10, 5)
    assert s.ranges() == [(0, 10)]


def test_copy_is_independent() -> None:
    s = RangeSet([(0, 10)])
    c = s.copy()
    c.add(10, 20)
    assert s.ranges() == [(0, 10)]
    assert s.total() == 10
    assert c.ranges() == [(0, 20)]
    assert c.total() == 20


def test_repr() -> None:
    assert repr(RangeSet([(0, 1), (3, 4)])) == "RangeSet([(0, 1), (3, 4)])"


def test_sequential_chunks_stay_one_range() -> None:
    # 8 writers each writing every 8th chunk, finishing out of order: the
    # set ends as a single range, so it never grows with the request count.
    s = RangeSet()
    chunk = 4096
    for writer in reversed(range(8)):
        for i in range(writer, 800, 8):
            s.add(i * chunk, (i + 1) * chunk)
        assert len(s.ranges()) <= 100
    assert s.ranges() == [(0, 800 * chunk)]


small_range = st.tuples(
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=40),
).map(lambda t: (t[0], t[0] + t[1]))


def model(ranges: list[tuple[int, int]]) -> set[int]:
    covered: set[int] = set()
    for start, end in ranges:
        covered.update(range(start, end))
    return covered


def check_invariants(s: RangeSet) -> None:
    ranges = s.ranges()
    for start, end in ranges:
        assert start < end
    for (_, end), (next_start, _) in zip(ranges, ranges[1:], strict=False):
        # Sorted, disjoint and not touching (else they would be merged).
        assert end < next_start
    assert s.total() == sum(end - start for start, end in ranges)


@given(st.lists(small_range, max_size=40))
def test_matches_model(added: list[tuple[int, int]]) -> None:
    s = RangeSet()
    for i, (start, end) in enumerate(added):
        s.add(start, end)
        check_invariants(s)
        assert model(s.ranges()) == model(added[:i + 1])
    assert s.total() == len(model(added))
    assert union_size(added) == len(model(added))


@given(st.lists(small_range, max_size=30), st.randoms())
def test_order_does_not_matter(added: list[tuple[int, int]],
                               rnd: random.Random) -> None:
    shuffled = list(added)
    rnd.shuffle(shuffled)
    assert RangeSet(shuffled).ranges() == RangeSet(added).ranges()


@given(st.lists(st.tuples(st.integers(), st.integers(min_value=0)),
                max_size=20))
def test_union_size_bounds(raw: list[tuple[int, int]]) -> None:
    ranges = [(start, start + length) for start, length in raw]
    size = union_size(ranges)
    assert size <= sum(length for _, length in raw)
    assert size >= max((length for _, length in raw), default=0)
