# SPDX-License-Identifier: GPL-2.0-or-later
"""
Request and Response objects handed to handlers.

A ``Request`` wraps a parsed head (``ovirt_imageio.http.parser``) and the
body, which handlers read through ``Request.body``. The body reader never
reads past Content-Length: bytes after it belong to the next pipelined
request and are handed back to the connection.

A ``Response`` writes its head once, on the first body write or at the
end of the request. Small bodies are sent together with the head in one
system call. A body of unknown length goes chunked (``start_chunked``,
``write_chunk``, ``end_chunked``): an error before ``end_chunked`` closes
the connection without the last chunk, which the client sees as a broken
answer.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Protocol

from ..http import headers as http_headers
from ..http import query as http_query
from ..http import response as http_response
from ..http.parser import RequestHead
from ..native.ioutil import Buffer
from ..transfer.context import Session
from ..transfer.errors import ShortData
from ..transfer.stream import Stream
from .chunked_body import ChunkedBody
from .errors import BadRequest, PartialContent
from .stats import PHASES

SERVER = "imageio/" + __import__("ovirt_imageio").__version__

# Bodies smaller than this are sent in the same system call as the head.
COALESCE_LIMIT = 65536


class Body:
    """
    The request body: at most ``length`` bytes, served first from what the
    connection already buffered (``prefix``), then from the stream.
    """

    def __init__(self, stream: Stream, prefix: bytes, length: int,
                 on_first_read: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._length = length
        self._pos = 0
        used = min(len(prefix), length)
        self._prefix = memoryview(prefix)[:used]
        # Bytes after the body: the start of the next pipelined request.
        self.leftover = bytes(prefix[used:])
        self._on_first_read = on_first_read

    @property
    def length(self) -> int:
        return self._length

    @property
    def remaining(self) -> int:
        return self._length - self._pos

    @property
    def done(self) -> bool:
        """The whole body was read."""
        return self._pos == self._length

    def _started(self) -> None:
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()

    def _take_prefix(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._prefix))
        if n:
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            self._pos += n
        return n

    def readinto(self, buf: memoryview) -> int:
        """Read up to len(buf) bytes of the body; 0 at its end."""
        buf = buf[:self.remaining]
        if not buf:
            return 0
        self._started()
        n = self._take_prefix(buf)
        if n:
            return n
        n = self._stream.recv_into(buf)
        self._pos += n
        return n

    def readinto_full(self, buf: memoryview) -> None:
        """
        Fill buf exactly from the body. A body shorter than buf gets
        PartialContent (400) before anything is read; a client that
        disconnects while buf fills gets ShortData (400) with the bytes
        that reached buf as ``available``.
        """
        want = len(buf)
        if want > self.remaining:
            raise PartialContent(want, self.remaining)
        if not want:
            return
        self._started()
        pos = self._take_prefix(buf)
        if pos < want:
            n = self._stream.recv_full(buf[pos:])
            self._pos += n
            pos += n
        if pos < want:
            # The transfer core's error: buf[:pos] holds what arrived, so
            # a write may keep the whole blocks of it (ops.Write).
            raise ShortData(want, pos)

    def read(self, limit: int) -> bytes:
        """Read the whole (small) body; refuse bodies over limit bytes."""
        if self._length > limit:
            raise BadRequest(f"Request body too large: {self._length} "
                             f"bytes, limit {limit} bytes")
        buf = bytearray(self._length)
        self.readinto_full(memoryview(buf))
        return bytes(buf)


class ClientConnection(Session, Protocol):
    """
    What a handler sees of its connection: the session the transfer core
    keeps backends for, the client's address for log lines, and ``abort``
    to break off a transfer whose storage side failed (the client is
    blocked sending or receiving, so only closing the socket stops it).
    """

    client: str

    def abort(self) -> None: ...


class Request:
    """One HTTP request as seen by a handler."""

    def __init__(self, head: RequestHead, body: Body | ChunkedBody,
                 connection: ClientConnection) -> None:
        self.head = head
        self.body = body
        self.connection = connection
        self._query: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path

    @property
    def headers(self) -> http_headers.Headers:
        return self.head.headers

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = http_query.parse_query(self.head.query)
        return self._query

    @property
    def content_length(self) -> int | None:
        """The body's length; None for a chunked body."""
        return self.body.length

    def header(self, name: str) -> str | None:
        return self.head.headers.get(name)

    def json(self, limit: int = 65536) -> Any:
        """Parse a small JSON body; malformed JSON -> 400."""
        data = self.body.read(limit)
        try:
            return json.loads(data)
        except ValueError as e:
            raise BadRequest(f"Invalid JSON message: {e}") from None


class Response:
    """The response being built by a handler."""

    def __init__(self, stream: Stream, clock: Callable[[], float] = time.time
                 ) -> None:
        self._stream = stream
        self._clock = clock
        self.status = 200
        self.headers: dict[str, str] = {}
        self.started = False
        # Set by handlers (close=y), errors, or the connection rules.
        self.close_connection = False
        self.bytes_sent = 0
        # What the handler did, for the statistics and metrics (see
        # record()); the backend is set by the image handlers' prologue.
        self.phase: str | None = None
        self.nbytes = 0
        self.backend: str | None = None
        self.counts_if_failed = False

    def record(self, phase: str, nbytes: int = 0,
               counts_if_failed: bool = False) -> None:
        """
        Say what the request did: its phase (one of ``stats.PHASES``) and
        the payload bytes it moved. The connection counts it only if the
        request succeeds, or also if it fails with counts_if_failed (the
        bytes a cut upload wrote before the cut did reach storage).
        """
        if phase not in PHASES:
            raise ValueError(f"Unknown phase {phase!r}")
        self.phase = phase
        self.nbytes = nbytes
        self.counts_if_failed = counts_if_failed

    def _head(self, length: int | None, chunked: bool = False) -> bytes:
        headers = [("Server", SERVER),
                   ("Date", http_response.http_date(self._clock()))]
        headers.extend(self.headers.items())
        if length is not None:
            headers.append(("Content-Length", str(length)))
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        if self.close_connection:
            headers.append(("Connection", "close"))
        return http_response.format_head(self.status, headers)

    def start(self, length: int) -> None:
        """Send the head announcing a body of length bytes."""
        if self.started:
            raise RuntimeError("Response already started")
        self._stream.sendall(self._head(length))
        self.started = True

    def write(self, data: Buffer) -> None:
        """Send body bytes after start()."""
        self._stream.sendall(data)
        self.bytes_sent += len(data)

    def start_chunked(self, first: bytes) -> None:
        """
        Send the head announcing a chunked body (only for HTTP/1.1
        requests), with first as its first chunk.
        """
        if self.started:
            raise RuntimeError("Response already started")
        self._stream.sendall(self._head(None, chunked=True)
                             + http_response.chunk(first))
        self.started = True
        self.bytes_sent += len(first)

    def write_chunk(self, data: bytes) -> None:
        """Send one chunk of the body after start_chunked()."""
        self._stream.sendall(http_response.chunk(data))
        self.bytes_sent += len(data)

    def end_chunked(self, last: bytes = b"") -> None:
        """Send the last data (if any) and the end of a chunked body."""
        end = http_response.LAST_CHUNK
        if last:
            end = http_response.chunk(last) + end
        self._stream.sendall(end)
        self.bytes_sent += len(last)

    def send(self, body: bytes = b"", content_type: str | None = None
             ) -> None:
        """Send a complete response with a small body."""
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        head = self._head(len(body))
        self.started = True
        if len(body) < COALESCE_LIMIT:
            self._stream.sendall(head + body)
        else:
            self._stream.sendall(head)
            self._stream.sendall(body)
        self.bytes_sent += len(body)

    def send_json(self, obj: Any, status: int | None = None) -> None:
        if status is not None:
            self.status = status
        body = json.dumps(obj).encode("utf-8") + b"\n"
        self.send(body, "application/json")

    def send_error(self, status: int, message: str,
                   headers: dict[str, str] | None = None) -> None:
        self.status = status
        if headers:
            self.headers.update(headers)
        body = message.encode("utf-8") + b"\n"
        self.send(body, "text/plain; charset=UTF-8")
