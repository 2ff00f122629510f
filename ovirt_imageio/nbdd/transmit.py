# SPDX-License-Identifier: GPL-2.0-or-later
"""
The transmission phase of one NBD connection: requests pipelined through
receive, storage and send threads, replies in completion order. Backends
with an IOQueue (files, nbd tickets) are served by one thread instead
(``nbdd.queued``, a subclass sharing the request checks, operations and
replies here).

Theory of operation
===================

Clients keep many requests in flight. Served one at a time, a connection
would leave the network idle while storage works and storage idle while
the reply goes out, which costs most where each step waits longest: TLS,
and nbd tickets relayed to another server. So each request moves through
three stages joined by FIFO queues:

1. *receive* (the connection thread): read the header, check it against
   the ticket and the protocol, take a buffer and read a WRITE's data
   into it;
2. *storage*: run the operation under ``Ticket.run``, reading a READ's
   data into its buffer. One thread, as a backend is used by one thread
   at a time, unless the backend says its calls may run at once
   (``Capabilities.concurrent``, the file backend): then up to ``depth``
   threads, so several O_DIRECT reads and writes are in the kernel
   together, as qemu-nbd keeps them with ``--aio=native``. A thread
   starts when a request arrives while every thread started so far is
   busy, so a connection holds only as many as its client keeps busy;
   only writes start more than ``READ_DEPTH`` (writes gain from more,
   reads do not: see the constants);
3. *send*: send the reply, give the buffer back.

Replies leave in completion order, which the protocol allows (clients
match them by handle); with one storage thread that is request order. A
READ's data is read whole before its reply starts, so a storage error is
always answered with an error reply, never a cut reply.

Rules
-----

1. Memory: a request's buffer (``nbdd.buffers``) holds its data after
   ``HEADROOM`` bytes (room for the reply header, so header and data
   leave in one send; the data stays page aligned for O_DIRECT). Buffers
   in use by one connection are bounded by ``budget`` bytes; the
   receiver waits for buffers to come back before going past it, except
   that a request larger than the budget runs when nothing else is in
   flight.
2. Ending: DISC, EOF, a protocol violation or a failed send ends the
   receiver or the sender; the stages behind finish what they hold
   (replies to requests already received are still sent unless sending
   failed), then the connection closes. A canceled ticket (an operation
   raising AccessDenied) aborts the connection at once.
3. FLUSH is a barrier: it starts only once every request received
   before it has finished in storage, so its reply promises all of
   them durable (the protocol asks this for writes already answered;
   we keep the stronger, simpler rule). A write with FUA flushes in its
   own storage thread after writing, so its reply means it is durable.
   Requests received after a FLUSH may run while it does.
4. Draining (daemon shutdown): no new request is read; when nothing is
   in flight the stream is shut down to wake the receiver.
5. TLS connections have no sender thread: an OpenSSL connection must
   not be used by two threads at once, so the receiver also sends. It
   waits for either the next request or a storage thread's wake-up
   (``Stream.wait_readable`` and an eventfd, written after a job is
   queued for sending only while the receiver waits or is about to:
   written after every job, the writes and the GIL hand-offs they
   caused cost a TLS download 4096 writes and about 31000 futex calls
   per 2 GiB), and sends every finished reply before reading the next
   request. When the budget of rule 1 is spent it sends
   replies, each of which gives a buffer back, instead of waiting for
   another thread to. Storage still overlaps the network as with plain
   sockets, which the serial alternative (each request received,
   stored and answered in turn) did not: it halved TLS uploads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

from ..backends.base import Backend, BackendError, UnsupportedContext
from ..nbd import handshake, transmission, wire
from ..nbd.transmission import Request
from ..transfer import ops
from ..transfer.errors import AccessDenied, TransferError
from ..transfer.stream import Stream
from ..transfer.tickets import Running, Ticket
from .buffers import HEADROOM, Buffers

log = logging.getLogger("nbdd")

# Storage threads of a connection whose backend allows concurrent calls,
# at most. nbdcopy keeps 64 requests of 256 KiB in flight on each of its
# connections (one per core: 2 here). Uploading the 2 GiB image (half
# data) from it to a new sparse file ticket (ext4, writes through AIO,
# a 2-core VM at load 4-5, medians of 4-5 runs against qemu-nbd
# --cache=none --aio=native in the same run), unix / tcp: 4 threads
# 0.98x / 0.90x and 0.93x, 8 threads 1.01x / 0.98x and 1.08x, 16
# threads 1.05x / 1.05x and 1.12x; 32 on unix no better than 8. Threads
# start on demand, so the bound costs only connections that use it.
STORAGE_DEPTH = 16

# Threads a request other than a write may start. Reads gain nothing
# from more: downloading the same image (unix, load 8, median of 5), 4
# threads 962 MiB/s, 8 threads 887, 16 threads 831, qemu-nbd 947; on an
# nbd ticket 4 and 16 threads moved the same.
READ_DEPTH = 4

# Scratch buffer for discarding the data of refused writes.
DISCARD_SIZE = 1024**2

# Meta contexts answered from the backend's "zero" extents.
_ZERO_CONTEXTS = frozenset({wire.CONTEXT_BASE_ALLOCATION,
                            wire.CONTEXT_ALLOCATION_DEPTH})

# The ovirt_imageio_backend_bytes_total op of the commands moving data.
BYTE_OPS = {wire.CMD_READ: "read", wire.CMD_WRITE: "write",
            wire.CMD_WRITE_ZEROES: "zero", wire.CMD_TRIM: "zero"}


class _Job:
    """One request on its way through the stages."""

    __slots__ = ("req", "buf", "error", "message", "reply", "fatal",
                 "start", "nbytes", "running")

    def __init__(self, req: Request, start: float) -> None:
        self.req = req
        self.buf: Any = None
        self.error = 0
        self.message = ""
        # A whole reply built by the storage stage (non-READ requests).
        self.reply = b""
        # End the connection after this request.
        self.fatal = False
        self.start = start
        self.nbytes = 0
        # Its operation while in an IOQueue (nbdd.queued).
        self.running: Running | None = None


_END = None


class Transmission:
    """The three stages of one connection (see the module docstring)."""

    def __init__(self, stream: Stream, ticket: Ticket, backend: Backend,
                 ready: handshake.Ready, buffers: Buffers,
                 abort: Callable[[], None],
                 done: Callable[[Request, float, int, int], None],
                 one_io_thread: bool = False,
                 depth: int | None = None) -> None:
        self._stream = stream
        self._ticket = ticket
        self._backend = backend
        self._ready = ready
        self._buffers = buffers
        self._abort = abort
        # Called by the sender for each request answered: (request,
        # seconds from its header to its reply, bytes moved, the NBD
        # error answered or 0).
        self._done = done
        # Rule 5: the receiver sends too, woken through this eventfd.
        self._one_io_thread = one_io_thread
        self._wake = -1
        # The receiver waits on _wake (or is about to): only then do
        # storage threads write it.
        self._sleeping = False
        # The sending side saw the storage stage end (_END).
        self._send_ended = False
        if depth is None:
            depth = STORAGE_DEPTH if backend.capabilities.concurrent else 1
        self._depth = depth
        self._read_depth = min(READ_DEPTH, depth)
        self._storage_q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._send_q: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Signalled when a request leaves storage (rule 3).
        self._stored = threading.Condition(self._lock)
        # Requests queued for storage and not yet done there.
        self._in_storage = 0
        # Storage threads started; those still running (the last one to
        # end ends the sender).
        self._threads: list[threading.Thread] = []
        self._workers = 0
        self._inflight = 0
        self._draining = False
        self._send_failed = False
        self._header = bytearray(transmission.REQUEST_SIZE)
        self._header_view = memoryview(self._header)

    # Control from other threads.

    def drain(self) -> None:
        with self._lock:
            self._draining = True
            idle = self._inflight == 0
        if idle:
            self._stream.shutdown()

    # The stages.

    def run(self) -> None:
        """Serve requests until the connection ends (in the caller's
        thread, the receiver)."""
        sender = None
        if self._one_io_thread:
            self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            name = threading.current_thread().name
            sender = threading.Thread(target=self._sender, daemon=True,
                                      name=f"{name}/send")
            sender.start()
        try:
            self._receive()
        finally:
            if self._threads:
                for _ in self._threads:
                    self._storage_q.put(_END)
            else:
                self._send_q.put(_END)
            try:
                if sender is None and not self._send_ended:
                    self._sender()
            finally:
                for t in self._threads:
                    t.join()
                if sender is not None:
                    sender.join()
                # Only now: storage threads write it until they end.
                if self._wake >= 0:
                    os.close(self._wake)

    def _receive(self) -> None:
        while True:
            with self._lock:
                if self._draining:
                    return
            if self._one_io_thread:
                self._wait_for_request()
            if not self._take_request(self._queue):
                return

    def _take_request(self, handle: Callable[[_Job], None]) -> bool:
        """Read the next request and hand it to handle; False when the
        connection ends (no request, or the last one)."""
        job = self._read_request()
        if job is None:
            return False
        handle(job)
        return not job.fatal

    def _read_request(self) -> _Job | None:
        """
        Read the next request, checked, with a WRITE's data in its
        buffer; None when the connection ends. A job that is fatal
        already (an expired ticket) is the last.
        """
        header = self._header
        n = self._stream.recv_full(self._header_view)
        if n < len(header):
            if n:
                log.debug("EOF in a request header")
            return None
        start = time.monotonic()
        req = transmission.parse_request(header)
        if req.type == wire.CMD_DISC:
            log.debug("Client disconnected")
            return None
        ticket, ready = self._ticket, self._ready
        if ticket.canceled:
            return None
        job = _Job(req, start)
        if ticket.expired:
            job.error, job.message = wire.EPERM, "Ticket expired"
            job.fatal = True
            return job
        error = transmission.check(req, ready.export, ready.structured,
                                   ready.contexts)
        if error == transmission.DISCONNECT:
            log.warning("%s of %d bytes is over the limit", req.name,
                        req.length)
            return None
        if error:
            if req.type == wire.CMD_WRITE:
                self._discard(req.length)
            job.error, job.message = error, f"Invalid {req.name} request"
        elif req.type in (wire.CMD_READ, wire.CMD_WRITE):
            job.buf = self._take_buffer(req.length)
            if req.type == wire.CMD_WRITE:
                data = memoryview(job.buf)[HEADROOM:HEADROOM + req.length]
                if self._stream.recv_full(data) < req.length:
                    self._buffers.give(job.buf)
                    raise ConnectionError("EOF in request data")
        return job

    def _wait_for_request(self) -> None:
        """Rule 5: send the replies storage finished until the next
        request arrives."""
        while True:
            self._send_finished()
            # Set before looking at the queue, read by storage threads
            # after putting a job there: a job put after the look finds
            # it set and writes the eventfd.
            self._sleeping = True
            try:
                if not self._send_q.empty():
                    continue
                if self._stream.wait_readable(self._wake):
                    return
            finally:
                self._sleeping = False
            try:
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass

    def _send_finished(self) -> None:
        while not self._send_ended:
            try:
                job = self._send_q.get_nowait()
            except queue.Empty:
                break
            self._send_one(job)
        if self._send_failed:
            raise ConnectionError("Sending a reply failed")

    def _send_one(self, job: _Job | None) -> None:
        if job is _END:
            # Every storage thread failed (see _storage).
            self._send_ended = True
            raise ConnectionAbortedError("The storage stage ended")
        self._finish(job)

    def _take_buffer(self, length: int) -> Any:
        if not self._one_io_thread:
            return self._buffers.take(length)
        # Rule 5: only this thread gives buffers back, by sending.
        while (buf := self._buffers.try_take(length)) is None:
            self._send_one(self._send_q.get())
            if self._send_failed:
                raise ConnectionError("Sending a reply failed")
        return buf

    def _queue(self, job: _Job) -> None:
        with self._lock:
            self._inflight += 1
            if job.req.type == wire.CMD_FLUSH:
                # Rule 3: wait for the requests before it.
                self._stored.wait_for(lambda: self._in_storage == 0)
            self._in_storage += 1
            # A thread takes one request at a time and counts it until
            # done: more requests than threads means all are busy.
            started = len(self._threads)
            depth = (self._depth if job.req.type == wire.CMD_WRITE
                     else self._read_depth)
            start = self._in_storage > started and started < depth
            if start:
                self._workers += 1
        if start:
            self._start_storage()
        self._storage_q.put(job)

    def _start_storage(self) -> None:
        # Only the receiver starts threads and reads this list.
        name = threading.current_thread().name
        t = threading.Thread(target=self._storage, daemon=True,
                             name=f"{name}/storage{len(self._threads)}")
        try:
            t.start()
        except BaseException:
            with self._lock:
                self._workers -= 1
            raise
        self._threads.append(t)

    def _storage(self) -> None:
        try:
            while (job := self._storage_q.get()) is not _END:
                try:
                    if not job.error and not job.fatal:
                        self._execute(job)
                finally:
                    with self._lock:
                        self._in_storage -= 1
                        self._stored.notify_all()
                self._send_q.put(job)
                self._wake_receiver()
        except BaseException:
            log.exception("Storage stage failed")
            self._abort()
            # Wake the receiver if it waits for buffers this stage holds.
            self._buffers.close()
            raise
        finally:
            with self._lock:
                self._workers -= 1
                last = self._workers == 0
            if last:
                self._send_q.put(_END)
                self._wake_receiver()

    def _wake_receiver(self) -> None:
        # After the put, so a receiver that reset the eventfd before this
        # write finds the job in the queue (rule 5).
        if self._one_io_thread and self._sleeping:
            os.eventfd_write(self._wake, 1)

    def _execute(self, job: _Job,
                 work: Callable[[_Job], int] | None = None) -> None:
        """Run work (default ``_operate``) for job, turning its errors
        into the job's NBD error."""
        req = job.req
        try:
            job.nbytes = (work or self._operate)(job)
        except AccessDenied as e:
            # Canceled: the transfer must not go on.
            log.info("%s", e.reason)
            job.fatal = True
            job.error = wire.EPERM
            self._abort()
        except (OSError, BackendError, TransferError) as e:
            log.warning("Backend error for %s offset=%d length=%d: %s",
                        req.name, req.offset, req.length, e)
            local = e.errno if isinstance(e, OSError) else None
            job.error = wire.wire_errno(local)
            job.message = str(e)

    def _operate(self, job: _Job) -> int:
        """Run a checked request; return the bytes it moved."""
        req, ticket, backend = job.req, self._ticket, self._backend
        t = req.type
        if t in (wire.CMD_READ, wire.CMD_WRITE):
            data = memoryview(job.buf)[HEADROOM:HEADROOM + req.length]
            if t == wire.CMD_READ:
                ticket.run(ops.ReadInto(backend, req.offset, data))
            else:
                ticket.run(ops.WriteFrom(backend, req.offset, data,
                                         flush=req.fua))
            return req.length
        if t == wire.CMD_WRITE_ZEROES or (t == wire.CMD_TRIM
                                          and ticket.sparse):
            # The backend zeroes following the ticket's "sparse", which
            # also decides NO_HOLE: a trim on a sparse ticket
            # deallocates, on a preallocated one it is only a hint.
            ticket.run(ops.Zero(backend, req.offset, req.length,
                                flush=req.fua))
            return req.length
        if t in (wire.CMD_TRIM, wire.CMD_CACHE):
            if req.fua:
                ticket.run(ops.Flush(backend))
            else:
                ticket.touch()
            return 0
        if t == wire.CMD_FLUSH:
            ticket.run(ops.Flush(backend))
            return 0
        if t == wire.CMD_BLOCK_STATUS:
            job.reply = self._block_status(req)
            return 0
        raise AssertionError(f"Unchecked command {t}")

    def _block_status(self, req: Request) -> bytes:
        ticket, backend = self._ticket, self._backend
        one = bool(req.flags & wire.CMD_FLAG_REQ_ONE)
        contexts = sorted(self._ready.contexts.items())
        out = bytearray()
        for i, (cid, name) in enumerate(contexts):
            # Allocation depth comes from the zero context's holes (see
            # nbd.transmission.status_flags).
            kind = "zero" if name in _ZERO_CONTEXTS else "dirty"

            def scan(kind: str = kind, name: str = name
                     ) -> list[tuple[int, int]]:
                return transmission.descriptors(
                    backend.extents(kind, req.offset,
                                    req.offset + req.length),
                    req.offset, req.length, one, context=name)

            try:
                found = ticket.run(ops.Call(scan, "extents"))
            except UnsupportedContext as e:
                raise TransferError(str(e)) from e
            if not found:
                raise TransferError("No extents in the range")
            out += transmission.block_status_chunk(
                req.handle, cid, found, done=i == len(contexts) - 1)
        return bytes(out)

    def _sender(self) -> None:
        while (job := self._send_q.get()) is not _END:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        """Send a job's reply and release what it holds."""
        try:
            if not self._send_failed:
                self._stream.sendall(self._reply(job))
                self._report(job)
        except OSError as e:
            self._sending_failed(e)
        finally:
            self._release(job)

    def _sending_failed(self, e: OSError) -> None:
        log.debug("Sending a reply failed: %s", e)
        self._send_failed = True
        self._abort()

    def _release(self, job: _Job) -> None:
        """Give back what an answered (or abandoned) job holds."""
        if job.buf is not None:
            self._buffers.give(job.buf)
        if job.fatal:
            self._abort()
        with self._lock:
            self._inflight -= 1
            wake = self._draining and self._inflight == 0
        if wake:
            self._stream.shutdown()

    def _reply(self, job: _Job) -> Any:
        """The bytes of a job's reply; a READ's are a view of its buffer,
        the header written in its headroom."""
        req = job.req
        structured = self._ready.structured
        if job.error:
            return transmission.error_reply(
                req.handle, job.error, structured, job.message)
        if req.type == wire.CMD_READ:
            if structured:
                head = transmission.offset_data_header(
                    req.handle, req.offset, req.length)
            else:
                head = transmission.simple_reply(req.handle)
            view = memoryview(job.buf)
            start = HEADROOM - len(head)
            view[start:HEADROOM] = head
            return view[start:HEADROOM + req.length]
        if job.reply:
            return job.reply
        return transmission.simple_reply(req.handle)

    def _report(self, job: _Job) -> None:
        """A job's reply was sent."""
        self._done(job.req, time.monotonic() - job.start,
                   0 if job.error else job.nbytes, job.error)

    def _discard(self, length: int) -> None:
        scratch = memoryview(bytearray(min(length, DISCARD_SIZE)))
        while length > 0:
            n = self._stream.recv_full(scratch[:min(length, len(scratch))])
            if n == 0:
                raise ConnectionError("EOF in request data")
            length -= n
