# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon's pool of aligned I/O buffers: bounded, and shared fairly
between tickets.

Every data request (GET, PUT) moves its bytes through two page-aligned
buffers (see ``ops``). Fresh anonymous memory is expensive on first touch:
the kernel takes a fault and zeroes each page, and in a virtual machine the
host may have to back the page as well. Measured on the benchmark VM (two
cores), mapping new buffers for each connection cost the daemon
0.03-0.1 s of CPU per 1 GiB transfer (6% of a TLS upload with one
connection, 14% with four). So requests borrow their pair from a
daemon-wide pool and give it back when their operation ends.

Theory of operation
-------------------

Memory. The pool never holds more than ``limit`` bytes of buffers, lent
and idle together (``[daemon] max_buffer_memory``). A borrower whose
pairs do not fit beside the ones lent waits until enough come back; idle
pairs are unmapped to make room rather than make anyone wait. Without
the bound, 8 uploads of 4 connections with 8 MiB buffers mapped 512 MiB
and the daemon's peak RSS reached 294 MiB where upstream's was 89 MiB
(``bench/transfers.py``). A borrower larger than the whole limit (buffers
configured bigger than it) is served once nothing else is lent, alone,
so it waits but is never stuck.

Fairness. Waiters are grouped by owner, the ticket their request uses.
When room frees, the owner that holds the fewest bytes right now goes
first; among equals the one served least recently (an owner new to the
pool first), and of one owner its earliest waiter. So a ticket with 16
connections gets no more of the pool than a ticket with 4 while both
wait, and a ticket arriving while others run gets the next pair that
comes back instead of queueing behind all their connections. The chosen
waiter is served only when it fits: nobody smaller overtakes it, so a big
borrower is never starved.

Requests are long (the client sends up to 128 MiB in one), so deciding
only when a request ends would let whoever came first keep its pairs for
seconds. A data operation therefore holds a :class:`Lease`: between two
chunks it asks whether the pool is ``contended`` for it, that is whether
a waiter belongs to an owner holding less than its own owner, and if so
it ends the chunks in flight, gives its pair back and waits in line for
another (``renew``). It does the same when its next chunk would wait for
the ticket's rate limit while another ticket waits, paying that wait
without the pair: a throttled transfer does not sit on buffers it cannot
use. Owners thus converge to equal shares chunk by chunk
(8 MiB), and an uncontended transfer never stops its pipeline. Measured
with bench/transfers.py (8 uploads of 4 connections started together,
256 MiB each): the slowest took 1.47x the fastest's time when pairs were
kept for whole requests, 1.09x with leases.

Rules:

- A pair is borrowed for one operation. Operations wait for their IO-pool
  work before returning (``util.pipeline``), so nothing touches a pair
  once it is back in the pool.
- A request borrows once, and all it needs at once (``borrow_many``):
  a borrower holding pairs while waiting for more could deadlock with
  another doing the same. A lease renewing gives its pair back before
  it waits, so it never holds one while waiting either.
- Pairs are reused newest first (their pages are more likely in cache).
- At most ``keep`` idle pairs are kept, whatever their sizes; returning
  one more unmaps the oldest idle pair, and a client choosing odd sizes
  (checksum block sizes) cannot make the pool grow.

Kinds. Pairs are page-aligned mappings (``"aligned"``, what O_DIRECT
needs) unless the borrower asks for ``"bytearray"`` pairs, for backends
whose binding takes only bytes or bytearray objects (librbd's): given
the buffer itself, the rbd backend skips copying each chunk into a new
bytes object (``Capabilities.bytearray_buffers``). A pair is reused
only for its own kind; both count against the same bound.
"""

from __future__ import annotations

import itertools
import mmap
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Hashable, Iterator, Literal

from ..native import ioutil

Pair = tuple[memoryview, memoryview]

# What a pair's buffers are; see "Kinds" above.
Kind = Literal["aligned", "bytearray"]

# Idle pairs kept: enough for the default client (4 connections) to find
# warm buffers transfer after transfer. With the default 8 MiB buffers
# this is at most 64 MiB while idle.
KEEP_PAIRS = 4

# Bytes of buffers the pool holds at most ([daemon] max_buffer_memory):
# 8 pairs of the default 8 MiB, twice what one 4-connection transfer
# uses. Measured with bench/transfers.py, 8 uploads of 4 connections
# sharing them moved as many bytes per second together as one alone
# (the disk and the CPU are the limit, not the number of buffers).
LIMIT = 128 * 1024**2


@dataclass(frozen=True)
class Stats:
    """What the pool holds and has done, in bytes and counts."""

    limit: int
    lent: int
    idle: int
    # The most ever held, lent and idle together.
    peak: int
    # Borrowers waiting now, and those that ever had to wait.
    waiting: int
    waits: int


class _Entry:
    """Two buffers and the views handed out for them."""

    def __init__(self, size: int, kind: Kind = "aligned") -> None:
        self.size = size
        self.kind = kind
        self.maps: tuple[mmap.mmap, mmap.mmap] | None
        if kind == "aligned":
            self.maps = (ioutil.aligned_buffer(size),
                         ioutil.aligned_buffer(size))
            self.views: Pair = (memoryview(self.maps[0]),
                                memoryview(self.maps[1]))
        else:
            # Freed with their last view.
            self.maps = None
            self.views = (memoryview(bytearray(size)),
                          memoryview(bytearray(size)))

    @property
    def nbytes(self) -> int:
        return 2 * self.size

    def close(self) -> None:
        try:
            for view in self.views:
                view.release()
            for m in self.maps or ():
                m.close()
        except BufferError:
            # A slice is still referenced (say by a traceback); the
            # mapping goes away with the last view.
            pass


class _Waiter:
    def __init__(self, owner: Hashable, nbytes: int, seq: int,
                 lock: threading.Lock) -> None:
        self.owner = owner
        self.nbytes = nbytes
        self.seq = seq
        self.granted = False
        self.cond = threading.Condition(lock)


class BufferPool:
    """Pairs of aligned buffers, lent to one operation at a time."""

    def __init__(self, keep: int = KEEP_PAIRS, limit: int = LIMIT) -> None:
        if keep < 0:
            raise ValueError(f"Invalid number of kept pairs: {keep}")
        if limit < 1:
            raise ValueError(f"Invalid buffer memory limit: {limit}")
        self._keep = keep
        self._limit = limit
        self._lock = threading.Lock()
        # Oldest first.
        self._idle: list[_Entry] = []
        self._idle_bytes = 0
        # Bytes granted to borrowers (mapped, or about to be), in all and
        # by owner.
        self._lent = 0
        self._held: dict[Hashable, int] = {}
        # When each owner holding or waiting was last served (a grant
        # count); owners with neither are forgotten.
        self._served: dict[Hashable, int] = {}
        self._grants = 0
        # In arrival order.
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._peak = 0
        self._waits = 0
        self._closed = False

    @contextmanager
    def borrow(self, size: int, owner: Hashable = None,
               kind: Kind = "aligned") -> Iterator[Pair]:
        """
        Lend a pair of page-aligned buffers of size bytes for the duration
        of the with block, waiting for room if the pool is full. ``owner``
        (the request's ticket) is whom fairness is about; ``kind`` what
        the buffers are (see "Kinds" above).

        >>> pool = BufferPool()
        >>> with pool.borrow(4096) as (a, b):
        ...     len(a), len(b), a.readonly
        (4096, 4096, False)
        >>> pool.idle()
        1
        >>> pool.close()
        """
        with self.borrow_many(size, 1, owner, kind) as pairs:
            yield pairs[0]

    @contextmanager
    def borrow_many(self, size: int, count: int, owner: Hashable = None,
                    kind: Kind = "aligned") -> Iterator[list[Pair]]:
        """
        Lend count pairs of size bytes together, for the duration of the
        with block (see the rules above for why not one by one).

        >>> pool = BufferPool()
        >>> with pool.borrow_many(4096, 3) as pairs:
        ...     len(pairs)
        3
        >>> pool.close()
        """
        if count < 1:
            raise ValueError(f"Invalid number of pairs: {count}")
        entries = self._take(size, count, owner, kind)
        try:
            yield [e.views for e in entries]
        finally:
            self._give_back(entries, owner)

    @contextmanager
    def lease(self, size: int, owner: Hashable = None,
              kind: Kind = "aligned") -> Iterator[Lease]:
        """
        Like ``borrow``, but the pair may be given up between chunks and
        borrowed again (:class:`Lease`), for long operations.

        >>> pool = BufferPool()
        >>> with pool.lease(4096, owner="t1") as lease:
        ...     len(lease.pair[0]), lease.contended()
        (4096, False)
        >>> pool.close()
        """
        lease = Lease(self, size, owner, kind)
        try:
            yield lease
        finally:
            lease.release()

    def idle(self) -> int:
        """The number of idle pairs held."""
        with self._lock:
            return len(self._idle)

    def stats(self) -> Stats:
        with self._lock:
            return Stats(limit=self._limit, lent=self._lent,
                         idle=self._idle_bytes, peak=self._peak,
                         waiting=len(self._waiters), waits=self._waits)

    def close(self) -> None:
        """Unmap the idle pairs; pairs still lent are unmapped on return."""
        with self._lock:
            self._closed = True
            entries = self._idle
            self._idle = []
            self._idle_bytes = 0
        for entry in entries:
            entry.close()

    def _take(self, size: int, count: int, owner: Hashable,
              kind: Kind = "aligned") -> list[_Entry]:
        nbytes = 2 * size * count
        with self._lock:
            w = _Waiter(owner, nbytes, next(self._seq), self._lock)
            self._waiters.append(w)
            self._grant_locked()
            if not w.granted:
                self._waits += 1
                while not w.granted:
                    w.cond.wait()
            # Warm pairs of this size and kind first, newest first.
            reused: list[_Entry] = []
            for i in range(len(self._idle) - 1, -1, -1):
                if len(reused) == count:
                    break
                if self._idle[i].size == size and self._idle[i].kind == kind:
                    reused.append(self._idle.pop(i))
            self._idle_bytes -= sum(e.nbytes for e in reused)
            # Room for the new ones: the oldest idle pairs go, unmapped
            # under the lock so that what the pool counts is never less
            # than what is mapped.
            while self._idle and self._lent + self._idle_bytes > self._limit:
                old = self._idle.pop(0)
                self._idle_bytes -= old.nbytes
                old.close()
            self._peak = max(self._peak, self._lent + self._idle_bytes)
        # Outside the lock: mapping is a system call or two. The bytes
        # are already counted as lent.
        fresh: list[_Entry] = []
        try:
            for _ in range(count - len(reused)):
                fresh.append(_Entry(size, kind))
        except BaseException:
            self._give_back(reused + fresh, owner,
                            unmapped=nbytes - 2 * size * (len(reused)
                                                          + len(fresh)))
            raise
        return reused + fresh

    def _give_back(self, entries: list[_Entry], owner: Hashable,
                   unmapped: int = 0) -> None:
        nbytes = sum(e.nbytes for e in entries) + unmapped
        with self._lock:
            self._lent -= nbytes
            left = self._held[owner] - nbytes
            if left:
                self._held[owner] = left
            else:
                del self._held[owner]
                if all(w.owner != owner for w in self._waiters):
                    self._served.pop(owner, None)
            if self._closed:
                evicted = entries
            else:
                self._idle.extend(entries)
                self._idle_bytes += sum(e.nbytes for e in entries)
                excess = max(0, len(self._idle) - self._keep)
                evicted = self._idle[:excess]
                del self._idle[:excess]
                self._idle_bytes -= sum(e.nbytes for e in evicted)
            for old in evicted:
                old.close()
            self._grant_locked()

    def _contended(self, owner: Hashable) -> bool:
        with self._lock:
            mine = self._held.get(owner, 0)
            return any(self._held.get(w.owner, 0) < mine
                       for w in self._waiters if w.owner != owner)

    def _others_waiting(self, owner: Hashable) -> bool:
        with self._lock:
            return any(w.owner != owner for w in self._waiters)

    def _grant_locked(self) -> None:
        """Serve waiters in the fairness order while the next one fits."""
        while self._waiters:
            heads: dict[Hashable, _Waiter] = {}
            for w in self._waiters:
                heads.setdefault(w.owner, w)
            w = min(heads.values(),
                    key=lambda w: (self._held.get(w.owner, 0),
                                   self._served.get(w.owner, -1), w.seq))
            if self._lent and self._lent + w.nbytes > self._limit:
                return
            self._waiters.remove(w)
            self._lent += w.nbytes
            self._held[w.owner] = self._held.get(w.owner, 0) + w.nbytes
            self._served[w.owner] = self._grants
            self._grants += 1
            w.granted = True
            w.cond.notify()


class Lease:
    """
    A pair borrowed for a long operation, given up between chunks while
    others wait with less (see the theory of operation above).

    ``pair`` is the current pair; after ``renew`` it may be another one.
    """

    def __init__(self, pool: BufferPool, size: int, owner: Hashable,
                 kind: Kind = "aligned") -> None:
        self._pool = pool
        self._size = size
        self._owner = owner
        self._kind: Kind = kind
        self._entries: list[_Entry] = pool._take(size, 1, owner, kind)
        # Times the pair was given up for others.
        self.renewals = 0

    @property
    def pair(self) -> Pair:
        return self._entries[0].views

    def contended(self) -> bool:
        """Whether someone waits who should have this pair first."""
        return self._pool._contended(self._owner)

    def others_waiting(self) -> bool:
        """Whether another owner waits for buffers."""
        return self._pool._others_waiting(self._owner)

    def renew(self) -> None:
        """
        Give the pair back and wait in line for one again. Only between
        chunks: nothing may use the old pair any more.
        """
        self.give_up()
        self.take_again()

    def give_up(self) -> None:
        """The first half of ``renew``: give the pair back."""
        entries, self._entries = self._entries, []
        self._pool._give_back(entries, self._owner)
        self.renewals += 1

    def take_again(self) -> None:
        """The second half of ``renew``: wait in line for a pair."""
        self._entries = self._pool._take(self._size, 1, self._owner,
                                         self._kind)

    def release(self) -> None:
        entries, self._entries = self._entries, []
        if entries:
            self._pool._give_back(entries, self._owner)


class Fixed:
    """
    A pair that is never given up: the :class:`Lease` interface for
    callers holding plain buffers (tests, the fuzz harness).
    """

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.renewals = 0

    def contended(self) -> bool:
        return False

    def others_waiting(self) -> bool:
        return False

    def renew(self) -> None:
        pass

    def give_up(self) -> None:
        pass

    def take_again(self) -> None:
        pass


def as_lease(buffers: Pair | Lease | Fixed) -> Lease | Fixed:
    """A lease for what an operation was given."""
    if isinstance(buffers, tuple):
        return Fixed(buffers)
    return buffers
