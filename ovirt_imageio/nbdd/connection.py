# SPDX-License-Identifier: GPL-2.0-or-later
"""
One NBD client connection: the handshake, then transmission.

Theory of operation
===================

The connection thread runs the sans-IO handshake (``nbd.handshake``)
against the socket within ``handshake_timeout`` seconds in all, running
the TLS handshake when the client asks for STARTTLS. Export names are
ticket ids: looking one up authorizes it for reading and opens the
connection's backend for it (``transfer.context.get``), so the export
size and capabilities are the ticket's.

Transmission keeps many requests in flight, with replies in completion
order: on a backend with an IOQueue (files, nbd tickets) one thread
receives, submits, collects and sends (``nbdd.queued``); on the others
requests go through three stages, receive, storage and send, in threads
of their own (``nbdd.transmit``). Every request:

1. is checked against the ticket: a canceled ticket ends the connection;
   an expired one answers EPERM and ends it (as HTTP answers 403 and
   closes);
2. is checked against the protocol (``nbd.transmission.check``);
3. runs as an operation under ``Ticket.run`` (so it counts as activity,
   re-arms expiry, shows in ``transferred``, and can be canceled).

Ending: ``NBD_CMD_DISC``, EOF, the inactivity timeout of the ticket
(``set_timeout``), ``drain()`` once the requests in flight are answered,
``abort()`` at any time, or the ticket's cancel: canceling closes the
connection's backend context, whose close hook is ``abort()``, so an
idle connection ends at once instead of at its next request.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import ssl
import time
from typing import Callable, Protocol, Sequence, cast

from .. import backends
from ..backends.base import Backend, BackendError, IOQueue, Queueing
from ..backends.nbd import NBDBackend
from ..config import Config
from ..nbd import handshake, wire
from ..nbd.handshake import Export, ProtocolViolation
from ..nbd.transmission import Request
from ..transfer import buffers, connection, context
from ..transfer.errors import AccessDenied, TransferError
from ..transfer.store import TicketStore
from ..transfer.stream import ReadAhead, Stream, accept_tls
from ..transfer.tickets import Ticket
from ..util.redact import short_id
from . import queued, transmit
from .buffers import Arenas, Buffers
from .slots import Slots

log = logging.getLogger("nbdd")

# Seconds a new connection of an nbd ticket waits for downloads to give
# back their extra connections to the server (slots rule 3): they give
# them once their reads in flight are collected, milliseconds.
GIVE_BACK_TIMEOUT = 5.0

# Bytes read per recv during the handshake: options are small.
HANDSHAKE_RECV = 16 * 1024

class Observer(connection.Observer, Protocol):
    """What the connection reports to the daemon's metrics."""

    def bytes_moved(self, backend: str, op: str, nbytes: int) -> None: ...

    def nbd_request_done(self, service: str, command: str, status: str,
                         seconds: float) -> None: ...

    def nbd_requests_done(self, service: str, command: str,
                          seconds: Sequence[float]) -> None: ...


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
                 handshake_timeout: float = 60.0,
                 slots: Slots | None = None,
                 arenas: Arenas | None = None) -> None:
        self.cfg = cfg
        self.tickets = tickets
        self.pool = pool
        self.buffers = buffer_pool
        self.ssl_context = ssl_context
        self.observer = observer
        self.handshake_timeout = handshake_timeout
        # Shared by the services of a daemon: a ticket's clients may use
        # both.
        self.slots = slots or Slots()
        # Idle arenas for the next connections (nbdd.buffers, rule 6),
        # shared by the services of a daemon too.
        self.arenas = arenas if arenas is not None else Arenas()


def tls_starter(sock: socket.socket, ctx: ssl.SSLContext) -> StartTLS:
    """The StartTLS of a connection on ``sock`` (server side)."""

    def start(timeout: float) -> Stream:
        return accept_tls(sock, ctx, timeout)

    return start


class _Stats:
    """Per-command counters for the CLOSE line: [ops, seconds, bytes]."""

    def __init__(self) -> None:
        self.commands: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float, nbytes: int,
            count: int = 1) -> None:
        entry = self.commands.setdefault(name, [0, 0.0, 0])
        entry[0] += count
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


class Connection(connection.Connection):
    """One client connection (see the module docstring)."""

    _log = log

    def __init__(self, stream: Stream, door: Door, client: str,
                 service: str, start_tls: StartTLS | None = None) -> None:
        super().__init__(stream, client, service, door.observer)
        self._door = door
        self._start_tls_func = start_tls
        self._transmission: transmit.Transmission | None = None
        self._tls = False
        self._stats = _Stats()
        self._backend_name = ""
        # The ticket's inactivity timeout, once context.get set it.
        self._idle_timeout: float | None = None
        # nbd tickets whose server connections this one counts (slots).
        self._entered: set[str] = set()

    # transfer.context.Session

    def set_timeout(self, timeout: float) -> None:
        # Applies once transmission starts; the handshake has its own
        # deadline.
        self._idle_timeout = float(timeout)

    # Control from other threads.

    def drain(self) -> None:
        """End after the requests in flight, or now if there are none."""
        with self._state_lock:
            self._draining = True
            transmission = self._transmission
        if transmission is not None:
            transmission.drain()
        else:
            self.stream.shutdown()

    # The connection thread.

    def _open_details(self) -> str:
        return f" service={self.service}"

    def _serve(self) -> None:
        try:
            ready = self._handshake()
            if ready is not None:
                self._transmit(ready)
        except ProtocolViolation as e:
            log.warning("Protocol error from %s: %s", self.client, e)
            self._report("client")
        except TransferError as e:
            # The ticket went away between NBD_OPT_GO and transmission.
            log.info("Connection %s: %s", self.id, e.message)
        finally:
            for ticket_id in self._entered:
                self._door.slots.leave(ticket_id)

    def _close_stats(self, seconds: float) -> str:
        return f"[connection 1 ops, {seconds:.6f} s] {self._stats.format()}"

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
                self.stream.settimeout(_remaining(deadline))
                self.stream.sendall(out)
            if isinstance(event, handshake.NeedData):
                if self._draining:
                    return None
                self.stream.settimeout(_remaining(deadline))
                n = self.stream.recv_into(buf)
                if n == 0:
                    log.debug("Connection %s: EOF in the handshake", self.id)
                    return None
                hs.receive_data(bytes(buf[:n]))
            elif isinstance(event, handshake.StartTLS):
                self._start_tls(deadline)
                self._tls = True
                hs.tls_started()
            elif isinstance(event, handshake.Closed):
                log.info("Connection %s: handshake ended: %s", self.id,
                         event.reason)
                return None
            else:
                # Requests sent with the handshake come first.
                self.stream = ReadAhead(self.stream, hs.take_buffered())
                return event

    def _start_tls(self, deadline: float) -> None:
        assert self._start_tls_func is not None
        try:
            self.stream = self._start_tls_func(_remaining(deadline))
        except (OSError, ssl.SSLError):
            self._report("tls")
            raise

    def _lookup(self, name: str) -> Export | None:
        """Authorize a ticket id and open its backend; None if either
        fails (see rule 1 of nbd.handshake)."""
        door = self._door
        try:
            ticket = door.tickets.authorize(name, "read")
            if (backends.scheme(ticket.url) == "nbd"
                    and ticket.uuid not in self._entered):
                # Room for this connection's own (slots rule 3).
                door.slots.enter(ticket.uuid, door.cfg.daemon.max_connections,
                                 GIVE_BACK_TIMEOUT)
                self._entered.add(ticket.uuid)
            ctx = context.get(self, ticket, door.cfg, on_close=self.abort,
                              concurrent=self._threaded(ticket))
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
            if caps.allocation_depth:
                contexts += (wire.CONTEXT_ALLOCATION_DEPTH,)
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
        door = self._door
        ticket = door.tickets.get(ready.name)
        threaded = self._threaded(ticket)
        ctx = context.get(self, ticket, door.cfg, on_close=self.abort,
                          concurrent=threaded)
        self._backend_name = backends.scheme(ticket.url)
        self.stream.settimeout(self._idle_timeout or None)
        log.info("Connection %s: serving transfer=%s ops=%s structured=%s "
                 "contexts=%s", self.id, ticket.transfer_id,
                 ",".join(ticket.ops), ready.structured,
                 ",".join(ready.contexts.values()) or "-")
        # Two buffers' worth in flight, as an HTTP request holds.
        bufs = Buffers(2 * context.buffer_size(door.cfg, ticket.url),
                       door.arenas)
        queue = None if threaded else self._queue(ticket, ctx.backend)
        if queue is not None:
            self._transmission = queued.QueuedTransmission(
                self.stream, ticket, ctx.backend, ready, bufs, self.abort,
                self._served, queue, relayed=self._relayed)
        else:
            self._transmission = transmit.Transmission(
                self.stream, ticket, ctx.backend, ready, bufs, self.abort,
                self._served, one_io_thread=self._tls)
        with self._state_lock:
            draining = self._draining
        try:
            if not draining:
                self._transmission.run()
        finally:
            bufs.close()

    def _threaded(self, ticket: Ticket) -> bool:
        """
        Whether this connection's requests go through the threaded stages
        (``nbdd.transmit``) rather than one thread and the backend's queue
        (``nbdd.queued``); the backend is then opened for calls from
        several threads (an nbd ticket's handle gets its event loop
        thread).

        A read-only ticket over TLS serves downloads, which the threaded
        stages moved faster: the door's TLS downloads ran at 0.93-0.99x
        of TCP with them, 0.82-0.85x with the queue (uploads: 0.79-0.83x,
        and 0.86x with the queue).
        """
        return self._tls and not ticket.may("write")

    def _served(self, req: Request, seconds: float, nbytes: int,
                error: int) -> None:
        observer = self._door.observer
        if observer is not None:
            observer.nbd_request_done(
                self.service, req.name,
                wire.ERROR_NAMES.get(error, str(error)) if error else "OK",
                seconds)
        if error:
            return
        self._stats.add(req.name, seconds, nbytes)
        op = transmit.BYTE_OPS.get(req.type)
        if op is not None and nbytes and observer is not None:
            observer.bytes_moved(self._backend_name, op, nbytes)

    def _relayed(self, seconds: Sequence[float], nbytes: int) -> None:
        """Reads a run of the relay loop answered (nbdd.relay rule 3)."""
        name = wire.COMMAND_NAMES[wire.CMD_READ]
        observer = self._door.observer
        if observer is not None:
            observer.nbd_requests_done(self.service, name, seconds)
            if nbytes:
                observer.bytes_moved(self._backend_name, "read", nbytes)
        self._stats.add(name, sum(seconds), nbytes, count=len(seconds))

    def _queue(self, ticket: Ticket, backend: Backend) -> IOQueue | None:
        """The queue for one-thread transmission; a download of an nbd
        ticket spreads its reads over a second connection to the server
        when the ticket has room for it (``backends.nbd_spread``)."""
        if not isinstance(backend, NBDBackend) or ticket.may("write"):
            return _io_queue(backend)
        slots = self._door.slots
        extra = slots.take_extra(ticket.uuid,
                                 self._door.cfg.daemon.max_connections)
        if extra is None:
            return _io_queue(backend)
        try:
            spread = backend.spread_queue(
                queued.DEPTH, 2, on_given_back=lambda: slots.release(extra))
        except BaseException:
            slots.release(extra)
            raise
        if spread is None:
            slots.release(extra)
            return _io_queue(backend)
        slots.attach(extra, spread.give_back)
        return spread


def _io_queue(backend: Backend) -> IOQueue | None:
    """The backend's queue for one-thread transmission (nbdd.queued), or
    None for the threaded stages."""
    if not backend.capabilities.io_queue:
        return None
    try:
        return cast(Queueing, backend).io_queue(queued.DEPTH)
    except OSError as e:
        # AIO contexts used up (fs.aio-max-nr): threads still work.
        log.warning("Cannot queue requests, using threads: %s", e)
        return None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("Handshake timed out")
    return left
