# SPDX-License-Identifier: GPL-2.0-or-later
"""
Block hash: the image checksum computed by the server and the client.

The image is split into consecutive blocks of ``block_size`` bytes (the
last may be shorter). Each block is hashed on its own; the checksum is the
hash of the concatenated block digests:

    checksum = H(H(block_1) || H(block_2) || ... || H(block_n))

For blake2b and blake2s both levels use 32-byte digests; other algorithms
use their default digest size. A block made only of zero extents is never
read: its digest is H(zeros) of its length, computed once. Because data
blocks that happen to be all zeros hash to the same value, the result does
not depend on how well the extents describe the image, which is what
makes checksums from different backends and from upstream clients equal.

This module is pure: callers feed block digests in order; reading and
threading live with the callers. It hashes with hashlib unless the
process wiring handed it a faster implementation of an algorithm
(:func:`use`; the daemon and the client library give it libsodium's
BLAKE2b from the C extension), which must give the same digests.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

from .extents import ZeroExtent

DEFAULT_ALGORITHM = "blake2b"
DEFAULT_BLOCK_SIZE = 4 * 1024**2
MIN_BLOCK_SIZE = 1024**2
MAX_BLOCK_SIZE = 16 * 1024**2
BLOCK_ALIGNMENT = 4096


def algorithms() -> list[str]:
    """Sorted names usable as ``algorithm``."""
    return sorted(hashlib.algorithms_available)


# algorithm -> constructor of a hash object with the block hash's digest
# size, set by use(); read without a lock (a dict lookup is atomic, and
# use() runs while a process is wired, before any transfer).
_IMPLEMENTATIONS: dict[str, Callable[[], Any]] = {}


def use(algorithm: str, factory: Callable[[], Any] | None) -> None:
    """
    Hash algorithm with objects from factory (hashlib style: update,
    digest, hexdigest), or with hashlib again if factory is None. The
    objects must give the digests :func:`new` would give.

    >>> import hashlib
    >>> use("sha256", lambda: hashlib.sha256(b"salt"))  # a wrong one
    >>> block_digest("sha256", b"") == hashlib.sha256(b"salt").digest()
    True
    >>> use("sha256", None)
    >>> block_digest("sha256", b"") == hashlib.sha256().digest()
    True
    """
    if factory is None:
        _IMPLEMENTATIONS.pop(algorithm, None)
    else:
        _IMPLEMENTATIONS[algorithm] = factory


def new(algorithm: str) -> Any:
    """Return a new hash object as the block hash uses it."""
    factory = _IMPLEMENTATIONS.get(algorithm)
    if factory is not None:
        return factory()
    if algorithm == "blake2b":
        return hashlib.blake2b(digest_size=32)
    if algorithm == "blake2s":
        return hashlib.blake2s(digest_size=32)
    return hashlib.new(algorithm)


def validate(algorithm: str, block_size: int) -> str | None:
    """Return an error message for invalid arguments, or None."""
    if algorithm not in hashlib.algorithms_available:
        return (f"Unsupported algorithm {algorithm!r}, expecting one of "
                f"{', '.join(algorithms())}")
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        return (f"Invalid block_size {block_size}, expecting a value "
                f"between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
    if block_size % BLOCK_ALIGNMENT:
        return (f"Invalid block_size {block_size}, expecting a multiple "
                f"of {BLOCK_ALIGNMENT}")
    return None


def block_digest(algorithm: str, data: Any) -> bytes:
    h = new(algorithm)
    h.update(data)
    digest: bytes = h.digest()
    return digest


class ZeroDigests:
    """Digests of all-zero blocks, computed once per length."""

    def __init__(self, algorithm: str, block_size: int) -> None:
        self._algorithm = algorithm
        self._block_size = block_size
        self._cache: dict[int, bytes] = {}

    def __call__(self, length: int) -> bytes:
        digest = self._cache.get(length)
        if digest is None:
            h = new(self._algorithm)
            # Hash in slices so a 16 MiB zero block needs no 16 MiB of
            # memory.
            zeros = bytes(min(length, 1024**2))
            left = length
            while left:
                n = min(left, len(zeros))
                h.update(zeros[:n])
                left -= n
            digest = h.digest()
            self._cache[length] = digest
        return digest


class Hasher:
    """Combine block digests, in block order, into the checksum."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.algorithm = algorithm
        self.block_size = block_size
        self._outer = new(algorithm)

    def update(self, digest: bytes) -> None:
        self._outer.update(digest)

    def hexdigest(self) -> str:
        result: str = self._outer.hexdigest()
        return result


def whole_blocks(offset: int, length: int, size: int, block_size: int
                 ) -> range:
    """
    Indexes of the blocks ``[offset, offset + length)`` covers entirely,
    in an image of size bytes; the short last block counts when the range
    reaches the end of the image.

    >>> whole_blocks(2, 12, 16, 4), whole_blocks(4, 6, 10, 4)
    (range(1, 3), range(1, 3))
    """
    end = min(offset + length, size)
    first = -(-offset // block_size)
    last = end // block_size
    if end == size and end % block_size:
        last += 1
    return range(first, max(first, last))


class RangeHasher:
    """
    Digests of the blocks one range of an image covers whole, computed as
    the range's data passes: ``update`` is fed the range's bytes in
    order, in pieces of any size, and ``digests`` gets each whole block's
    digest once its last byte was fed. Bytes of blocks the range covers
    only in part are skipped; whoever needs those blocks reads them.

    >>> h = RangeHasher("sha256", 4, size=10, offset=2, length=8)
    >>> h.update(b"xxab"); h.update(b"cdef")
    >>> h.whole, sorted(h.digests) == [1, 2]
    (range(1, 3), True)
    >>> h.digests[1] == block_digest("sha256", b"abcd")
    True
    """

    def __init__(self, algorithm: str, block_size: int, size: int,
                 offset: int, length: int) -> None:
        self.algorithm = algorithm
        self.block_size = block_size
        self.size = size
        self.whole = whole_blocks(offset, length, size, block_size)
        self.digests: dict[int, bytes] = {}
        self._pos = offset
        self._hash: Any = None
        self._index = -1

    @property
    def complete(self) -> bool:
        """Every whole block of the range has its digest."""
        return len(self.digests) == len(self.whole)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """The next bytes of the range."""
        view = memoryview(data).cast("B")
        bs = self.block_size
        while view:
            index = self._pos // bs
            block_end = min(index * bs + bs, self.size)
            if block_end <= self._pos:
                return  # past the image; the caller refuses it anyway
            n = min(len(view), block_end - self._pos)
            if index in self.whole:
                if self._index != index:
                    self._hash = new(self.algorithm)
                    self._index = index
                self._hash.update(view[:n])
                if self._pos + n == block_end:
                    self.digests[index] = self._hash.digest()
                    self._hash, self._index = None, -1
            self._pos += n
            view = view[n:]


def plan(extents: Iterable[ZeroExtent], size: int, block_size: int
         ) -> Iterable[tuple[int, int, bool]]:
    """
    Yield (offset, length, is_zero) for every block of an image of size
    bytes: is_zero is True only when the whole block lies in zero extents.

    >>> list(plan([ZeroExtent(0, 6, False, False),
    ...            ZeroExtent(6, 10, True, False)], 16, 4))
    [(0, 4, False), (4, 4, False), (8, 4, True), (12, 4, True)]
    """
    it = iter(extents)
    cur = next(it, None)
    for offset in range(0, size, block_size):
        end = min(offset + block_size, size)
        zero = True
        pos = offset
        while pos < end:
            while cur is not None and cur.start + cur.length <= pos:
                cur = next(it, None)
            if cur is None or cur.start > pos or not cur.zero:
                # Data, or a range no extent describes: must be read.
                zero = False
                break
            pos = cur.start + cur.length
        yield offset, end - offset, zero


def checksum_result(algorithm: str, block_size: int, hexdigest: str
                    ) -> dict[str, Any]:
    return {"algorithm": algorithm, "block_size": block_size,
            "checksum": hexdigest}


def compute(read: Callable[[int, int], bytes], size: int,
            extents: Iterable[ZeroExtent], algorithm: str = DEFAULT_ALGORITHM,
            block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, Any]:
    """
    Simple sequential checksum, for tests and small images: read(offset,
    length) returns the bytes of a block.
    """
    hasher = Hasher(algorithm, block_size)
    zero = ZeroDigests(algorithm, block_size)
    for offset, length, is_zero in plan(extents, size, block_size):
        if is_zero:
            hasher.update(zero(length))
        else:
            hasher.update(block_digest(algorithm, read(offset, length)))
    return checksum_result(algorithm, block_size, hasher.hexdigest())
