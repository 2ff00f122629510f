# SPDX-License-Identifier: GPL-2.0-or-later
"""
The block checksum of an image read through a backend, computed exactly
as the server computes it (``ovirt_imageio.blkhash``), so a local image
and a transferred one can be compared by their checksums alone.

Blocks inside zero extents are never read. Data blocks are read into one
reused buffer; with detect_zeroes, a block that turns out to be all zeros
takes the precomputed zero digest instead of being hashed (same result,
much faster for preallocated images).
"""

from __future__ import annotations

from typing import Any

from ..backends.base import Backend
from ..native import ioutil
from ..util import blkhash
from ..util.extents import ZeroExtent


def compute(backend: Backend, *, algorithm: str = blkhash.DEFAULT_ALGORITHM,
            block_size: int = blkhash.DEFAULT_BLOCK_SIZE,
            detect_zeroes: bool = True) -> dict[str, Any]:
    """
    Return {"algorithm", "block_size", "checksum"} of the image behind
    backend. Raises ValueError for an invalid algorithm or block size.
    """
    error = blkhash.validate(algorithm, block_size)
    if error:
        raise ValueError(error)
    size = backend.size()
    extents = [e for e in backend.extents("zero")
               if isinstance(e, ZeroExtent)]
    hasher = blkhash.Hasher(algorithm, block_size)
    zero_digest = blkhash.ZeroDigests(algorithm, block_size)
    # Freed with the last view of it, when this function returns.
    view = memoryview(ioutil.aligned_buffer(block_size))
    for offset, length, is_zero in blkhash.plan(extents, size, block_size):
        if is_zero:
            hasher.update(zero_digest(length))
            continue
        block = view[:length]
        _read_full(backend, offset, block)
        if detect_zeroes and ioutil.is_zero(block):
            hasher.update(zero_digest(length))
        else:
            hasher.update(blkhash.block_digest(algorithm, block))
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
