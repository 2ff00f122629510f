# SPDX-License-Identifier: GPL-2.0-or-later
"""
Writes of unknown length: a body that ends when its sender says so (an
HTTP chunked upload), written sequentially from an offset.

The data path is the one of a sized write (``ops.Write``): two aligned
buffers, the next one filled from the client while the IO pool writes
the previous one to storage (``util.pipeline.write_behind``), chunks
aligned to the backend's block size in absolute image offsets so only an
unaligned first chunk and the last one may need read-modify-write.

What is allowed is bounded by ``limit``, the room left in the ticket. A
body that goes on past it is refused with ``BeyondEnd`` once the last
allowed byte is written: one more byte is asked from the body to tell "ends
exactly at the limit" from "goes on", and nothing past the limit ever
reaches storage. Bytes before a failure (a malformed body, a client gone)
stay written, as with any interrupted upload.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

from ..backends.base import Backend
from ..util import pipeline
from ..util.align import round_up
from . import ops
from .buffers import Fixed, Lease, Pair, as_lease
from .digests import WriteHasher
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
    limited = True
    hashes = True
    checkpoints = True

    def __init__(self, backend: Backend, reader: StreamReader, offset: int,
                 limit: int, buffers: Pair | Lease | Fixed,
                 flush: bool = False, pool: Pool | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__(offset, 0, abort)
        self._backend = backend
        self._reader = reader
        self._limit = limit
        self._lease = as_lease(buffers)
        self._flush = flush
        self.flushes = flush
        self._pool = pool
        self._hasher: WriteHasher | None = None
        # Where the body goes on and how many chunks it gave, kept across
        # the pipeline's runs (one per lease of the pair).
        self._pos = offset
        self._chunks = 0
        self._ended = False

    def checkpoint(self) -> Operation | None:
        return ops.checkpoint_flush(self._backend)

    def _chunk_size(self, pos: int) -> int:
        """Bytes to receive next at pos: up to an aligned boundary first."""
        bufsize = len(self._lease.pair[0])
        block = self._backend.capabilities.block_size
        if pos % block:
            n = min(bufsize, round_up(pos, block) - pos)
        else:
            n = bufsize
        return min(n, self.offset + self._limit - pos)

    def _write(self, item: tuple[memoryview, int]) -> None:
        buf, pos = item
        self._backend.write(pos, buf)
        self.done += len(buf)
        if self.progress is not None:
            self.progress()

    def run(self) -> None:
        # The length is not known yet: hashing covers the room allowed,
        # so blocks past the body's end may lose their digests, and only
        # blocks the body wrote whole get one.
        self._hasher = self._hashing(self._limit)
        ops.hashed(self._hasher, self._run)

    def _run(self) -> None:
        submit = self._pool.submit if self._pool is not None else None
        while True:
            pipeline.write_behind(self._receive(self._lease.pair),
                                  self._write, submit)
            if self._ended:
                break
            # Drained: nothing uses the pair any more.
            self._renew(self._lease, self._chunk_size(self._pos))
        if self._flush:
            self._backend.flush()

    def _receive(self, bufs: Pair) -> Iterator[tuple[memoryview, int]]:
        """
        Yield (chunk, offset) as the body arrives, until it ends, or
        until the pool wants the pair back (``_ended`` still false). If
        the body fails (malformed, client gone), what it gave before is
        yielded first, so it is written: the data before an error is
        kept, like any upload's.
        """
        first = self._chunks
        while True:
            pos = self._pos
            n = self._chunk_size(pos)
            if self._chunks > first and n and self._yield_pair(self._lease,
                                                               n):
                return
            self._check()
            if n == 0:
                self._ended = True
                self._refuse_more()
                return
            buf = bufs[self._chunks % 2][:n]
            self._throttle(n)
            got, error = self._fill(buf)
            if got:
                # Counted as asked for, so progress and cancel see it.
                self.length += got
                self._pos += got
                self._chunks += 1
                if self._hasher is not None:
                    # As in ops.Write: hashed as it arrives, while the
                    # I/O thread writes the buffer before.
                    self._hasher.update(buf[:got])
                yield buf[:got], pos
            if error is not None:
                self._ended = True
                raise error
            if got < n:
                self._ended = True
                return

    def _fill(self, buf: memoryview) -> tuple[int, Exception | None]:
        """
        Fill buf from the body; fewer bytes only at its end. Returns the
        bytes read and the body's failure, if it failed.
        """
        got = 0
        try:
            while got < len(buf):
                n = self._reader.readinto(buf[got:])
                if n == 0:
                    break
                got += n
        except Exception as e:
            return got, e
        return got, None

    def _refuse_more(self) -> None:
        # The ticket is full: the body must end here.
        probe = memoryview(bytearray(1))
        if self._reader.readinto(probe):
            end = self.offset + self._limit
            raise BeyondEnd(
                f"Request body goes past the end of the image at {end}",
                end)
