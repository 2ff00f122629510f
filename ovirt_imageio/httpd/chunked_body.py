# SPDX-License-Identifier: GPL-2.0-or-later
"""
The body of a request sent with ``Transfer-Encoding: chunked``.

The framing is parsed by ``http/chunked.py``; this module moves the
bytes. Payload of a chunk goes from the socket straight into the
caller's buffer (``Stream.recv_full``, the C data path for plain sockets
and the bulk TLS read for TLS), so large chunks never pass through Python
byte strings. Framing is received into a scratch buffer; payload bytes
that arrive in the same receive are copied out of it by slice assignment
(a memcpy), which is what small chunks cost. While chunks are large the
framing receives are small, so almost no payload is copied twice.

On a plain socket the loop itself runs in C (``ioutil.ChunkedReceiver``,
``ext/chunked.c``): it parses the framing every client sends between
chunks and stores payload straight into the buffer, and stops at any
other framing (extensions, the last chunk, malformed bytes), which the
Python decoder then parses with its full rules; the two share the
decoder's position (``ChunkedDecoder.skip``). TLS streams and test
streams take the Python loop throughout.

``readinto`` fills the whole buffer across chunk boundaries: the caller
(``StreamWrite``, one 8 MiB buffer per storage write) makes one call per
buffer, not one per chunk. An error found after some payload of a call
(malformed framing, the client gone) is raised by the next call, once
that payload was returned, so the data before it is written.

Bytes received after the body, the start of the next pipelined request,
are kept in ``leftover`` once the body ended.
"""

from __future__ import annotations

from typing import Callable

from ..http.chunked import ChunkedDecoder, State
from ..native.ioutil import ChunkedReceiver
from ..transfer.stream import SocketStream, Stream
from .errors import BadRequest

# Receives of framing: large enough that small chunks come many per
# receive, small enough to stay in cache.
SCRATCH_SIZE = 64 * 1024

# Chunks from this size on are large (curl sends its 64 KiB upload
# buffer per chunk, less the framing): the framing after one is received
# with at most FRAMING_RECV bytes and the payload straight into the
# caller's buffer, until SMALL_RUN small chunks came in a row.
LARGE_CHUNK = 16 * 1024
FRAMING_RECV = 256
SMALL_RUN = 4


class ChunkedBody:
    """Payload of a chunked body, read in order; see the module docstring."""

    def __init__(self, stream: Stream, prefix: bytes,
                 on_first_read: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._fast: ChunkedReceiver | None = (
            stream.chunked_receiver() if isinstance(stream, SocketStream)
            else None)
        self._decoder = ChunkedDecoder()
        self._scratch = bytearray(SCRATCH_SIZE)
        # Received bytes not used yet: framing, payload or what follows.
        self._pending = memoryview(bytes(prefix))
        self._on_first_read = on_first_read
        self.leftover = b""
        # Small chunks in a row, choosing how framing is received.
        self._small_run = 0
        # Payload bytes of the current readinto so far, kept when it fails.
        self._got = 0
        # A failure found after payload that was returned first.
        self._error: Exception | None = None

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
        # While chunks are large, receive little more than the framing,
        # so the payload goes to the caller's buffer in one recv_full and
        # is never copied out of the scratch. curl mixes a few small
        # chunks among its 64 KiB ones; only a run of small chunks
        # (a generator's pieces) is received many at once.
        size = (FRAMING_RECV if self._small_run < SMALL_RUN
                else SCRATCH_SIZE)
        view = memoryview(self._scratch)[:size]
        n = self._stream.recv_into(view)
        if n == 0:
            raise BadRequest(
                f"Client closed the connection within a chunked body "
                f"after {self.received} bytes")
        self._pending = view[:n]

    def readinto(self, buf: memoryview) -> int:
        """
        Read payload into ``buf`` until it is full or the body ended
        (then fewer bytes, 0 at its end). Malformed framing raises
        ProtocolError 400, once the payload before it was returned.
        """
        if not buf:
            return 0
        self._started()
        if self._error is not None:
            raise self._error
        try:
            return self._read(buf)
        except Exception as e:
            # A malformed body, a client gone or timed out.
            if not self._got:
                raise
            # Return what came before the error; raise it on the next call.
            self._error = e
            return self._got

    def _read(self, buf: memoryview) -> int:
        decoder = self._decoder
        size = len(buf)
        self._got = pos = 0
        while pos < size:
            if (self._fast is not None and not self._pending
                    and decoder.between_chunks):
                pos = self._read_fast(self._fast, buf, pos)
                continue
            left = decoder.chunk_left
            if not left:
                if decoder.done:
                    break
                if not self._pending:
                    self._receive_framing()
                used = decoder.feed(self._pending)
                self._pending = self._pending[used:]
                if decoder.done:
                    self.leftover = bytes(self._pending)
                    self._pending = memoryview(b"")
                    break
                if decoder.chunk_left >= LARGE_CHUNK:
                    self._small_run = 0
                else:
                    self._small_run += 1
                continue
            want = min(size - pos, left)
            if self._pending:
                n = min(want, len(self._pending))
                buf[pos:pos + n] = self._pending[:n]
                self._pending = self._pending[n:]
            else:
                n = self._stream.recv_full(buf[pos:pos + want])
                if n < want:
                    if n:
                        decoder.consume(n)
                        self._got = pos + n
                    raise BadRequest(
                        f"Client closed the connection within a chunk "
                        f"after {self.received} bytes")
            decoder.consume(n)
            pos += n
            self._got = pos
        return pos

    def _read_fast(self, fast: ChunkedReceiver, buf: memoryview,
                   pos: int) -> int:
        """Run the C loop from pos; return the new position."""
        decoder = self._decoder
        n, status = fast.recv(buf[pos:], decoder.chunk_left, decoder.total,
                              decoder.state is State.DATA_END)
        decoder.skip(fast.chunk_left, fast.total, fast.after_data)
        pos += n
        self._got = pos
        if status == fast.FULL:
            return pos
        if status == fast.FRAMING:
            # The Python decoder parses what the C loop would not.
            self._pending = memoryview(fast.take_pending())
            return pos
        if status == fast.EOF:
            where = "a chunk" if decoder.chunk_left else "a chunked body"
            raise BadRequest(
                f"Client closed the connection within {where} after "
                f"{self.received} bytes")
        raise fast.error

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
