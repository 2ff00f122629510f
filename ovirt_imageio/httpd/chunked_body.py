# SPDX-License-Identifier: GPL-2.0-or-later
"""
The body of a request sent with ``Transfer-Encoding: chunked``.

The framing is parsed by ``http/chunked.py``; this module moves the
bytes. Payload of a chunk goes from the socket straight into the
caller's buffer (``Stream.recv_full``, the C data path for plain sockets
and the bulk TLS read for TLS), so large chunks never pass through Python
byte strings. Framing is received into a small scratch buffer; payload
bytes that arrive in the same receive are copied out of it by slice
assignment (a memcpy), which is what small chunks cost.

Bytes received after the body, the start of the next pipelined request,
are kept in ``leftover`` once the body ended.
"""

from __future__ import annotations

from typing import Callable

from ..http.chunked import ChunkedDecoder
from ..transfer.stream import Stream
from .errors import BadRequest

# Receives of framing: large enough that small chunks come many per
# receive, small enough to stay in cache.
SCRATCH_SIZE = 64 * 1024


class ChunkedBody:
    """Payload of a chunked body, read in order; see the module docstring."""

    def __init__(self, stream: Stream, prefix: bytes,
                 on_first_read: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._decoder = ChunkedDecoder()
        self._scratch = bytearray(SCRATCH_SIZE)
        # Received bytes not used yet: framing, payload or what follows.
        self._pending = memoryview(bytes(prefix))
        self._on_first_read = on_first_read
        self.leftover = b""

    @property
    def done(self) -> bool:
        """The whole body was read."""
        return self._decoder.done

    @property
    def length(self) -> None:
        """Unknown until the body ended."""
        return None

    @property
    def received(self) -> int:
        """Payload bytes read so far."""
        return self._decoder.total

    def _started(self) -> None:
        if self._on_first_read is not None:
            callback, self._on_first_read = self._on_first_read, None
            callback()

    def _receive_framing(self) -> None:
        view = memoryview(self._scratch)
        n = self._stream.recv_into(view)
        if n == 0:
            raise BadRequest(
                f"Client closed the connection within a chunked body "
                f"after {self.received} bytes")
        self._pending = view[:n]

    def readinto(self, buf: memoryview) -> int:
        """
        Read up to ``len(buf)`` payload bytes; fewer only at a chunk
        boundary or the end of the body (0). Malformed framing raises
        ProtocolError 400.
        """
        if not buf:
            return 0
        self._started()
        decoder = self._decoder
        while not decoder.chunk_left:
            if decoder.done:
                return 0
            if not self._pending:
                self._receive_framing()
            used = decoder.feed(self._pending)
            self._pending = self._pending[used:]
            if decoder.done:
                self.leftover = bytes(self._pending)
                self._pending = memoryview(b"")
                return 0
        want = min(len(buf), decoder.chunk_left)
        n = min(want, len(self._pending))
        if n:
            buf[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            n = self._stream.recv_full(buf[:want])
            if n < want:
                raise BadRequest(
                    f"Client closed the connection within a chunk after "
                    f"{self.received + n} bytes")
        decoder.consume(n)
        return n

    def read(self, limit: int) -> bytes:
        """Read the whole (small) body; refuse bodies over limit bytes."""
        buf = bytearray(limit + 1)
        n = self.fill(memoryview(buf))
        if n > limit:
            raise BadRequest(f"Request body too large: more than {limit} "
                             "bytes")
        return bytes(buf[:n])

    def fill(self, buf: memoryview) -> int:
        """Fill ``buf`` from the body; fewer bytes only at its end."""
        pos = 0
        while pos < len(buf):
            n = self.readinto(buf[pos:])
            if n == 0:
                break
            pos += n
        return pos
