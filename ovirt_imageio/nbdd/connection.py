# SPDX-License-Identifier: GPL-2.0-or-later
"""
One NBD client connection: the handshake, then requests served in order.

Theory of operation
===================

The connection thread runs the sans-IO handshake (``nbd.handshake``)
against the socket within ``handshake_timeout`` seconds in all, running
the TLS handshake when the client asks for STARTTLS. Export names are
ticket ids: looking one up authorizes it for reading and opens the
connection's backend for it (``transfer.context.get``), so the export
size and capabilities are the ticket's.

Transmission serves one request at a time, in the order received.
Clients keep many requests in flight; they wait in the socket buffer, so
replies come in request order and need no lock on the socket. Every
request:

1. is checked against the ticket: a canceled ticket ends the connection;
   an expired one answers EPERM and ends it (as HTTP answers 403 and
   closes);
2. is checked against the protocol (``nbd.transmission.check``);
3. runs as an operation under ``Ticket.run`` (so it counts as activity,
   re-arms expiry, shows in ``transferred``, and can be canceled), with
   buffers borrowed from the daemon's pool for data requests.

Ending: ``NBD_CMD_DISC``, EOF, the inactivity timeout of the ticket
(``set_timeout``), ``drain()`` between requests, ``abort()`` at any time,
or the ticket's cancel: canceling closes the connection's backend
context, whose close hook is ``abort()``, so an idle connection ends at
once instead of at its next request.
"""

from __future__ import annotations

import concurrent.futures
import errno
import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Protocol

from .. import backends
from ..backends.base import Backend, UnsupportedContext
from ..backends.base import Error as BackendError
from ..config import Config
from ..native import tlsio
from ..nbd import handshake, transmission, wire
from ..nbd.handshake import Export, ProtocolViolation
from ..nbd.transmission import Request
from ..transfer import buffers, context, ops
from ..transfer.errors import AccessDenied, TransferError
from ..transfer.stream import Stream, wrap
from ..transfer.tickets import Ticket, TicketStore, short_id

log = logging.getLogger("nbdd")

_ids = itertools.count(1)

# Bytes read per recv during the handshake: options are small.
HANDSHAKE_RECV = 16 * 1024

# The ovirt_imageio_backend_bytes_total op of the commands moving data.
_BYTE_OPS = {wire.CMD_READ: "read", wire.CMD_WRITE: "write",
             wire.CMD_WRITE_ZEROES: "zero", wire.CMD_TRIM: "zero"}

# Free bytes before the data of a read, for its reply header; a page, so
# the data stays page aligned for O_DIRECT.
HEADROOM = 4096

# Scratch buffer for discarding the data of refused writes.
DISCARD_SIZE = 1024**2


class Observer(Protocol):
    """What the connection reports to the daemon's metrics."""

    def connection_opened(self, service: str) -> None: ...

    def connection_closed(self, service: str) -> None: ...

    def error(self, service: str, kind: str) -> None: ...

    def bytes_moved(self, backend: str, op: str, nbytes: int) -> None: ...


# Runs the TLS handshake on the connection's socket within a timeout and
# returns the TLS stream.
StartTLS = Callable[[float], Stream]


class Door:
    """What every connection of a service shares."""

    def __init__(self, cfg: Config, tickets: TicketStore,
                 pool: concurrent.futures.Executor,
                 buffer_pool: buffers.BufferPool,
                 ssl_context: ssl.SSLContext | None = None,
                 observer: Observer | None = None,
                 handshake_timeout: float = 60.0) -> None:
        self.cfg = cfg
        self.tickets = tickets
        self.pool = pool
        self.buffers = buffer_pool
        self.ssl_context = ssl_context
        self.observer = observer
        self.handshake_timeout = handshake_timeout


def tls_starter(sock: socket.socket, ctx: ssl.SSLContext) -> StartTLS:
    """The StartTLS of a connection on ``sock`` (server side)."""

    def start(timeout: float) -> Stream:
        sock.settimeout(timeout)
        tls = ctx.wrap_socket(sock, server_side=True,
                              do_handshake_on_connect=False)
        # Read-ahead must be set before the handshake allocates OpenSSL's
        # read buffer.
        handle = tlsio.prepare(tls, tlsio.SERVER_READ_AHEAD)
        tls.do_handshake()
        return wrap(tls, handle)

    return start


class _Stats:
    """Per-command counters for the CLOSE line: [ops, seconds, bytes]."""

    def __init__(self) -> None:
        self.commands: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float, nbytes: int) -> None:
        entry = self.commands.setdefault(name, [0, 0.0, 0])
        entry[0] += 1
        entry[1] += seconds
        entry[2] += nbytes

    def format(self) -> str:
        parts = []
        for name, (count, seconds, nbytes) in self.commands.items():
            text = f"[{name.lower()} {int(count)} ops, {seconds:.6f} s"
            if nbytes:
                rate = nbytes / seconds / 1024**2 if seconds > 0 else 0.0
                text += f", {int(nbytes)} bytes, {rate:.2f} MiB/s"
            parts.append(text + "]")
        return " ".join(parts)


class Connection:
    """One client connection (see the module docstring)."""

    def __init__(self, stream: Stream, door: Door, client: str,
                 service: str, start_tls: StartTLS | None = None) -> None:
        self.id = next(_ids)
        self.client = client
        self.service = service
        self._door = door
        self._stream = stream
        self._start_tls_func = start_tls
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._busy = False
        self._draining = False
        self._stats = _Stats()
        self._started = time.monotonic()
        # Set once transmission starts.
        self._ticket: Ticket | None = None
        self._backend: Backend | None = None
        self._ready: handshake.Ready | None = None
        self._backend_name = ""
        # The ticket's inactivity timeout, once context.get set it.
        self._idle_timeout: float | None = None

    # transfer.context.Session

    def on_close(self, func: Callable[[], None]) -> None:
        self._closers.append(func)

    def set_timeout(self, timeout: float) -> None:
        # Applies once transmission starts; the handshake has its own
        # deadline.
        self._idle_timeout = float(timeout)

    # Control from other threads.

    def drain(self) -> None:
        """End after the current request, or now if there is none."""
        with self._lock:
            self._draining = True
            busy = self._busy
        if not busy:
            self._stream.shutdown()

    def abort(self) -> None:
        """End now, even in the middle of a request."""
        with self._lock:
            self._draining = True
        self._stream.shutdown()

    # The connection thread.

    def serve(self) -> None:
        log.info("OPEN connection=%s client=%s service=%s", self.id,
                 self.client, self.service)
        observer = self._door.observer
        if observer is not None:
            observer.connection_opened(self.service)
        try:
            ready = self._handshake()
            if ready is not None:
                self._transmit(ready)
        except (ConnectionError, TimeoutError, ssl.SSLError) as e:
            log.debug("Connection %s ended: %s", self.id, e)
            self._report("connection")
        except ProtocolViolation as e:
            log.warning("Protocol error from %s: %s", self.client, e)
            self._report("client")
        except OSError as e:
            log.debug("Connection %s failed: %s", self.id, e)
            self._report("connection")
        finally:
            self._close()

    def _report(self, kind: str) -> None:
        if self._door.observer is not None and not self._draining:
            self._door.observer.error(self.service, kind)

    def _close(self) -> None:
        while self._closers:
            func = self._closers.pop()
            try:
                func()
            except Exception:
                log.exception("Error closing connection %s resource",
                              self.id)
        if self._door.observer is not None:
            self._door.observer.connection_closed(self.service)
        self._stream.close()
        seconds = time.monotonic() - self._started
        log.info("CLOSE connection=%s client=%s [connection 1 ops, "
                 "%.6f s] %s", self.id, self.client, seconds,
                 self._stats.format())

    # Handshake.

    def _handshake(self) -> handshake.Ready | None:
        door = self._door
        hs = handshake.Handshake(self._lookup,
                                 tls_required=self._start_tls_func is not None)
        deadline = time.monotonic() + door.handshake_timeout
        buf = memoryview(bytearray(HANDSHAKE_RECV))
        while True:
            event = hs.next_event()
            out = hs.data_to_send()
            if out:
                self._stream.settimeout(_remaining(deadline))
                self._stream.sendall(out)
            if isinstance(event, handshake.NeedData):
                if self._draining:
                    return None
                self._stream.settimeout(_remaining(deadline))
                n = self._stream.recv_into(buf)
                if n == 0:
                    log.debug("Connection %s: EOF in the handshake", self.id)
                    return None
                hs.receive_data(bytes(buf[:n]))
            elif isinstance(event, handshake.StartTLS):
                self._start_tls(deadline)
                hs.tls_started()
            elif isinstance(event, handshake.Closed):
                log.info("Connection %s: handshake ended: %s", self.id,
                         event.reason)
                return None
            else:
                early = hs.take_buffered()
                if early:
                    self._stream = _Prefixed(early, self._stream)
                return event

    def _start_tls(self, deadline: float) -> None:
        assert self._start_tls_func is not None
        try:
            self._stream = self._start_tls_func(_remaining(deadline))
        except (OSError, ssl.SSLError):
            self._report("tls")
            raise

    def _lookup(self, name: str) -> Export | None:
        """Authorize a ticket id and open its backend; None if either
        fails (see rule 1 of nbd.handshake)."""
        door = self._door
        try:
            ticket = door.tickets.authorize(name, "read")
            ctx = context.get(self, ticket, door.cfg, on_close=self.abort)
        except AccessDenied as e:
            log.info("Connection %s: export refused: %s", self.id, e.reason)
            return None
        except (OSError, BackendError, TransferError) as e:
            log.warning("Connection %s: cannot open %s: %s", self.id,
                        short_id(name), e)
            return None
        caps = ctx.backend.capabilities
        readonly = not ticket.may("write")
        contexts: tuple[str, ...] = ()
        if "zero" in caps.extents:
            contexts = (wire.CONTEXT_BASE_ALLOCATION,)
        if ticket.dirty and "dirty" in caps.extents and caps.dirty_context:
            contexts += (caps.dirty_context,)
        return Export(
            size=ticket.size,
            readonly=readonly,
            multi_conn=readonly or caps.max_writers > 1,
            preferred_block=max(4096, caps.block_size),
            contexts=contexts,
        )

    # Transmission.

    def _transmit(self, ready: handshake.Ready) -> None:
        ticket = self._door.tickets.get(ready.name)
        ctx = context.get(self, ticket, self._door.cfg, on_close=self.abort)
        self._ticket = ticket
        self._backend = ctx.backend
        self._backend_name = backends.scheme(ticket.url)
        self._ready = ready
        self._stream.settimeout(self._idle_timeout or None)
        log.info("Connection %s: serving transfer=%s ops=%s structured=%s "
                 "contexts=%s", self.id, ticket.transfer_id,
                 ",".join(ticket.ops), ready.structured,
                 ",".join(ready.contexts.values()) or "-")
        header = bytearray(transmission.REQUEST_SIZE)
        view = memoryview(header)
        while True:
            with self._lock:
                self._busy = False
                if self._draining:
                    return
            n = self._stream.recv_full(view)
            if n < len(header):
                if n:
                    log.debug("Connection %s: EOF in a request", self.id)
                return
            with self._lock:
                self._busy = True
            req = transmission.parse_request(header)
            if req.type == wire.CMD_DISC:
                log.debug("Connection %s: client disconnected", self.id)
                return
            if not self._serve_request(req):
                return

    def _serve_request(self, req: Request) -> bool:
        """Serve one request; return whether to go on."""
        ticket = self._ticket
        ready = self._ready
        assert ticket is not None and ready is not None
        if ticket.canceled:
            return False
        if ticket.expired:
            self._fail(req, wire.EPERM, "Ticket expired")
            return False
        error = transmission.check(req, ready.export, ready.structured,
                                   ready.contexts)
        if error == transmission.DISCONNECT:
            log.warning("Connection %s: %s of %d bytes is over the limit",
                        self.id, req.name, req.length)
            return False
        if error:
            if req.type == wire.CMD_WRITE:
                self._discard(req.length)
            self._fail(req, error, f"Invalid {req.name} request")
            return True
        start = time.monotonic()
        try:
            nbytes = self._dispatch(req)
        except AccessDenied as e:
            # Canceled while running: the transfer must not go on.
            log.info("Connection %s: %s", self.id, e.reason)
            return False
        except _Broken as e:
            log.warning("Connection %s: %s failed after its reply "
                        "started: %s", self.id, req.name, e.__cause__)
            return False
        except (OSError, BackendError, TransferError) as e:
            if isinstance(e, (ConnectionError, TimeoutError)):
                raise
            log.warning("Backend error for %s offset=%d length=%d: %s",
                        req.name, req.offset, req.length, e)
            local = e.errno if isinstance(e, OSError) else None
            self._fail(req, wire.wire_errno(local), str(e))
            return True
        self._stats.add(req.name, time.monotonic() - start, nbytes)
        op = _BYTE_OPS.get(req.type)
        if op is not None and nbytes and self._door.observer is not None:
            self._door.observer.bytes_moved(self._backend_name, op, nbytes)
        return True

    def _dispatch(self, req: Request) -> int:
        """Do a checked request and reply; return the bytes it moved."""
        ticket = self._ticket
        backend = self._backend
        assert ticket is not None and backend is not None
        t = req.type
        if t == wire.CMD_READ:
            return self._read(req)
        if t == wire.CMD_WRITE:
            return self._write(req)
        if t == wire.CMD_WRITE_ZEROES or (t == wire.CMD_TRIM
                                          and ticket.sparse):
            # The backend zeroes following the ticket's "sparse", which
            # also decides NO_HOLE: a trim on a sparse ticket
            # deallocates, on a preallocated one it is only a hint.
            ticket.run(ops.Zero(backend, req.offset, req.length,
                                flush=req.fua))
            self._ok(req)
            return req.length
        if t == wire.CMD_TRIM or t == wire.CMD_CACHE:
            if req.fua:
                ticket.run(ops.Flush(backend))
            else:
                ticket.touch()
            self._ok(req)
            return 0
        if t == wire.CMD_FLUSH:
            ticket.run(ops.Flush(backend))
            self._ok(req)
            return 0
        if t == wire.CMD_BLOCK_STATUS:
            self._block_status(req)
            return 0
        raise AssertionError(f"Unchecked command {t}")

    def _read(self, req: Request) -> int:
        ticket, backend = self._ticket, self._backend
        assert ticket is not None and backend is not None and self._ready
        size = context.buffer_size(self._door.cfg, ticket.url)
        block = backend.capabilities.block_size
        writer: _ReadReply | None = None
        try:
            with self._door.buffers.borrow(size) as (first, second):
                # Read after HEADROOM bytes of the first buffer, so the
                # reply header can go right before the data and both leave
                # in one send (see _ReadReply).
                room = size - HEADROOM
                spans = (ops.download_spans(req.offset, req.length, block,
                                            room) if room >= block else [])
                if len(spans) == 1:
                    pos = HEADROOM + spans[0][2]
                    writer = _ReadReply(self._stream, req,
                                        self._ready.structured, first, pos)
                    bufs = (first[HEADROOM:], second[HEADROOM:])
                else:
                    writer = _ReadReply(self._stream, req,
                                        self._ready.structured)
                    bufs = (first, second)
                op = ops.Read(backend, writer, req.offset, req.length, bufs,
                              pool=self._door.pool, abort=self.abort)
                ticket.run(op)
        except (OSError, BackendError, TransferError) as e:
            if (writer is not None and writer.started
                    and not isinstance(e, AccessDenied)):
                raise _Broken() from e
            raise
        if writer is None or not writer.started:
            raise TransferError("Read returned no data")
        return req.length

    def _write(self, req: Request) -> int:
        ticket, backend = self._ticket, self._backend
        assert ticket is not None and backend is not None
        reader = _Payload(self._stream)
        size = context.buffer_size(self._door.cfg, ticket.url)
        try:
            with self._door.buffers.borrow(size) as bufs:
                op = ops.Write(backend, reader, req.offset, req.length, bufs,
                               flush=req.fua, pool=self._door.pool,
                               abort=self.abort)
                ticket.run(op)
        except (OSError, BackendError, TransferError) as e:
            if isinstance(e, (ConnectionError, TimeoutError, AccessDenied)):
                raise
            # Keep the stream in step: the rest of the data is the
            # client's, already on its way.
            self._discard(req.length - reader.received)
            raise
        self._ok(req)
        return req.length

    def _block_status(self, req: Request) -> None:
        ticket, backend, ready = self._ticket, self._backend, self._ready
        assert ticket is not None and backend is not None and ready
        one = bool(req.flags & wire.CMD_FLAG_REQ_ONE)
        replies = []
        for cid, name in sorted(ready.contexts.items()):
            kind = "zero" if name == wire.CONTEXT_BASE_ALLOCATION else "dirty"

            def scan(kind: str = kind) -> list[tuple[int, int]]:
                return transmission.descriptors(
                    backend.extents(kind), req.offset, req.length, one)

            try:
                found = ticket.run(ops.Call(scan, "extents"))
            except UnsupportedContext as e:
                raise TransferError(str(e)) from e
            if not found:
                raise OSError(errno.EINVAL, "No extents in the range")
            replies.append((cid, found))
        out = bytearray()
        for i, (cid, found) in enumerate(replies):
            out += transmission.block_status_chunk(
                req.handle, cid, found, done=i == len(replies) - 1)
        self._stream.sendall(out)

    # Replies.

    def _ok(self, req: Request) -> None:
        self._stream.sendall(transmission.simple_reply(req.handle))

    def _fail(self, req: Request, error: int, message: str) -> None:
        assert self._ready is not None
        structured = self._ready.structured
        self._stream.sendall(transmission.error_reply(
            req.handle, error, structured, message))

    def _discard(self, length: int) -> None:
        scratch = memoryview(bytearray(min(length, DISCARD_SIZE)))
        while length > 0:
            n = self._stream.recv_full(scratch[:min(length, len(scratch))])
            if n == 0:
                raise ConnectionError("EOF in request data")
            length -= n


class _Broken(Exception):
    """A reply was partly sent when its request failed: the stream is out
    of step, and the connection must end."""


class _ReadReply:
    """
    The writer of ops.Read: sends the reply header with the first data,
    so an error before any data still gets an error reply.

    With ``frame``, the data of a one-chunk read starts at ``pos`` in
    ``frame``, and the bytes before it are free: the header is written
    there and header and data leave in one send, so each reply is one
    write (one segment on TCP with TCP_NODELAY, one wake-up of the
    client) instead of two. On this shared 2-core machine an A/B of
    nbdcopy downloads could not separate the two within its noise
    (0.9-1.1 s of daemon CPU per 2 GiB either way); it costs one copy of
    at most 28 bytes.
    """

    def __init__(self, stream: Stream, req: Request, structured: bool,
                 frame: memoryview | None = None, pos: int = 0) -> None:
        self._stream = stream
        self._req = req
        self._structured = structured
        self._frame = frame
        self._pos = pos
        self.started = False

    def write(self, data: Any) -> None:
        if self.started:
            self._stream.sendall(data)
            return
        self.started = True
        req = self._req
        if self._structured:
            head = transmission.offset_data_header(
                req.handle, req.offset, req.length)
        else:
            head = transmission.simple_reply(req.handle)
        if self._frame is not None and len(data) == req.length:
            start = self._pos - len(head)
            self._frame[start:self._pos] = head
            self._stream.sendall(self._frame[start:self._pos + len(data)])
        else:
            self._stream.sendall(head)
            self._stream.sendall(data)


class _Prefixed:
    """
    A Stream serving bytes received with the handshake before the rest:
    requests a client sent without waiting for the NBD_OPT_GO reply.
    """

    def __init__(self, prefix: bytes, stream: Stream) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def _take(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._prefix))
        buf[:n] = self._prefix[:n]
        self._prefix = self._prefix[n:]
        return n

    def recv_into(self, buf: memoryview) -> int:
        if self._prefix:
            return self._take(buf)
        return self._stream.recv_into(buf)

    def recv_full(self, buf: memoryview) -> int:
        n = self._take(buf) if self._prefix else 0
        if n == len(buf):
            return n
        return n + self._stream.recv_full(buf[n:])

    def sendall(self, data: Any) -> None:
        self._stream.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self._stream.settimeout(timeout)

    def shutdown(self) -> None:
        self._stream.shutdown()

    def close(self) -> None:
        self._stream.close()


class _Payload:
    """The reader of ops.Write: request data straight from the stream."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self.received = 0

    def readinto_full(self, buf: memoryview) -> None:
        n = self._stream.recv_full(buf)
        self.received += n
        if n < len(buf):
            raise ConnectionError("EOF in request data")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("Handshake timed out")
    return left
