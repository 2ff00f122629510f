# SPDX-License-Identifier: GPL-2.0-or-later
"""
Writes of unknown length: a body that ends when its sender says so (an
HTTP chunked upload), written sequentially from an offset.

The data path is the one of a sized write (``ops.Write``): two aligned
buffers, the next one filled from the client while the IO pool writes
the previous one to storage, chunks aligned to the backend's block size
in absolute image offsets so only an unaligned first chunk and the last
one may need read-modify-write.

What is allowed is bounded by ``limit``, the room left in the ticket. A
body that goes on past it is refused with ``BeyondEnd`` once the last
allowed byte is written: one more byte is asked from the body to tell "ends
exactly at the limit" from "goes on", and nothing past the limit ever
reaches storage. Bytes before a failure (a malformed body, a client gone)
stay written, as with any interrupted upload.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Protocol

from ..backends.base import Backend
from ..util.align import round_up
from .errors import BeyondEnd
from .ops import Operation, Pool


class StreamReader(Protocol):
    def readinto(self, buf: memoryview) -> int:
        """Read up to len(buf) bytes of the body; 0 at its end."""
        ...


class StreamWrite(Operation):
    """
    Write a body of unknown length at ``offset``, at most ``limit``
    bytes; ``length`` and ``done`` grow as data arrives.
    """

    name = "write"
    writes = True

    def __init__(self, backend: Backend, reader: StreamReader, offset: int,
                 limit: int, buffers: tuple[memoryview, memoryview],
                 flush: bool = False, pool: Pool | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__(offset, 0, abort)
        self._backend = backend
        self._reader = reader
        self._limit = limit
        self._buffers = buffers
        self._flush = flush
        self.flushes = flush
        self._pool = pool

    def _chunk_size(self, pos: int) -> int:
        """Bytes to receive next at pos: up to an aligned boundary first."""
        bufsize = len(self._buffers[0])
        block = self._backend.capabilities.block_size
        if pos % block:
            n = min(bufsize, round_up(pos, block) - pos)
        else:
            n = bufsize
        return min(n, self.offset + self._limit - pos)

    def _write(self, buf: memoryview, pos: int) -> None:
        self._backend.write(pos, buf)
        self.done += len(buf)

    def run(self) -> None:
        pending: concurrent.futures.Future[None] | None = None
        pos = self.offset
        i = 0
        try:
            while True:
                self._check()
                n = self._chunk_size(pos)
                if n == 0:
                    self._refuse_more()
                    break
                buf = self._buffers[i % 2][:n]
                got = self._fill(buf, pending, pos)
                if got:
                    # Counted as asked for, so progress and cancel see it.
                    self.length += got
                    if pending is not None:
                        pending.result()
                        pending = None
                    if self._pool is None:
                        self._write(buf[:got], pos)
                    else:
                        pending = self._pool.submit(self._write, buf[:got],
                                                    pos)
                    pos += got
                    i += 1
                if got < n:
                    break
            if pending is not None:
                last, pending = pending, None
                last.result()
        finally:
            if pending is not None:
                # A failure here is superseded by the one being raised;
                # the buffer must only not be released under the write.
                concurrent.futures.wait([pending])
        if self._flush:
            self._backend.flush()

    def _fill(self, buf: memoryview,
              pending: concurrent.futures.Future[None] | None,
              pos: int) -> int:
        """
        Fill buf from the body; fewer bytes only at its end. If the body
        fails (malformed, client gone), what it gave before is written
        first: the data before an error is kept, like any upload's.
        """
        got = 0
        try:
            while got < len(buf):
                n = self._reader.readinto(buf[got:])
                if n == 0:
                    break
                got += n
        except Exception:
            if got:
                if pending is not None:
                    concurrent.futures.wait([pending])
                self._write(buf[:got], pos)
            raise
        return got

    def _refuse_more(self) -> None:
        # The ticket is full: the body must end here.
        probe = memoryview(bytearray(1))
        if self._reader.readinto(probe):
            end = self.offset + self._limit
            raise BeyondEnd(
                f"Request body goes past the end of the image at {end}",
                end)
