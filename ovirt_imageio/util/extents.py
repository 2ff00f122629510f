# SPDX-License-Identifier: GPL-2.0-or-later
"""
Extent values and the pure functions that combine them.

Backends describe an image as a sequence of extents. Two contexts exist,
as on the wire:

- ``zero``: ``ZeroExtent(start, length, zero, hole)``; ``zero`` means the
  range reads as zeros, ``hole`` that it is unallocated (reading it may
  expose a backing file; only meaningful for qcow2 exports).
- ``dirty``: ``DirtyExtent(start, length, dirty, zero)``; ``dirty`` means
  the range changed since the checkpoint.
- ``written``: ``WrittenExtent(start, length, written)``; ``written``
  means a ticket's uploads wrote the range (the daemon's ledger). Not an
  image property, so not an ``Extent``: only the ledger and resuming
  clients use it.

Rules every producer follows, so consumers can rely on them:

1. Extents are ordered, contiguous and non-empty, starting at 0.
2. Adjacent extents with equal flags are merged (``merge``).
3. The last extent ends at the image size (``clip``).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from typing import (
    Any,
    Callable,
    Generic,
    Iterable,
    Iterator,
    TypeVar,
    Union,
    cast,
)


@dataclasses.dataclass(frozen=True)
class ZeroExtent:
    start: int
    length: int
    zero: bool
    hole: bool

    @property
    def end(self) -> int:
        return self.start + self.length

    def flags(self) -> tuple[bool, ...]:
        return (self.zero, self.hole)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "length": self.length,
                "zero": self.zero, "hole": self.hole}


@dataclasses.dataclass(frozen=True)
class DirtyExtent:
    start: int
    length: int
    dirty: bool
    zero: bool

    @property
    def end(self) -> int:
        return self.start + self.length

    def flags(self) -> tuple[bool, ...]:
        return (self.dirty, self.zero)

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "length": self.length,
                "dirty": self.dirty, "zero": self.zero}


@dataclasses.dataclass(frozen=True)
class WrittenExtent:
    """A range of the image and whether it was written."""

    start: int
    length: int
    written: bool

    @property
    def end(self) -> int:
        return self.start + self.length

    def flags(self) -> tuple[bool, ...]:
        return (self.written,)

    def to_dict(self) -> dict[str, int | bool]:
        return {"start": self.start, "length": self.length,
                "written": self.written}


Extent = Union[ZeroExtent, DirtyExtent]
# Any extent value, for the functions below that combine them whatever
# their context.
E = TypeVar("E", bound=Union[ZeroExtent, DirtyExtent, WrittenExtent])


def merge(extents: Iterable[E]) -> Iterator[E]:
    """
    Merge adjacent extents with the same flags.

    >>> list(merge([ZeroExtent(0, 1, True, False),
    ...             ZeroExtent(1, 2, True, False)]))
    [ZeroExtent(start=0, length=3, zero=True, hole=False)]
    """
    cur: E | None = None
    for ext in extents:
        if ext.length == 0:
            continue
        if cur is None:
            cur = ext
        elif cur.end == ext.start and cur.flags() == ext.flags():
            cur = dataclasses.replace(cur, length=cur.length + ext.length)
        else:
            yield cur
            cur = ext
    if cur is not None:
        yield cur


F = TypeVar("F")


def merge_runs(
    batches: Iterable[Iterable[tuple[int, int, int, int]]],
    flags: Callable[[int, int], F],
) -> Iterator[tuple[int, int, F]]:
    """
    Merge raw status items into (start, length, flags) runs, where
    flags(a, b) gives an item's flags from its two raw status values:
    adjacent items with equal flags join, empty ones are dropped. The
    same runs as ``merge`` of one extent per item, without making one:
    a scan of a fragmented 64 TiB image yields some 56,000 raw items.

    >>> list(merge_runs([[(0, 4, 1, 0)], [(4, 4, 1, 0), (8, 2, 0, 0)]],
    ...                 lambda a, b: a))
    [(0, 8, 1), (8, 2, 0)]
    """
    items = itertools.chain.from_iterable(batches)
    # The first non-empty item opens the first run; then no "is there a
    # run" test per item.
    for item in items:
        if item[1]:
            break
    else:
        return
    start, length, a, b = item
    end, cur = start + length, flags(a, b)
    for pos, length, a, b in items:
        if length == 0:
            continue
        f = flags(a, b)
        if pos == end and f == cur:
            end += length
            continue
        yield start, end - start, cur
        start, end, cur = pos, pos + length, f
    yield start, end - start, cur


class Runs(Generic[E]):
    """
    The extents of ``[start, end)`` kept as merged ``(start, length,
    flags)`` runs (``merge_runs``), where flags are the two flags of an
    extent of type kind: an iterator of extents for any caller, and the
    JSON of ``to_json`` and ``json_pieces`` made straight from the runs.
    A whole map of a fragmented image is tens of thousands of extents,
    and an object per extent cost more than encoding it. Runs may start
    before start and end after end; both outputs are cut to the window.

    >>> runs = Runs(ZeroExtent, iter([(0, 8, (True, False))]), 2, 6)
    >>> list(runs)
    [ZeroExtent(start=2, length=4, zero=True, hole=False)]
    """

    def __init__(self, kind: type[E],
                 runs: Iterator[tuple[int, int, tuple[bool, bool]]],
                 start: int, end: int) -> None:
        self._kind = kind
        self._runs = runs
        self._start = start
        self._end = end
        self._extents: Iterator[E] | None = None

    def __iter__(self) -> Runs[E]:
        return self

    def __next__(self) -> E:
        if self._extents is None:
            make = cast(Callable[[int, int, bool, bool], E], self._kind)
            self._extents = window(
                (make(pos, n, a, b) for pos, n, (a, b) in self._runs),
                self._start, self._end)
        return next(self._extents)

    @property
    def started(self) -> bool:
        """Whether extents were taken (to_json then encodes the rest)."""
        return self._extents is not None

    def texts(self) -> Iterator[str]:
        """The JSON text of each extent, made from the runs."""
        names = [f.name for f in dataclasses.fields(self._kind)[2:]]
        # The text after the length for each pair of flags.
        tails = {
            (a, b): f', "{names[0]}": {"true" if a else "false"}, '
                    f'"{names[1]}": {"true" if b else "false"}}}'
            for a in (False, True) for b in (False, True)
        }
        start, end = self._start, self._end
        if start >= end:
            return
        for lo, n, f in self._runs:
            hi = lo + n
            if lo >= end:
                return
            if hi <= start:
                continue
            if lo < start:
                lo = start
            if hi > end:
                hi = end
            yield f'{{"start": {lo}, "length": {hi - lo}{tails[f]}'
            if hi >= end:
                return


def clip(extents: Iterable[E], size: int) -> Iterator[E]:
    """
    Drop extents starting at or after size and shorten the one crossing it.

    >>> list(clip([ZeroExtent(0, 10, False, False)], 4))
    [ZeroExtent(start=0, length=4, zero=False, hole=False)]
    """
    return window(extents, 0, size)


def window(extents: Iterable[E], start: int, end: int) -> Iterator[E]:
    """
    The extents covering ``[start, end)``, cut at both ends; extents
    before the window are skipped, and iteration stops at its end (the
    rest of a lazy source is never produced).

    >>> list(window([ZeroExtent(0, 10, False, False),
    ...              ZeroExtent(10, 10, True, True)], 5, 12))
    ... # doctest: +NORMALIZE_WHITESPACE
    [ZeroExtent(start=5, length=5, zero=False, hole=False),
     ZeroExtent(start=10, length=2, zero=True, hole=True)]
    """
    if start >= end:
        return
    # Every extent of a whole map passes here: plain arithmetic, no
    # property calls, and a new extent only where one is cut.
    for ext in extents:
        lo = ext.start
        hi = lo + ext.length
        if lo >= end:
            return
        if hi <= start:
            continue
        if lo < start or hi > end:
            lo, hi = max(lo, start), min(hi, end)
            ext = dataclasses.replace(ext, start=lo, length=hi - lo)
        yield ext
        if hi >= end:
            return


# Size of the pieces of json_pieces for a streamed answer: big enough
# that framing and system calls cost nothing next to encoding, small
# enough that an answer starts moving long before a whole map is known
# (40,000 extents of a fragmented image are about 2.8 MB of JSON).
PIECE = 64 * 1024


def to_json(extents: Iterable[Extent | WrittenExtent]) -> bytes:
    """
    The JSON array of extents: the bytes ``json.dumps`` of their
    ``to_dict()`` gives, without a dict per extent (an answer for a
    fragmented image has tens of thousands).

    >>> to_json([ZeroExtent(0, 4, True, False)])
    b'[{"start": 0, "length": 4, "zero": true, "hole": false}]'
    """
    return b"".join(json_pieces(extents, sys.maxsize))


def json_pieces(extents: Iterable[Extent | WrittenExtent],
                limit: int = PIECE, first: int | None = None
                ) -> Iterator[bytes]:
    """
    The bytes of ``to_json`` in pieces, made as the extents come: a piece
    is yielded once it is ``limit`` bytes long or more (the first once
    it is ``first`` long, by default ``limit``), the last one with
    what is left and the closing bracket. Memory stays bounded by a
    piece whatever the number of extents; joined, the pieces are exactly
    ``to_json``'s bytes.

    >>> list(json_pieces([WrittenExtent(0, 4, True),
    ...                   WrittenExtent(4, 4, False)], first=1))
    ... # doctest: +NORMALIZE_WHITESPACE
    [b'[{"start": 0, "length": 4, "written": true}',
     b', {"start": 4, "length": 4, "written": false}]']
    """
    if isinstance(extents, Runs) and not extents.started:
        texts = extents.texts()
    else:
        texts = _texts(extents)
    want = limit if first is None else first
    parts: list[str] = []
    append = parts.append
    lead = "["
    # The length of the piece so far: its lead, its texts and the ", "
    # between them.
    size = len(lead) - 2
    for text in texts:
        append(text)
        size += len(text) + 2
        if size >= want:
            yield (lead + ", ".join(parts)).encode("ascii")
            parts = []
            append = parts.append
            lead = ", "
            size = len(lead) - 2
            want = limit
    if parts:
        yield (lead + ", ".join(parts) + "]").encode("ascii")
    else:
        yield b"[]" if lead == "[" else b"]"


def _texts(extents: Iterable[Extent | WrittenExtent]) -> Iterator[str]:
    """The JSON text of each extent value."""
    for e in extents:
        if isinstance(e, ZeroExtent):
            yield (f'{{"start": {e.start}, "length": {e.length}, '
                   f'"zero": {"true" if e.zero else "false"}, '
                   f'"hole": {"true" if e.hole else "false"}}}')
        elif isinstance(e, DirtyExtent):
            yield (f'{{"start": {e.start}, "length": {e.length}, '
                   f'"dirty": {"true" if e.dirty else "false"}, '
                   f'"zero": {"true" if e.zero else "false"}}}')
        else:
            yield (f'{{"start": {e.start}, "length": {e.length}, '
                   f'"written": {"true" if e.written else "false"}}}')
