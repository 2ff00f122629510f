# SPDX-License-Identifier: GPL-2.0-or-later
"""
Listening services: accept connections and serve each in its own thread.

Three services exist (reference 1.2): ``remote`` (TCP, TLS by default),
``local`` (unix socket, plain HTTP) and ``control`` (unix socket or TCP on
localhost). They differ only in how the socket is made and in the router.

The accept loop waits on the listening socket and a wake-up pipe, so
``stop()`` returns at once instead of after a poll interval. TLS
handshakes run in the connection thread: a slow or hostile client must
not hold up the accept loop.

Graceful stop (``stop()``, or ``close()`` then ``drain()``): stop
accepting, let requests that are running finish, up to a bound, while
idle keep-alive connections end at once; then shut down whatever is
left, so a stalled client cannot hold up a restart.

Connection limit: a service serves at most ``max_connections``
connections at once (``[daemon] max_client_connections``), counted from
accept to close, TLS handshake included. A connection past the limit is
answered ``503 Service Unavailable`` with ``Connection: close`` and
closed; the connections being served do not notice. The answer is sent
by a short-lived thread (a TLS answer needs a handshake, which must not
run in the accept loop); at most ``REJECT_THREADS`` of them run at once,
and past that a connection is closed without an answer, so a flood
costs a bounded number of threads.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any

from ..http import response as http_response
from ..native import tlsio
from ..transfer.listen import BACKLOG
from ..transfer.stream import wrap
from .connection import (
    DEFAULT_HEADER_TIMEOUT,
    Connection,
    Dispatcher,
    Observer,
)
from .message import SERVER

log = logging.getLogger("services")


# Seconds a stopping service waits for running requests to finish. Below
# systemd's default stop timeout (90 s), so we finish before being killed.
DRAIN_TIMEOUT = 30.0

# Seconds to wait for connection threads after shutting their sockets.
ABORT_TIMEOUT = 5.0

# Default bound on connections served at once ([daemon]
# max_client_connections).
MAX_CONNECTIONS = 128

# Threads answering connections over the limit, and the seconds each may
# spend (TLS handshake, sending, reading what the client sent).
REJECT_THREADS = 8
REJECT_TIMEOUT = 2.0

REJECT_MESSAGE = b"Too many connections, try again later\n"


class Service:
    """A listening socket, its accept thread and connection threads."""

    def __init__(self, name: str, sock: socket.socket,
                 dispatcher: Dispatcher,
                 ssl_context: ssl.SSLContext | None = None,
                 observer: Observer | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
        self.name = name
        self._sock = sock
        self._dispatcher = dispatcher
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        # Connection threads from accept to close (the limit counts
        # these), and threads answering connections over the limit.
        self._serving = 0
        self._rejecting = 0
        self._rejected = 0
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Notified whenever a connection ends (drain waits on it).
        self._ended = threading.Condition(self._lock)
        self._connections: set[Connection] = set()
        self._stopping = False
        self._closed = False
        self._observer = observer
        self._unix_path: str | None = None
        if sock.family == socket.AF_UNIX:
            name_ = sock.getsockname()
            if isinstance(name_, str) and name_ and name_[0] != "\0":
                self._unix_path = name_

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
            client = addr[0]
        else:
            client = "local"
        with self._lock:
            full = self._serving >= self._max_connections
            if not full:
                self._serving += 1
        if full:
            self._reject(conn, client)
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

    def _handle(self, sock: socket.socket, client: str) -> None:
        try:
            self._serve_connection(sock, client)
        finally:
            with self._lock:
                self._serving -= 1

    def _serve_connection(self, sock: socket.socket, client: str) -> None:
        ssl_handle = None
        if self._ssl is not None:
            try:
                # The ssl module bounds the whole handshake by the socket
                # timeout, so a client cannot trickle it.
                sock.settimeout(self._header_timeout)
                sock = self._ssl.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
                # Read-ahead must be set before the handshake allocates
                # OpenSSL's read buffer.
                ssl_handle = tlsio.prepare(sock, tlsio.SERVER_READ_AHEAD)
                sock.do_handshake()
            except (OSError, ssl.SSLError) as e:
                log.info("%s: TLS handshake with %s failed: %s",
                         self.name, client, e)
                if self._observer is not None:
                    self._observer.error(self.name, "tls")
                sock.close()
                return
        conn = Connection(wrap(sock, ssl_handle), self._dispatcher,
                          client=client, service=self.name,
                          observer=self._observer,
                          header_timeout=self._header_timeout)
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

    def _reject(self, sock: socket.socket, client: str) -> None:
        """Answer a connection over the limit (see the module doc)."""
        with self._lock:
            self._rejected += 1
            rejected = self._rejected
            answer = self._rejecting < REJECT_THREADS
            if answer:
                self._rejecting += 1
        if self._observer is not None:
            self._observer.error(self.name, "rejected")
        # The first and every 1000th: a flood must not flood the log.
        if rejected == 1 or rejected % 1000 == 0:
            log.warning("%s: %d connections, the limit; refusing %s "
                        "(%d refused so far)", self.name,
                        self._max_connections, client, rejected)
        if not answer:
            sock.close()
            return
        try:
            t = threading.Thread(target=self._send_reject, args=(sock,),
                                 name=f"{self.name}/reject", daemon=True)
            t.start()
        except RuntimeError:
            with self._lock:
                self._rejecting -= 1
            sock.close()

    def _send_reject(self, sock: socket.socket) -> None:
        try:
            deadline = time.monotonic() + REJECT_TIMEOUT
            sock.settimeout(REJECT_TIMEOUT)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_side=True)
            head = http_response.format_head(503, [
                ("Server", SERVER),
                ("Date", http_response.http_date(time.time())),
                ("Content-Type", "text/plain; charset=UTF-8"),
                ("Content-Length", str(len(REJECT_MESSAGE))),
                ("Retry-After", "1"),
                ("Connection", "close"),
            ])
            sock.sendall(head + REJECT_MESSAGE)
            # Read what the client sends until it closes: closing with
            # unread data would reset the connection, and the reset can
            # destroy the answer before the client reads it.
            if self._ssl is None:
                sock.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                if not sock.recv(4096):
                    break
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            sock.close()
            with self._lock:
                self._rejecting -= 1
