# SPDX-License-Identifier: GPL-2.0-or-later
"""
The memory backend: an image held in a bytearray, for tests.

It implements the backend protocol with no alignment rules (block size 1)
and no durability (flush only counts calls), so tests of the layers above
can run without storage. It is not reachable from tickets.

Extents are whatever the test supplies, per context; without them the
"zero" context is one data extent and "dirty" is unsupported, like a
backend that cannot report allocation.

With ``queue=True`` it also offers an IOQueue (``MemoryQueue``) that
runs each request when collected, the newest first, so the layer above
sees requests in flight finish out of order.

>>> backend = MemoryBackend(bytearray(b"hello"))
>>> buf = bytearray(5)
>>> backend.readinto(0, memoryview(buf))
5
>>> bytes(buf)
b'hello'
"""

from __future__ import annotations

import errno
import os
from typing import Iterator, Mapping, Sequence, Union

from ..util.extents import DirtyExtent, Extent, ZeroExtent, window
from .base import Capabilities, Mode, UnsupportedContext

# A list of extents (each kind is its own context) or lists by context.
ExtentsArg = Union[Sequence[Extent], Mapping[str, Sequence[Extent]], None]


class MemoryBackend:
    """
    A backend storing the image in memory.

    data is used as is (not copied), so a test can inspect it after
    writes; by default the image is empty. extents is either a list of
    ZeroExtent and/or DirtyExtent (each kind becomes its context), or a
    dict mapping context name to a list of extents.
    """

    def __init__(
        self,
        data: bytearray | None = None,
        mode: Mode = "r+",
        extents: ExtentsArg = None,
        max_connections: int = 8,
        queue: bool = False,
    ) -> None:
        if mode not in ("r", "r+"):
            raise ValueError(f"Invalid mode: {mode!r}")
        self._data = bytearray() if data is None else data
        self._mode = mode
        self._extents = _extents_by_context(extents)
        self._closed = False
        self.flush_count = 0
        self._capabilities = Capabilities(
            block_size=1,
            max_readers=max_connections,
            max_writers=1,
            extents=frozenset({"zero"} | set(self._extents)),
            # Nothing to write back: a flush covers every handle.
            shared_flush=True,
            io_queue=queue,
        )

    def __repr__(self) -> str:
        return f"<MemoryBackend mode={self._mode!r} size={len(self._data)}>"

    def __enter__(self) -> MemoryBackend:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return "memory"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def data(self) -> bytearray:
        """The image bytes (the same object given to the constructor)."""
        return self._data

    def size(self) -> int:
        self._check_open("size")
        return len(self._data)

    def readinto(self, offset: int, buf: memoryview) -> int:
        self._check_open("read")
        _check_offset(offset)
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), len(self._data) - offset))
        view[:n] = self._data[offset:offset + n]
        return n

    def write(self, offset: int, buf: memoryview) -> None:
        self._check_writable("write")
        _check_offset(offset)
        view = memoryview(buf).cast("B")
        self._grow(offset + len(view))
        self._data[offset:offset + len(view)] = view

    def zero(self, offset: int, length: int) -> None:
        self._check_writable("zero")
        _check_offset(offset)
        if length < 0:
            raise ValueError(f"Invalid length: {length}")
        self._grow(offset + length)
        self._data[offset:offset + length] = bytes(length)

    def flush(self) -> None:
        self._check_open("flush")
        self.flush_count += 1

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[Extent]:
        self._check_open("extents")
        items: list[Extent]
        if context in self._extents:
            items = self._extents[context]
        elif context == "zero":
            size = len(self._data)
            items = [ZeroExtent(0, size, zero=False, hole=False)] \
                if size else []
        else:
            raise UnsupportedContext(
                f"Extents context {context!r} is not available")
        if start == 0 and end is None:
            # The given extents as they are, for tests feeding odd ones.
            return iter(items)
        if end is None:
            end = items[-1].end if items else 0
        return window(items, start, end)

    def io_queue(self, depth: int) -> MemoryQueue:
        return MemoryQueue(self)

    def close(self) -> None:
        self._closed = True

    def _grow(self, end: int) -> None:
        if end > len(self._data):
            self._data.extend(bytes(end - len(self._data)))

    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise OSError(errno.EBADF, f"{operation}: backend is closed")

    def _check_writable(self, operation: str) -> None:
        self._check_open(operation)
        if self._mode != "r+":
            raise OSError(errno.EPERM,
                          f"{operation}: backend opened read only")


class MemoryQueue:
    """
    The memory backend's IOQueue: requests start only when kicked (as
    files' do), and run when ``completed()`` collects them, the newest
    first. It refuses what would grow the image, which the backend's own
    write does.
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Taken, waiting for kick; kicked, waiting to be collected.
        self._waiting: list[tuple[bool, int, memoryview, int]] = []
        self._pending: list[tuple[bool, int, memoryview, int]] = []
        # Every request submitted, for tests: (write, offset, length);
        # and how many each kick started.
        self.submitted: list[tuple[bool, int, int]] = []
        self.kicked: list[int] = []

    def fileno(self) -> int:
        return self._efd

    def wants_write(self) -> bool:
        return False

    def submit(self, write: bool, offset: int, buf: memoryview, tag: int
               ) -> bool:
        if offset + len(buf) > self._backend.size():
            return False
        self._waiting.append((write, offset, buf, tag))
        self.submitted.append((write, offset, len(buf)))
        return True

    def kick(self) -> None:
        if self._waiting:
            self.kicked.append(len(self._waiting))
            self._pending += self._waiting
            self._waiting = []
            os.eventfd_write(self._efd, 1)

    def completed(self) -> list[tuple[int, bool]]:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass
        done = []
        backend = self._backend
        while self._pending:
            write, offset, buf, tag = self._pending.pop()
            try:
                if write:
                    backend.write(offset, buf)
                    ok = True
                else:
                    ok = backend.readinto(offset, buf) == len(buf)
            except OSError:
                ok = False
            done.append((tag, ok))
        return done

    def close(self) -> None:
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"Invalid offset: {offset}")


def _extents_by_context(extents: ExtentsArg) -> dict[str, list[Extent]]:
    if extents is None:
        return {}
    if isinstance(extents, Mapping):
        return {context: list(items) for context, items in extents.items()}
    by_context: dict[str, list[Extent]] = {}
    for ext in extents:
        context = "dirty" if isinstance(ext, DirtyExtent) else "zero"
        by_context.setdefault(context, []).append(ext)
    return by_context
