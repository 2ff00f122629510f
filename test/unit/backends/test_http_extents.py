# SPDX-License-Identifier: GPL-2.0-or-later
"""
Extents asked in windows (backends/http_extents.py): answers told apart
from whole maps, the window schedule, and windows joined back into the
map a server has, against servers that honour windows and ones that
ignore them.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends import http_extents
from ovirt_imageio.backends.http_extents import (
    FIRST_WINDOW,
    GROW_BELOW,
    MAX_WINDOW,
    Window,
    next_length,
    parse_window,
)
from ovirt_imageio.util.extents import WrittenExtent, ZeroExtent, merge, window

GiB = 1024**3


def item(start: int, length: int, zero: bool = False) -> dict[str, Any]:
    return {"start": start, "length": length, "zero": zero, "hole": False}


class Server:
    """A remote holding one map, answering windows or ignoring them."""

    def __init__(self, extents: list[ZeroExtent], windows: bool) -> None:
        self.extents = extents
        self.windows = windows
        self.asked: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return self.extents[-1].end if self.extents else 0

    def fetch(self, context: str, start: int, length: int) -> Any:
        assert context == "zero"
        self.asked.append((start, length))
        found = window(self.extents, start, min(self.size, start + length)) \
            if self.windows else iter(self.extents)
        return [e.to_dict() for e in found]


def read_all(server: Server, start: int = 0, end: int | None = None,
             size: int | None = None) -> list[ZeroExtent]:
    length = FIRST_WINDOW if end is None else min(FIRST_WINDOW, end - start)
    first = parse_window(server.fetch("zero", start, length), "zero",
                         start, length)
    found = http_extents.windows(server.fetch, "zero", first, start, length,
                                 end, size)
    result = list(http_extents.extents_of(found))
    assert all(isinstance(e, ZeroExtent) for e in result)
    return result  # type: ignore[return-value]


@pytest.mark.parametrize("items,start,length,whole,end", [
    # What was asked.
    ([item(0, 4)], 0, 4, False, 4),
    ([item(4, 2), item(6, 2, True)], 4, 4, False, 8),
    # Shorter: the image ends there.
    ([item(4, 2)], 4, 100, False, 6),
    ([], 8, 100, False, None),
    # More than asked, or from 0 when asked at 4: the whole map.
    ([item(0, 8)], 0, 4, True, 8),
    ([item(0, 4), item(4, 4, True)], 4, 2, True, 8),
])
def test_parse_window(items: list[dict[str, Any]], start: int, length: int,
                      whole: bool, end: int | None) -> None:
    w = parse_window(items, "zero", start, length)
    assert (w.whole, w.end) == (whole, end)


@pytest.mark.parametrize("items,start,length", [
    # Starts elsewhere than asked, and not at 0.
    ([item(2, 8)], 4, 4),
    # Starts where asked, ends past the window.
    ([item(4, 8)], 4, 4),
    # A gap.
    ([item(0, 2), item(3, 1)], 0, 4),
    ({"start": 0}, 0, 4),
])
def test_parse_window_invalid(items: Any, start: int, length: int) -> None:
    with pytest.raises(ValueError):
        parse_window(items, "zero", start, length)


def test_parse_window_dirty() -> None:
    w = parse_window([{"start": 0, "length": 4, "dirty": True}], "dirty",
                     0, 4)
    assert not w.whole and w.extents[0].flags() == (True, False)


def test_next_length() -> None:
    assert next_length(GiB, 0) == 2 * GiB
    assert next_length(GiB, GROW_BELOW - 1) == 2 * GiB
    # A fragmented answer: the window stays.
    assert next_length(GiB, GROW_BELOW) == GiB
    assert next_length(MAX_WINDOW, 0) == MAX_WINDOW


def test_window_end_of_empty() -> None:
    assert Window([], whole=False).end is None


def test_sparse_image_asked_in_growing_windows() -> None:
    size = 100 * GiB
    server = Server([ZeroExtent(0, 4096, False, False),
                     ZeroExtent(4096, size - 4096, True, False)], True)
    assert read_all(server) == server.extents
    lengths = [n for _, n in server.asked]
    assert lengths[:4] == [GiB, 2 * GiB, 4 * GiB, 8 * GiB]
    # Each window starts where the one before ended.
    pos = 0
    for start, length in server.asked:
        assert start == pos
        pos += length
    assert pos >= size


def test_known_size_saves_the_last_request() -> None:
    size = 3 * GiB
    server = Server([ZeroExtent(0, size, False, False)], True)
    assert read_all(server, size=size) == server.extents
    assert server.asked == [(0, GiB), (GiB, 2 * GiB)]


def test_window_bounded_by_end() -> None:
    size = 100 * GiB
    server = Server([ZeroExtent(0, size, False, False)], True)
    found = read_all(server, 5 * GiB, 9 * GiB)
    assert found == [ZeroExtent(5 * GiB, 4 * GiB, False, False)]
    assert server.asked == [(5 * GiB, GiB), (6 * GiB, 2 * GiB),
                            (8 * GiB, GiB)]


def test_server_ignoring_windows() -> None:
    server = Server([ZeroExtent(0, 10 * GiB, False, False)], False)
    first = parse_window(server.fetch("zero", 0, GiB), "zero", 0, GiB)
    assert first.whole
    found = list(http_extents.extents_of(http_extents.windows(
        server.fetch, "zero", first, 0, GiB, None, None)))
    assert found == server.extents
    assert server.asked == [(0, GiB)]


@st.composite
def maps(draw: st.DrawFn) -> list[ZeroExtent]:
    lengths = draw(st.lists(st.integers(1, 3 * GiB), min_size=1,
                            max_size=30))
    flags = draw(st.lists(st.booleans(), min_size=len(lengths),
                          max_size=len(lengths)))
    pos = 0
    raw = []
    for n, zero in zip(lengths, flags, strict=True):
        raw.append(ZeroExtent(pos, n, zero, False))
        pos += n
    return list(merge(raw))


@given(maps(), st.booleans(), st.data())
def test_windows_join_into_the_map(extents: list[ZeroExtent],
                                   windows: bool, data: st.DataObject
                                   ) -> None:
    # Whatever the window boundaries, the result is the server's map
    # cut to the range asked, merged as a whole map is.
    server = Server(extents, windows)
    size = server.size
    start = data.draw(st.integers(0, size - 1))
    end = data.draw(st.none() | st.integers(start + 1, size))
    found = read_all(server, start, end)
    expected = list(window(extents, start, size if end is None else end))
    if not windows:
        # The whole map, which the backend then cuts itself.
        expected = extents
    assert found == expected


def test_server_ignoring_windows_with_a_map_of_the_first_window() -> None:
    # The first answer covers exactly what was asked, so it could be a
    # window; the next one, from 0, shows the server ignores windows.
    server = Server([ZeroExtent(0, GiB, False, False)], False)
    assert read_all(server) == server.extents
    assert server.asked == [(0, GiB), (GiB, 2 * GiB)]


# The written context: the same schedule and rules, its own parser.

def written_item(start: int, length: int, written: bool) -> dict[str, Any]:
    return {"start": start, "length": length, "written": written}


class WrittenServer:
    """A ledger of one written range, answering windows or not."""

    def __init__(self, size: int, written: tuple[int, int], windows: bool
                 ) -> None:
        lo, hi = written
        self.extents = [e for e in (
            WrittenExtent(0, lo, False), WrittenExtent(lo, hi - lo, True),
            WrittenExtent(hi, size - hi, False)) if e.length]
        self.windows = windows
        self.asked: list[tuple[int, int]] = []

    def fetch(self, context: str, start: int, length: int) -> Any:
        assert context == "written"
        self.asked.append((start, length))
        found = window(self.extents, start, start + length) \
            if self.windows else iter(self.extents)
        return [e.to_dict() for e in found]

    def read(self, start: int = 0, end: int | None = None
             ) -> list[WrittenExtent]:
        length = FIRST_WINDOW if end is None else min(FIRST_WINDOW,
                                                      end - start)
        first = http_extents.parse_written_window(
            self.fetch("written", start, length), start, length)
        return list(http_extents.extents_of(http_extents.windows(
            self.fetch, "written", first, start, length, end, None,
            http_extents.parse_written_window)))


@pytest.mark.parametrize("items,start,length,whole,end", [
    ([written_item(4, 2, True)], 4, 4, False, 6),
    ([written_item(0, 8, False)], 4, 2, True, 8),
    ([written_item(0, 8, False)], 0, 4, True, 8),
])
def test_parse_written_window(items: list[dict[str, Any]], start: int,
                              length: int, whole: bool, end: int) -> None:
    w = http_extents.parse_written_window(items, start, length)
    assert (w.whole, w.end) == (whole, end)
    assert all(isinstance(e, WrittenExtent) for e in w.extents)


def test_written_in_growing_windows() -> None:
    size = 100 * GiB
    server = WrittenServer(size, (3 * GiB, 3 * GiB + 4096), True)
    # Joined across window ends into the ledger's extents.
    assert server.read() == server.extents
    lengths = [n for _, n in server.asked]
    assert lengths[:4] == [GiB, 2 * GiB, 4 * GiB, 8 * GiB]


def test_written_window_bounded_by_end() -> None:
    server = WrittenServer(100 * GiB, (0, GiB), True)
    assert server.read(GiB // 2, 2 * GiB) == [
        WrittenExtent(GiB // 2, GiB // 2, True),
        WrittenExtent(GiB, GiB, False)]
    assert server.asked == [(GiB // 2, GiB), (GiB // 2 + GiB, GiB // 2)]


def test_written_from_server_ignoring_windows() -> None:
    server = WrittenServer(10 * GiB, (GiB, 2 * GiB), False)
    assert server.read() == server.extents
    assert server.asked == [(0, GiB)]
