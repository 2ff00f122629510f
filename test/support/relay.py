# SPDX-License-Identifier: GPL-2.0-or-later
"""
A proxy-like TCP relay on loopback, in front of a plain HTTP daemon, for
fault tests and the relay benchmark.

Each accepted connection gets a connection to the target and two
threads: one forwards the client's requests (parsing their heads, so
requests can be counted and answered here), one forwards the server's
bytes back unparsed. Faults:

- ``cut_after``: a connection is cut (both sockets shut down and closed,
  as a proxy dropping a long request does) once this many bytes crossed
  it, both directions together; exactly that many are forwarded. The
  next connection starts counting from 0 again.
- ``answer``: called with each request's method and target; returning a
  status makes the relay read the whole request body, answer it with
  that status itself (``Connection: close``) and close the connection,
  without forwarding anything of the request to the server.

Counters (``client_bytes``, ``server_bytes``, ``connections``, ``cuts``,
``requests``) tell a test what went over the wire. Requests must carry
their body by Content-Length, as the http backend sends them.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

Answer = Callable[[str, str], "int | None"]

# Body bytes are forwarded in pieces of at most this much.
PIECE = 1024**2
# A request head longer than this is a broken client; drop it.
MAX_HEAD = 64 * 1024

REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Relay:
    """
    Listen on 127.0.0.1 and forward to target; see the module docstring.

    >>> with Relay(("127.0.0.1", daemon.port),
    ...            cut_after=MiB) as relay:             # doctest: +SKIP
    ...     url = f"http://127.0.0.1:{relay.port}/images/{ticket}"
    """

    def __init__(self, target: tuple[str, int], *,
                 cut_after: int | None = None,
                 answer: Answer | None = None) -> None:
        self.target = target
        self.cut_after = cut_after
        self.answer = answer
        self._lock = threading.Lock()
        self.client_bytes = 0
        self.server_bytes = 0
        self.connections = 0
        self.cuts = 0
        # (method, target, Content-Range) of every request seen.
        self.requests: list[tuple[str, str, str]] = []
        self._links: list[_Link] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._closed = False
        self._accepter = threading.Thread(target=self._accept,
                                          name="relay/accept", daemon=True)
        self._accepter.start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def url(self, ticket_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/images/{ticket_id}"

    def close(self) -> None:
        """Stop accepting, cut every connection, join every thread."""
        with self._lock:
            self._closed = True
            links = list(self._links)
        try:
            # Wakes the accepting thread (accept fails with EINVAL).
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._accepter.join()
        self._sock.close()
        for link in links:
            link.cut()
            link.join()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.connections += 1
                link = _Link(self, client, server, self.connections)
                self._links.append(link)
            link.start()

    def _count(self, link: _Link, n: int, from_client: bool) -> int:
        """How many of n bytes may cross link before it is cut."""
        with self._lock:
            if self.cut_after is not None:
                n = max(0, min(n, self.cut_after - link.crossed))
            link.crossed += n
            if from_client:
                self.client_bytes += n
            else:
                self.server_bytes += n
            return n

    def _cut_now(self, link: _Link) -> bool:
        with self._lock:
            if self.cut_after is None or link.crossed < self.cut_after:
                return False
            if not link.is_cut:
                self.cuts += 1
                link.is_cut = True
            return True

    def _request(self, method: str, target: str, content_range: str
                 ) -> int | None:
        with self._lock:
            self.requests.append((method, target, content_range))
        return self.answer(method, target) if self.answer else None


class _Link:
    """One relayed connection and its two threads."""

    def __init__(self, relay: Relay, client: socket.socket,
                 server: socket.socket, number: int) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self.crossed = 0
        self.is_cut = False
        self._threads = [
            threading.Thread(target=self._requests,
                             name=f"relay/{number}/up", daemon=True),
            threading.Thread(target=self._responses,
                             name=f"relay/{number}/down", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join()

    def cut(self) -> None:
        # shutdown wakes the other thread from recv; close alone would not.
        self.is_cut = True
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _forward(self, dst: socket.socket, data: memoryview,
                 from_client: bool) -> bool:
        """Send what the cut allows of data; False once cut."""
        n = self.relay._count(self, len(data), from_client)
        try:
            if n:
                dst.sendall(data[:n])
        except OSError:
            self.cut()
            return False
        if self.relay._cut_now(self):
            self.cut()
            return False
        return True

    def _responses(self) -> None:
        buf = bytearray(PIECE)
        view = memoryview(buf)
        try:
            while True:
                n = self.server.recv_into(view)
                if not n or not self._forward(self.client, view[:n], False):
                    break
        except OSError:
            pass
        finally:
            self.cut()
            self.server.close()

    def _requests(self) -> None:
        try:
            self._relay_requests()
        except OSError:
            pass
        finally:
            self.cut()
            self.client.close()

    def _relay_requests(self) -> None:
        pending = bytearray()
        buf = bytearray(PIECE)
        view = memoryview(buf)
        while True:
            while b"\r\n\r\n" not in pending:
                if len(pending) > MAX_HEAD:
                    return
                n = self.client.recv_into(view)
                if not n:
                    return
                pending += view[:n]
            end = pending.index(b"\r\n\r\n") + 4
            head = bytes(pending[:end])
            del pending[:end]
            method, target, length, content_range = _parse_head(head)
            status = self.relay._request(method, target, content_range)
            if status is not None:
                self._answer(status, pending, length, view)
                return
            if not self._forward(self.server, memoryview(head), True):
                return
            # The body: what came with the head, then from the socket.
            first = bytes(pending[:length])
            del pending[:length]
            if first and not self._forward(self.server, memoryview(first),
                                           True):
                return
            left = length - len(first)
            while left:
                n = self.client.recv_into(view[:min(left, len(view))])
                if not n:
                    return
                if not self._forward(self.server, view[:n], True):
                    return
                left -= n

    def _answer(self, status: int, pending: bytearray, length: int,
                view: memoryview) -> None:
        # Read the whole body first: a client still sending would get a
        # reset instead of the answer.
        left = length - min(length, len(pending))
        while left:
            n = self.client.recv_into(view[:min(left, len(view))])
            if not n:
                return
            left -= n
        body = f"relay answered {status}\n".encode()
        reason = REASONS.get(status, "Error")
        head = (f"HTTP/1.1 {status} {reason}\r\n"
                f"Content-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        self.client.sendall(head + body)


def _parse_head(head: bytes) -> tuple[str, str, int, str]:
    """
    Method, target, Content-Length (0 when absent) and Content-Range ("" when
    absent) of a request head.
    """
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return (method, target, int(fields.get("content-length", "0")),
            fields.get("content-range", ""))
