# SPDX-License-Identifier: GPL-2.0-or-later
"""
The nbd backend: an export of an NBD server (usually qemu-nbd), through
libnbd.

Theory of operation
-------------------

Each backend owns one libnbd handle, so one NBD connection per HTTP
connection and ticket; the server (qemu-nbd ``--shared=N``) must accept as
many clients as the daemon has connections. Opened for one thread (the
HTTP door), the caller's thread drives the handle. Opened ``concurrent``
(the NBD door, serving several requests of a connection at once), an
event loop thread (``backends.nbd_loop``) drives it, and reads and writes
of several threads are in flight together; other commands take turns.

Commands failing become ``OSError`` with the server's errno (ENOSPC stays
ENOSPC). A lost connection (the server died) is EIO whatever libnbd saw,
and so are errnos that Python turns into ``ConnectionError`` or
``TimeoutError`` subclasses: the HTTP server treats those subclasses as
"the HTTP client went away" and would hide an NBD failure as a client
disconnect.

Commands themselves have no timeout, like the upstream client: a server
that dies closes the socket and fails the command at once, while a
server that is alive but stuck (stopped) blocks the request until it
resumes.

Reads go straight into the caller's buffer (``aio_pread`` on the buffer
itself; the synchronous ``pread`` of the 1.14 binding returns a new bytes
object that we would have to copy). Reads and writes are split at the
server's maximum request size, and into pieces of PIPELINE_REQUEST sent
together, so the server works on them in parallel and never allocates
huge request buffers. If the server announces a minimum block
size above 1, unaligned heads and tails are done by reading, modifying and
writing one block, as the alignment contract of backends.base requires.

Extents come from NBD block status in steps of at most EXTENTS_STEP bytes,
so every command answers in bounded time and memory whatever the image
size. The zero context combines ``base:allocation`` (zero bit) with
``qemu:allocation-depth`` (depth 0 means a hole: not allocated anywhere in
the exported chain). Without the depth context nothing is reported as a
hole: the hole bit of ``base:allocation`` only says the storage is not
allocated, and a client doing a shallow download would skip such ranges
and expose its backing file instead of zeros. The dirty context combines
the bitmap's dirty bit with the zero bit of ``base:allocation``.

Connecting and the handshake live in ``backends.nbd_connect``, URL
parsing in ``backends.nbd_url`` (pure, no libnbd).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import errno
import itertools
import logging
from typing import Any, Callable, Iterator, Sequence

import nbd

from ..util import align
from ..util.extents import (
    DirtyExtent,
    Extent,
    Runs,
    ZeroExtent,
    merge_runs,
)
from . import nbd_connect
from .base import Capabilities, Mode, UnsupportedContext, byte_view
from .nbd_connect import (
    ALLOCATION_DEPTH,
    BASE_ALLOCATION,
    CONNECT_TIMEOUT,
    ConnectError,
    connect,
    disconnect,
)
from .nbd_loop import CommandQueue, Completion, EventLoop
from .nbd_spread import SpreadQueue
from .nbd_url import parse_url

log = logging.getLogger(__name__)


# Request size when the server does not announce a maximum (the NBD
# protocol's recommended limit), and libnbd's own limit for reads and
# writes.
DEFAULT_MAX_REQUEST = 32 * 1024**2
LIBNBD_MAX_REQUEST = 64 * 1024**2

# Reads and writes go out in pieces of this size, all in flight at once,
# so the server works on several at a time. qemu-nbd allocates a buffer
# for every request; what that costs depends on its malloc settings more
# than on the size. Reading a qcow2 image here, qemu-nbd spent 0.45-0.56
# CPU seconds per GiB at 256 KiB to 4 MiB per request with glibc's
# defaults, and 0.14-0.24 with the tunables the client gives the
# qemu-nbd it starts (util/qemu_nbd.py).
PIPELINE_REQUEST = 1024**2

# Bound on opening a connection for spread reads (nbd_spread): the door
# asks only when the ticket has room for it, but a server at its limit
# (connections of HTTP clients are not counted) keeps a new connection
# waiting in its backlog, and the transfer must not wait long for one it
# can do without.
SPREAD_CONNECT_TIMEOUT = 2.0

# Largest WRITE_ZEROES request: a bounded step keeps each command's time
# bounded for multi-TiB exports.
ZERO_STEP = 1024**3

# Largest BLOCK_STATUS request: the most a 32-bit length allows, aligned
# to any minimum block size a server may advertise (at most 64 KiB). A
# reply's size follows the image's fragmentation, not the length asked,
# and a 64 TiB export costs 16,384 round trips instead of 65,536 in
# 1 GiB steps: measured with qemu-nbd on a fragmented 64 TiB qcow2, 1.4
# s instead of 5.9 s, a quarter of the client CPU.
EXTENTS_STEP = 2**32 - 64 * 1024

# BLOCK_STATUS commands in flight during a scan, so the server answers
# the next steps while we merge this one. On a loaded machine, more let
# the server answer while the daemon waits for a CPU (qemu-nbd works on
# 16 at a time, the rest wait in the socket): the whole map of a
# fragmented 64 TiB qcow2 over HTTP, load 4-7, six alternating runs
# each, took a median of 1.02 s with 32 against 1.17 s with 8, daemon
# CPU 0.37 s against 0.41 s.
EXTENTS_IN_FLIGHT = 32

# Buffer of zeros for servers without WRITE_ZEROES.
ZERO_BUFFER_SIZE = 1024**2

# Flags of base:allocation and of qemu dirty bitmaps.
STATE_HOLE = 1
STATE_ZERO = 2
STATE_DIRTY = 1

# Errnos Python maps to ConnectionError or TimeoutError subclasses; see
# the module docstring for why commands never raise them.
CONNECTION_ERRNOS = frozenset({
    errno.EPIPE, errno.ESHUTDOWN, errno.ECONNRESET, errno.ECONNABORTED,
    errno.ECONNREFUSED, errno.ETIMEDOUT,
})


# Opening.

def open(
    url: str,
    mode: Mode,
    *,
    sparse: bool = False,
    dirty: bool = False,
    max_connections: int = 8,
    connect_timeout: float = CONNECT_TIMEOUT,
    concurrent: bool = False,
) -> NBDBackend:
    """
    Connect to the NBD export at url.

    mode is "r" (writes are refused) or "r+". sparse makes zero() allow
    the server to deallocate. dirty requests the export's dirty bitmap, for
    extents("dirty"). concurrent lets several threads use the backend at
    once (an event loop thread drives the connection). Raises ConnectError
    if the server cannot be reached or the export opened within
    connect_timeout seconds.

    >>> backend = open("nbd:unix:/run/sock", "r")     # doctest: +SKIP
    >>> backend.size()                                # doctest: +SKIP
    6442450944
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"Invalid mode: {mode!r}")
    if max_connections < 1:
        raise ValueError(f"Invalid max_connections: {max_connections}")
    try:
        address = parse_url(url)
    except ValueError as e:
        log.warning("%s", e)
        # The message would show the socket path to an HTTP client.
        raise ConnectError("Invalid NBD URL") from None

    h, bitmap = connect(address, dirty, connect_timeout)

    def reconnect() -> Any:
        # Another connection to the export, for reads (nbd_spread).
        return connect(address, False,
                       min(connect_timeout, SPREAD_CONNECT_TIMEOUT),
                       reads_only=True)[0]

    backend = NBDBackend(h, mode, sparse=sparse, dirty_context=bitmap,
                         max_connections=max_connections,
                         loop=EventLoop(h) if concurrent else None,
                         reconnect=reconnect)
    log.debug("Opened %s mode=%s sparse=%s dirty=%s bitmap=%s caps=%s",
              address, mode, sparse, dirty, bitmap, backend.capabilities)
    return backend


# The backend.

class NBDBackend:
    """An NBD export; see open()."""

    def __init__(
        self,
        h: Any,
        mode: Mode,
        *,
        sparse: bool,
        dirty_context: str | None,
        max_connections: int,
        loop: EventLoop | None = None,
        reconnect: Callable[[], Any] | None = None,
    ) -> None:
        self._h: Any = h
        self._loop = loop
        self._reconnect = reconnect
        self._mode = mode
        self._sparse = sparse
        self._dirty_context = dirty_context
        self._size = int(h.get_size())
        self._contexts = frozenset(
            name for name in (BASE_ALLOCATION, ALLOCATION_DEPTH)
            if h.can_meta_context(name))
        self._can_zero = bool(h.can_zero())
        self._can_flush = bool(h.can_flush())
        # A flush covers every connection's writes only with multi-conn
        # (NBD protocol, "NBD_FLAG_CAN_MULTI_CONN").
        self._multi_conn = bool(h.can_multi_conn())
        self._block_size = max(1, int(h.get_block_size(nbd.SIZE_MINIMUM)))
        max_request = int(h.get_block_size(nbd.SIZE_MAXIMUM))
        if not max_request:
            max_request = DEFAULT_MAX_REQUEST
        max_request = min(max_request, LIBNBD_MAX_REQUEST)
        self._max_request = max(
            self._block_size, align.round_down(max_request, self._block_size))
        self._zeros: bytearray | None = None
        extents = {"zero"}
        if dirty_context:
            extents.add("dirty")
        self._capabilities = Capabilities(
            block_size=self._block_size,
            max_readers=max_connections,
            max_writers=max_connections,
            extents=frozenset(extents),
            dirty_context=dirty_context or "",
            zero=self._can_zero,
            flush=self._can_flush,
            shared_flush=self._can_flush and self._multi_conn,
            allocation_depth=ALLOCATION_DEPTH in self._contexts,
            concurrent=loop is not None,
            io_queue=loop is None,
        )

    def __repr__(self) -> str:
        return (f"<NBDBackend mode={self._mode!r} size={self._size} "
                f"closed={self._h is None}>")

    def __enter__(self) -> NBDBackend:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # Backend protocol.

    @property
    def name(self) -> str:
        return "nbd"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def sparse(self) -> bool:
        return self._sparse

    def size(self) -> int:
        self._handle("size")
        return self._size

    @property
    def max_request(self) -> int:
        """The longest read or write one command does (block aligned)."""
        return self._max_request

    def readinto(self, offset: int, buf: memoryview) -> int:
        h = self._handle("read")
        if offset < 0:
            raise ValueError(f"Invalid offset: {offset}")
        view = byte_view(buf)
        length = max(0, min(len(view), self._size - offset))
        if length == 0:
            return 0

        s = align.split(offset, length, self._block_size)
        if s.head:
            block = self._read_block(h, s.head_block)
            view[:s.head] = block[s.skip:s.skip + s.head]
        if s.middle:
            self._pipeline(h, "read", view[s.head:s.head + s.middle],
                           s.middle_offset)
        if s.tail:
            block = self._read_block(h, s.tail_offset)
            view[s.head + s.middle:length] = block[:s.tail]
        return length

    def write(self, offset: int, buf: memoryview) -> None:
        h = self._writable_handle("write")
        view = byte_view(buf)
        self._check_range("write", offset, len(view))
        length = len(view)
        if length == 0:
            return

        s = align.split(offset, length, self._block_size)
        if s.head:
            self._rmw(h, s.head_block, s.skip, view[:s.head])
        if s.middle:
            self._pipeline(h, "write", view[s.head:s.head + s.middle],
                           s.middle_offset)
        if s.tail:
            self._rmw(h, s.tail_offset, 0, view[s.head + s.middle:])

    def zero(self, offset: int, length: int) -> None:
        """
        Make the range read as zeros with NBD WRITE_ZEROES, keeping it
        allocated (NO_HOLE) unless the backend is sparse. Without
        WRITE_ZEROES on the server, zeros are written.
        """
        h = self._writable_handle("zero")
        self._check_range("zero", offset, length)
        if length == 0:
            return

        s = align.split(offset, length, self._block_size)
        if s.head:
            self._rmw(h, s.head_block, s.skip, memoryview(bytes(s.head)))
        if s.middle:
            if self._can_zero:
                self._zero_command(h, s.middle_offset, s.middle)
            else:
                self._write_zeros(h, s.middle_offset, s.middle)
        if s.tail:
            self._rmw(h, s.tail_offset, 0, memoryview(bytes(s.tail)))

    def flush(self) -> None:
        h = self._handle("flush")
        if not self._can_flush:
            # The server has no cache to flush (no SEND_FLUSH flag).
            return
        self._command(h, "flush", None, None, h.flush, h.aio_flush)

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[Extent]:
        """
        Yield extents of the "zero" or "dirty" context; see the module
        docstring. Raises UnsupportedContext at once (not on iteration) for
        an unknown context, or "dirty" without a bitmap.
        """
        h = self._handle("extents")
        end = self._size if end is None else min(end, self._size)
        if context == "zero":
            return self._zero_extents(h, start, end)
        if context == "dirty":
            if self._dirty_context is None:
                raise UnsupportedContext(
                    "NBD export has no dirty bitmap (the backend must be "
                    "opened with dirty=True and the export must have "
                    "exactly one bitmap)")
            return self._dirty_extents(h, self._dirty_context, start, end)
        raise UnsupportedContext(
            f"Extents context {context!r} is not supported by the nbd "
            "backend")

    def io_queue(self, depth: int) -> CommandQueue:
        """
        Reads and writes relayed as one command each, driven and
        collected by the calling thread, which must then be the backend's
        only user (``nbd_loop.CommandQueue``). Raises OSError for a
        backend with an event loop (``open(concurrent=True)``): the loop
        drives the handle.
        """
        h = self._handle("queue")
        if self._loop is not None:
            raise OSError(errno.ENOTSUP,
                          "NBD backend driven by its event loop")
        return CommandQueue(h, self._queueable)

    def spread_queue(self, depth: int, connections: int,
                     on_given_back: Callable[[], None]
                     ) -> SpreadQueue | None:
        """
        Like ``io_queue``, with reads spread over this backend's
        connection and up to ``connections - 1`` more to the export
        (``nbd_spread``), for a read-only backend. None when no other
        connection opens (the server may be at its limit); else
        ``on_given_back`` runs once the extra connections are closed.
        """
        if self._mode != "r" or self._reconnect is None:
            return None
        main = self.io_queue(depth)
        extras = []
        for _ in range(connections - 1):
            try:
                h = self._reconnect()
            except ConnectError as e:
                log.debug("No other connection for reads: %s", e)
                break
            try:
                extras.append((CommandQueue(h, self._queueable), h))
            except nbd.Error as e:
                log.debug("Other connection failed: %s", e)
                disconnect(h)
                break
        if not extras:
            return None
        return SpreadQueue(main, extras, disconnect, on_given_back)

    def _queueable(self, write: bool, offset: int, length: int) -> bool:
        """Whether one command does the request: aligned, inside the
        export, at most the server's maximum request."""
        bs = self._block_size
        return (0 < length <= self._max_request and offset >= 0
                and not offset % bs and not length % bs
                and offset + length <= self._size
                and (not write or self._mode == "r+"))

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            if self._loop is not None:
                self._loop.close()
            disconnect(h)

    # Reading and writing.

    def _pread(self, h: Any, view: memoryview, offset: int) -> None:
        if self._loop is not None:
            self._pipeline(h, "read", view, offset)
            return
        try:
            cookie = h.aio_pread(view, offset)
            while not h.aio_command_completed(cookie):
                h.poll(-1)
        except nbd.Error as e:
            raise _command_error(h, "read", e, offset, len(view)) from None

    def _pipeline(self, h: Any, operation: str, view: memoryview,
                  offset: int) -> None:
        """
        Read into or write from view (block aligned) at offset, in pieces
        of PIPELINE_REQUEST (or the server's maximum) all in flight.

        Every command sent is waited for even after one fails: their
        buffers are the caller's, which must not change under libnbd once
        we return. The failure at the lowest offset is raised.
        """
        if self._loop is not None:
            self._pipeline_in_loop(self._loop, h, operation, view, offset)
            return
        step = self._pipeline_step()
        submit = h.aio_pread if operation == "read" else h.aio_pwrite
        sent: list[tuple[int, int, int]] = []
        errors: list[tuple[int, OSError]] = []
        done = 0
        while done < len(view):
            n = min(step, len(view) - done)
            try:
                cookie = submit(view[done:done + n], offset + done)
            except nbd.Error as e:
                errors.append((offset + done, _command_error(
                    h, operation, e, offset + done, n)))
                break
            sent.append((cookie, offset + done, n))
            done += n
        while sent:
            waiting = []
            for cookie, start, n in sent:
                try:
                    if not h.aio_command_completed(cookie):
                        waiting.append((cookie, start, n))
                except nbd.Error as e:
                    errors.append((start, _command_error(
                        h, operation, e, start, n)))
            sent = waiting
            if not sent:
                break
            try:
                h.poll(-1)
            except nbd.Error as e:
                # Normally the handle is dead then, and a dead handle
                # completes nothing more and touches no buffer. libnbd
                # retries EINTR itself, so anything else would fail again.
                start, n = sent[0][1], sent[0][2]
                errors.append((start, _command_error(
                    h, operation, e, start, n)))
                break
        if errors:
            raise min(errors, key=lambda item: item[0])[1]

    def _pipeline_step(self) -> int:
        return max(self._block_size, align.round_down(
            min(PIPELINE_REQUEST, self._max_request), self._block_size))

    def _pipeline_in_loop(self, loop: EventLoop, h: Any, operation: str,
                          view: memoryview, offset: int) -> None:
        """_pipeline with the event loop driving the handle."""
        step = self._pipeline_step()
        submit = h.aio_pread if operation == "read" else h.aio_pwrite
        sent = []
        errors: list[tuple[int, OSError]] = []
        done = 0
        while done < len(view):
            n = min(step, len(view) - done)
            completion = loop.completion()
            try:
                cookie = submit(view[done:done + n], offset + done,
                                completion=completion)
            except nbd.Error as e:
                # A command not submitted never completes.
                loop.discard(completion)
                errors.append((offset + done, _command_error(
                    h, operation, e, offset + done, n)))
                break
            sent.append((completion, cookie, offset + done, n))
            done += n
        loop.wake()
        for completion, cookie, start, n in sent:
            loop.wait(completion)
            try:
                if not h.aio_command_completed(cookie):
                    # The loop stopped (closing) before the reply.
                    errors.append((start, OSError(
                        errno.EIO, f"{operation}: NBD connection closed")))
            except nbd.Error as e:
                errors.append((start, _command_error(
                    h, operation, e, start, n)))
        if errors:
            raise min(errors, key=lambda item: item[0])[1]

    def _pwrite(self, h: Any, view: memoryview, offset: int) -> None:
        self._command(h, "write", offset, len(view), h.pwrite, h.aio_pwrite,
                      view, offset)

    def _read_block(self, h: Any, start: int) -> bytearray:
        """One block at start; bytes past the export end read as zeros."""
        bs = self._block_size
        block = bytearray(bs)
        n = max(0, min(bs, self._size - start))
        if n:
            self._pread(h, memoryview(block)[:n], start)
        return block

    def _rmw(self, h: Any, start: int, skip: int, data: memoryview) -> None:
        """Replace len(data) bytes at skip in the block at start."""
        block = self._read_block(h, start)
        block[skip:skip + len(data)] = data
        n = min(len(block), self._size - start)
        self._pwrite(h, memoryview(block)[:n], start)

    def _zero_command(self, h: Any, offset: int, length: int) -> None:
        flags = 0 if self._sparse else nbd.CMD_FLAG_NO_HOLE
        step = align.round_down(ZERO_STEP, self._block_size)
        done = 0
        while done < length:
            n = min(length - done, step)
            self._command(h, "zero", offset + done, n, h.zero, h.aio_zero,
                          n, offset + done, flags=flags)
            done += n

    def _write_zeros(self, h: Any, offset: int, length: int) -> None:
        if self._zeros is None:
            size = align.round_down(min(ZERO_BUFFER_SIZE, self._max_request),
                               self._block_size)
            self._zeros = bytearray(size)
        zeros = memoryview(self._zeros)
        done = 0
        while done < length:
            n = min(length - done, len(zeros))
            self._pwrite(h, zeros[:n], offset + done)
            done += n

    # Extents.

    def _zero_extents(self, h: Any, start: int, end: int
                      ) -> Iterator[ZeroExtent]:
        if start >= end:
            return iter(())
        if BASE_ALLOCATION not in self._contexts:
            return iter([ZeroExtent(start, end - start, zero=False,
                                    hole=False)])
        depth = ALLOCATION_DEPTH in self._contexts
        second = ALLOCATION_DEPTH if depth else None

        def flags(alloc: int, other: int) -> tuple[bool, bool]:
            return bool(alloc & STATE_ZERO), depth and other == 0

        return Runs(ZeroExtent, merge_runs(self._scan(h, second, start, end),
                                           flags), start, end)

    def _dirty_extents(self, h: Any, bitmap: str, start: int, end: int
                       ) -> Iterator[DirtyExtent]:
        def flags(alloc: int, bits: int) -> tuple[bool, bool]:
            return bool(bits & STATE_DIRTY), bool(alloc & STATE_ZERO)

        return Runs(DirtyExtent, merge_runs(self._scan(h, bitmap, start, end),
                                            flags), start, end)

    def _scan(self, h: Any, second: str | None, start: int, end: int
              ) -> Iterator[list[tuple[int, int, int, int]]]:
        """
        Block status of [start, end), a list per reply of (start, length,
        base:allocation flags, flags of context second) items (merged in
        bulk by util.extents.merge_runs: an object per raw item cost more
        than the NBD commands), in steps of EXTENTS_STEP, from
        the block holding start (servers may refuse unaligned requests)
        up to end rounded up to a block. A context missing from a reply
        counts as allocated data (base:allocation 0, depth 1) and clean
        (bitmap 0): never claim zeros or holes the server did not report.
        """
        offset = align.round_down(start, self._block_size)
        stop = min(self._size, align.round_up(end, self._block_size))
        # Steps asked ahead, in order: (offset, count, cookie, replies).
        ahead: collections.deque[_Status] = collections.deque()
        asked = offset
        try:
            while offset < stop:
                while len(ahead) < EXTENTS_IN_FLIGHT and asked < stop:
                    count = min(EXTENTS_STEP, stop - asked)
                    ahead.append(self._send_block_status(h, asked, count))
                    asked += count
                step = ahead.popleft()
                self._wait_block_status(h, step)
                step_end = step.offset + step.count
                # A reply may stop short of the step (servers bound the
                # extents of one reply); the rest is asked on its own.
                while True:
                    items = self._step_items(step.offset, step.count,
                                             step.replies, second)
                    yield items
                    offset = items[-1][0] + items[-1][1]
                    if offset >= step_end:
                        break
                    step = self._send_block_status(h, offset,
                                                   step_end - offset)
                    self._wait_block_status(h, step)
        finally:
            # Never leave commands running into replies nobody reads.
            for step in ahead:
                try:
                    self._wait_block_status(h, step)
                except OSError:
                    pass

    def _step_items(self, offset: int, count: int,
                    replies: dict[str, list[int]],
                    second: str | None) -> list[tuple[int, int, int, int]]:
        """One reply's items, never empty."""
        alloc = replies.get(BASE_ALLOCATION)
        if alloc is None:
            alloc = [count, 0]
        other = replies.get(second) if second is not None else None
        if other is None:
            other = [count, 1 if second == ALLOCATION_DEPTH else 0]
        if len(other) == 2:
            if len(alloc) == 2:
                # One extent in each context, what most steps of a big
                # sparse image get: intersect's answer without its loop
                # (nor a min() call).
                n = alloc[0]
                if other[0] < n:
                    n = other[0]
                if count < n:
                    n = count
                if n > 0:
                    return [(offset, n, alloc[1], other[1])]
            # One extent in the second context (no such context, or a
            # qcow2 image without a backing file): the steps holding the
            # fragments of an image, where looping cost most.
            items = spread(offset, alloc, other[1],
                           offset + min(count, other[0]))
        else:
            items = list(intersect(offset, alloc, other, offset + count))
        if not items:
            raise OSError(errno.EPROTO,
                          f"NBD server returned no block status at "
                          f"offset {offset}")
        return items

    def _send_block_status(self, h: Any, offset: int, count: int
                           ) -> _Status:
        # Each context's entries as libnbd gives them, flat: length,
        # flags, length, flags... (pairs would cost a tuple each).
        replies: dict[str, list[int]] = {}

        def extent(context: str, start: int, entries: list[int],
                   err: Any) -> int:
            # A buggy server may answer a context twice; keep the first.
            if context not in replies:
                replies[context] = entries
            return 0

        loop = self._loop
        completion = loop.completion() if loop is not None else None
        try:
            if completion is None:
                cookie = h.aio_block_status(count, offset, extent)
            else:
                cookie = h.aio_block_status(count, offset, extent,
                                            completion=completion)
        except nbd.Error as e:
            if loop is not None and completion is not None:
                loop.discard(completion)
            raise _command_error(h, "block status", e, offset,
                                 count) from None
        if loop is not None:
            loop.wake()
        return _Status(offset, count, cookie, replies, completion)

    def _wait_block_status(self, h: Any, step: _Status) -> None:
        try:
            if self._loop is not None and step.completion is not None:
                # The loop drives the handle (rule 2 of nbd_loop).
                self._loop.wait(step.completion)
                if not h.aio_command_completed(step.cookie):
                    raise OSError(errno.EIO,
                                  "block status: NBD connection closed")
                return
            while not h.aio_command_completed(step.cookie):
                h.poll(-1)
        except nbd.Error as e:
            raise _command_error(h, "block status", e, step.offset,
                                 step.count) from None

    # Helpers.

    def _command(self, h: Any, operation: str, offset: int | None,
                 length: int | None, call: Any, aio_call: Any, *args: Any,
                 **kwargs: Any) -> None:
        """
        Run one command and wait for it: ``call`` (synchronous), or with
        the event loop its aio twin ``aio_call`` waited for through the
        loop (a synchronous call would race the loop for its reply).
        """
        loop = self._loop
        try:
            if loop is None:
                call(*args, **kwargs)
                return
            completion = loop.completion()
            try:
                cookie = aio_call(*args, completion=completion, **kwargs)
            except nbd.Error:
                loop.discard(completion)
                raise
            loop.wake()
            loop.wait(completion)
            if not h.aio_command_completed(cookie):
                raise OSError(errno.EIO,
                              f"{operation}: NBD connection closed")
        except nbd.Error as e:
            raise _command_error(h, operation, e, offset, length) from None

    def _handle(self, operation: str) -> Any:
        h = self._h
        if h is None:
            raise OSError(errno.EBADF, f"{operation}: backend is closed")
        return h

    def _writable_handle(self, operation: str) -> Any:
        h = self._handle(operation)
        if self._mode != "r+":
            raise OSError(errno.EPERM,
                          f"{operation}: backend opened read only")
        return h

    def _check_range(self, operation: str, offset: int, length: int
                     ) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"Invalid range: offset={offset} "
                             f"length={length}")
        if offset + length > self._size:
            raise OSError(errno.ENOSPC,
                          f"{operation}: range ends at {offset + length}, "
                          f"past the end of the NBD export at {self._size}")


# Not frozen: made for every step of a scan, and a frozen dataclass
# costs twice as much to make.
@dataclasses.dataclass(slots=True)
class _Status:
    """A block status command sent, and the replies it collects."""

    offset: int
    count: int
    cookie: int
    # Flat entries by context (see _send_block_status).
    replies: dict[str, list[int]]
    # Its completion, when the event loop drives the handle.
    completion: Completion | None = None


def intersect(
    start: int,
    a: Sequence[int],
    b: Sequence[int],
    end: int,
) -> Iterator[tuple[int, int, int, int]]:
    """
    Combine two flat lists of length, flags, length, flags... (block
    status entries as libnbd gives them) starting at start into (start,
    length, flags_a, flags_b) ranges, split wherever either list changes.
    Stops at end or where the shorter list ends, since NBD contexts may
    cover different lengths in one reply.

    >>> list(intersect(0, [4, 1], [1, 7, 5, 8], 10))
    [(0, 1, 1, 7), (1, 3, 1, 8)]
    """
    ia = ib = 0
    na, nb = len(a) - 1, len(b) - 1
    pos = start
    a_end = b_end = start
    fa = fb = 0
    while pos < end:
        while a_end <= pos:
            if ia >= na:
                return
            a_end += a[ia]
            fa = a[ia + 1]
            ia += 2
        while b_end <= pos:
            if ib >= nb:
                return
            b_end += b[ib]
            fb = b[ib + 1]
            ib += 2
        stop = min(a_end, b_end, end)
        yield pos, stop - pos, fa, fb
        pos = stop


def spread(start: int, a: list[int], fb: int, end: int
           ) -> list[tuple[int, int, int, int]]:
    """
    The answer of intersect for a second list of one range covering
    [start, end) with flags fb, in C-level steps (accumulate, bisect,
    zip) instead of a Python loop per range.

    >>> spread(0, [4, 1, 4, 2, 4, 3], 7, 6)
    [(0, 4, 1, 7), (4, 2, 2, 7)]
    """
    lengths = a[0::2]
    if 0 in lengths:
        # intersect skips empty ranges; rare enough to take its loop.
        return list(intersect(start, a, [end - start, fb], end))
    starts = list(itertools.accumulate(lengths, initial=start))
    # The ranges starting before end; the last may need a cut.
    k = bisect.bisect_left(starts, end, 0, len(lengths))
    items = list(zip(starts[:k], lengths[:k], a[1:2 * k:2],
                     itertools.repeat(fb)))
    if k and starts[k] > end:
        pos = starts[k - 1]
        items[-1] = (pos, end - pos, a[2 * k - 1], fb)
    return items


def _command_error(h: Any, operation: str, e: Any, offset: int | None = None,
                   length: int | None = None) -> OSError:
    """An OSError for a failed NBD command; see the module docstring."""
    code = e.errnum or errno.EIO
    reason = nbd_connect.reason(e)
    if h.aio_is_dead() or h.aio_is_closed():
        # Whatever libnbd saw first (EOF, ECONNRESET, ENOTCONN for the
        # next commands), the cause is the same.
        code = errno.EIO
        reason = f"connection to NBD server lost ({reason})"
    if code in CONNECTION_ERRNOS:
        code = errno.EIO
    where = "" if offset is None else f" at offset {offset} length {length}"
    return OSError(code, f"NBD {operation} failed{where}: {reason}")
