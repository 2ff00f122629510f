# SPDX-License-Identifier: GPL-2.0-or-later
"""
The file backend: a regular file or a block device, always with O_DIRECT.

Theory of operation
-------------------

Direct I/O bypasses the page cache, so the daemon neither pollutes the
host's cache nor reports a write as done before it reached storage. The
price is alignment: the file offset, the length and the memory address of
every read and write must be multiples of the logical block size, else the
kernel fails with EINVAL (4096-byte-sector devices reject 512-byte I/O).

The block size is:

- block device: the logical sector size (BLKSSZGET);
- regular file: the offset alignment the kernel reports (statx
  STATX_DIOALIGN, Linux 6.1; ext4, xfs and btrfs report it), or else the
  first of 1, 512 and 4096 bytes for which an aligned O_DIRECT read at
  offset 0 succeeds. 1 means the file system does not enforce alignment
  (tmpfs, NFS), and then we use 4096, which is safe everywhere.

The kernel is asked first because probing by reading is weaker than it
looks: reads at or past end of file succeed whatever their alignment, so an
empty file proves nothing (we use 4096 for it), and recent kernels (seen on
6.18 with ext4) check alignment only where blocks are allocated, so a file
starting with a hole passes the 1-byte probe (4096 again: slower
read-modify-write, never wrong). Nothing is ever written to probe.

Callers should do aligned I/O from aligned buffers (the server does), which
goes straight to the kernel. Anything else still works: unaligned parts of
reads go through a small internal bounce buffer, unaligned heads and tails
of writes and zeros are read, modified and written back one block at a
time. Such a block write at end of file pads the file to the block
boundary; the padding is truncated away so the size is always exactly what
a byte-granular file would have.

Zeroing prefers metadata operations over writing zeros (see zero() and
``backends.file_zero``).

A backend is used by one thread at a time (see backends.base), but
several backends (one per client connection) may write the same file at
once, so regular files advertise max_connections writers like block
devices (upstream advertises one; that single connection is most of its
upload gap). Concurrent writers must write distinct ranges, and then the
only shared state is:

- blocks shared by two ranges at their unaligned edges, updated by
  read-modify-write;
- the file size, changed by writes and zeros past end of file and by the
  truncation that removes block padding.

Both are protected by one lock per file (per inode, shared by every
backend of this process that has the file open): unaligned writes, writes
that extend the file, and zeros of regular files run under it. Aligned
writes inside the file, the bulk of every transfer, never take it: they
cover whole blocks that no other distinct range touches, and they cannot
be cut by a truncation because truncation only removes padding past the
end of the range that made it.

Aligned writes from aligned buffers go to the kernel through Linux AIO
(``ioutil.pwrite_direct``), waited for in the call like a pwrite: ext4
holds the inode lock of a synchronous direct write that allocates blocks
until it completes, so uploads into a sparse file from several threads
(connections, or an NBD connection's storage threads) would write one
at a time.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
import threading
from typing import Iterator

from ..native import ioutil
from ..util import align
from ..util.extents import ZeroExtent, merge, window
from .base import (
    BackendError,
    Capabilities,
    Mode,
    UnsupportedContext,
    byte_view,
)
from .file_queue import FileQueue
from .file_zero import Zeroer

log = logging.getLogger(__name__)

# Block size used when the storage does not enforce or report alignment.
# Any logical block size we meet divides it.
SAFE_BLOCK_SIZE = 4096

# Aligned buffer for unaligned reads and for read-modify-write of a block.
BOUNCE_SIZE = 128 * 1024



def open(
    path: str,
    mode: Mode,
    *,
    sparse: bool = False,
    max_connections: int = 8,
) -> FileBackend:
    """
    Open a regular file or block device at path with O_DIRECT.

    mode is "r" (read only) or "r+" (read and write); the file must exist.
    sparse selects how zero() treats storage: deallocate (True) or keep
    allocated (False). OSErrors (FileNotFoundError, PermissionError, ...)
    propagate; other file types raise backends.base.BackendError.

    >>> backend = open("disk.img", "r+")              # doctest: +SKIP
    >>> backend.capabilities.block_size               # doctest: +SKIP
    512
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"Invalid mode: {mode!r}")
    if max_connections < 1:
        raise ValueError(f"Invalid max_connections: {max_connections}")

    # Check before opening: opening a FIFO for reading would block.
    _check_file_type(path, os.stat(path).st_mode)

    flags = os.O_RDONLY if mode == "r" else os.O_RDWR
    fd = os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    try:
        # The path may have been replaced between stat and open.
        st = os.fstat(fd)
        _check_file_type(path, st.st_mode)
        block_device = stat.S_ISBLK(st.st_mode)
        if block_device:
            block_size = ioutil.blksszget(fd)
        else:
            block_size = _detect_block_size(fd, st.st_size)
        backend = FileBackend(
            fd,
            path,
            mode,
            block_device=block_device,
            block_size=block_size,
            sparse=sparse,
            max_connections=max_connections,
            file_lock=None if block_device else _acquire_file_lock(st),
        )
    except BaseException:
        os.close(fd)
        raise

    log.debug("Opened %s mode=%s block_device=%s block_size=%d sparse=%s",
              path, mode, block_device, block_size, sparse)
    return backend


class _FileLock:
    """A lock shared by the backends of one inode, counted by users."""

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.users = 0


_file_locks: dict[tuple[int, int], _FileLock] = {}
_file_locks_guard = threading.Lock()


def _acquire_file_lock(st: os.stat_result) -> _FileLock:
    key = (st.st_dev, st.st_ino)
    with _file_locks_guard:
        entry = _file_locks.get(key)
        if entry is None:
            entry = _file_locks[key] = _FileLock(key)
        entry.users += 1
        return entry


def _release_file_lock(entry: _FileLock) -> None:
    with _file_locks_guard:
        entry.users -= 1
        if entry.users == 0:
            del _file_locks[entry.key]


def _check_file_type(path: str, st_mode: int) -> None:
    if not (stat.S_ISREG(st_mode) or stat.S_ISBLK(st_mode)):
        # The path stays out of the message: the server passes backend
        # messages on to HTTP clients, who must not learn host paths.
        log.warning("Unsupported file type: %r", path)
        raise BackendError("Unsupported file type: not a regular file or "
                           "a block device")


def _detect_block_size(fd: int, size: int) -> int:
    """See the module docstring for the rules."""
    align = ioutil.dio_offset_align(fd)
    if align:
        # Below a sector means no real constraint; see SAFE_BLOCK_SIZE.
        return align if align >= 512 else SAFE_BLOCK_SIZE

    if size == 0:
        return SAFE_BLOCK_SIZE

    buf = ioutil.aligned_buffer(SAFE_BLOCK_SIZE)
    try:
        for probe in (1, 512, SAFE_BLOCK_SIZE):
            try:
                with memoryview(buf) as view:
                    ioutil.pread_full(fd, view[:probe], 0)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                continue
            return SAFE_BLOCK_SIZE if probe == 1 else probe
    finally:
        buf.close()

    raise BackendError(f"Cannot detect block size: O_DIRECT reads of up to "
                       f"{SAFE_BLOCK_SIZE} bytes fail with EINVAL")


class FileBackend:
    """A regular file or block device opened with O_DIRECT; see open()."""

    def __init__(
        self,
        fd: int,
        path: str,
        mode: Mode,
        *,
        block_device: bool,
        block_size: int,
        sparse: bool,
        max_connections: int,
        file_lock: _FileLock | None = None,
    ) -> None:
        self._fd = fd
        self._file_lock = file_lock
        self._path = path
        self._mode = mode
        self._block_device = block_device
        self._block_size = block_size
        self._sparse = sparse
        self._capabilities = Capabilities(
            block_size=block_size,
            max_readers=max_connections,
            max_writers=max_connections,
            extents=frozenset({"zero"}),
            allocation_depth=True,
            # fsync writes back the file (or the device) whichever
            # descriptor wrote: one connection's flush covers all.
            shared_flush=True,
            # Aligned reads are a stateless pread; the bounce buffer of
            # unaligned ones has its own lock.
            concurrent_reads=True,
            # Aligned writes are a stateless pwrite too; everything that
            # shares state (the bounce buffer, the file size, the
            # zeroer's buffer) has its lock, as for writers on several
            # connections (see the module docstring).
            concurrent=True,
            # Aligned requests in flight together from one thread
            # (backends.file_queue).
            io_queue=True,
        )
        self._bounce_lock = threading.Lock()
        # Allocated on first use: most requests are aligned and need none.
        self._bounce: mmap.mmap | None = None
        self._zeroer = Zeroer(fd, path, block_device=block_device,
                              sparse=sparse, block_size=block_size)

    def __repr__(self) -> str:
        return (f"<FileBackend path={self._path!r} mode={self._mode!r} "
                f"block_size={self._block_size} fd={self._fd}>")

    def __enter__(self) -> FileBackend:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # Backend protocol.

    @property
    def name(self) -> str:
        return "file"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def path(self) -> str:
        return self._path

    @property
    def block_device(self) -> bool:
        return self._block_device

    @property
    def sparse(self) -> bool:
        return self._sparse

    def fileno(self) -> int:
        """
        Return the O_DIRECT descriptor, to inspect its flags.

        The descriptor stays owned by the backend; I/O on it must follow
        the alignment rules in the module docstring.
        """
        return self._fd

    def size(self) -> int:
        if self._block_device:
            return ioutil.blkgetsize64(self._fd)
        return os.fstat(self._fd).st_size

    def readinto(self, offset: int, buf: memoryview) -> int:
        view = byte_view(buf)
        length = len(view)
        if offset < 0:
            raise ValueError(f"Invalid offset: {offset}")
        if length == 0:
            return 0

        bs = self._block_size
        if offset % bs or ioutil.buffer_address(view) % bs:
            return self._read_bounced(offset, view)

        # Fast path: the aligned part straight into the caller's buffer.
        direct = length - length % bs
        n = 0
        if direct:
            n = ioutil.pread_full(self._fd, view[:direct], offset)
            if n < direct:
                return n
        if n < length:
            n += self._read_bounced(offset + n, view[n:])
        return n

    def write(self, offset: int, buf: memoryview) -> None:
        self._check_writable("write")
        view = byte_view(buf)
        length = len(view)
        if offset < 0:
            raise ValueError(f"Invalid offset: {offset}")
        if length == 0:
            return

        end = offset + length
        bs = self._block_size
        if self._file_lock is not None and (
                offset % bs or end % bs or end > self.size()):
            with self._file_lock.lock:
                self._write(offset, view, self.size())
        else:
            self._write(offset, view, None)

    def _write(self, offset: int, view: memoryview,
               old_size: int | None) -> None:
        """Write view at offset; with old_size, set the exact file size."""
        s = align.split(offset, len(view), self._block_size)
        if s.head:
            self._rmw(s.head_block, s.skip, view[:s.head], s.head)
        if s.middle:
            self._write_aligned(s.middle_offset,
                                view[s.head:s.head + s.middle])
        if s.tail:
            self._rmw(s.tail_offset, 0, view[s.head + s.middle:], s.tail)

        if old_size is not None:
            self._set_size(max(old_size, offset + len(view)))

    def zero(self, offset: int, length: int) -> None:
        """
        Make [offset, offset + length) read as zeros; the file grows if
        needed, a block device must be large enough (else ENOSPC).

        The aligned middle part is zeroed by the cheapest means of the
        storage and sparseness (backends.file_zero): fallocate modes,
        BLKZEROOUT, or writing zeros. Unaligned head and tail blocks are
        read, modified and written, except where the range reaches end of
        file: blocks there are zeroed whole and the size is set afterwards.
        """
        self._check_writable("zero")
        if offset < 0 or length < 0:
            raise ValueError(f"Invalid range: offset={offset} length={length}")
        if length == 0:
            return
        if self._file_lock is not None:
            with self._file_lock.lock:
                self._zero(offset, length)
        else:
            self._zero(offset, length)

    def _zero(self, offset: int, length: int) -> None:
        end = offset + length
        bs = self._block_size
        old_size = self.size()
        if self._block_device and end > old_size:
            raise OSError(errno.ENOSPC,
                          f"zero: range ends at {end}, past the end of the "
                          f"device at {old_size}")

        # Bytes past end of file may be clobbered, since the size is set
        # at the end: a range reaching end of file is zeroed in whole
        # blocks, avoiding a read-modify-write of the last one.
        count = length
        if not self._block_device and end >= old_size:
            count = align.round_up(end, bs) - offset

        s = align.split(offset, count, bs)
        if s.head and s.head_block < old_size:
            self._rmw(s.head_block, s.skip, None, s.head)
        if s.middle:
            self._zeroer.zero(s.middle_offset, s.middle)
        if s.tail:
            self._rmw(s.tail_offset, 0, None, s.tail)

        if not self._block_device:
            self._set_size(max(old_size, end))

    def flush(self) -> None:
        if self._fd == -1:
            raise OSError(errno.EBADF, "fsync: backend is closed")
        os.fsync(self._fd)

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[ZeroExtent]:
        """
        Yield "zero" extents: holes of a regular file (SEEK_HOLE) are
        zero=True, everything else data. A block device is one data extent.

        Holes are reported with hole=False: on the wire "hole" means
        "unallocated in the exported chain, so a backing file would show
        through", and clients doing shallow downloads skip such ranges
        instead of zeroing them. A file has no backing chain; its holes
        read as zeros and must be copied as zeros. Ranges zeroed without
        deallocating may still show as data or as zeros, depending on the
        file system.
        """
        if context != "zero":
            raise UnsupportedContext(
                f"Extents context {context!r} is not supported by the file "
                "backend")
        return self._zero_extents(start, end)

    def io_queue(self, depth: int) -> FileQueue:
        """A queue of aligned reads and writes (backends.file_queue)."""
        return FileQueue(self._fd, self._block_size, self.size,
                         self._mode == "r+", depth)

    def close(self) -> None:
        if self._fd == -1:
            return
        fd, self._fd = self._fd, -1
        if self._file_lock is not None:
            _release_file_lock(self._file_lock)
            self._file_lock = None
        self._zeroer.close()
        if self._bounce is not None:
            ioutil.release(self._bounce)
            self._bounce = None
        os.close(fd)

    # Reading.

    def _read_bounced(self, offset: int, view: memoryview) -> int:
        """Read any range through the bounce buffer."""
        with self._bounce_lock:
            return self._read_bounced_locked(offset, view)

    def _read_bounced_locked(self, offset: int, view: memoryview) -> int:
        bs = self._block_size
        bounce = memoryview(self._bounce_buffer())
        length = len(view)
        done = 0
        while done < length:
            pos = offset + done
            start = pos - pos % bs
            skip = pos - start
            want = min(length - done, len(bounce) - skip)
            span = align.round_up(skip + want, bs)
            n = ioutil.pread_full(self._fd, bounce[:span], start)
            got = max(0, min(want, n - skip))
            view[done:done + got] = bounce[skip:skip + got]
            done += got
            if got < want:
                break
        return done

    # Writing.

    def _write_aligned(self, offset: int, view: memoryview) -> None:
        """Write a block aligned range, bouncing an unaligned buffer."""
        if ioutil.buffer_address(view) % self._block_size == 0:
            # Through AIO, so writes of several threads into holes are in
            # flight together (see ioutil.pwrite_direct).
            ioutil.pwrite_direct(self._fd, view, offset)
            return

        with self._bounce_lock:
            bounce = memoryview(self._bounce_buffer())
            done = 0
            while done < len(view):
                n = min(len(view) - done, len(bounce))
                bounce[:n] = view[done:done + n]
                ioutil.pwrite_full(self._fd, bounce[:n], offset + done)
                done += n

    def _rmw(self, start: int, skip: int, data: memoryview | None,
             count: int) -> None:
        """
        Replace count bytes at skip inside the block at start with data
        (zeros if None). Bytes of the block past end of file are zeros.
        """
        bs = self._block_size
        with self._bounce_lock:
            block = memoryview(self._bounce_buffer())[:bs]
            n = ioutil.pread_full(self._fd, block, start)
            if n < bs:
                block[n:] = bytes(bs - n)
            if data is None:
                block[skip:skip + count] = bytes(count)
            else:
                block[skip:skip + count] = data
            ioutil.pwrite_full(self._fd, block, start)

    def _set_size(self, size: int) -> None:
        """Undo padding from block writes, or finish growing the file."""
        if self.size() != size:
            os.ftruncate(self._fd, size)

    # Extents.

    def _zero_extents(self, start: int, end: int | None
                      ) -> Iterator[ZeroExtent]:
        size = self.size()
        end = size if end is None else min(end, size)
        if start >= end:
            return
        if self._block_device:
            yield ZeroExtent(start, end - start, zero=False, hole=False)
            return
        scanned = (
            ZeroExtent(pos, length, zero=not data, hole=False)
            for pos, length, data in ioutil.iter_extents(self._fd, start,
                                                         end)
        )
        yield from window(merge(scanned), start, end)

    # Helpers.

    def _bounce_buffer(self) -> mmap.mmap:
        if self._bounce is None:
            size = max(BOUNCE_SIZE, self._block_size)
            self._bounce = ioutil.aligned_buffer(size)
        return self._bounce

    def _check_writable(self, operation: str) -> None:
        if self._mode != "r+":
            raise OSError(errno.EPERM,
                          f"{operation}: backend opened read only")
