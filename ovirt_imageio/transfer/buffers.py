# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon's pool of aligned I/O buffers.

Every data request (GET, PUT) moves its bytes through two page-aligned
buffers (see ``ops``). Fresh anonymous memory is expensive on first touch:
the kernel takes a fault and zeroes each page, and in a virtual machine the
host may have to back the page as well. Measured on the benchmark VM (two
cores), mapping new buffers for each connection cost the daemon
0.03-0.1 s of CPU per 1 GiB transfer (6% of a TLS upload with one
connection, 14% with four). So requests borrow their pair from a
daemon-wide pool and give it back when their operation ends.

Rules:

- A pair is borrowed for one operation. Operations wait for their IO-pool
  work before returning (``util.pipeline``), so nothing touches a pair
  once it is back in the pool.
- Pairs are reused newest first (their pages are more likely in cache).
- At most ``keep`` idle pairs are kept, whatever their sizes; returning
  one more unmaps the oldest idle pair. Peak memory is therefore the pairs
  in use by concurrent requests (bounded by the connection limit) plus
  ``keep`` idle pairs, whatever the image size, and a client choosing odd
  sizes (checksum block sizes) cannot make the pool grow.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from ..native import ioutil

Pair = tuple[memoryview, memoryview]

# Idle pairs kept: enough for the default client (4 connections) to find
# warm buffers transfer after transfer. With the default 8 MiB buffers
# this is at most 64 MiB while idle.
KEEP_PAIRS = 4


class _Entry:
    """Two mappings and the views handed out for them."""

    def __init__(self, size: int) -> None:
        self.maps = (ioutil.aligned_buffer(size),
                     ioutil.aligned_buffer(size))
        self.views: Pair = (memoryview(self.maps[0]),
                            memoryview(self.maps[1]))

    def close(self) -> None:
        try:
            for view in self.views:
                view.release()
            for m in self.maps:
                m.close()
        except BufferError:
            # A slice is still referenced (say by a traceback); the
            # mapping goes away with the last view.
            pass


class BufferPool:
    """Pairs of aligned buffers, lent to one operation at a time."""

    def __init__(self, keep: int = KEEP_PAIRS) -> None:
        if keep < 0:
            raise ValueError(f"Invalid number of kept pairs: {keep}")
        self._keep = keep
        self._lock = threading.Lock()
        # Oldest first.
        self._idle: list[tuple[int, _Entry]] = []
        self._closed = False

    @contextmanager
    def borrow(self, size: int) -> Iterator[Pair]:
        """
        Lend a pair of page-aligned buffers of size bytes for the duration
        of the with block.

        >>> pool = BufferPool()
        >>> with pool.borrow(4096) as (a, b):
        ...     len(a), len(b), a.readonly
        (4096, 4096, False)
        >>> pool.idle()
        1
        >>> pool.close()
        """
        entry = self._take(size)
        try:
            yield entry.views
        finally:
            self._give_back(size, entry)

    def idle(self) -> int:
        """The number of idle pairs held."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Unmap the idle pairs; pairs still lent are unmapped on return."""
        with self._lock:
            self._closed = True
            entries = [entry for _, entry in self._idle]
            self._idle.clear()
        for entry in entries:
            entry.close()

    def _take(self, size: int) -> _Entry:
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i][0] == size:
                    return self._idle.pop(i)[1]
        # Outside the lock: mapping is a system call or two.
        return _Entry(size)

    def _give_back(self, size: int, entry: _Entry) -> None:
        with self._lock:
            if self._closed:
                evicted = [entry]
            else:
                self._idle.append((size, entry))
                excess = max(0, len(self._idle) - self._keep)
                evicted = [e for _, e in self._idle[:excess]]
                del self._idle[:excess]
        for old in evicted:
            old.close()
