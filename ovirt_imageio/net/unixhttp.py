# SPDX-License-Identifier: GPL-2.0-or-later
"""
HTTP over a unix stream socket, with the standard library's client.

``http.client.HTTPConnection`` only knows TCP; this subclass replaces
its ``connect`` and keeps everything else (requests, responses,
keep-alive, reconnecting after a close). The daemon's local and control
services listen on unix sockets, and the admin library, the http backend
(a proxy next to its daemon), the client library, the tests and the
benchmarks all reach them through this one class.

    >>> conn = UnixHTTPConnection("/run/ovirt-imageio/sock")  # doctest: +SKIP
    >>> conn.request("GET", "/tickets/")                      # doctest: +SKIP
    >>> conn.getresponse().status                             # doctest: +SKIP
    200
"""

from __future__ import annotations

import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """
    An ``http.client.HTTPConnection`` to the unix socket ``path``: a
    pathname, or an abstract name when it starts with NUL.

    ``timeout`` bounds every socket operation once connected, as for
    ``HTTPConnection`` (None: no bound); ``connect_timeout`` bounds
    connecting and is ``timeout`` unless given, for callers that give up
    on a daemon that does not accept sooner than on one slow to answer.
    """

    def __init__(self, path: str, timeout: float | None = 60,
                 connect_timeout: float | None = None) -> None:
        # The Host header a request carries; the server ignores it, but
        # HTTP/1.1 requires one.
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path
        self.connect_timeout = (timeout if connect_timeout is None
                                else connect_timeout)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.connect_timeout)
            sock.connect(self.socket_path)
            sock.settimeout(self.timeout)
        except BaseException:
            # A failed connect must not leak the descriptor: callers
            # retry, and a daemon that is down fails every attempt.
            sock.close()
            raise
        self.sock = sock
