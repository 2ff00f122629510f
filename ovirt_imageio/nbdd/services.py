# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD services: ``transfer.service.Service`` serving NBD on a unix or
TCP socket.

They share the HTTP services' accept loop, connection limit and life
cycle (``start()``, ``close()``, ``request_drain()``, ``drain(deadline)``),
so the daemon starts, stops and drains both kinds the same way.

A connection past the limit is closed at once, before the greeting. NBD
has no way to say "busy" before the handshake, and a client retrying a
closed connection is what a full server should get.
"""

from __future__ import annotations

import socket
import threading

from ..transfer import service
from ..transfer.service import MAX_CONNECTIONS
from ..transfer.stream import wrap
from .connection import Connection, Door, tls_starter


class Service(service.Service):
    """One listening socket serving NBD."""

    def __init__(self, name: str, sock: socket.socket, door: Door,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(name, sock, max_connections, door.observer)
        self._door = door

    def _open(self, sock: socket.socket, client: str) -> Connection:
        ctx = self._door.ssl_context
        conn = Connection(wrap(sock), self._door, client, self.name,
                          tls_starter(sock, ctx) if ctx else None)
        # Name the thread after the connection id the log lines show; the
        # transmission threads take their names from it.
        threading.current_thread().name = f"{self.name}/{conn.id}"
        return conn
