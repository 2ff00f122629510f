# SPDX-License-Identifier: GPL-2.0-or-later
"""
A listening service of a protocol door, whatever protocol it speaks: the
accept loop, a thread per connection, the connection limit and the
graceful stop. A door subclasses ``Service`` and supplies how a socket
becomes a connection (``_open``) and how a client over the limit is
answered (``_refuse``).

The accept loop waits on the listening socket and a wake-up pipe, so
``close()`` returns at once instead of after a poll interval. Whatever
may block on the client (a TLS handshake, a greeting) runs in the
connection thread: a slow or hostile client must not hold up the accept
loop.

Graceful stop (``stop()``, or ``close()`` then ``drain()``): stop
accepting; ``request_drain()`` ends idle connections now and busy ones
after their current request; ``drain(deadline)`` waits for them up to a
bound, then aborts whatever is left, so a stalled client cannot hold up
a restart.

Connection limit: at most ``max_connections`` connections are served at
once (``[daemon] max_client_connections``), counted from accept to
close, handshakes included. One more is counted, reported to the
observer as a ``rejected`` error, logged (the first and every 1000th)
and given to ``_refuse``; the connections being served do not notice.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from typing import Any, Protocol

from ..net import sndbuf
from .listen import BACKLOG

log = logging.getLogger("services")

# Seconds a stopping service waits for running requests to finish. Below
# systemd's default stop timeout (90 s), so we finish before being killed.
DRAIN_TIMEOUT = 30.0

# Seconds to wait for connection threads after shutting their sockets.
ABORT_TIMEOUT = 5.0

# Default bound on connections served at once ([daemon]
# max_client_connections).
MAX_CONNECTIONS = 128

class ErrorObserver(Protocol):
    """The part of a door's metrics observer a service reports to."""

    def error(self, service: str, kind: str) -> None: ...


class Served(Protocol):
    """What a service needs of a door's connection."""

    def serve(self) -> None:
        """Serve the client until the connection ends, then close it."""

    def drain(self) -> None:
        """End after the current request, or now if idle (any thread)."""

    def abort(self) -> None:
        """End now, even in the middle of a request (any thread)."""


class Service:
    """A listening socket, its accept thread and connection threads."""

    def __init__(self, name: str, sock: socket.socket,
                 max_connections: int = MAX_CONNECTIONS,
                 observer: ErrorObserver | None = None) -> None:
        self.name = name
        self._sock = sock
        self._max_connections = max_connections
        self._error_observer = observer
        # Connection threads from accept to close (the limit counts
        # these), and connections past the limit so far.
        self._serving = 0
        self._rejected = 0
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Notified whenever a connection ends (drain waits on it).
        self._ended = threading.Condition(self._lock)
        self._connections: set[Served] = set()
        self._stopping = False
        self._closed = False
        self._unix_path: str | None = None
        if sock.family == socket.AF_UNIX:
            bound = sock.getsockname()
            if isinstance(bound, str) and bound and bound[0] != "\0":
                self._unix_path = bound

    # What a door supplies.

    def _open(self, sock: socket.socket, client: str) -> Served | None:
        """
        Make the connection serving ``sock``, in its own thread; None if
        it failed before serving (the door closed the socket).
        """
        raise NotImplementedError

    def _refuse(self, sock: socket.socket, client: str) -> None:
        """Answer a client over the limit and close ``sock``; by default
        just close it."""
        sock.close()

    # Life cycle.

    @property
    def address(self) -> Any:
        """The bound address: (host, port, ...) or a unix socket name."""
        addr = self._sock.getsockname()
        if isinstance(addr, bytes):
            addr = addr.decode("utf-8", "surrogateescape")
        return addr

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        # Let the kernel queue as many new connections as the service
        # may serve: a connect to a unix socket whose queue is full fails
        # at once (EAGAIN), and the accept loop competes for the GIL with
        # busy connections, so a burst of reconnects would be refused.
        self._sock.listen(max(BACKLOG, self._max_connections))
        self._thread = threading.Thread(target=self._serve, name=self.name,
                                        daemon=True)
        self._thread.start()
        log.info("%s listening on %r", self.name, self.address)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting, then drain connections (see the module doc)."""
        self.close()
        self.drain(time.monotonic() + drain_timeout)
        log.info("%s stopped", self.name)

    def close(self) -> None:
        """Stop accepting connections; running ones go on."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except FileNotFoundError:
                pass
            except OSError as e:
                # After dropping privileges the directory may not be ours;
                # the next start unlinks the stale socket anyway.
                log.warning("%s: cannot remove %s: %s", self.name,
                            self._unix_path, e)

    def request_drain(self) -> None:
        """Ask every connection to end after its current request."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.drain()

    def drain(self, deadline: float) -> bool:
        """
        Ask every connection to end after its current request and wait
        until ``deadline`` (on the monotonic clock) for them. Then shut
        down the rest. Return True if all ended in time.
        """
        self.request_drain()
        if self._wait_connections(deadline):
            return True
        with self._lock:
            connections = list(self._connections)
        log.warning("%s: %d connections still busy, shutting them down",
                    self.name, len(connections))
        for conn in connections:
            conn.abort()
        self._wait_connections(time.monotonic() + ABORT_TIMEOUT)
        return False

    def _wait_connections(self, deadline: float) -> bool:
        with self._lock:
            while self._connections:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ended.wait(remaining)
            return True

    # The accept thread.

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fd == self._wake_r:
                        return
                    self._accept()

    def _accept(self) -> None:
        try:
            conn, addr = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # EMFILE and friends: keep serving the connections we have.
            log.warning("%s: accept failed: %s", self.name, e)
            return
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = str(addr[0])
        else:
            client = "local"
            sndbuf.size_unix_send_buffer(conn)
        with self._lock:
            full = self._serving >= self._max_connections
            if full:
                self._rejected += 1
                rejected = self._rejected
            else:
                self._serving += 1
        if full:
            self._over_limit(conn, client, rejected)
            return
        try:
            t = threading.Thread(target=self._handle, args=(conn, client),
                                 name=f"{self.name}/{client}", daemon=True)
            t.start()
        except RuntimeError as e:
            # "can't start new thread": keep serving the others.
            log.warning("%s: cannot serve %s: %s", self.name, client, e)
            with self._lock:
                self._serving -= 1
            conn.close()

    def _over_limit(self, sock: socket.socket, client: str,
                    rejected: int) -> None:
        if self._error_observer is not None:
            self._error_observer.error(self.name, "rejected")
        # The first and every 1000th: a flood must not flood the log.
        if rejected == 1 or rejected % 1000 == 0:
            log.warning("%s: %d connections, the limit; refusing %s "
                        "(%d refused so far)", self.name,
                        self._max_connections, client, rejected)
        self._refuse(sock, client)

    # A connection thread.

    def _handle(self, sock: socket.socket, client: str) -> None:
        try:
            conn = self._open(sock, client)
            if conn is not None:
                self._serve_connection(conn)
        finally:
            with self._lock:
                self._serving -= 1

    def _serve_connection(self, conn: Served) -> None:
        with self._lock:
            self._connections.add(conn)
            stopping = self._stopping
        if stopping:
            # Accepted just before close(); drain() may have missed it.
            conn.drain()
        try:
            conn.serve()
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._ended.notify_all()
