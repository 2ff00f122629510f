# SPDX-License-Identifier: GPL-2.0-or-later
"""
Operations: the work a request does on a backend, in chunks.

An operation runs under ``Ticket.run`` so the ticket can see it (for
``active``, ``idle_time`` and ``transferred``) and cancel it. Cancelation
is cooperative: ``cancel()`` sets a flag that the operation checks between
chunks, so a chunk in flight always completes and buffers are never
released under a running copy.

Data path. Reads and writes are pipelined over two page-aligned buffers:
while the connection thread moves chunk N over the network, a worker of
the IO pool moves chunk N+1 (download) or N-1 (upload) to or from
storage. Both sides run with the GIL released (C extension, ssl), so one
transfer keeps the network and the disk busy at the same time instead of
alternating between them. Chunk boundaries are aligned to the backend's
block size in absolute image offsets, so only an unaligned head or tail
ever needs read-modify-write, and every middle chunk starts at the start
of an aligned buffer (O_DIRECT needs aligned memory too). A backend whose
reads come back in memory of its own (``Capabilities.read_pieces``,
librbd) is read with ``read_pieces`` instead, and its pieces are sent as
they are: copying them into the buffer would cost a copy of every byte.

Sharing. The two buffers come from the daemon's pool through a lease
(``buffers.Lease``): between chunks, while the pool is contended for
this ticket, the operation lets its pipeline drain, gives the pair back
and waits for one again, so transfers running together share the pool
chunk by chunk instead of request by request.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from typing import Any, Callable, Iterator, Protocol, cast

from ..backends.base import Backend, IOQueue, PieceReader
from ..native.ioutil import Buffer
from ..util import pipeline
from ..util.align import round_down, round_up
from .buffers import Fixed, Lease, Pair, as_lease
from .digests import BlockDigests, WriteHasher
from .errors import ShortData

log = logging.getLogger("ops")

# Zero requests are split into steps so cancel and progress stay
# responsive, and to avoid SCSI timeouts with huge zero requests.
ZERO_STEP = 128 * 1024**2


class Canceled(Exception):
    """The operation stopped because its ticket was canceled."""


class BodyReader(Protocol):
    def readinto_full(self, buf: memoryview) -> None:
        """
        Fill buf exactly. A body that ends first raises ShortData whose
        ``available`` bytes are at the start of buf.
        """
        ...


class Writer(Protocol):
    def write(self, data: Buffer) -> None: ...


Pool = concurrent.futures.Executor


class Operation:
    """Base: a range of the image, progress, and the cancel flag."""

    # Whether the range counts toward the ticket's "transferred".
    counts = True
    name = "op"
    # For the ticket's ledger: whether [offset, offset + done) is written
    # when the operation ends, also when it fails (``done`` counts only
    # bytes storage accepted, in order), and whether it ends with a flush.
    writes = False
    flushes = False
    # Whether data it moves counts against the ticket's rate limit
    # (zeroing moves none).
    limited = False
    # Whether it changes image content, so a ticket with hash-on-write
    # gives it the ticket's block digests (``digests``) to keep current.
    hashes = False
    # Whether the data it writes counts toward the daemon's checkpoint
    # bound (``ledger.py``); zeroing is cheap to repeat and does not.
    checkpoints = False

    def __init__(self, offset: int = 0, length: int = 0,
                 abort: Callable[[], None] | None = None) -> None:
        self.offset = offset
        self.length = length
        self.done = 0
        self._canceled = False
        # Wakes the op if it is blocked on the client (a stalled upload
        # or a client not reading a download), which no flag can reach.
        self._abort = abort
        # Set by the ticket that runs a limited operation: waits until
        # its rate allows n more bytes, and tells how long that would be
        # (``ratelimit.RateLimiter``).
        self.throttle: Callable[[int], object] | None = None
        # Set by a ticket with hash-on-write that runs an operation that
        # hashes (``digests.BlockDigests``).
        self.digests: BlockDigests | None = None
        self.delay: Callable[[int], float] | None = None
        # Set by a ticket with daemon checkpoints that runs a write that
        # checkpoints: called in the writing thread after each piece
        # storage accepted, so the ledger learns a long write's progress
        # as it goes, and a checkpoint can cover the part written so far
        # (a daemon killed in the middle of a 128 MiB request then loses
        # at most what it wrote since the last checkpoint). ``recorded``
        # is how much of ``done`` the ledger has.
        self.progress: Callable[[], None] | None = None
        self.recorded = 0
        # Bytes of the next chunk already paid for while the pair was
        # given up (``_renew``).
        self._paid = 0

    def cancel(self) -> None:
        self._canceled = True
        if self._abort is not None:
            self._abort()

    def _throttle(self, n: int) -> None:
        if self._paid:
            self._paid = 0
            return
        if self.throttle is not None:
            self.throttle(n)

    def _hashing(self, length: int | None = None) -> WriteHasher | None:
        """
        Start hashing a write of ``[offset, offset + length)`` (default
        the operation's length) if the ticket keeps digests; None costs
        the write nothing more.
        """
        if self.digests is None:
            return None
        return self.digests.writing(
            self.offset, self.length if length is None else length)

    def _yield_pair(self, lease: Lease | Fixed, n: int) -> bool:
        """
        Whether to give the pair up before the next chunk of n bytes:
        the pool is contended for this ticket, or the chunk would wait
        for the rate limit while another ticket waits for buffers (a
        throttled transfer must not sit on buffers it cannot use).
        """
        if lease.contended():
            return True
        return (self.delay is not None and lease.others_waiting()
                and self.delay(n) > 0)

    def _renew(self, lease: Lease | Fixed, n: int) -> None:
        """Give the pair up, paying the next chunk's rate-limit wait
        meanwhile, and wait in line for a pair again."""
        lease.give_up()
        try:
            if self.delay is not None and self.delay(n) > 0:
                self._throttle(n)
                self._paid = n
        finally:
            lease.take_again()

    def checkpoint(self) -> Operation | None:
        """
        The flush that makes this operation's writes, and those of the
        ticket's other connections, durable for a daemon checkpoint;
        None when its backend cannot promise that.
        """
        return None

    def _check(self) -> None:
        if self._canceled:
            raise Canceled(f"{self.name} canceled at offset "
                           f"{self.offset + self.done}")

    def run(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{self.__class__.__name__} offset={self.offset} "
                f"length={self.length} done={self.done}>")


def upload_chunks(offset: int, length: int, block: int, bufsize: int
                  ) -> list[tuple[int, int]]:
    """
    Split [offset, offset+length) into (offset, length) chunks of at most
    bufsize, with every chunk but the first starting at an aligned offset.

    >>> upload_chunks(100, 1000, 512, 512)
    [(100, 412), (512, 512), (1024, 76)]
    """
    chunks = []
    pos, end = offset, offset + length
    if pos % block and pos < end:
        n = min(end, round_up(pos, block)) - pos
        chunks.append((pos, n))
        pos += n
    while pos < end:
        n = min(bufsize, end - pos)
        chunks.append((pos, n))
        pos += n
    return chunks


def download_spans(offset: int, length: int, block: int, bufsize: int
                   ) -> list[tuple[int, int, int, int]]:
    """
    Split [offset, offset+length) into aligned read spans.

    Returns (read_offset, read_length, skip, payload): read read_length
    bytes at aligned read_offset, then send payload bytes starting skip
    bytes into the buffer.

    >>> download_spans(100, 1000, 512, 1024)
    [(0, 1024, 100, 924), (1024, 512, 0, 76)]
    """
    spans: list[tuple[int, int, int, int]] = []
    if length == 0:
        # Else an unaligned offset would read its block for nothing.
        return spans
    end = offset + length
    pos = round_down(offset, block)
    stop = round_up(end, block)
    while pos < stop:
        n = min(bufsize, stop - pos)
        lo = max(pos, offset)
        hi = min(pos + n, end)
        spans.append((pos, n, lo - pos, hi - lo))
        pos += n
    return spans


def cut(pieces: list[memoryview], skip: int, length: int
        ) -> list[memoryview]:
    """
    The views of length bytes of pieces after the first skip, without
    empty ones.

    >>> [bytes(v) for v in cut([memoryview(b"abc"), memoryview(b"def")],
    ...                        2, 3)]
    [b'c', b'de']
    """
    out = []
    for piece in pieces:
        if length == 0:
            break
        if skip >= len(piece):
            skip -= len(piece)
            continue
        view = piece[skip:skip + length]
        skip = 0
        length -= len(view)
        out.append(view)
    return out


class Read(Operation):
    """Send [offset, offset+length) of the backend to a writer."""

    name = "read"
    limited = True

    def __init__(self, backend: Backend, writer: Writer, offset: int,
                 length: int, buffers: Pair | Lease | Fixed,
                 pool: Pool | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__(offset, length, abort)
        self._backend = backend
        self._writer = writer
        self._lease = as_lease(buffers)
        self._pool = pool

    def run(self) -> None:
        block = self._backend.capabilities.block_size
        bufsize = len(self._lease.pair[0])
        spans = download_spans(self.offset, self.length, block, bufsize)
        submit = _submit(self._pool, spans)
        next_span = 0

        pieces = self._backend.capabilities.read_pieces

        def read(i: int, bufs: Pair) -> list[memoryview]:
            roff, rlen, skip, payload = spans[i]
            if pieces:
                got = cast(PieceReader, self._backend).read_pieces(roff,
                                                                  rlen)
                n = sum(len(p) for p in got)
            else:
                buf = bufs[i % 2]
                n = self._backend.readinto(roff, buf[:rlen])
                got = [buf[:n]]
            if n < skip + payload:
                available = self.done + max(0, n - skip)
                raise ShortData(self.length, available)
            return cut(got, skip, payload)

        def reads(bufs: Pair) -> Iterator[Callable[[], list[memoryview]]]:
            nonlocal next_span
            first = next_span
            while next_span < len(spans):
                payload = spans[next_span][3]
                if next_span > first and self._yield_pair(self._lease,
                                                          payload):
                    return
                # Before starting each read, never under one.
                self._check()
                # Paid before reading, so a chunk is read only when it
                # may be sent.
                self._throttle(payload)
                next_span += 1
                yield functools.partial(read, next_span - 1, bufs)

        while True:
            pipeline.read_ahead(reads(self._lease.pair), self._send, submit)
            if next_span == len(spans):
                break
            # Drained: nothing uses the pair any more.
            self._renew(self._lease, spans[next_span][3])

    def _send(self, data: list[memoryview]) -> None:
        for piece in data:
            self._writer.write(piece)
            self.done += len(piece)


class Write(Operation):
    """Receive length bytes from a body and write them at offset."""

    name = "write"
    writes = True
    limited = True
    hashes = True
    checkpoints = True

    def __init__(self, backend: Backend, reader: BodyReader, offset: int,
                 length: int, buffers: Pair | Lease | Fixed,
                 flush: bool = False, pool: Pool | None = None,
                 abort: Callable[[], None] | None = None) -> None:
        super().__init__(offset, length, abort)
        self._backend = backend
        self._reader = reader
        self._lease = as_lease(buffers)
        self._flush = flush
        self.flushes = flush
        self._pool = pool

    def run(self) -> None:
        block = self._backend.capabilities.block_size
        bufsize = len(self._lease.pair[0])
        chunks = upload_chunks(self.offset, self.length, block, bufsize)
        submit = _submit(self._pool, chunks)
        next_chunk = 0

        def receive(bufs: Pair) -> Iterator[tuple[memoryview, int]]:
            nonlocal next_chunk
            first = next_chunk
            while next_chunk < len(chunks):
                pos, n = chunks[next_chunk]
                if next_chunk > first and self._yield_pair(self._lease, n):
                    return
                self._check()
                buf = bufs[next_chunk % 2][:n]
                self._throttle(n)
                try:
                    self._reader.readinto_full(buf)
                except ShortData as e:
                    # The body was cut (client gone, relay reset): the
                    # whole blocks that reached buf are written too, so
                    # the cut request's written prefix (``done``) ends
                    # as close to the cut as storage alignment allows;
                    # a partial block would need read-modify-write.
                    tail = round_down(pos + e.available, block) - pos
                    if tail > 0:
                        if hasher is not None:
                            hasher.update(buf[:tail])
                        yield buf[:tail], pos
                    raise
                next_chunk += 1
                if hasher is not None:
                    # In the receiving thread, from the buffer just
                    # filled (no copy, no second read), while the I/O
                    # thread writes the buffer before: receive + hash
                    # and write take about as long, where write + hash
                    # in one thread left the receiver idle.
                    hasher.update(buf)
                yield buf, pos

        hasher = self._hashing()

        def write(item: tuple[memoryview, int]) -> None:
            buf, pos = item
            self._backend.write(pos, buf)
            self.done += len(buf)
            if self.progress is not None:
                self.progress()

        def run() -> None:
            while True:
                pipeline.write_behind(receive(self._lease.pair), write,
                                      submit)
                if next_chunk == len(chunks):
                    break
                # Drained: nothing uses the pair any more.
                self._renew(self._lease, chunks[next_chunk][1])
            if self._flush:
                self._backend.flush()

        hashed(hasher, run)

    def checkpoint(self) -> Operation | None:
        return checkpoint_flush(self._backend)


class Zero(Operation):
    """Zero [offset, offset+length) in steps, checking cancel."""

    name = "zero"
    writes = True
    hashes = True

    def __init__(self, backend: Backend, offset: int, length: int,
                 flush: bool = False) -> None:
        super().__init__(offset, length)
        self._backend = backend
        self._flush = flush
        self.flushes = flush

    def run(self) -> None:
        # Zero blocks have a known digest: nothing is hashed.
        hashed(self._hashing(), self._zero, zeroed=True)

    def _zero(self) -> None:
        while self.done < self.length:
            self._check()
            step = min(ZERO_STEP, self.length - self.done)
            self._backend.zero(self.offset + self.done, step)
            self.done += step
        if self._flush:
            self._backend.flush()


class ReadInto(Operation):
    """
    Read [offset, offset+len(buf)) of the backend into buf in one call,
    for doors that hold a whole request in memory (NBD).
    """

    name = "read"
    limited = True

    def __init__(self, backend: Backend, offset: int, buf: memoryview
                 ) -> None:
        super().__init__(offset, len(buf))
        self._backend = backend
        self._buf = buf

    def run(self) -> None:
        self._check()
        self._throttle(self.length)
        n = self._backend.readinto(self.offset, self._buf)
        if n < self.length:
            raise ShortData(self.length, n)
        self.done = n

    def submit(self, queue: IOQueue, tag: int) -> bool:
        """
        Start the read through queue instead of running it; False if the
        queue refused it: run() then, which does not pay the rate limit
        again.
        """
        self._check()
        self._throttle(self.length)
        self._paid = self.length
        return queue.submit(False, self.offset, self._buf, tag)

    def complete(self, ok: bool) -> None:
        """The submitted read finished; one that failed or came short
        runs again synchronously (whose error is the request's)."""
        if not ok:
            self.run()
            return
        self.done = self.length


class WriteFrom(Operation):
    """
    Write buf at offset in one call (the counterpart of ReadInto): the
    NBD door's writes, entered in the ticket's ledger like PUTs, so a
    transfer written through the door resumes over HTTP.
    """

    name = "write"
    limited = True
    hashes = True
    writes = True

    def __init__(self, backend: Backend, offset: int, buf: memoryview,
                 flush: bool = False) -> None:
        super().__init__(offset, len(buf))
        self._backend = backend
        self._buf = buf
        self._flush = flush

    def run(self) -> None:
        self._check()
        self._throttle(self.length)
        hasher = self._hashing()

        def write() -> None:
            self._backend.write(self.offset, self._buf)
            if hasher is not None:
                hasher.update(self._buf)
            self.done = self.length
            if self._flush:
                self._backend.flush()

        hashed(hasher, write)

    def submit(self, queue: IOQueue, tag: int) -> bool:
        """
        Start the write through queue instead of running it; False if the
        queue refused it, or the write must flush: run() then, which
        does not pay the rate limit again.
        """
        self._check()
        self._throttle(self.length)
        self._paid = self.length
        if self._flush:
            return False
        return queue.submit(True, self.offset, self._buf, tag)

    def complete(self, ok: bool) -> None:
        """The submitted write finished; one that failed runs again
        synchronously (whose error is the request's)."""
        if not ok:
            self.run()
            return
        hasher = self._hashing()

        def written() -> None:
            if hasher is not None:
                hasher.update(self._buf)
            self.done = self.length

        hashed(hasher, written)


class Flush(Operation):
    counts = False
    name = "flush"
    flushes = True

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def run(self) -> None:
        self._backend.flush()


class Call(Operation):
    """Run a function under the ticket (extents, options, checksum)."""

    counts = False

    def __init__(self, func: Callable[[], Any], name: str = "call") -> None:
        super().__init__()
        self._func = func
        self.name = name

    def run(self) -> Any:
        return self._func()


def checkpoint_flush(backend: Backend) -> Flush | None:
    """
    A flush of backend for a daemon checkpoint, or None if a flush
    through this handle may miss what other connections of the ticket
    wrote (``Capabilities.shared_flush``).
    """
    caps = backend.capabilities
    if caps.flush and caps.shared_flush:
        return Flush(backend)
    return None


def hashed(hasher: WriteHasher | None, write: Callable[[], None],
            zeroed: bool = False) -> None:
    """
    Run a write that feeds hasher (if any), then keep its digests if it
    succeeded (the zero blocks' if it zeroed), or none if it failed: its
    blocks are unknown then.
    """
    if hasher is None:
        write()
        return
    try:
        write()
    except BaseException:
        hasher.abort()
        raise
    if zeroed:
        hasher.commit_zeroed()
    else:
        hasher.commit()


def _submit(pool: Pool | None, chunks: list[Any]) -> pipeline.Submit | None:
    """The pool's submit, unless one chunk leaves nothing to overlap."""
    if pool is None or len(chunks) < 2:
        # A single chunk stays in the connection thread: a hop to the
        # pool and back would only add latency.
        return None
    return pool.submit
