# SPDX-License-Identifier: GPL-2.0-or-later
"""
The concurrent copy engine: move an image between two backends with
several connections.

Theory of operation
-------------------
The calling thread reads the source's extents and turns them into
requests (:func:`plan`): ``copy`` for data, ``zero`` for ranges that must
read as zeros on the target, and ``skip`` for ranges that need nothing
(their bytes still count as progress). Requests are at most 128 MiB, so
progress moves and a cancelled copy stops in bounded time.

Copy and zero requests go through a bounded queue (depth 32) to N worker
threads. Each worker owns a source connection, a destination connection
and one page-aligned buffer, reused for every request, so data moves
from the source into that buffer and out to the destination without other
copies. The first worker uses the destination connection the caller
opened (it has negotiated the server's features already) and leaves it
open; every other connection is opened by the worker that uses it and
closed by it. Concurrent workers write disjoint ranges, which is what the
servers' max_writers allow. An observer (``copy(observer=...)``) sees
each piece of data a worker read, in order within its request, in the
thread that read it; upload verification hashes it there.

When a worker has no more requests it flushes its destination once; a
copy is complete only after every worker has flushed. With
:class:`Checkpoints`, the worker whose request completes the next
``every`` bytes also flushes midway and reports what that flush made
durable (a resumable download records it; an upload leaves the record
to the server's ledger). A resumed copy passes the ranges done before
(``done``), and :func:`skip_done` turns their requests into skips.

The first error in any thread aborts the queue: other workers stop
after their current request, nobody flushes, and the error is raised in
the calling thread.
An exception in the calling thread itself (KeyboardInterrupt, or the
exception a signal handler raises) aborts the same way, so Ctrl-C leaves
no thread behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import functools
import logging
import mmap
import threading
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

from ..backends.base import Backend
from ..backends.http_retry import Retry
from ..native import ioutil
from ..util import pipeline
from ..util.extents import (
    DirtyExtent,
    Extent,
    ZeroExtent,  # noqa: F401 (used by the doctests)
)
from ..util.rangeset import RangeSet
from . import _stream

log = logging.getLogger("client.io")

MAX_WORKERS = 4
BUFFER_SIZE = 4 * 1024**2
MAX_BUFFER_SIZE = 32 * 1024**2
MIN_BUFFER_SIZE = 4096
# What a copy's workers hold in buffers by default, where it measured
# faster: BUFFER_SIZE per worker at MAX_WORKERS, and larger buffers with
# fewer workers, so a single connection still keeps as many requests in
# flight. On the benchmark machine (2 GiB image, 1 connection), 16 MiB
# instead of 4 MiB buffers took 20% less time for a qcow2 upload
# (qemu-nbd reading), 24% less for a qcow2 download and 6-11% less for a
# raw download; with 4 connections larger buffers gained nothing. A raw
# upload, which the client reads itself, was 17% slower over TLS, so it
# keeps BUFFER_SIZE.
IN_FLIGHT = BUFFER_SIZE * MAX_WORKERS
# Largest copy request, so progress moves and a cancel stops in bounded
# time.
MAX_REQUEST = 128 * 1024**2
# Largest PUT to a destination that retries its requests
# (backends.http_retry) but cannot tell what a cut PUT wrote (a server
# without the "written" feature, or a ticket whose ledger had ranges
# before this upload). A PUT cut by a broken connection is sent again
# whole, so a cut costs up to one PUT. A destination that resumes cut
# PUTs from their written prefix (``_resumes_puts``) gets streamed
# MAX_REQUEST PUTs instead. Through a relay cutting every
# connection after 256 MiB (bench/relay_retry.py, 1 GiB of random data,
# 4 connections), the client sent 50% more than the image with one
# streamed PUT per copy request (MAX_REQUEST), 6.2% with 16 MiB PUTs,
# 3.1% with 8 MiB and 1.2% with 4 MiB. Small PUTs cost throughput even
# without cuts, since the daemon writes a PUT's data before answering:
# a 1 GiB upload without cuts took 30-45% longer (TCP, 1 and 4
# connections, a loaded machine) than with streamed PUTs.
RESEND_REQUEST = 4 * 1024**2
# Largest zero request. Zeroing moves no data and servers split it into
# their own steps, so bigger requests only save round trips: an empty
# 1 TiB disk is 1024 requests instead of 8192.
MAX_ZERO_REQUEST = 1024**3
QUEUE_DEPTH = 32

Op = Literal["copy", "zero", "skip"]
Opener = Callable[[], Backend]


class Observer(Protocol):
    """
    Sees the data a copy reads (``client._checksum.Digests``): when a
    worker starts a copy request it calls ``reading(offset, length)``, and
    the function returned with each piece it read, in order, before the
    piece is sent, in the thread that read it.
    """

    def reading(self, offset: int, length: int
                ) -> Callable[[memoryview], None]:
        ...


class Progress(Protocol):
    """What the engine needs from a progress object (tqdm compatible)."""

    def update(self, n: int) -> None:
        ...


@dataclasses.dataclass(frozen=True)
class Request:
    op: Op
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def plan(extents: Iterable[Extent], *, zero: bool = True, hole: bool = True,
         max_request: int | None = None, max_copy: int | None = None
         ) -> Iterator[Request]:
    """
    Turn source extents into requests of at most max_request bytes (by
    default max_copy or MAX_REQUEST for copies, MAX_ZERO_REQUEST for
    zeros).

    Zero context: data is copied; a zero range is zeroed when ``zero`` is
    true (the target is not known to be zero), except that a hole is left
    alone when ``hole`` is false (a shallow copy keeps holes so the target's
    backing file shows through). Dirty context: dirty data is copied,
    dirty zeros are zeroed, clean ranges are skipped.

    >>> [r.op for r in plan([ZeroExtent(0, 4, False, False),
    ...                      ZeroExtent(4, 4, True, False)], zero=False)]
    ['copy', 'skip']
    """
    for ext in extents:
        op: Op
        if isinstance(ext, DirtyExtent):
            if not ext.dirty:
                op = "skip"
            else:
                op = "zero" if ext.zero else "copy"
        else:
            if not ext.zero:
                op = "copy"
            elif zero and (hole or not ext.hole):
                op = "zero"
            else:
                op = "skip"
        if op == "skip":
            # Skipped ranges do no I/O; one request keeps progress simple.
            yield Request(op, ext.start, ext.length)
            continue
        limit = max_request or (max_copy or MAX_REQUEST if op == "copy"
                                else MAX_ZERO_REQUEST)
        start, end = ext.start, ext.start + ext.length
        while start < end:
            # Cut at multiples of limit, so requests of a long extent
            # cover whole blocks of any block size dividing it (verify
            # hashes whole blocks as they pass).
            n = min(end - start, limit - start % limit)
            yield Request(op, start, n)
            start += n


def skip_done(requests: Iterable[Request], done: Iterable[tuple[int, int]]
              ) -> Iterator[Request]:
    """
    Turn the parts of requests inside done ranges (``(start, end)``
    pairs, ascending and disjoint, as the requests are) into skips: a
    resumed copy does not move again what the interrupted one moved.
    done is consumed lazily, as far as the requests reach.

    >>> reqs = [Request("copy", 0, 10), Request("zero", 10, 10)]
    >>> [(r.op, r.start, r.length)
    ...  for r in skip_done(reqs, [(2, 4), (8, 12)])]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('copy', 0, 2), ('skip', 2, 2), ('copy', 4, 4), ('skip', 8, 2),
     ('skip', 10, 2), ('zero', 12, 8)]
    """
    ranges = iter(done)
    cur = next(ranges, None)
    for req in requests:
        if req.op == "skip":
            yield req
            continue
        pos, end = req.start, req.end
        while pos < end:
            while cur is not None and cur[1] <= pos:
                cur = next(ranges, None)
            if cur is not None and cur[0] <= pos:
                stop = min(cur[1], end)
                yield Request("skip", pos, stop - pos)
            else:
                stop = end if cur is None else min(cur[0], end)
                yield Request(req.op, pos, stop - pos)
            pos = stop


class Checkpoints:
    """
    Mid-copy flushes: after every ``every`` bytes of completed copy and
    zero requests, the worker that completed them flushes its destination
    and passes ``record`` the ranges done before that flush started, now
    durable. Ranges done before the copy (``done``) and skipped ranges
    (nothing to write) count as done too.

    Only one checkpoint runs at a time; one that comes due meanwhile
    waits for the next completed request. Flushing one connection is
    enough: file descriptors of one file share its fsync, and qemu-nbd and
    the daemon flush the whole image on any connection.

    Example::

        checkpoints = Checkpoints(256 * 1024**2, record=sidecar.save)
        copy(src, dst, ..., checkpoints=checkpoints)
    """

    def __init__(self, every: int,
                 record: Callable[[RangeSet], None] | None = None,
                 done: RangeSet | None = None) -> None:
        if every < 1:
            raise ValueError(f"Invalid checkpoint interval: {every}")
        self.every = every
        self._record = record
        self._done = done.copy() if done is not None else RangeSet()
        self._since = 0
        self._running = False
        self._lock = threading.Lock()

    def skipped(self, req: Request) -> None:
        """req needed no I/O (called by the planning thread)."""
        with self._lock:
            self._done.add(req.start, req.end)

    def completed(self, req: Request, dst: Backend) -> None:
        """req was written through dst (called by the worker)."""
        with self._lock:
            self._done.add(req.start, req.end)
            self._since += req.length
            if self._since < self.every or self._running:
                return
            self._since = 0
            self._running = True
            # Taken before the flush starts: only these are durable
            # after it, not what other workers complete meanwhile.
            snapshot = self._done.copy()
        try:
            dst.flush()
            if self._record is not None:
                self._record(snapshot)
        finally:
            with self._lock:
                self._running = False


class Aborted(Exception):
    """The copy was aborted; the error that aborted it is raised instead."""


class _Queue:
    """
    A bounded, closable FIFO for one producer and many consumers.

    ``close`` means no more items: consumers drain what is left and then
    get None. ``abort`` drops what is left: consumers get None at once and
    the producer's next ``put`` raises :class:`Aborted`.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: list[Request] = []
        self._maxsize = maxsize
        self._closed = False
        self._aborted = False
        self._cond = threading.Condition()

    def put(self, item: Request) -> None:
        with self._cond:
            while len(self._items) >= self._maxsize and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise Aborted
            if self._closed:
                raise ValueError("put on a closed queue")
            self._items.append(item)
            self._cond.notify_all()

    def get(self) -> Request | None:
        with self._cond:
            while not self._items and not (self._closed or self._aborted):
                self._cond.wait()
            if self._aborted or not self._items:
                return None
            item = self._items.pop(0)
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def aborted(self) -> bool:
        with self._cond:
            return self._aborted


def _retries(dst: Backend) -> bool:
    """Whether dst sends failed requests again (see RESEND_REQUEST)."""
    retry = getattr(dst, "retry", None)
    return isinstance(retry, Retry) and retry.retries > 0


def _resumes_puts(dst: Backend) -> bool:
    """
    Whether dst sends a cut streamed PUT again from where the server's
    ledger says its written prefix ends, so streamed PUTs of up to
    MAX_REQUEST cost a cut little (see backends.http put_stream).
    """
    return bool(getattr(dst, "resumes_puts", False))


def _progress_callback(progress: Any) -> Callable[[int], None]:
    if progress is None:
        return lambda n: None
    update = getattr(progress, "update", None)
    if callable(update):
        return update  # type: ignore[no-any-return]
    if callable(progress):
        # Upstream accepted a bare callable before tqdm-like objects.
        return progress  # type: ignore[no-any-return]
    raise TypeError(f"Invalid progress object: {progress!r}")


def deep_buffer_size(workers: int) -> int:
    """
    IN_FLIGHT shared by the workers, in whole MiB, never below
    BUFFER_SIZE.

    >>> [deep_buffer_size(n) // 1024**2 for n in (1, 2, 3, 4, 8)]
    [16, 8, 5, 4, 4]
    """
    share = IN_FLIGHT // max(1, workers) // 1024**2 * 1024**2
    return min(MAX_BUFFER_SIZE, max(BUFFER_SIZE, share))


def copy(src: Backend, dst: Backend, *, open_src: Opener, open_dst: Opener,
         dirty: bool = False, max_workers: int = MAX_WORKERS,
         buffer_size: int = BUFFER_SIZE, zero: bool = True,
         hole: bool = True, detect_zeroes: bool = False,
         progress: Any = None, name: str = "copy",
         done: Iterable[tuple[int, int]] | None = None,
         checkpoints: Checkpoints | None = None,
         max_copy: int | None = None,
         observer: Observer | None = None) -> None:
    """
    Copy src to dst with up to max_workers workers.

    src provides the size and extents ("dirty" context if dirty, else
    "zero"); workers read through connections from open_src. The first
    worker writes through dst itself, the others through connections from
    open_dst. src and dst stay open; the caller closes them.

    With detect_zeroes, copied data is checked in ZERO_SEGMENT pieces
    and all-zero pieces are zeroed on dst (or skipped when not zero, the
    target being known to read as zeros), keeping a new image sparse when
    the source reports zeros as data.

    progress is an object with ``update(n)`` (and optionally a ``size``
    attribute, set here to the source size) or a bare callable taking n.
    buffer_size is each worker's buffer. observer, if given, sees the data
    of every copy request as it is read.

    done lists ranges an interrupted copy moved already (``(start, end)``
    pairs in order), skipped now (see :func:`skip_done`); checkpoints
    flushes midway (see :class:`Checkpoints`). max_copy is the largest
    copy request (one PUT or GET when a side is HTTP; MAX_REQUEST by
    default).

    Example::

        copy(nbd_src, http_dst, open_src=image.open, open_dst=http_dst.clone)
    """
    if max_workers < 1:
        raise ValueError(f"Invalid max_workers: {max_workers}")
    buffer_size = max(MIN_BUFFER_SIZE, min(buffer_size, MAX_BUFFER_SIZE))
    update = _progress_callback(progress)
    size = src.size()
    if progress is not None and hasattr(progress, "size"):
        progress.size = size
    extents = src.extents("dirty" if dirty else "zero")
    requests = plan(extents, zero=zero, hole=hole, max_copy=max_copy)
    if done is not None:
        requests = skip_done(requests, done)

    queue = _Queue(QUEUE_DEPTH)
    errors: list[BaseException] = []
    workers = [
        _Worker(f"{name}/{i}", queue, errors, update, buffer_size,
                open_src, dst if i == 0 else None, open_dst,
                _ZeroPolicy(detect_zeroes, zero), checkpoints, observer)
        for i in range(max_workers)
    ]
    for w in workers:
        w.start()
    try:
        for req in requests:
            if req.op == "skip":
                if checkpoints is not None:
                    checkpoints.skipped(req)
                update(req.length)
            else:
                queue.put(req)
        queue.close()
    except Aborted:
        pass
    except BaseException:
        queue.abort()
        for w in workers:
            w.join()
        raise
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


class _Worker:
    """One copy thread with its own connections and buffer."""

    def __init__(self, name: str, queue: _Queue, errors: list[BaseException],
                 update: Callable[[int], None], buffer_size: int,
                 open_src: Opener, dst: Backend | None,
                 open_dst: Opener, zeros: _ZeroPolicy,
                 checkpoints: Checkpoints | None = None,
                 observer: Observer | None = None) -> None:
        self._queue = queue
        self._checkpoints = checkpoints
        self._observer = observer
        self._zeros = zeros
        self._errors = errors
        self._update = update
        self._buffer_size = buffer_size
        self._open_src = open_src
        self._dst = dst
        self._open_dst = open_dst
        self._thread = threading.Thread(target=self._run, name=name,
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        src: Backend | None = None
        dst: Backend | None = None
        # Page aligned, as direct I/O on either side needs.
        buf = ioutil.aligned_buffer(self._buffer_size)
        # Local storage I/O for streamed HTTP ranges runs here, on the
        # second buffer, while this thread moves the other over HTTP.
        helper = _Helper(self._thread.name, self._buffer_size)
        try:
            src = self._open_src()
            dst = self._dst if self._dst is not None else self._open_dst()
            while True:
                req = self._queue.get()
                if req is None:
                    break
                if req.op == "copy":
                    _copy_range(src, dst, req.start, req.length, buf,
                                self._zeros, helper, self._observer)
                else:
                    dst.zero(req.start, req.length)
                if self._checkpoints is not None:
                    self._checkpoints.completed(req, dst)
                self._update(req.length)
            if not self._queue.aborted:
                dst.flush()
        except BaseException as e:
            log.debug("%s failed: %s", self._thread.name, e)
            self._errors.append(e)
            self._queue.abort()
        finally:
            if dst is not None and dst is not self._dst:
                _close(dst)
            if src is not None:
                _close(src)
            helper.close()
            ioutil.release(buf)


class _Helper:
    """
    A worker's second buffer and the thread doing local I/O on it, both
    made on first use: only streamed HTTP ranges need them.
    """

    def __init__(self, name: str, buffer_size: int) -> None:
        self._name = name
        self._buffer_size = buffer_size
        self._buf: mmap.mmap | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def get(self) -> tuple[memoryview, concurrent.futures.Executor]:
        if self._buf is None:
            self._buf = ioutil.aligned_buffer(self._buffer_size)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"{self._name}/io")
        return memoryview(self._buf), self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._buf is not None:
            ioutil.release(self._buf)
            self._buf = None


def _copy_range(src: Backend, dst: Backend, offset: int, length: int,
                buf: mmap.mmap, zeros: _ZeroPolicy,
                helper: _Helper | None = None,
                observer: Observer | None = None) -> None:
    """
    Copy one range, streaming when a side is HTTP: one PUT fed straight
    from the source (upload) or one GET written straight to the target
    (download), through the worker's buffer. With a helper, local reads
    (upload) or writes (download) of one chunk overlap the network
    transfer of the next. observer sees what is read.
    """
    seen = (observer.reading(offset, length) if observer is not None
            else None)
    view = memoryview(buf)
    try:
        streams = (isinstance(dst, _stream.Target)
                   or isinstance(src, _stream.Source))
        spare, executor = (helper.get() if helper is not None and streams
                           else (None, None))
        if (isinstance(dst, _stream.Target) and _retries(dst)
                and not _resumes_puts(dst)
                and _whole_blocks(dst, min(len(view), RESEND_REQUEST))):
            _put_pieces(src, dst, offset, length, view, zeros, spare,
                        executor, seen)
            return
        if isinstance(dst, _stream.Target):
            reader = _Reader(src, offset, seen)
            _stream.read_from(dst, reader, offset, length, view,
                              spare=spare, executor=executor,
                              rewind=reader.rewind,
                              sending=reader.sending if seen else None)
            return
        if isinstance(src, _stream.Source):
            _stream.write_to(src, _Writer(dst, offset, zeros), offset,
                             length, view, spare=spare, executor=executor)
            return
        end = offset + length
        while offset < end:
            chunk = view[:min(len(view), end - offset)]
            n = src.readinto(offset, chunk)
            if n == 0:
                raise OSError(errno.EIO,
                              f"Unexpected end of image at offset {offset}")
            if seen is not None:
                seen(chunk[:n])
            _write(dst, offset, chunk[:n], zeros)
            offset += n
    finally:
        view.release()


def _whole_blocks(dst: Backend, piece: int) -> bool:
    """
    Whether PUTs of piece bytes write whole blocks of dst's hash-on-write
    (if it has one): the server keeps digests only of blocks one request
    wrote whole, and copy requests start at block boundaries.
    """
    hash_on_write = getattr(dst, "hash_on_write", None)
    if hash_on_write is None:
        return True
    block = hash_on_write[1]
    return isinstance(block, int) and 0 < block <= piece \
        and piece % block == 0


def _put_pieces(src: Backend, dst: Backend, offset: int, length: int,
                view: memoryview, zeros: _ZeroPolicy,
                spare: memoryview | None,
                executor: concurrent.futures.Executor | None,
                seen: Callable[[memoryview], None] | None = None) -> None:
    """
    Copy a range to a destination that retries, in PUTs of at most
    RESEND_REQUEST, so a broken connection costs little: each PUT's body
    stays in its buffer until answered, so the backend can send it again,
    while the helper reads the next piece into the other buffer (the
    local read overlaps the network as in one streamed PUT). seen gets
    each piece once, in order (a re-sent PUT is not read again).
    """
    size = min(len(view), RESEND_REQUEST)
    bufs = (view[:size], spare[:size] if spare is not None else view[:size])
    submit = executor.submit if spare is not None and executor else None
    pos = offset
    end = offset + length

    def fill(i: int) -> tuple[int, memoryview]:
        nonlocal pos
        start = pos
        chunk = bufs[i % 2][:min(size, end - start)]
        n = src.readinto(start, chunk)
        if n == 0:
            raise OSError(errno.EIO,
                          f"Unexpected end of image at offset {start}")
        pos += n
        if seen is not None:
            seen(chunk[:n])
        return start, chunk[:n]

    def reads() -> Iterator[Callable[[], tuple[int, memoryview]]]:
        # The next read is asked for once the one before ended, so pos
        # is up to date (see util.pipeline.read_ahead).
        i = 0
        while pos < end:
            yield functools.partial(fill, i)
            i += 1

    def put(piece: tuple[int, memoryview]) -> None:
        _write(dst, piece[0], piece[1], zeros)

    pipeline.read_ahead(reads(), put, submit)


class _Reader:
    """
    A file-like reader over a backend, from offset on. With seen, each
    chunk read is given to seen as it is sent (``sending``), in the
    sending thread, while the reading thread reads the next one: reading
    and hashing in one thread left the sender idle.
    """

    def __init__(self, backend: Backend, offset: int,
                 seen: Callable[[memoryview], None] | None = None) -> None:
        self._backend = backend
        self._start = offset
        self._pos = offset
        self._seen = seen
        # End of what seen got: after a rewind the range is read again,
        # and seen must get each byte once, in order.
        self._seen_end = offset
        # (offset, length) of the chunks read and not sent yet, in order.
        self._unsent: collections.deque[tuple[int, int]] = (
            collections.deque())

    def readinto(self, buf: memoryview) -> int:
        n = self._backend.readinto(self._pos, buf)
        if self._seen is not None:
            self._unsent.append((self._pos, n))
        self._pos += n
        return n

    def sending(self, chunk: memoryview) -> None:
        """The oldest chunk read goes out now: seen gets its new bytes."""
        if self._seen is None:
            return
        start, n = self._unsent.popleft()
        end = start + n
        if end > self._seen_end:
            self._seen(chunk[max(0, self._seen_end - start):n])
            self._seen_end = end

    def rewind(self, skip: int = 0) -> None:
        """Read again from skip bytes past the start, to send (the rest
        of) a range again."""
        self._pos = self._start + skip
        self._unsent.clear()


class _Writer:
    """A file-like writer over a backend, from offset on."""

    def __init__(self, backend: Backend, offset: int,
                 zeros: _ZeroPolicy) -> None:
        self._backend = backend
        self._pos = offset
        self._zeros = zeros

    def write(self, buf: memoryview) -> int:
        _write(self._backend, self._pos, buf, self._zeros)
        self._pos += len(buf)
        return len(buf)


@dataclasses.dataclass(frozen=True)
class _ZeroPolicy:
    # Look for zeros in copied data.
    detect: bool = False
    # Zero what was found; else skip it (the target reads as zeros).
    zero: bool = True


# Granularity of zero detection: the qcow2 cluster size, so a zero piece
# found is one cluster qemu can leave unallocated.
ZERO_SEGMENT = 64 * 1024


def _write(dst: Backend, offset: int, buf: memoryview,
           zeros: _ZeroPolicy) -> None:
    if not zeros.detect:
        dst.write(offset, buf)
        return
    # Runs of data pieces go out as one write, runs of zero pieces as one
    # zero (or nothing), so big data stays in big requests.
    run_start = 0
    run_zero: bool | None = None
    for start in range(0, len(buf), ZERO_SEGMENT):
        piece_zero = ioutil.is_zero(buf[start:start + ZERO_SEGMENT])
        if run_zero is not None and piece_zero != run_zero:
            _write_run(dst, offset, buf, run_start, start, run_zero, zeros)
            run_start = start
        run_zero = piece_zero
    if run_zero is not None:
        _write_run(dst, offset, buf, run_start, len(buf), run_zero, zeros)


def _write_run(dst: Backend, offset: int, buf: memoryview, start: int,
               end: int, is_zero: bool, zeros: _ZeroPolicy) -> None:
    if not is_zero:
        dst.write(offset + start, buf[start:end])
    elif zeros.zero:
        dst.zero(offset + start, end - start)


def _close(backend: Backend) -> None:
    try:
        backend.close()
    except Exception as e:
        # A close error must not hide the error that ended the copy.
        log.warning("Error closing %s: %s", backend, e)
