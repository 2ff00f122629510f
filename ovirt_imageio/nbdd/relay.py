# SPDX-License-Identifier: GPL-2.0-or-later
"""
Downloads of nbd tickets relayed in C: runs of READ requests served by
``native.nbdrelay`` on the connection thread of ``nbdd.queued``, between
the requests that thread serves itself.

Why
===

Relaying nbdcopy's 256 KiB reads to qemu-nbd, the connection thread ran
about 210 Python calls per request (parsing, ticket, queue, libnbd's
notify calls, metrics), a third of the door's CPU, and held the GIL the
other connections' threads wait for. On the bench VM (2 cores, shared
by nbdcopy, the door and qemu-nbd) nbdcopy through the door moved
0.86-1.0x of nbdcopy straight to qemu-nbd, the least on the fastest
disk. In C a request costs a few system calls, without the GIL.

Rules
=====

1. Only a connection of a read-only nbd ticket on a plain socket
   (``ReadAhead`` over ``SocketStream``) runs the loop, and only while
   the ticket has no rate limit (the loop cannot throttle) and has not
   expired, and the module was built.
2. A run starts when a request is there to read and the thread has
   nothing of its own in flight or waiting to be sent, so the two never
   share a handle or the socket; a run takes the bytes read ahead and
   gives back what it did not parse (``ReadAhead.take_buffered`` and
   ``unread``). It takes the connection's free buffers (the budget of
   ``nbdd.transmit`` rule 1) and gives them back when it returns.
3. A run counts as one ongoing operation of the ticket (cancel waits for
   it, ``idle_time`` is 0) and as a request in flight for ``drain``; it
   returns within ``RUN_MS``, or once it answered all it took and no
   request waits (the thread then waits as it does, and a client of one
   request at a time meets the thread's checks before each), and its
   reads enter ``transferred``, re-arm expiry, and reach the metrics and
   the CLOSE line as each read served in Python does. A ticket that
   expired during a run (PATCH) stays expired: requests that came
   during the run were served, as requests in flight are.
4. What a run does not serve goes back to the thread, as requests to
   read again: the request that stopped it (anything but a plain READ
   in range, aligned, no larger than a buffer) and reads that failed
   (``native.nbdrelay``: their answer is the backend's own calls'). The
   thread serves those before the next run; when a run served nothing
   the next waits for twice as many (a client of 1 MiB reads must not
   bounce in and out of C for each).
5. A client that takes no reply for the stream's timeout, or whose
   socket fails, fails the connection as a failed send does.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from ..backends.nbd import NBDBackend
from ..backends.nbd_loop import CommandQueue
from ..backends.nbd_spread import SpreadQueue
from ..nbd import handshake
from ..transfer import ops
from ..transfer.stream import ReadAhead, SocketStream, Stream
from ..transfer.tickets import Ticket
from .buffers import HEADROOM, Buffers

try:
    from ..native import nbdrelay
except ImportError:  # Built without libnbd (rule 1).
    nbdrelay = None  # type: ignore[assignment]

log = logging.getLogger("nbdd")

# A run ended for the spread queue's wake-up (nbdrelay.WAKE).
WAKE = -1 if nbdrelay is None else nbdrelay.WAKE

# Milliseconds a run takes requests for (rule 3): the thread then checks
# draining, cancel and expiry, and the ticket sees the progress.
RUN_MS = 100

# Data bytes of a run's buffers: nbdcopy's requests. Larger reads go to
# the thread (rule 4).
SLOT_DATA = 256 * 1024

# Buffers a run takes at most: the depth of nbdd.queued.
MAX_SLOTS = 128

# Requests the thread serves before trying a run again after a run that
# served nothing, at most (rule 4).
MAX_SKIP = 256

# Called with the seconds each answered read took and the bytes moved.
Report = Callable[[Sequence[float], int], None]


class Relay:
    """Runs of the C loop for one connection (see the module doc)."""

    def __init__(self, stream: ReadAhead, sock: SocketStream, ticket: Ticket,
                 backend: NBDBackend, ready: handshake.Ready,
                 buffers: Buffers, queue: CommandQueue | SpreadQueue,
                 report: Report) -> None:
        assert nbdrelay is not None
        self._stream = stream
        self._sock = sock
        self._ticket = ticket
        self._buffers = buffers
        self._queue = queue
        self._report = report
        self._slot_data = min(SLOT_DATA, backend.max_request)
        self._loop = nbdrelay.Relay(
            sock.fileno(), ready.structured,
            min(ticket.size, backend.size()),
            backend.capabilities.block_size, self._slot_data,
            headroom=HEADROOM)
        # Requests the thread serves before the next run (rule 4).
        self.skip = 0
        self._backoff = 1
        self._off = False

    @classmethod
    def create(cls, stream: Stream, ticket: Ticket, backend: Any,
               ready: handshake.Ready, buffers: Buffers, queue: Any,
               report: Report) -> Relay | None:
        """The relay of a connection that may use one (rule 1), or None."""
        if (nbdrelay is None or ticket.may("write")
                or not isinstance(backend, NBDBackend)
                or not isinstance(queue, (CommandQueue, SpreadQueue))
                or not isinstance(stream, ReadAhead)
                or not isinstance(stream.stream, SocketStream)):
            return None
        return cls(stream, stream.stream, ticket, backend, ready, buffers,
                   queue, report)

    @property
    def ready(self) -> bool:
        """Whether a run may start, the thread's own part of rule 2 aside."""
        # An expired ticket's next request goes to the thread, which
        # answers EPERM and ends the connection (a run re-arms expiry,
        # but PATCH may shorten it).
        ticket = self._ticket
        return (not self._off and self.skip == 0
                and ticket.limiter.rate == 0 and not ticket.expired)

    def took_request(self) -> None:
        """The thread read a request of its own (rule 4)."""
        if self.skip:
            self.skip -= 1

    def run(self) -> nbdrelay.Run | None:
        """
        One run (rules 2, 3); None if none could start. Raises
        AccessDenied if the ticket was canceled meanwhile.
        """
        assert nbdrelay is not None
        handles, wake = self._queue.relay_targets()
        if not handles:
            self._off = True
            return None
        slots: list[memoryview] = []
        while len(slots) < MAX_SLOTS:
            buf = self._buffers.try_take(self._slot_data)
            if buf is None:
                break
            slots.append(buf)
        if not slots:
            self.skip = 1
            return None
        stream, ticket = self._stream, self._ticket
        stall = self._sock.timeout
        stall_ms = -1 if stall is None else max(1, int(stall * 1000))
        try:
            running = ticket.start(ops.Call(_nothing, "relay"))
            pending = stream.take_buffered()
            try:
                result = self._loop.run(handles, slots, pending, wake,
                                        RUN_MS, stall_ms)
            except BaseException as e:
                stream.unread(pending)
                ticket.end(running, e)
                raise
        finally:
            for buf in slots:
                self._buffers.give(buf)
        stream.unread(result.failed + result.leftover)
        # Expired meanwhile (PATCH): the reads must not revive it (rule 3).
        touch = not ticket.expired
        self._account(result, touch)
        ticket.end(running, touch=touch)
        self._after(result)
        return result

    def _account(self, result: nbdrelay.Run, touch: bool) -> None:
        """Rule 3."""
        offsets, lengths = result.offsets, result.lengths
        if not offsets:
            return
        self._ticket.add_transferred(_merged(offsets, lengths), touch)
        self._report(result.seconds, sum(lengths))

    def _after(self, result: nbdrelay.Run) -> None:
        """Rule 4."""
        assert nbdrelay is not None
        if result.offsets:
            self._backoff = 1
        reason = result.reason
        failed = len(result.failed) // nbdrelay.REQUEST_SIZE
        if reason == nbdrelay.NO_HANDLE:
            self._off = True
        if failed:
            # Whatever stopped the run first, those go to the thread.
            self.skip = failed
            log.debug("Relayed reads failed: %d run by the backend", failed)
        elif reason in (nbdrelay.OTHER, nbdrelay.EOF):
            if result.offsets:
                self.skip = 1
            else:
                self.skip = self._backoff
                self._backoff = min(2 * self._backoff, MAX_SKIP)


def _nothing() -> None:
    pass


def _merged(offsets: list[int], lengths: list[int]
            ) -> list[tuple[int, int]]:
    """
    The ranges of a run's reads, adjacent ones joined.

    >>> _merged([4096, 0, 8192, 16384], [4096, 4096, 4096, 4096])
    [(0, 12288), (16384, 20480)]
    """
    ranges: list[tuple[int, int]] = []
    for start, length in sorted(zip(offsets, lengths, strict=True)):
        end = start + length
        if ranges and start <= ranges[-1][1]:
            if end > ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges
