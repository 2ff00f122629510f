# SPDX-License-Identifier: GPL-2.0-or-later
"""
The bulk paths of a whole map: extents.merge_runs gives the same runs as
extents.merge of one extent per item, however the items are batched;
extents.Runs the same extents (and JSON) as extents.window of those
extents, whichever way it is read; extents.to_json the same bytes as
json.dumps of their dicts; and extents.json_pieces those bytes in pieces
of bounded size.
"""

from __future__ import annotations

import itertools
import json
from typing import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util.extents import (
    DirtyExtent,
    Runs,
    WrittenExtent,
    ZeroExtent,
    json_pieces,
    merge,
    merge_runs,
    to_json,
    window,
)


def zero_flags(a: int, b: int) -> tuple[bool, bool]:
    return bool(a & 2), b == 0


def dirty_flags(a: int, b: int) -> tuple[bool, bool]:
    return bool(b & 1), bool(a & 2)


# (length, base:allocation flags, second context flags); lengths of 0
# are dropped by both merges.
raw_items = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3),
                               st.integers(0, 2)), max_size=40)


def place(items: list[tuple[int, int, int]], start: int
          ) -> list[tuple[int, int, int, int]]:
    out, pos = [], start
    for n, a, b in items:
        out.append((pos, n, a, b))
        pos += n
    return out


def batches(items: list[tuple[int, int, int, int]], cuts: list[int]
            ) -> list[list[tuple[int, int, int, int]]]:
    out, last = [], 0
    for c in sorted(set(c % (len(items) + 1) for c in cuts)):
        out.append(items[last:c])
        last = c
    out.append(items[last:])
    return out


@given(raw_items, st.integers(0, 100), st.lists(st.integers(0, 50),
                                                max_size=5))
def test_zero_runs_as_merge(raw: list[tuple[int, int, int]], start: int,
                            cuts: list[int]) -> None:
    items = place(raw, start)
    expected = list(merge(ZeroExtent(pos, n, *zero_flags(a, b))
                          for pos, n, a, b in items))
    got = [ZeroExtent(pos, n, zero, hole) for pos, n, (zero, hole)
           in merge_runs(batches(items, cuts), zero_flags)]
    assert got == expected


@given(raw_items, st.lists(st.integers(0, 50), max_size=5))
def test_dirty_runs_as_merge(raw: list[tuple[int, int, int]],
                             cuts: list[int]) -> None:
    items = place(raw, 0)
    expected = list(merge(DirtyExtent(pos, n, *dirty_flags(a, b))
                          for pos, n, a, b in items))
    got = [DirtyExtent(pos, n, dirty, zero) for pos, n, (dirty, zero)
           in merge_runs(batches(items, cuts), dirty_flags)]
    assert got == expected


def test_gap_is_not_merged() -> None:
    # Not contiguous: two runs even with equal flags, as merge does.
    runs = list(merge_runs([[(0, 4, 0, 0), (8, 4, 0, 0)]], zero_flags))
    assert runs == [(0, 4, (False, True)), (8, 4, (False, True))]


zero_extents = st.builds(ZeroExtent, st.integers(0, 2**64), st.integers(
    0, 2**64), st.booleans(), st.booleans())
dirty_extents = st.builds(DirtyExtent, st.integers(0, 2**64), st.integers(
    0, 2**64), st.booleans(), st.booleans())


written_extents = st.builds(WrittenExtent, st.integers(0, 2**64),
                            st.integers(0, 2**64), st.booleans())
any_extents = (st.lists(zero_extents) | st.lists(dirty_extents)
               | st.lists(written_extents))


@given(any_extents)
def test_to_json_as_json_dumps(
        items: list[ZeroExtent] | list[DirtyExtent] | list[WrittenExtent]
) -> None:
    assert to_json(items) == json.dumps([e.to_dict() for e in items]
                                        ).encode()


def check_pieces(pieces: list[bytes], expected: bytes, limit: int,
                 first: int | None) -> None:
    """pieces join to expected, each but the last at its size bound."""
    assert b"".join(pieces) == expected
    # Never an empty piece: a chunked answer would end at it.
    assert all(pieces)
    for i, piece in enumerate(pieces[:-1]):
        want = first if i == 0 and first is not None else limit
        # At most one extent's text (under 100 bytes here) past it.
        assert want <= len(piece) < want + 100
    # Only the last piece closes the array: a broken stream never
    # parses.
    assert pieces[-1].endswith(b"]")
    for i in range(1, len(pieces)):
        with pytest.raises(ValueError):
            json.loads(b"".join(pieces[:i]))


@given(any_extents, st.integers(1, 300), st.none() | st.integers(1, 300))
def test_json_pieces_as_to_json(
        items: list[ZeroExtent] | list[DirtyExtent] | list[WrittenExtent],
        limit: int, first: int | None) -> None:
    pieces = list(json_pieces(items, limit, first))
    check_pieces(pieces, to_json(items), limit, first)


def test_json_pieces_bounded() -> None:
    # Made as the extents come: a piece leaves before the next extent is
    # asked for, so memory never holds more than a piece.
    taken = []

    def source() -> Iterator[ZeroExtent]:
        for i in range(10_000):
            taken.append(i)
            yield ZeroExtent(i, 1, False, False)

    pieces = json_pieces(source(), limit=1000, first=1)
    assert next(pieces) == b'[{"start": 0, "length": 1, "zero": false, ' \
        b'"hole": false}'
    assert taken == [0]
    second = next(pieces)
    assert 1000 <= len(second) < 1100
    assert len(taken) < 30


@given(raw_items, st.integers(0, 20), st.integers(0, 120), st.integers(0, 120),
       st.booleans(), st.integers(0, 5))
def test_runs_as_window(raw: list[tuple[int, int, int]], first: int,
                        start: int, end: int, dirty: bool, taken: int
                        ) -> None:
    # Runs from first (a block boundary at or before the window, as a scan
    # starts) over a window that may start or end inside a run, or beyond.
    items = place(raw, first)
    kind = DirtyExtent if dirty else ZeroExtent
    flags = dirty_flags if dirty else zero_flags
    merged = [kind(pos, n, *flags(a, b)) for pos, n, a, b in items]
    expected = list(window(merge(merged), start, end))

    def runs() -> Runs[ZeroExtent | DirtyExtent]:
        return Runs(kind, merge_runs([items], flags), start, end)

    assert list(runs()) == expected
    assert to_json(runs()) == json.dumps(
        [e.to_dict() for e in expected]).encode()
    check_pieces(list(json_pieces(runs(), 60, 1)), to_json(runs()), 60, 1)
    # Extents taken first: to_json encodes the rest.
    partly = runs()
    head = list(itertools.islice(partly, taken))
    assert head == expected[:taken]
    assert to_json(partly) == json.dumps(
        [e.to_dict() for e in expected[taken:]]).encode()
