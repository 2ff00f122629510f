# SPDX-License-Identifier: GPL-2.0-or-later
"""extents.window: cutting a map to a window."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util.extents import ZeroExtent, merge, window


def image_map(lengths: list[int], flags: list[bool]) -> list[ZeroExtent]:
    out, pos = [], 0
    for n, f in zip(lengths, flags, strict=False):
        out.append(ZeroExtent(pos, n, f, f))
        pos += n
    return list(merge(out))


maps = st.builds(image_map, st.lists(st.integers(1, 50), min_size=1,
                                     max_size=20),
                 st.lists(st.booleans(), min_size=20, max_size=20))


@given(maps, st.integers(0, 1200), st.integers(0, 1200))
def test_window_is_exact(items: list[ZeroExtent], start: int,
                         length: int) -> None:
    size = items[-1].end
    end = min(size, start + length)
    got = list(window(iter(items), start, end))
    # Contiguous, inside the window, covering all of it.
    pos = start
    for e in got:
        assert e.start == pos and e.length > 0
        pos = e.end
    assert pos == max(start, end) if got else start >= end
    # Each byte keeps its flags.
    for e in got:
        src = next(i for i in items if i.start <= e.start < i.end)
        assert e.flags() == src.flags() and e.end <= src.end


@given(maps, st.integers(1, 300))
def test_windows_tile_the_map(items: list[ZeroExtent], step: int) -> None:
    size = items[-1].end
    pieces: list[ZeroExtent] = []
    for start in range(0, size, step):
        pieces.extend(window(items, start, min(size, start + step)))
    assert list(merge(pieces)) == items


def test_window_stops_reading_at_its_end() -> None:
    produced = []

    def lazy() -> Iterator[ZeroExtent]:
        for i in range(100):
            produced.append(i)
            yield ZeroExtent(i * 10, 10, i % 2 == 0, False)

    got = list(window(lazy(), 15, 35))
    assert [(e.start, e.length) for e in got] == [(15, 5), (20, 10),
                                                  (30, 5)]
    assert produced == [0, 1, 2, 3]
