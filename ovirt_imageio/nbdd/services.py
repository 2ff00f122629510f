# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD services: a listening socket (unix or TCP), its accept thread,
and a thread per connection.

They follow the HTTP services' life cycle, so the daemon starts, stops
and drains both kinds the same way: ``start()``; ``close()`` stops
accepting; ``request_drain()`` ends idle connections now and busy ones
after their current request; ``drain(deadline)`` waits for them, then
aborts the rest.

Connection limit: at most ``max_connections`` connections are served at
once (``[daemon] max_client_connections``); one more is closed at once,
before the greeting. NBD has no way to say "busy" before the handshake,
and a client retrying a closed connection is what a full server should
get.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from typing import Any

from ..transfer.listen import BACKLOG
from ..transfer.stream import wrap
from .connection import Connection, Door, tls_starter

log = logging.getLogger("nbdd")

# Seconds to wait for connection threads after aborting them.
ABORT_TIMEOUT = 5.0


class Service:
    """One listening socket serving NBD."""

    def __init__(self, name: str, sock: socket.socket, door: Door,
                 max_connections: int = 128) -> None:
        self.name = name
        self._sock = sock
        self._door = door
        self._max_connections = max_connections
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self._connections: set[Connection] = set()
        self._serving = 0
        self._rejected = 0
        self._stopping = False
        self._closed = False
        self._unix_path: str | None = None
        if sock.family == socket.AF_UNIX:
            bound = sock.getsockname()
            if isinstance(bound, str) and bound and bound[0] != "\0":
                self._unix_path = bound

    @property
    def address(self) -> Any:
        addr = self._sock.getsockname()
        if isinstance(addr, bytes):
            addr = addr.decode("utf-8", "surrogateescape")
        return addr

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        self._sock.listen(max(BACKLOG, self._max_connections))
        self._thread = threading.Thread(target=self._serve, name=self.name,
                                        daemon=True)
        self._thread.start()
        log.info("%s listening on %r", self.name, self.address)

    def close(self) -> None:
        """Stop accepting; connections go on."""
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
            except OSError as e:
                if not isinstance(e, FileNotFoundError):
                    log.warning("%s: cannot remove %s: %s", self.name,
                                self._unix_path, e)

    def request_drain(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.drain()

    def drain(self, deadline: float) -> bool:
        """Drain, wait until ``deadline`` (monotonic), abort the rest."""
        self.request_drain()
        if self._wait(deadline):
            return True
        with self._lock:
            connections = list(self._connections)
        log.warning("%s: %d connections still busy, shutting them down",
                    self.name, len(connections))
        for conn in connections:
            conn.abort()
        self._wait(time.monotonic() + ABORT_TIMEOUT)
        return False

    def stop(self, drain_timeout: float = 30.0) -> None:
        self.close()
        self.drain(time.monotonic() + drain_timeout)

    def _wait(self, deadline: float) -> bool:
        with self._lock:
            while self._connections or self._serving:
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
            sock, addr = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("%s: accept failed: %s", self.name, e)
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = str(addr[0])
        else:
            client = "local"
        with self._lock:
            full = self._serving >= self._max_connections
            if not full:
                self._serving += 1
            else:
                self._rejected += 1
                rejected = self._rejected
        if full:
            if self._door.observer is not None:
                self._door.observer.error(self.name, "rejected")
            if rejected == 1 or rejected % 1000 == 0:
                log.warning("%s: %d connections, the limit; refusing %s "
                            "(%d refused so far)", self.name,
                            self._max_connections, client, rejected)
            sock.close()
            return
        ctx = self._door.ssl_context
        conn = Connection(wrap(sock), self._door, client, self.name,
                          tls_starter(sock, ctx) if ctx else None)
        with self._lock:
            self._connections.add(conn)
        try:
            threading.Thread(target=self._handle, args=(conn,),
                             name=f"{self.name}/{conn.id}",
                             daemon=True).start()
        except RuntimeError as e:
            log.warning("%s: cannot serve %s: %s", self.name, client, e)
            sock.close()
            self._ended_connection(conn)

    def _handle(self, conn: Connection) -> None:
        if self._stopping:
            conn.drain()
        try:
            conn.serve()
        finally:
            self._ended_connection(conn)

    def _ended_connection(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            self._serving -= 1
            self._ended.notify_all()
