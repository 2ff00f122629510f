# SPDX-License-Identifier: GPL-2.0-or-later
"""
The HTTP services: ``transfer.service.Service`` serving HTTP.

Three services exist (reference 1.2): ``remote`` (TCP, TLS by default),
``local`` (unix socket, plain HTTP) and ``control`` (unix socket or TCP on
localhost). They differ only in how the socket is made and in the router.
The accept loop, the connection limit and the graceful stop are the
core's; this module adds what is HTTP's:

TLS handshakes run in the connection thread, bounded by the header
timeout: a slow or hostile client must not hold up the accept loop.

A connection past the limit is answered ``503 Service Unavailable`` with
``Connection: close`` and closed. The answer is sent by a short-lived
thread (a TLS answer needs a handshake, which must not run in the accept
loop); at most ``REJECT_THREADS`` of them run at once, and past that a
connection is closed without an answer, so a flood costs a bounded
number of threads.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

from ..http import response as http_response
from ..transfer import service
from ..transfer.service import MAX_CONNECTIONS
from ..transfer.stream import accept_tls, wrap
from .connection import (
    DEFAULT_HEADER_TIMEOUT,
    Connection,
    Dispatcher,
    Observer,
)
from .message import SERVER

log = logging.getLogger("services")

# Threads answering connections over the limit, and the seconds each may
# spend (TLS handshake, sending, reading what the client sent).
REJECT_THREADS = 8
REJECT_TIMEOUT = 2.0

REJECT_MESSAGE = b"Too many connections, try again later\n"


class Service(service.Service):
    """A listening socket serving HTTP (see the module doc)."""

    def __init__(self, name: str, sock: socket.socket,
                 dispatcher: Dispatcher,
                 ssl_context: ssl.SSLContext | None = None,
                 observer: Observer | None = None,
                 max_connections: int = MAX_CONNECTIONS,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
        super().__init__(name, sock, max_connections, observer)
        self._dispatcher = dispatcher
        self._ssl = ssl_context
        self._header_timeout = header_timeout
        self._observer = observer
        # Threads answering connections over the limit.
        self._rejecting = 0

    def _open(self, sock: socket.socket, client: str) -> Connection | None:
        if self._ssl is None:
            stream = wrap(sock)
        else:
            try:
                stream = accept_tls(sock, self._ssl, self._header_timeout)
            except (OSError, ssl.SSLError) as e:
                log.info("%s: TLS handshake with %s failed: %s",
                         self.name, client, e)
                if self._observer is not None:
                    self._observer.error(self.name, "tls")
                sock.close()
                return None
        return Connection(stream, self._dispatcher,
                          client=client, service=self.name,
                          observer=self._observer,
                          header_timeout=self._header_timeout)

    def _refuse(self, sock: socket.socket, client: str) -> None:
        """Send the 503 from a reject thread, if one is free."""
        with self._lock:
            answer = self._rejecting < REJECT_THREADS
            if answer:
                self._rejecting += 1
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
