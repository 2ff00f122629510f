# SPDX-License-Identifier: GPL-2.0-or-later
"""
The block checksum of an image read through a backend, computed exactly
as the server computes it (``ovirt_imageio.blkhash``), so a local image
and a transferred one can be compared by their checksums alone.

Blocks inside zero extents are never read. Data blocks are read into one
reused buffer; with detect_zeroes, a block that turns out to be all zeros
takes the precomputed zero digest instead of being hashed (same result,
much faster for preallocated images).

A copy can collect the digests as it goes (:class:`Digests`, the copy
engine's observer): every block one copy request covers whole is hashed
from the worker's buffer as it is read, so ``compute(..., known=...)``
afterwards reads only the data blocks no request covered whole (a block
split between a data extent and a zero extent, or the ends of an
unaligned request). Blocks inside zero extents take the zero digest as
always, whoever copied, zeroed or skipped them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..backends.base import Backend
from ..native import blake2b, ioutil
from ..util import blkhash
from ..util.extents import ZeroExtent

log = logging.getLogger("client.checksum")

# The client's half of a verification hashes every byte it sends or
# reads: libsodium's BLAKE2b (same digests as hashlib's, faster).
blkhash.use("blake2b", blake2b.block_hash)


class Digests:
    """
    Digests of the data blocks a copy read whole, collected while it
    copies; pass it to ``copy(observer=...)``, then to ``compute(known=)``
    with the same algorithm and block size.

    Example::

        digests = Digests("blake2b", 4 * 1024**2, src.size())
        _io.copy(src, dst, ..., observer=digests)
        compute(src, known=digests)
    """

    def __init__(self, algorithm: str, block_size: int, size: int) -> None:
        self.algorithm = algorithm
        self.block_size = block_size
        self.size = size
        # Workers finish requests concurrently; the lock guards _digests.
        self._lock = threading.Lock()
        self._digests: dict[int, bytes] = {}

    def reading(self, offset: int, length: int
                ) -> Callable[[memoryview], None]:
        """Start a copy request; feed its data, in order, to the result."""
        hasher = blkhash.RangeHasher(self.algorithm, self.block_size,
                                     self.size, offset, length)

        def seen(data: memoryview) -> None:
            # Hashing runs outside the lock (hashlib releases the GIL on
            # large buffers, so workers hash in parallel); a request's
            # digests join the others once all are known.
            hasher.update(data)
            if hasher.complete and hasher.whole:
                with self._lock:
                    self._digests.update(hasher.digests)

        return seen

    def get(self, index: int) -> bytes | None:
        """The digest of block index, if a copy request read it whole."""
        with self._lock:
            return self._digests.get(index)

    def count(self) -> int:
        """How many blocks have a digest."""
        with self._lock:
            return len(self._digests)


def compute(backend: Backend, *, algorithm: str = blkhash.DEFAULT_ALGORITHM,
            block_size: int = blkhash.DEFAULT_BLOCK_SIZE,
            detect_zeroes: bool = True, known: Digests | None = None
            ) -> dict[str, Any]:
    """
    Return {"algorithm", "block_size", "checksum"} of the image behind
    backend. With known (collected with the same algorithm and block
    size), data blocks it has are not read. Raises ValueError for an
    invalid algorithm or block size.
    """
    error = blkhash.validate(algorithm, block_size)
    if error:
        raise ValueError(error)
    if known is not None and (known.algorithm, known.block_size) != (
            algorithm, block_size):
        raise ValueError("Known digests of another algorithm or block size")
    size = backend.size()
    extents = [e for e in backend.extents("zero")
               if isinstance(e, ZeroExtent)]
    hasher = blkhash.Hasher(algorithm, block_size)
    zero_digest = blkhash.ZeroDigests(algorithm, block_size)
    # Freed with the last view of it, when this function returns.
    view = memoryview(ioutil.aligned_buffer(block_size))
    read = 0
    for offset, length, is_zero in blkhash.plan(extents, size, block_size):
        if is_zero:
            hasher.update(zero_digest(length))
            continue
        digest = (known.get(offset // block_size) if known is not None
                  else None)
        if digest is not None:
            hasher.update(digest)
            continue
        block = view[:length]
        _read_full(backend, offset, block)
        read += 1
        if detect_zeroes and ioutil.is_zero(block):
            hasher.update(zero_digest(length))
        else:
            hasher.update(blkhash.block_digest(algorithm, block))
    blocks = -(-size // block_size)
    log.debug("Checksum read %d of %d blocks", read, blocks)
    return blkhash.checksum_result(algorithm, block_size,
                                   hasher.hexdigest())


def _read_full(backend: Backend, offset: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = backend.readinto(offset + done, view[done:])
        if n == 0:
            raise OSError(f"Unexpected end of image at offset "
                          f"{offset + done}")
        done += n
