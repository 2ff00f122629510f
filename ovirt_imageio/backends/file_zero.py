# SPDX-License-Identifier: GPL-2.0-or-later
"""
Zeroing for the file backend: making a block aligned range of a file or
block device read as zeros, as cheaply as the storage allows.

Metadata operations come first, writing zeros last:

- regular file, not sparse (the range must stay allocated):
  fallocate(ZERO_RANGE); else, past end of file, allocate; else punch a
  hole and allocate it again (qemu's trick); else write zeros.
- regular file, sparse: grow with ftruncate (enough alone past end of
  file), then punch a hole; else write zeros.
- block device: fallocate(PUNCH_HOLE) if sparse, else
  fallocate(ZERO_RANGE); if the device cannot, BLKZEROOUT from then on.

The first EOPNOTSUPP (or ENODEV) of a fallocate mode is remembered, so each
backend pays for a failed attempt once. Offsets and lengths are block
aligned: the backend does unaligned heads and tails itself.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading

from ..native import ioutil
from ..util import align

log = logging.getLogger("ovirt_imageio.backends.file")

# Buffer of zeros for file systems that cannot zero with fallocate.
ZERO_BUFFER_SIZE = 1024**2

# fallocate modes used to zero a range.
ZERO_RANGE = ioutil.FALLOC_FL_ZERO_RANGE
PUNCH_HOLE = ioutil.FALLOC_FL_PUNCH_HOLE | ioutil.FALLOC_FL_KEEP_SIZE
ALLOCATE = 0

# fallocate errnos meaning "this mode is not available here". Block
# devices that cannot offload zeroing report ENODEV.
UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODEV})


class Zeroer:
    """Zeroes aligned ranges of one open descriptor; see the module."""

    def __init__(self, fd: int, path: str, *, block_device: bool,
                 sparse: bool, block_size: int) -> None:
        self._fd = fd
        self._path = path
        self._block_device = block_device
        self._sparse = sparse
        self._block_size = block_size
        # Allocated on first use: most storage zeroes without it. The
        # lock makes that first use safe from several threads (a
        # concurrent backend); the buffer is only read afterwards.
        self._zeros: mmap.mmap | None = None
        self._zeros_lock = threading.Lock()
        # fallocate modes that failed with EOPNOTSUPP on this storage.
        self._unsupported: set[int] = set()
        # Block device without fallocate zeroing: use BLKZEROOUT.
        self._use_blkzeroout = False

    def close(self) -> None:
        """Release the buffer of zeros; the descriptor is the backend's."""
        if self._zeros is not None:
            ioutil.release(self._zeros)
            self._zeros = None

    def zero(self, offset: int, length: int) -> None:
        """Make a block aligned range read as zeros; see the module."""
        if self._block_device:
            self._zero_block_device(offset, length)
        elif self._sparse:
            self._zero_sparse_file(offset, length)
        else:
            self._zero_allocated_file(offset, length)

    def _zero_allocated_file(self, offset: int, length: int) -> None:
        if self._fallocate(ZERO_RANGE, offset, length):
            return

        size = self._size()
        if offset >= size:
            # New space reads as zeros; allocating it is all we need.
            if not self._fallocate(ALLOCATE, offset, length):
                self._write_zeros(offset, length)
            return

        # qemu's trick for file systems without ZERO_RANGE: deallocate,
        # then allocate again. Pointless if we know we cannot allocate
        # (ext2 punches holes but has no fallocate(0)).
        if (ALLOCATE not in self._unsupported
                and self._fallocate(PUNCH_HOLE, offset, length)
                and self._fallocate(ALLOCATE, offset, length)):
            return

        # The promise is allocated zeros, so a punched range that could
        # not be allocated again is written too.
        self._write_zeros(offset, length)

    def _zero_sparse_file(self, offset: int, length: int) -> None:
        size = self._size()
        end = offset + length
        if end > size:
            os.ftruncate(self._fd, end)
            if offset >= size:
                return
            # Growing made the rest read as zeros; only the old part can
            # hold data. Whole blocks keep O_DIRECT happy.
            length = align.round_up(size, self._block_size) - offset

        if not self._fallocate(PUNCH_HOLE, offset, length):
            self._write_zeros(offset, length)

    def _zero_block_device(self, offset: int, length: int) -> None:
        if not self._use_blkzeroout:
            mode = PUNCH_HOLE if self._sparse else ZERO_RANGE
            if self._fallocate(mode, offset, length):
                return
            log.debug("fallocate mode %#x unsupported on %s, using "
                      "BLKZEROOUT", mode, self._path)
            self._use_blkzeroout = True
        ioutil.blkzeroout(self._fd, offset, length)

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        """
        Try fallocate; return False if mode is unsupported here, which is
        remembered for the next calls.
        """
        if mode in self._unsupported:
            return False
        try:
            ioutil.fallocate(self._fd, mode, offset, length)
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                raise
            log.debug("fallocate mode %#x unsupported on %s: %s",
                      mode, self._path, e)
            self._unsupported.add(mode)
            return False
        return True

    def _write_zeros(self, offset: int, length: int) -> None:
        with self._zeros_lock:
            if self._zeros is None:
                # Anonymous memory is zero filled and is never written to.
                self._zeros = ioutil.aligned_buffer(ZERO_BUFFER_SIZE)
        zeros = memoryview(self._zeros)
        done = 0
        while done < length:
            n = min(length - done, len(zeros))
            ioutil.pwrite_full(self._fd, zeros[:n], offset + done)
            done += n

    def _size(self) -> int:
        return os.fstat(self._fd).st_size
