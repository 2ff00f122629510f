# SPDX-License-Identifier: GPL-2.0-or-later
"""
Decoding of request bodies sent with ``Transfer-Encoding: chunked``
(RFC 9112 section 7.1).

Theory of operation
-------------------

The decoder parses the framing only; it never holds payload. The caller
reads the payload of each chunk itself, straight into its own buffer, so
gigabytes of image data never pass through Python byte strings:

1. While ``chunk_left`` is 0 and ``done`` is False, the decoder needs
   framing bytes: the caller feeds what it received with ``feed(data)``,
   which consumes framing from the start of ``data`` and returns how many
   bytes it used. It stops at the first payload byte (a chunk began) or
   at the end of the body; the bytes after that point belong to the
   payload, or to the next request, and are the caller's.
2. While ``chunk_left`` is positive, the caller takes up to that many
   payload bytes (from what ``feed`` left over, then from the socket)
   and reports them with ``consume(n)``.
3. ``done`` becomes True after the last chunk (size 0) and the trailer
   section; ``feed`` then consumes nothing more.

States:

SIZE
    Collecting a chunk-size line: hex digits, optional extensions after
    ``;`` (accepted and ignored), CRLF. Size 0 moves to TRAILER, any other
    size to DATA.
DATA
    ``chunk_left`` payload bytes remain; ``feed`` consumes nothing.
DATA_END
    The CRLF after a chunk's payload.
TRAILER
    Trailer field lines (accepted and ignored) up to an empty line, then
    DONE.
DONE
    The body ended.
ERROR
    A ProtocolError (400) was raised; the connection cannot find the next
    request and must be closed. Every later call raises it again.

Limits, each checked before the data grows past it, because a client
could otherwise make the server buffer or scan without bound: a chunk
size of at most 16 significant hex digits and below 2**63 (more is no
image, and keeps the arithmetic small), a size line of
``MAX_LINE`` bytes with its extensions, a trailer section of
``MAX_TRAILER`` bytes. Line endings are CRLF; a bare LF is tolerated
as in request heads, a bare CR is an error. Every framing byte is
examined once, whatever the sizes of the fed pieces.

Example::

    >>> d = ChunkedDecoder()
    >>> body = b"5;name=value\\r\\nhello\\r\\n0\\r\\nX-Trailer: 1\\r\\n\\r\\n"
    >>> d.feed(body)
    14
    >>> d.chunk_left
    5
    >>> d.consume(5)
    >>> d.feed(body[19:])
    21
    >>> d.done, d.total
    (True, 5)
"""

from __future__ import annotations

import enum
import re

from .errors import ProtocolError

# One size line with its extensions, and the whole trailer section.
MAX_LINE = 4096
MAX_TRAILER = 65536

# Chunk sizes past off_t are no image and would only cost arithmetic.
MAX_CHUNK = 2**63 - 1

_HEX = re.compile(rb"[0-9A-Fa-f]+")

# The framing almost every client sends between chunks, the end of one
# chunk and the plain size line of the next, matched in one step: some
# 16,000 chunks per GiB (curl sends 64 KiB ones) should not each cost
# two trips through the line machinery. Anything else (extensions, bare
# LF, a line split between feeds, size 0) takes the general path.
_NEXT_SIZE = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})\r\n")
_FIRST_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")


class State(enum.Enum):
    SIZE = "SIZE"
    DATA = "DATA"
    DATA_END = "DATA_END"
    TRAILER = "TRAILER"
    DONE = "DONE"
    ERROR = "ERROR"


class ChunkedDecoder:
    """Parse chunked framing; see the module docstring."""

    def __init__(self) -> None:
        self.state = State.SIZE
        # Payload bytes of the current chunk the caller has not taken.
        self.chunk_left = 0
        # Payload bytes of the whole body so far (taken by the caller).
        self.total = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self._error: ProtocolError | None = None

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """
        Consume framing from the start of ``data``; return the bytes used.

        Stops at the first payload byte or the end of the body; raises
        ProtocolError 400 for malformed framing.
        """
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        pos = self._fast_size(view)
        if pos:
            return pos
        try:
            while pos < len(view) and self.state not in (State.DATA,
                                                         State.DONE):
                line, pos = self._take_line(view, pos)
                if line is not None:
                    self._line_done(line)
        except ProtocolError as e:
            self.state = State.ERROR
            self._error = e
            raise
        return pos

    def _fast_size(self, view: memoryview) -> int:
        """Bytes used if ``view`` starts with the common framing, else 0."""
        if self._line:
            return 0
        if self.state is State.DATA_END:
            m = _NEXT_SIZE.match(view)
        elif self.state is State.SIZE:
            m = _FIRST_SIZE.match(view)
        else:
            return 0
        if m is None:
            return 0
        size = int(m[1], 16)
        if size == 0 or size > MAX_CHUNK:
            return 0
        self.chunk_left = size
        self.state = State.DATA
        return m.end()

    @property
    def between_chunks(self) -> bool:
        """
        Whether the body is where the common framing may come next: in a
        chunk's payload, or before a size line with nothing of it fed.
        """
        return (self.state in (State.DATA, State.DATA_END, State.SIZE)
                and not self._line)

    def skip(self, chunk_left: int, total: int, after_data: bool) -> None:
        """
        Continue at a position reached by parsing only the common
        framing elsewhere (the C receive loop of plain sockets, which
        applies the rules of the fast path above): ``chunk_left`` bytes
        of the current chunk to come, ``total`` payload bytes so far,
        ``after_data`` if the framing to come starts with the CRLF
        ending a chunk. Only valid while ``between_chunks``.
        """
        if not self.between_chunks or chunk_left < 0 or total < self.total:
            raise RuntimeError(
                f"Cannot skip to chunk_left={chunk_left} total={total} in "
                f"state {self.state.value}")
        self.chunk_left = chunk_left
        self.total = total
        if chunk_left:
            self.state = State.DATA
        elif after_data:
            self.state = State.DATA_END
        else:
            self.state = State.SIZE

    def consume(self, n: int) -> None:
        """Account ``n`` payload bytes the caller took."""
        if self.state is not State.DATA or not 0 < n <= self.chunk_left:
            raise RuntimeError(
                f"Cannot consume {n} bytes in state {self.state.value} "
                f"with {self.chunk_left} bytes left in the chunk")
        self.chunk_left -= n
        self.total += n
        if self.chunk_left == 0:
            self.state = State.DATA_END

    def _limit(self) -> int:
        if self.state is State.TRAILER:
            return MAX_TRAILER - self._trailer_bytes
        if self.state is State.DATA_END:
            # Only CRLF is allowed; a little room to say what came instead.
            return 2
        return MAX_LINE

    def _take_line(self, view: memoryview, pos: int
                   ) -> tuple[bytes | None, int]:
        """The next complete line (without its end) and the new position,
        or None when ``view`` ended first (its bytes kept)."""
        limit = self._limit()
        room = limit + 2 - len(self._line)
        window = view[pos:pos + max(room, 0)]
        end = bytes(window).find(b"\n")
        if end == -1:
            self._line += window
            if len(self._line) > limit + 1:
                raise self._too_long()
            return None, pos + len(window)
        self._line += window[:end]
        line = bytes(self._line)
        self._line.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            raise self._too_long()
        if self.state is State.TRAILER:
            self._trailer_bytes += end + 1
        return line, pos + end + 1

    def _too_long(self) -> ProtocolError:
        if self.state is State.TRAILER:
            return ProtocolError(400, "Chunked trailer section too large")
        if self.state is State.DATA_END:
            return ProtocolError(400, "Missing CRLF after chunk data")
        return ProtocolError(400, "Chunk size line too long")

    def _line_done(self, line: bytes) -> None:
        if b"\r" in line:
            raise ProtocolError(400, "Invalid CR in chunked framing")
        if self.state is State.SIZE:
            size = _parse_size(line)
            if size == 0:
                self.state = State.TRAILER
            else:
                self.chunk_left = size
                self.state = State.DATA
        elif self.state is State.DATA_END:
            if line:
                raise ProtocolError(400, "Missing CRLF after chunk data")
            self.state = State.SIZE
        elif self.state is State.TRAILER:
            if not line:
                self.state = State.DONE
            elif b":" not in line:
                raise ProtocolError(
                    400, f"Invalid chunked trailer line: {_show(line)}")


def _parse_size(line: bytes) -> int:
    size, _, _ = line.partition(b";")
    # RFC 9112 7.1.1 allows whitespace before the extensions ("BWS").
    size = size.rstrip(b" \t")
    if not _HEX.fullmatch(size):
        raise ProtocolError(400, f"Invalid chunk size: {_show(line)}")
    digits = size.lstrip(b"0") or b"0"
    if len(digits) > 16 or int(digits, 16) > MAX_CHUNK:
        raise ProtocolError(400, f"Chunk size too large: {_show(line)}")
    return int(digits, 16)


def _show(data: bytes) -> str:
    """Short printable form of client bytes for error messages."""
    text = data[:40].decode("latin-1")
    return repr(text + "..." if len(data) > 40 else text)
