# SPDX-License-Identifier: GPL-2.0-or-later
"""
A set of half-open integer ranges, kept merged and sorted.

Tickets use it to answer "how many bytes of the image were transferred":
every completed operation adds ``[offset, offset + done)`` and the engine
polls the size of the union (``total()``) every few seconds.

Invariants, true after every public call:

1. ``_starts`` and ``_ends`` have the same length and describe ranges
   ``[_starts[i], _ends[i])`` that are non-empty.
2. Ranges are sorted and neither overlap nor touch:
   ``_ends[i] < _starts[i + 1]``. Touching ranges are merged, which is
   what keeps the set small: a sequential transfer, even one split among
   8 writers that finish out of order, collapses into a handful of ranges
   no matter how many hundreds of thousands of requests it took.
3. ``_total`` is the sum of the range lengths, so ``total()`` is O(1).

Complexity of ``add``: two bisections (O(log n)) plus O(k) work for the k
ranges the new one merges with. Replacing those k entries by one is a list
slice assignment, which moves the pointers after it (a memmove, O(n) in
the worst case but tiny for the n reached in practice, see rule 2). A
client can only grow n by sending requests for disjoint, non-adjacent
ranges; each costs it a full HTTP round trip, so n stays bounded by the
request count, never by the byte count.
"""

from __future__ import annotations

import bisect
from typing import Iterable


class RangeSet:
    """
    A union of half-open ranges ``[start, end)``.

    Example::

        >>> s = RangeSet()
        >>> s.add(0, 10)
        >>> s.add(20, 30)
        >>> s.add(10, 20)
        >>> s.ranges()
        [(0, 30)]
        >>> s.total()
        30
    """

    __slots__ = ("_starts", "_ends", "_total")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._total = 0
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """
        Add ``[start, end)`` to the set. An empty range (``start == end``)
        is a no-op; ``end < start`` raises ``ValueError``.
        """
        if end < start:
            raise ValueError(f"Invalid range [{start}, {end})")
        if start == end:
            return

        starts = self._starts
        ends = self._ends

        # First range that ends at or after start: it overlaps or touches
        # the new range from the left (ends[i] == start means adjacent).
        lo = bisect.bisect_left(ends, start)
        # One past the last range that starts at or before end: it
        # overlaps or touches the new range from the right.
        hi = bisect.bisect_right(starts, end, lo)

        if lo == hi:
            starts.insert(lo, start)
            ends.insert(lo, end)
            self._total += end - start
            return

        new_start = min(start, starts[lo])
        new_end = max(end, ends[hi - 1])
        removed = 0
        for i in range(lo, hi):
            removed += ends[i] - starts[i]
        starts[lo:hi] = [new_start]
        ends[lo:hi] = [new_end]
        self._total += (new_end - new_start) - removed

    def total(self) -> int:
        """Size of the union: the number of integers covered by the set."""
        return self._total

    def ranges(self) -> list[tuple[int, int]]:
        """The merged ranges, sorted by start."""
        return list(zip(self._starts, self._ends, strict=True))

    def copy(self) -> RangeSet:
        """An independent copy (O(n)), to add to without changing self."""
        other = RangeSet()
        other._starts = self._starts.copy()
        other._ends = self._ends.copy()
        other._total = self._total
        return other

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()!r})"


def union_size(ranges: Iterable[tuple[int, int]]) -> int:
    """
    Size of the union of half-open ranges, counting overlaps once.

    Example::

        >>> union_size([(0, 10), (5, 15), (20, 25)])
        20
    """
    return RangeSet(ranges).total()
