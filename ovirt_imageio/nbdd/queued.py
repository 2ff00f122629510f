# SPDX-License-Identifier: GPL-2.0-or-later
"""
The transmission phase of one NBD connection on a backend that keeps
requests in flight itself (``Capabilities.io_queue``: files through
Linux AIO, nbd tickets through libnbd's asynchronous commands on a
handle this thread drives): one thread receives, submits, collects and
sends.

Theory of operation
===================

``nbdd.transmit`` overlaps storage and network with a thread per request
in flight. Each request then crossed three threads (receiver, storage,
sender) and woke each, and with four connections of 64 requests each the
GIL changed hands at every system call: uploading through nbdcopy cost
about 13 context switches per request, and two fifths of the door's CPU
went to the scheduler. Here the connection thread does it all, as
qemu-nbd's event loop does:

1. wait until a request arrives, the queue has finished requests, or
   the socket takes more of the replies waiting to be sent
   (``Stream.wait_io`` with the queue's descriptor, also when nothing
   is in flight: a queue may need its thread then, see rule 5);
2. collect the finished requests and queue their replies, sending what
   the socket takes without waiting (``Stream.send_some``): a thread
   blocked sending a READ's data to a client slow to read would submit
   nothing meanwhile, and the storage would idle (downloads moved a
   fifth less before replies were sent this way);
3. read a request (and a WRITE's data) and start it: a READ or WRITE is
   submitted to the queue under ``Ticket.start`` and answered when
   collected (``Ticket.end``); every other command runs at once through
   the backend's own calls, and its reply is queued before the next
   request is read.

Rules
-----

1. Memory and ending are rules 1 and 2 of ``nbdd.transmit``; the only
   thread that gives buffers back is this one, once a reply is sent
   whole, so when the budget is spent it collects and sends until one
   comes back. A connection ending waits for every request in flight
   (their buffers are in the kernel's or libnbd's hands until then),
   then sends the replies still waiting, unless sending failed.
2. A request the queue refuses (unaligned, past the end, a WRITE with
   FUA) or fails (a short or failed read or write) runs through the
   backend's own calls (``ops.ReadInto.complete``), so its error or
   success is what the threaded stages would have answered.
3. FLUSH is a barrier, as in ``nbdd.transmit``: it runs once every
   request before it was collected.
4. At most ``DEPTH`` requests are in the queue; past that the thread
   collects before reading on.
5. Small replies (write, zero, flush, block status, errors) wait to be
   sent together: while the client has more requests there to read, up
   to ``SMALL_BATCH`` of them; all of them before the thread waits, so
   a client waiting for a reply never waits for the batch. Uploading
   over TLS, sending each 16-byte reply as a record of its own took a
   tenth of the connection thread's time.
6. Submitted requests start together (``IOQueue.kick``): before the
   thread waits, and after every ``SUBMIT_BATCH`` taken while more
   requests are there to read; a request never waits for more than a
   batch, nor for a thread that waits. A file's batch goes to the
   kernel in one call, which merges adjacent requests (see ext/aio.c).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import select
from typing import Any, Callable

from ..backends.base import Backend, IOQueue
from ..nbd import handshake, wire
from ..nbd.transmission import Request
from ..transfer import ops
from ..transfer.errors import AccessDenied
from ..transfer.stream import Stream
from ..transfer.tickets import Ticket
from . import relay
from .buffers import HEADROOM, Buffers
from .transmit import Transmission, _Job

log = logging.getLogger("nbdd")

# Requests in the queue of one connection, at most: more than the 64 of
# 256 KiB nbdcopy keeps in flight per connection. The buffer budget
# (two buffer_size, 8 MiB each for files by default) bounds the bytes.
DEPTH = 128

# Replies up to this size (all but READ data) go out together, in one
# send and on TLS in one record, up to SMALL_BATCH of them (rule 5).
SMALL_REPLY = 4096
SMALL_BATCH = 16

# Requests taken before the queue is kicked while more are there to
# read (rule 6): one, so each starts at once. Batches of 16 merged
# nbdcopy's 256 KiB reads into requests of 1 MiB, and with buffers of
# huge pages (nbdd.buffers) of 4 MiB, which the bench VM's disk serves
# fewer at a time: downloading through the unix door (alternating runs,
# median ratio to qemu-nbd) batches of 16 gave 0.97x, of 4 1.01-1.10x,
# of 1 1.04-1.17x; uploads 1.03x, 1.09-1.34x and 1.01-1.23x.
SUBMIT_BATCH = 1


class QueuedTransmission(Transmission):
    """One connection served by one thread (see the module docstring)."""

    def __init__(self, stream: Stream, ticket: Ticket, backend: Backend,
                 ready: handshake.Ready, buffers: Buffers,
                 abort: Callable[[], None],
                 done: Callable[[Request, float, int, int], None],
                 queue: IOQueue,
                 relayed: relay.Report | None = None) -> None:
        super().__init__(stream, ticket, backend, ready, buffers, abort,
                         done, one_io_thread=True, depth=1)
        self._q = queue
        # Reads relayed in C (nbdd.relay), reported through relayed.
        self._relay = None if relayed is None else relay.Relay.create(
            stream, ticket, backend, ready, buffers, queue, relayed)
        # tag -> job of the requests in the queue.
        self._jobs: dict[int, _Job] = {}
        # Replies waiting for the socket, the first maybe sent in part;
        # an entry is one reply, or several small ones joined.
        self._out: collections.deque[tuple[list[_Job], memoryview]] = \
            collections.deque()
        # Small replies (all but READ data) not yet in _out, joined into
        # one entry when the thread next sends (rule 5).
        self._small: list[_Job] = []
        self._small_data = bytearray()
        # The socket took less than it was offered, and has not been
        # writable since: sending again now would take nothing.
        self._full = False
        self._next_tag = 0
        # Submitted since the last kick (rule 6).
        self._unkicked = 0

    def run(self) -> None:
        try:
            self._serve()
        finally:
            try:
                # Rule 1: nothing may stay in flight, however long the
                # socket is stuck: wait for the queue alone.
                while self._jobs:
                    self._kick()
                    poller = select.poll()
                    poller.register(self._q.fileno(), select.POLLIN | (
                        select.POLLOUT if self._q.wants_write() else 0))
                    poller.poll()
                    self._collect()
                self._send_rest()
            finally:
                self._release_unsent()
                self._q.close()

    def _serve(self) -> None:
        while True:
            self._collect()
            if self._out:
                self._send_ready()
            with self._lock:
                if self._draining:
                    return
            if self._send_failed:
                raise ConnectionError("Sending a reply failed")
            if len(self._jobs) >= DEPTH:
                # Rule 4.
                self._wait(read=False)
                continue
            if self._unkicked >= SUBMIT_BATCH:
                self._kick()
            # Rule 5: read on while requests are there, holding small
            # replies; wait (sending them first) only when none is. An
            # idle thread waits on the queue too: a spread queue asked
            # for its extra connections wakes it (backends.nbd_spread).
            if (not self._stream.readable_now()
                    and not self._wait(read=True)):
                continue
            if self._relay is not None:
                if self._relay.ready and self._idle():
                    if not self._run_relay():
                        return
                    continue
                self._relay.took_request()
            if not self._take_request(self._dispatch):
                return

    def _idle(self) -> bool:
        """Nothing of this thread's is in flight or waits to be sent
        (nbdd.relay rule 2)."""
        return not (self._jobs or self._out or self._small
                    or self._unkicked)

    def _run_relay(self) -> bool:
        """A run of relayed reads (nbdd.relay); False if the connection
        must end."""
        assert self._relay is not None
        with self._lock:
            # For drain (nbdd.transmit rule 4): the run answers what it
            # took before the stream may shut down.
            self._inflight += 1
        try:
            result = self._relay.run()
        except AccessDenied as e:
            log.info("%s", e.reason)
            self._abort()
            return False
        finally:
            with self._lock:
                self._inflight -= 1
                wake = self._draining and self._inflight == 0
            if wake:
                self._stream.shutdown()
        if result is None:
            return True
        if result.error:
            self._sending_failed(OSError(result.error,
                                         os.strerror(result.error)))
        elif result.reason == relay.WAKE:
            # The extra connections are asked for: collecting gives them
            # back (backends.nbd_spread rule 3).
            self._collect()
        return True

    def _take_buffer(self, length: int) -> Any:
        # Rule 1: buffers come back only as this thread sends.
        while (buf := self._buffers.try_take(length)) is None:
            self._wait(read=False)
        return buf

    def _wait(self, read: bool) -> bool:
        """
        Wait for the queue, for room to send when replies wait, and for
        a request if read; collect and send what is ready. True when a
        request can be read.
        """
        self._send_ready()
        if not read and not self._jobs and not self._out:
            # Sending gave back all there was.
            return False
        self._kick()
        readable, writable = self._stream.wait_io(
            self._q.fileno(), read, bool(self._out), self._q.wants_write())
        if writable:
            self._full = False
            self._send_ready()
        self._collect()
        return readable

    def _dispatch(self, job: _Job) -> None:
        with self._lock:
            self._inflight += 1
        req = job.req
        if not job.error and not job.fatal:
            if req.type in (wire.CMD_READ, wire.CMD_WRITE):
                self._execute(job, self._submit)
                if job.running is not None:
                    return
            else:
                if req.type == wire.CMD_FLUSH:
                    # Rule 3.
                    while self._jobs:
                        self._wait(read=False)
                self._execute(job)
        self._finish(job)

    def _submit(self, job: _Job) -> int:
        """Start job's READ or WRITE in the queue (job.running), or run it
        now if the queue refuses it (rule 2); the bytes moved now."""
        req, ticket = job.req, self._ticket
        data = memoryview(job.buf)[HEADROOM:HEADROOM + req.length]
        op: ops.ReadInto | ops.WriteFrom
        if req.type == wire.CMD_READ:
            op = ops.ReadInto(self._backend, req.offset, data)
        else:
            op = ops.WriteFrom(self._backend, req.offset, data,
                               flush=req.fua)
        tag = self._next_tag
        self._next_tag += 1
        running = ticket.start(op)
        try:
            submitted = op.submit(self._q, tag)
        except BaseException as e:
            ticket.end(running, e)
            raise
        if submitted:
            job.running = running
            self._jobs[tag] = job
            self._unkicked += 1
            return 0
        # Nothing moved: end it as it is and run it whole.
        ticket.end(running)
        ticket.run(op)
        return req.length

    def _kick(self) -> None:
        """Start the requests submitted since the last kick (rule 6)."""
        if self._unkicked:
            self._q.kick()
            self._unkicked = 0

    def _collect(self) -> None:
        """Answer the requests the queue finished, without waiting."""
        for tag, ok in self._q.completed():
            job = self._jobs.pop(tag)
            self._execute(job, functools.partial(self._complete, ok=ok))
            self._finish(job)

    def _complete(self, job: _Job, ok: bool) -> int:
        running = job.running
        assert running is not None
        op = running.op
        assert isinstance(op, (ops.ReadInto, ops.WriteFrom))
        try:
            op.complete(ok)
        except BaseException as e:
            self._ticket.end(running, e)
            raise
        self._ticket.end(running)
        return job.req.length

    # Sending.

    def _finish(self, job: _Job) -> None:
        if self._send_failed:
            self._release(job)
            return
        reply = self._reply(job)
        if len(reply) <= SMALL_REPLY:
            self._small.append(job)
            self._small_data += reply
            if job.buf is not None:
                # The reply is copied: the buffer may serve the next
                # request while the reply waits (rule 5).
                self._buffers.give(job.buf)
                job.buf = None
            if len(self._small) >= SMALL_BATCH:
                self._join_small()
        else:
            self._out.append(([job], memoryview(reply).cast("B")))

    def _join_small(self) -> None:
        """Queue the small replies waiting as one entry (rule 5)."""
        if self._small:
            self._out.append((self._small, memoryview(self._small_data)))
            self._small = []
            self._small_data = bytearray()

    def _send_ready(self) -> None:
        """Send the waiting replies the socket takes now."""
        self._join_small()
        out = self._out
        if self._full:
            # Downloading through a unix socket, two sends in five took
            # nothing before the thread checked this.
            return
        try:
            while out:
                jobs, data = out[0]
                n = self._stream.send_some(data)
                if n < len(data):
                    out[0] = (jobs, data[n:])
                    self._full = True
                    return
                out.popleft()
                for job in jobs:
                    self._report(job)
                    self._release(job)
        except OSError as e:
            self._sending_failed(e)
            self._release_unsent()

    def _send_rest(self) -> None:
        """Send the waiting replies, waiting for the socket (ending)."""
        self._send_ready()
        out = self._out
        try:
            while out and not self._send_failed:
                jobs, data = out.popleft()
                try:
                    self._stream.sendall(data)
                    for job in jobs:
                        self._report(job)
                finally:
                    for job in jobs:
                        self._release(job)
        except OSError as e:
            self._sending_failed(e)

    def _release_unsent(self) -> None:
        while self._out:
            for job in self._out.popleft()[0]:
                self._release(job)
        for job in self._small:
            self._release(job)
        self._small = []
