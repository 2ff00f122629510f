# SPDX-License-Identifier: GPL-2.0-or-later
"""
A connection's request buffers (rule 1 of ``nbdd.transmit``): bounded by
a budget, reused, and cut from memory backed by huge pages.

Why huge pages: a direct read or write reaches the disk as one segment
per physically contiguous run of its buffer's pages, and a 256 KiB
buffer of 4 KiB pages, each mapped on its own, is 64 of them. A virtio
disk without indirect descriptors (the bench VM's) carries each segment
in a descriptor of its ring: a few such requests filled the ring, the
rest waited in the scheduler, merged there into 1 MiB requests, and the
disk saw about three at a time. Cut from 2 MiB pages, a buffer is one
segment, or two where it crosses a page. Reading 1 GiB of the bench
image with O_DIRECT, 16 requests of 256 KiB in flight: 1544-2002 MiB/s
into separate mappings, 2729-2763 MiB/s into an arena of huge pages
(requests unmerged, 15 at the disk at a time instead of 5).

Rules
-----

1. Budget: the buffers lent at once hold at most ``budget`` bytes; a
   take that would pass it waits for buffers to come back, except that
   when nothing is lent one buffer of any size is (a request larger than
   the budget runs alone).
2. A buffer is ``HEADROOM`` bytes (for the reply header) followed by the
   request's data, rounded up to whole pages, so the data is page
   aligned for O_DIRECT.
3. The arena: one mapping of the budget's size, on a huge page boundary
   and asked for transparent huge pages (``ioutil.huge_page_view``),
   taken at the first take from the idle arenas of earlier connections
   (rule 6), or mapped. Buffers are cut from it in order as they are
   first needed, and a buffer given back serves the next take of its
   size. A client keeping to one request size (nbdcopy: 256 KiB)
   thus fits in the arena whatever it keeps in flight, by rule 1.
4. A take the arena has no room for (a client mixing sizes) gets a
   mapping of its own, as small pages; these are kept idle for reuse up
   to ``budget`` bytes, the rest unmapped.
5. ``close`` unmaps what is idle and makes waiting takers fail; a buffer
   still lent is unmapped when it is given back, and the arena goes
   (rule 6) once all of it is back.
6. Arenas outlive their connection: ``Arenas``, shared by the door's
   connections, keeps up to ``keep`` idle arenas, newest first, and the
   next connection with a budget of the same size takes one instead of
   mapping its own. An arena with a buffer still exported (a pointer
   into it held, say by a traceback's frame) is not kept: nothing left
   of one connection may see another's data. Why: fresh memory costs a
   fault and the zeroing of each huge page at first touch, and on the
   bench VM the host backs the page too. perf of the door relaying a
   2 GiB download to nbdcopy (two connections, 16 MiB arenas): 395 of
   its 5025 samples (7.9%) were in ``clear_page_erms`` under the first
   reads into each arena; with the arenas of the previous download
   kept, none (4770 samples).
   Not the daemon's ``transfer.buffers.BufferPool``: that lends for one
   operation and shares its bound among waiting requests, while a
   connection holds its arena for its whole life, and idle NBD
   connections would keep HTTP requests waiting for room.
"""

from __future__ import annotations

import mmap
import threading

from ..native import ioutil

# Free bytes before a request's data, for its reply header; a page, so
# the data stays page aligned for O_DIRECT.
HEADROOM = 4096
PAGE = 4096

# Idle arenas kept for later connections (rule 6), like the idle pairs
# of the HTTP side (transfer.buffers.KEEP_PAIRS): 64 MiB at most with
# the default 8 MiB buffers (16 MiB budgets).
KEEP_ARENAS = 4


class Arenas:
    """
    Idle arenas kept between connections (rule 6).

    >>> arenas = Arenas(keep=1)
    >>> m, view = arenas.take(8192)
    >>> arenas.give(m, view)
    >>> arenas.take(8192)[1] is view, arenas.idle()
    (True, 0)
    >>> arenas.close()
    """

    def __init__(self, keep: int = KEEP_ARENAS) -> None:
        if keep < 0:
            raise ValueError(f"Invalid number of kept arenas: {keep}")
        self._keep = keep
        self._lock = threading.Lock()
        # (mapping, aligned view), oldest first.
        self._idle: list[tuple[mmap.mmap, memoryview]] = []
        self._closed = False

    def take(self, size: int) -> tuple[mmap.mmap, memoryview]:
        """An arena of size bytes: a kept one if any, else a new one."""
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                if len(self._idle[i][1]) == size:
                    return self._idle.pop(i)
        return ioutil.huge_page_view(size)

    def give(self, m: mmap.mmap, view: memoryview) -> None:
        """Keep an arena no longer used (every view cut from it
        released), unmapping the oldest past ``keep``."""
        with self._lock:
            if not self._closed:
                self._idle.append((m, view))
                if len(self._idle) <= self._keep:
                    return
                m, view = self._idle.pop(0)
        _unmap(m, view)

    def idle(self) -> int:
        """The number of arenas kept."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Unmap the kept arenas; later ones are unmapped when given."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for m, view in idle:
            _unmap(m, view)


class Buffers:
    """A connection's request buffers (see the module docstring)."""

    def __init__(self, budget: int, arenas: Arenas | None = None) -> None:
        if budget < 1:
            raise ValueError(f"Invalid buffer budget: {budget}")
        self._budget = budget
        # Rule 6; none kept for a connection without a door's.
        self._arenas = arenas if arenas is not None else Arenas(keep=0)
        # A plain lock, and the condition only while someone waits: a
        # Condition's own enter, exit and notify are Python calls, and
        # on the queued path (nbdd.queued) nobody ever waits.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0
        self._used = 0
        self._closed = False
        # Rule 3: the mapping, its aligned view, the views cut from it
        # and how many of them are lent.
        self._arena_map: mmap.mmap | None = None
        self._arena: memoryview | None = None
        self._cut: list[memoryview] = []
        self._cut_bytes = 0
        self._arena_lent = 0
        # Rule 4: id of the view -> the mapping of a buffer of its own.
        self._own: dict[int, mmap.mmap] = {}
        self._own_idle_bytes = 0
        # size -> idle buffers of either kind, newest last.
        self._idle: dict[int, list[memoryview]] = {}

    def take(self, length: int) -> memoryview:
        """A page-aligned buffer of HEADROOM + length bytes or more."""
        buf = self._take(length, wait=True)
        assert buf is not None
        return buf

    def try_take(self, length: int) -> memoryview | None:
        """Like ``take``, but None where take would wait for the
        budget."""
        return self._take(length, wait=False)

    def _take(self, length: int, wait: bool) -> memoryview | None:
        size = -(-(HEADROOM + length) // PAGE) * PAGE
        with self._lock:
            while (not self._closed and self._used
                   and self._used + size > self._budget):
                if not wait:
                    return None
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            if self._closed:
                raise ConnectionAbortedError("Connection buffers closed")
            self._used += size
            idle = self._idle.get(size)
            if idle:
                buf = idle.pop()
                if id(buf) in self._own:
                    self._own_idle_bytes -= size
                else:
                    self._arena_lent += 1
                return buf
            try:
                cut = self._cut_arena(size)
            except BaseException:
                self._used -= size
                raise
            if cut is not None:
                self._arena_lent += 1
                return cut
        try:
            m = ioutil.aligned_buffer(size)
        except BaseException:
            self._give_back(size)
            raise
        view = memoryview(m)
        with self._lock:
            self._own[id(view)] = m
        return view

    def _cut_arena(self, size: int) -> memoryview | None:
        """A new buffer cut from the arena, or None if it has no room
        (rule 3); called with the lock held."""
        if self._arena is None:
            arena_size = -(-self._budget // PAGE) * PAGE
            self._arena_map, self._arena = self._arenas.take(arena_size)
        if self._cut_bytes + size > len(self._arena):
            return None
        buf = self._arena[self._cut_bytes:self._cut_bytes + size]
        self._cut_bytes += size
        self._cut.append(buf)
        return buf

    def give(self, buf: memoryview) -> None:
        """Give back a buffer from ``take``."""
        size = len(buf)
        with self._lock:
            self._used -= size
            own = self._own.get(id(buf))
            if own is None:
                self._arena_lent -= 1
                if not self._closed:
                    self._idle.setdefault(size, []).append(buf)
                finish = self._closed and not self._arena_lent
            else:
                finish = False
                keep = (not self._closed
                        and self._own_idle_bytes + size <= self._budget)
                if keep:
                    self._idle.setdefault(size, []).append(buf)
                    self._own_idle_bytes += size
                    own = None
                else:
                    del self._own[id(buf)]
            if self._waiting:
                self._cond.notify_all()
        if own is not None:
            _unmap(own, buf)
        if finish:
            self._unmap_arena()

    def _give_back(self, size: int) -> None:
        with self._lock:
            self._used -= size
            if self._waiting:
                self._cond.notify_all()

    def close(self) -> None:
        """Unmap the idle buffers, and the arena if none of it is lent
        (rule 5); waiting takers fail."""
        with self._lock:
            self._closed = True
            own = [(buf, self._own.pop(id(buf)))
                   for idle in self._idle.values() for buf in idle
                   if id(buf) in self._own]
            self._idle.clear()
            self._own_idle_bytes = 0
            finish = not self._arena_lent
            self._cond.notify_all()
        for buf, m in own:
            _unmap(m, buf)
        if finish:
            self._unmap_arena()

    def _unmap_arena(self) -> None:
        with self._lock:
            views, self._cut = self._cut, []
            arena, self._arena = self._arena, None
            m, self._arena_map = self._arena_map, None
        # Not a short cut: every view is released, whatever fails.
        clean = all([_release(view) for view in views])
        if arena is None or m is None:
            return
        if clean:
            self._arenas.give(m, arena)
        else:
            # Rule 6: a view of it is still out there.
            _unmap(m, arena)


def _release(view: memoryview) -> bool:
    """Release view; False if it is exported still (say to a traceback's
    frame): the mapping then goes away with the last user
    (``ioutil.release``)."""
    try:
        view.release()
    except BufferError:
        return False
    return True


def _unmap(m: mmap.mmap, view: memoryview) -> None:
    _release(view)
    ioutil.release(m)
