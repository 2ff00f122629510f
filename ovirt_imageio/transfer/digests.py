# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hash-on-write: block digests kept as data is written, so a checksum of
the image reads from storage only the blocks nobody hashed.

Theory of operation
-------------------

A ticket asking for it (``"checksum": {"algorithm", "block_size"}``) owns
one :class:`BlockDigests`. The image is cut into blocks of
``block_size`` bytes, the last one possibly shorter, exactly as the
block hash of ``util/blkhash.py`` cuts it, and each block has at most one
known digest, computed with the same algorithm.

- A write starts with :meth:`BlockDigests.writing`: every block the
  write touches forgets its digest at once (its content is about to
  change, and a failed write leaves it unknown) and its *epoch* is
  bumped. The returned :class:`WriteHasher` is fed the write's data in
  order; it hashes each block the write covers whole, incrementally, in
  as many pieces as the data comes in.
- When the write succeeded, :meth:`WriteHasher.commit` keeps the digests
  of its whole blocks, but only for blocks no other write touched while
  it ran: none was running when it started and none started since. Two
  overlapping writes, in any order, leave the block unknown, never
  wrong, since which of them reached storage last is not known. A failed
  write calls :meth:`WriteHasher.abort` and keeps nothing.
- Zeroing follows the same rules: it starts with ``writing`` and ends
  with :meth:`WriteHasher.commit_zeroed`, which keeps the known digest of
  a zero block for each block it covered whole (nothing is hashed), or
  with ``abort`` when it failed. A zero that races with a write over the
  same block leaves the block unknown, as two writes do.

Blocks only partly written by one request have no digest; the checksum
reads them. Everything here is pure bookkeeping under one lock; hashing
happens in the caller's thread (for uploads the thread receiving the
body, as each buffer arrives), on the data it writes, so nothing is read
twice.
"""

from __future__ import annotations

import threading

from ..util import blkhash


class BlockDigests:
    """
    Known block digests of one image of ``size`` bytes.

    Example::

        >>> d = BlockDigests("sha256", block_size=4, size=10)
        >>> h = d.writing(0, 8)          # blocks 0 and 1, whole
        >>> h.update(b"abcdefgh")
        >>> h.commit()
        >>> d.digest(0) == blkhash.block_digest("sha256", b"abcd")
        True
        >>> d.zeroed(8, 2)               # the short last block
        >>> d.digest(2) == blkhash.block_digest("sha256", bytes(2))
        True
        >>> d.writing(3, 2).commit()     # touches 0 and 1: forgotten
        >>> d.digest(0), d.digest(1)
        (None, None)
    """

    def __init__(self, algorithm: str, block_size: int, size: int) -> None:
        # The ticket's values were validated with blkhash.validate() when
        # it was installed; any positive block size works here.
        if block_size <= 0:
            raise ValueError(f"Invalid block size {block_size}")
        self.algorithm = algorithm
        self.block_size = block_size
        self.size = size
        self._lock = threading.Lock()
        self._digests: dict[int, bytes] = {}
        self._epochs: dict[int, int] = {}
        # Writes running on each block (absent: none).
        self._active: dict[int, int] = {}
        self._zero = blkhash.ZeroDigests(algorithm, block_size)

    @property
    def blocks(self) -> int:
        return -(-self.size // self.block_size)

    def block_length(self, index: int) -> int:
        return min(self.block_size, self.size - index * self.block_size)

    def digest(self, index: int) -> bytes | None:
        """The known digest of a block, or None."""
        with self._lock:
            return self._digests.get(index)

    def known(self) -> int:
        """How many blocks have a digest."""
        with self._lock:
            return len(self._digests)

    def _touched(self, offset: int, length: int) -> range:
        end = min(offset + length, self.size)
        if length <= 0 or offset >= end:
            return range(0)
        return range(offset // self.block_size,
                     (end - 1) // self.block_size + 1)

    def _forget_locked(self, blocks: range) -> dict[int, int]:
        epochs = {}
        for i in blocks:
            self._digests.pop(i, None)
            epochs[i] = self._epochs.get(i, 0) + 1
            self._epochs[i] = epochs[i]
        return epochs

    def writing(self, offset: int, length: int) -> WriteHasher:
        """Start a write of ``[offset, offset + length)``."""
        with self._lock:
            epochs = self._forget_locked(self._touched(offset, length))
            alone = set()
            for i in epochs:
                running = self._active.get(i, 0)
                if not running:
                    alone.add(i)
                self._active[i] = running + 1
        return WriteHasher(self, offset, length, epochs, alone)

    def zeroed(self, offset: int, length: int) -> None:
        """
        ``[offset, offset + length)`` was zeroed, with no write running
        over it; an operation that zeroes calls ``writing`` before and
        ``commit_zeroed`` after instead, so writes racing with it are
        seen.
        """
        self.writing(offset, length).commit_zeroed()

    def zero_digest(self, index: int) -> bytes:
        """The digest of block ``index`` when it is all zeros."""
        return self._zero(self.block_length(index))

    def _end(self, digests: dict[int, bytes], epochs: dict[int, int],
             alone: set[int]) -> None:
        with self._lock:
            for i in epochs:
                if self._active[i] == 1:
                    del self._active[i]
                else:
                    self._active[i] -= 1
                digest = digests.get(i)
                # Kept only by a write that had the block to itself from
                # start to end: none running when it started (alone),
                # none started since (same epoch).
                if (digest is not None and i in alone
                        and self._epochs.get(i) == epochs[i]):
                    self._digests[i] = digest


class WriteHasher:
    """
    Hashes the whole blocks of one write as its data passes (the hashing
    itself is ``blkhash.RangeHasher``, shared with the client).
    """

    def __init__(self, owner: BlockDigests, offset: int, length: int,
                 epochs: dict[int, int], alone: set[int]) -> None:
        self._owner = owner
        self._alone = alone
        self._epochs = epochs
        self._range = blkhash.RangeHasher(owner.algorithm, owner.block_size,
                                          owner.size, offset, length)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """The next bytes of the write, in order."""
        self._range.update(data)

    def commit(self) -> None:
        """The write succeeded: keep the digests of its whole blocks."""
        self._owner._end(self._range.digests, self._epochs, self._alone)

    def commit_zeroed(self) -> None:
        """The range was zeroed: its whole blocks are zero blocks."""
        owner = self._owner
        owner._end({i: owner.zero_digest(i) for i in self._range.whole},
                   self._epochs, self._alone)

    def abort(self) -> None:
        """The write failed: its blocks stay unknown."""
        self._owner._end({}, self._epochs, self._alone)
