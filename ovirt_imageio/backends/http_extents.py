# SPDX-License-Identifier: GPL-2.0-or-later
"""
Extents of a remote image asked in windows, for the http backend.

Theory of operation
-------------------

A daemon of ours answers ``GET .../extents?context=C&start=S&length=L``
with the extents covering exactly ``[S, min(S + L, size))``. The http
backend asks a multi-TiB image in such windows, so a copy consuming the
extents as an iterator starts moving data after the first window instead
of after the whole map (upstream's client times out after 60 s on big
fragmented images, its issue #215).

Windows start at FIRST_WINDOW and double while answers stay small
(fewer than GROW_BELOW items), up to MAX_WINDOW: a sparse image costs a
few dozen requests, a fragmented one keeps every answer bounded.

Upstream 2.5 ignores query parameters it does not know and answers the
whole map. ``parse_window`` spots such an answer, since it starts at 0
when S > 0 or covers more than L, and it is then used as the whole map;
the backend asks that remote no windows again.

Windows are cut where the server cut them, so two adjacent extents
with the same flags may meet at a window end; ``util.extents.merge``
over the stream restores rule 2 of ``util.extents``.

The image contexts (``zero``, ``dirty``) and the ticket's ledger
(``written``, read by a resuming client) go through the same schedule
and the same rules; only the parser of an answer differs
(``parse_window`` and ``parse_written_window``).

Pure code: the requests are made by a ``Fetch`` the backend gives.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Generic, Iterator, cast

from ..util.extents import E, Extent, WrittenExtent, merge, window
from .http_replies import parse_extents, parse_written

GiB = 1024**3

# The first window: the target is a first answer under 100 ms
# for a 64 TiB image, measured 17 ms for 1 GiB of a fragmented qcow2.
FIRST_WINDOW = GiB

# Windows double while answers have fewer items than this (a JSON answer
# of about 1 MiB), so a sparse image needs few requests...
GROW_BELOW = 16 * 1024

# ...up to this: 1 TiB is 256 NBD block status commands on the remote,
# answered in well under the backend's read timeout.
MAX_WINDOW = 1024 * GiB


@dataclasses.dataclass(frozen=True)
class Window(Generic[E]):
    """One answer: its extents, and whether it was the whole map."""

    extents: list[E]
    whole: bool

    @property
    def end(self) -> int | None:
        """Where the answer ends; None if it is empty."""
        return self.extents[-1].end if self.extents else None


class Cache:
    """
    What a backend learned of the remote image: whole maps per context,
    the size, and whether the remote answers windows; the maps and the
    size hold until ``clear()`` (a write or zero through the backend),
    which also moves ``generation`` on, so a map collected across a
    write is never stored.
    """

    def __init__(self) -> None:
        self.maps: dict[str, list[Extent]] = {}
        self.size: int | None = None
        # None until the remote answered a window.
        self.windows: bool | None = None
        self.generation = 0

    def clear(self) -> None:
        self.maps.clear()
        self.size = None
        self.generation += 1

    def copy(self) -> Cache:
        c = Cache()
        c.maps = {k: list(v) for k, v in self.maps.items()}
        c.size, c.windows = self.size, self.windows
        return c

    def store(self, context: str, extents: list[Extent], generation: int
              ) -> None:
        """Keep a whole map collected since generation, if still valid."""
        if generation == self.generation:
            self.maps[context] = extents
            if context == "zero":
                self.size = extents[-1].end if extents else 0


# Asks the remote for (context, start, length); returns the JSON answer.
Fetch = Callable[[str, int, int], Any]


# Parses one answer of (start, length) into a Window.
ParseWindow = Callable[[Any, int, int], Window[E]]


def parse_window(items: Any, context: str, start: int, length: int
                 ) -> Window[Extent]:
    """
    The extents of a window's JSON answer, or of the whole map when the
    server ignored the window (see the module docstring). Raises
    ValueError for an answer that is neither.

    >>> w = parse_window([{"start": 0, "length": 8, "zero": False}],
    ...                  "zero", 0, 4)
    >>> w.whole, w.end
    (True, 8)
    """
    return _parse_window(
        items, start, length,
        lambda items, pos: parse_extents(items, context, pos))


def parse_written_window(items: Any, start: int, length: int
                         ) -> Window[WrittenExtent]:
    """parse_window for the ``written`` context."""
    return _parse_window(items, start, length, parse_written)


def _parse_window(items: Any, start: int, length: int,
                  parse: Callable[[Any, int], list[E]]) -> Window[E]:
    if not isinstance(items, list):
        raise ValueError("expecting a JSON array")
    first = items[0].get("start") if items and isinstance(
        items[0], dict) else None
    if first == 0 and start > 0:
        return Window(parse(items, 0), whole=True)
    extents = parse(items, start)
    if extents and extents[-1].end > start + length:
        if start > 0:
            raise ValueError(f"window at {start} of {length} bytes ends at "
                             f"{extents[-1].end}")
        return Window(extents, whole=True)
    return Window(extents, whole=False)


def next_length(length: int, items: int) -> int:
    """
    The length of the window after one of length bytes answered with
    items extents.

    >>> next_length(GiB, 10) // GiB, next_length(GiB, 100_000) // GiB
    (2, 1)
    """
    if items < GROW_BELOW:
        return min(MAX_WINDOW, length * 2)
    return length


def windows(fetch: Fetch, context: str, first: Window[E], start: int,
            length: int, end: int | None, size: int | None,
            parse: ParseWindow[E] | None = None) -> Iterator[Window[E]]:
    """
    Yield first (the answer for ``[start, start + length)``), then the
    windows after it up to end (None: the image end), asking each with
    fetch and parsing it with parse (default: ``parse_window`` of
    context, an image context). The image ends where an answer covers
    less than asked, or at size when known. Raises ValueError for an
    invalid answer.
    """
    if parse is None:
        # Without a parser, E is an image context's Extent.
        parse = cast(ParseWindow[E], lambda items, pos, n: parse_window(
            items, context, pos, n))
    w, pos = first, start
    while True:
        yield w
        if w.whole:
            return
        covered = w.end if w.end is not None else pos
        if covered < pos + length:
            return
        limit = end if end is not None else size
        if limit is not None and covered >= limit:
            return
        length = next_length(length, len(w.extents))
        if limit is not None:
            length = min(length, limit - covered)
        pos = covered
        w = parse(fetch(context, pos, length), pos, length)
        if w.whole:
            # A server ignoring windows whose map ended exactly where the
            # answers before asked: they could not tell. What is left of
            # its map is the rest.
            rest = window(w.extents, pos, (w.end or pos) if limit is None
                          else limit)
            w = Window(list(rest), whole=True)


def extents_of(windows: Iterator[Window[E]]) -> Iterator[E]:
    """The extents of consecutive windows, merged across their ends."""
    return merge(ext for w in windows for ext in w.extents)

