# SPDX-License-Identifier: GPL-2.0-or-later
"""
The rbd backend: a Ceph RBD image, or one of its snapshots, through
librbd's Python bindings (Debian's python3-rbd and python3-rados).

Theory of operation
-------------------

Shared handles. Every backend of the same image, mode and settings uses
one cluster connection and one open image (``Handle``), counted by
reference and closed with the last backend. Images have the
exclusive-lock feature by default: two writers with handles of their own
would pass the lock back and forth on every write (each hand-over is a
round of watch and notify messages through the OSD), while the writers
of one handle share the lock it holds. It also saves a cluster
connection (a monitor session and a dozen librados threads) per HTTP
connection. librbd's image calls are thread safe and release the GIL,
so connections use the shared image at once.

Timeouts. librados waits for ever by default, so a cluster that stops
answering would hang requests and the daemon's stop. Every handle sets
``client_mount_timeout`` (connecting) and ``rados_osd_op_timeout`` and
``rados_mon_op_timeout`` (each operation); an operation past its timeout
fails with ETIMEDOUT, which we raise as ``Unreachable`` (502 with the
reason). The handle stays usable: librados reconnects by itself when the
cluster is back, so the ticket works again without reopening.

Errors. Opening names what is missing (pool, image, snapshot, the
``from-snap`` base) in a ``BackendError`` (500). cephx refusals (a wrong
key, caps without the image's pool) are PermissionErrors (403) and a
missing key a ``NoKey`` (500), each naming the client
(``rbd_connect.error``). I/O errors become builtin
OSErrors with librbd's errno, except ETIMEDOUT and the other errnos that
Python turns into ``ConnectionError`` or ``TimeoutError`` subclasses: the
HTTP server takes those for a client that went away (see backends.nbd).
Messages and logs name the image (pool/image@snapshot), never the URL's
options or the ceph.conf contents, where credentials live.

I/O. librbd accepts any offset and length (the block size is 1). Reads
larger than one RADOS object are split into object-sized pieces sent
together (``aio_read``), so the OSD works on several objects at once.
A write is one ``aio_write`` of the caller's buffer (librbd splits it
into object requests sent together) and returns once librbd acknowledged
it, so flush has nothing of ours to wait for; the request pipeline
(``transfer.ops``) receives the next buffer meanwhile. The binding's read
returns a new bytes object and its write takes bytes or a bytearray:
``read_pieces`` returns those objects, which downloads send as they are
(``Capabilities.read_pieces``), and ``readinto`` copies them once into
the caller's buffer; writes from
bytearray buffers, which uploads borrow (``bytearray_buffers``), go to
librbd as they are, others are copied once into bytes, and librbd sends
from that memory without a copy of its own (zero-copy writes, see
``rbd_connect.Handle``).

Extents. ``zero`` comes from ``diff_iterate`` over the exported image or
snapshot from its creation: the ranges it reports are data, the others
were never written (or were discarded) and read as zeros; parent images
count (``include_parent``), so a clone's unreported ranges are zeros too.
librbd knows an object's data from the object's start to its last
written byte: 64 KiB written at 1 MiB of an empty object report 1 MiB +
64 KiB of data, the rest of the object as a hole.
``dirty`` is ``diff_iterate`` from the ``from-snap`` base: the reported
ranges are dirty, those reported as not existing were discarded since
(dirty and zero). Where the base had no data, the reported range starts
at the object's start whatever was written: those parts are read and
their all-zero blocks reported clean (see ZERO_SCAN_BLOCK). Both go in
steps of EXTENTS_STEP bytes, bounding the time and memory of each call
whatever the image size.

URL parsing lives in ``backends.rbd_url`` (pure, no librados).
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Iterator

import rbd

from ..native import ioutil
from ..util.extents import DirtyExtent, Extent, ZeroExtent, merge, window
from .base import (
    BackendError,
    Capabilities,
    Mode,
    UnsupportedContext,
)
from .rbd_connect import (
    CONNECT_TIMEOUT,
    OP_TIMEOUT,
    Handle,
    Key,
    acquire,
    check_snapshot,
    error,
    errors,
    release,
)
from .rbd_url import RBDAddress, parse_url

log = logging.getLogger(__name__)

# Writes wait for librbd's acknowledgement; none stay in flight behind
# the caller. Measured on 2026-12-01 (bench/rbd_bench.py --only upload,
# 1 GiB half data, 4 connections, median of 4 alternating rounds, native
# over qemu-nbd rbd: in the same run, load average 10 on 2 cores): with
# up to 32 MiB per connection behind, 0.73-0.81x raw and 0.76-1.14x qcow2
# over three runs; 8 MiB behind 0.68x / 0.78x; none behind 0.94x / 1.01x
# (and 1.17x raw at 512 MiB). More in flight to the one OSD only queues
# there, and costs the daemon CPU (1.0 s against 0.8 s per run).

# Dirty extents where the base snapshot had no data are scanned in blocks
# of this size: all-zero blocks did not change. librbd reports a changed
# object from its start to its last written byte, so 64 KiB written in an
# object new since the base would move 2 MiB on average. The qcow2
# cluster size: a smaller block saves nothing in a qcow2 backup.
ZERO_SCAN_BLOCK = 64 * 1024
SCAN_BUFFER = 4 * 1024**2

# Largest range of one diff_iterate call.
EXTENTS_STEP = 1024**3

# Opening.

def open(
    url: str,
    mode: Mode,
    *,
    sparse: bool = False,
    dirty: bool = False,
    max_connections: int = 8,
    connect_timeout: float = CONNECT_TIMEOUT,
    op_timeout: float = OP_TIMEOUT,
) -> RBDBackend:
    """
    Open the RBD image of an rbd: URL.

    mode is "r" or "r+" (a snapshot is always read-only). sparse makes
    zero() deallocate. dirty requires the URL's from-snap and enables
    extents("dirty"). Raises NotFound naming a missing pool, image or
    snapshot, ClusterUnreachable if the cluster does not answer in time,
    NoKey if no keyring has the client's key, PermissionError if the
    cluster refuses the key or the client's caps do not allow the image.

    >>> b = open("rbd:rbd/disk:conf=/etc/ceph/c.conf", "r")  # doctest: +SKIP
    >>> b.size()                                     # doctest: +SKIP
    2147483648
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"Invalid mode: {mode!r}")
    try:
        address = parse_url(url)
    except ValueError as e:
        raise BackendError(str(e)) from None
    if dirty and not address.from_snap:
        raise BackendError("Dirty extents of an RBD image need the URL's "
                    "from-snap option")
    if address.snapshot and mode != "r":
        raise BackendError(f"RBD snapshot {address.spec} is read-only")
    key = Key(address, mode, connect_timeout, op_timeout)
    handle = acquire(key)
    try:
        if address.from_snap:
            check_snapshot(handle, address, address.from_snap)
        backend = RBDBackend(handle, address, mode, sparse=sparse,
                             max_connections=max_connections)
    except BaseException:
        release(handle)
        raise
    log.debug("Opened %s mode=%s sparse=%s from_snap=%s", address.spec,
              mode, sparse, address.from_snap or None)
    return backend


# The backend.

class RBDBackend:
    """An RBD image opened by ``open()``; see the module docstring."""

    def __init__(self, handle: Handle, address: RBDAddress, mode: Mode, *,
                 sparse: bool, max_connections: int) -> None:
        self._handle: Handle | None = handle
        self._image = handle.image
        self._address = address
        self._mode = mode
        self._sparse = sparse
        with errors(address):
            stat = self._image.stat()
        # Reads and writes go in pieces of one RADOS object.
        self._object_size: int = stat["obj_size"]
        contexts = {"zero", "dirty"} if address.from_snap else {"zero"}
        self._caps = Capabilities(
            block_size=1,
            max_readers=max_connections,
            max_writers=max_connections if mode == "r+" else 0,
            extents=frozenset(contexts),
            zero=True,
            flush=True,
            concurrent_reads=True,
            bytearray_buffers=True,
            read_pieces=True,
        )

    @property
    def name(self) -> str:
        return "rbd"

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def size(self) -> int:
        with errors(self._address):
            return int(self._image.size())

    def readinto(self, offset: int, buf: memoryview) -> int:
        pos = 0
        for piece in self.read_pieces(offset, len(buf)):
            buf[pos:pos + len(piece)] = piece
            pos += len(piece)
        return pos

    def read_pieces(self, offset: int, length: int) -> list[memoryview]:
        length = max(0, min(length, self.size() - offset))
        if length == 0:
            return []
        # Callbacks run in librbd's thread and in any order; they only
        # keep the data.
        found: dict[int, bytes] = {}

        def start(pos: int, n: int, done: Callable[..., None]) -> Any:
            def oncomplete(completion: Any, data: bytes | None) -> None:
                if data is not None:
                    found[pos] = data
                done(completion)
            return self._image.aio_read(pos, n, oncomplete)

        self._pieces(offset, length, start)
        return [memoryview(found[pos]) for pos in sorted(found)]

    def write(self, offset: int, buf: memoryview) -> None:
        if self._mode != "r+":
            raise OSError(errno.EROFS, "Image opened read-only")

        with errors(self._address):
            # Held until the write completes: librbd may use it till then.
            data = _as_bytes(buf)
            c = self._image.aio_write(data, offset, _ignore)
            self._wait([c])

    def zero(self, offset: int, length: int) -> None:
        if self._mode != "r+":
            raise OSError(errno.EROFS, "Image opened read-only")
        # write_zeroes deallocates whole objects when it may, and writes
        # zeros in partial ones (discard alone skips partial ranges, so
        # they would keep their data).
        flags = (0 if self._sparse
                 else rbd.RBD_WRITE_ZEROES_FLAG_THICK_PROVISION)
        with errors(self._address):
            self._image.write_zeroes(offset, length, zero_flags=flags)

    def flush(self) -> None:
        with errors(self._address):
            self._image.flush()

    def _wait(self, completions: list[Any]) -> None:
        """Wait for all completions; raise the first failure's error."""
        failed = 0
        for c in completions:
            c.wait_for_complete_and_cb()
            rv = c.get_return_value()
            if rv < 0 and not failed:
                failed = -rv
        if failed:
            raise error(failed, self._address)

    def _split(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """(offset, length) pieces of at most one RADOS object each."""
        end = offset + length
        pos = offset
        while pos < end:
            step = min(end, (pos // self._object_size + 1)
                       * self._object_size) - pos
            yield pos, step
            pos += step

    def _pieces(self, offset: int, length: int,
                start: Callable[[int, int, Callable[..., None]], Any]) -> None:
        """Run start() for each object-aligned piece; wait for all."""
        with errors(self._address):
            completions = [start(pos, n, _ignore)
                           for pos, n in self._split(offset, length)]
        self._wait(completions)

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[Extent]:
        if context not in self._caps.extents:
            raise UnsupportedContext(
                f"Extents context {context!r} is not available: an RBD "
                "ticket has dirty extents only with from-snap in its URL")
        size = self.size()
        end = size if end is None else min(end, size)
        # Scan in the steps a whole scan makes, so a window is exactly the
        # whole answer cut (zero blocks of dirty data are found per step).
        lo = start - start % EXTENTS_STEP
        hi = min(size, -(-end // EXTENTS_STEP) * EXTENTS_STEP)
        if context == "zero":
            yield from window(merge(self._zero_extents(lo, hi)), start, end)
        else:
            yield from window(merge(self._dirty_extents(lo, hi)), start,
                              end)

    def _diff(self, start: int, length: int, from_snap: str | None,
              image: Any = None) -> list[tuple[int, int, bool]]:
        found: list[tuple[int, int, bool]] = []
        with errors(self._address):
            (image or self._image).diff_iterate(
                start, length, from_snap,
                lambda off, n, exists: found.append((off, n, exists)),
                include_parent=True, whole_object=False)
        found.sort()
        return found

    def _zero_extents(self, start: int, end: int) -> Iterator[ZeroExtent]:
        for step in range(start, end, EXTENTS_STEP):
            step_end = min(end, step + EXTENTS_STEP)
            pos = step
            for off, n, exists in self._diff(step, step_end - step, None):
                if off > pos:
                    yield ZeroExtent(pos, off - pos, True, True)
                yield ZeroExtent(off, n, not exists, not exists)
                pos = off + n
            if pos < step_end:
                yield ZeroExtent(pos, step_end - pos, True, True)

    def _dirty_extents(self, start: int, end: int
                       ) -> Iterator[DirtyExtent]:
        base = self._address.from_snap
        with errors(self._address):
            base_image = rbd.Image(self._handle_ioctx(), self._address.image,
                                   snapshot=base, read_only=True)
        try:
            for step in range(start, end, EXTENTS_STEP):
                step_end = min(end, step + EXTENTS_STEP)
                base_data = [(off, off + n) for off, n, exists in self._diff(
                    step, step_end - step, None, base_image) if exists]
                pos = step
                for off, n, exists in self._diff(step, step_end - step,
                                                 base):
                    if off > pos:
                        yield DirtyExtent(pos, off - pos, False, False)
                    if exists:
                        yield from self._changed(off, off + n, base_data)
                    else:
                        yield DirtyExtent(off, n, True, True)
                    pos = off + n
                if pos < step_end:
                    yield DirtyExtent(pos, step_end - pos, False, False)
        finally:
            base_image.close()

    def _handle_ioctx(self) -> Any:
        assert self._handle is not None
        return self._handle.ioctx

    def _changed(self, start: int, end: int,
                 base_data: list[tuple[int, int]]) -> Iterator[DirtyExtent]:
        """
        A range diff_iterate reports as changed since the base. Where
        the base had no data, librbd reports the object from its start,
        not only what was written: there, blocks that still read as zeros
        did not change (see ZERO_SCAN_BLOCK).
        """
        for s, e, in_base in split_by(start, end, base_data):
            if in_base:
                yield DirtyExtent(s, e - s, True, False)
            else:
                yield from self._scan_zero_blocks(s, e)

    def _scan_zero_blocks(self, start: int,
                          end: int) -> Iterator[DirtyExtent]:
        buf = bytearray(min(end - start, SCAN_BUFFER))
        pos = start
        while pos < end:
            n = min(len(buf), end - pos)
            view = memoryview(buf)[:n]
            self.readinto(pos, view)
            for b in range(0, n, ZERO_SCAN_BLOCK):
                block = view[b:b + ZERO_SCAN_BLOCK]
                yield DirtyExtent(pos + b, len(block),
                                  not ioutil.is_zero(block), False)
            pos += n

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            release(handle)

    def __repr__(self) -> str:
        return f"<RBDBackend {self._address.spec} mode={self._mode}>"


def _ignore(completion: Any) -> None:
    pass


def _as_bytes(buf: memoryview) -> bytes | bytearray:
    """
    What the binding's aio_write takes (bytes or bytearray) for buf,
    copying only when needed: a view of a whole bytearray (the upload
    buffers, see Capabilities.bytearray_buffers) is passed as its
    bytearray. Measured on 2026-12-01 (librbd writes of 8 MiB from one
    process, 512 MiB, median of 4 alternating runs, librbd copying the
    data): 0.40 s of CPU with a bytes copy of each buffer, 0.25 s
    without. librbd does not copy either (``rbd_disable_zero_copy_writes
    = false``, see rbd_connect.Handle): it uses the buffer until the
    write completes, which write() waits for, holding the object.
    """
    obj = buf.obj
    if (isinstance(obj, bytearray) and buf.nbytes == len(obj)
            and buf.contiguous and not buf.readonly):
        return obj
    return bytes(buf)


def split_by(start: int, end: int, intervals: list[tuple[int, int]]
             ) -> Iterator[tuple[int, int, bool]]:
    """
    Split [start, end) at the edges of sorted, disjoint intervals; yield
    (start, end, inside) for each piece.

    >>> list(split_by(0, 10, [(2, 4), (8, 12)]))
    [(0, 2, False), (2, 4, True), (4, 8, False), (8, 10, True)]
    """
    pos = start
    for s, e in intervals:
        if e <= pos:
            continue
        if s >= end:
            break
        if s > pos:
            yield pos, s, False
            pos = s
        top = min(e, end)
        yield pos, top, True
        pos = top
    if pos < end:
        yield pos, end, False
