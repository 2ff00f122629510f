# SPDX-License-Identifier: GPL-2.0-or-later
"""
/images/{ticket-id}/checksum and /images/{ticket-id}/checksum/algorithms.

The checksum is ``ovirt_imageio.blkhash`` over the image. Zero blocks
(from the backend's zero extents) are never read. Data blocks go through a
few buffer slots: each slot's block is hashed by the IO pool while the
next blocks are read. When the backend allows concurrent reads (files),
a pool task reads and hashes its block, so several reads are in flight
and a busy CPU cannot leave the disk idle between reads (on two cores,
reading in one thread while two others hash starves the reader). Other
backends are read in order by the request thread. Digests are combined
in block order, and memory stays at SLOTS blocks per request. The slots
are cut from buffer pairs borrowed from the daemon's pool, of the usual
buffer size when a block fits in it, so a checksum after a transfer reuses
the transfer's warm buffers.

With hash-on-write (a ticket with ``checksum``) and a request for the
ticket's algorithm and block size, a block whose digest the ticket kept
is not read either; when every block has one, not even the extents are
asked for. The bytes a checksum read from storage are recorded on the
response (``ovirt_imageio_backend_bytes_total{op="checksum"}``), so the
cost of a checksum is visible.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
from typing import Any, Hashable

from ...backends.base import Backend, UnsupportedContext
from ...http import query as http_query
from ...transfer import buffers, context, ops
from ...transfer.digests import BlockDigests
from ...util import blkhash
from ...util import extents as extents_mod
from ...util.extents import ZeroExtent
from ..errors import BadRequest
from ..message import Request, Response
from .prologue import DataHandler

log = logging.getLogger("checksum")

# Blocks in flight per request; fewer for large blocks, to bound memory.
SLOTS = 4
SLOTS_MEMORY = 32 * 1024**2


class Algorithms:
    """Allowed algorithms; needs no ticket (any id works)."""

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        resp.send_json({"algorithms": blkhash.algorithms()})
        resp.record("checksum")


class Checksum(DataHandler):
    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        algorithm = req.query.get("algorithm", blkhash.DEFAULT_ALGORITHM)
        block_size = http_query.parse_int(req.query, "block_size",
                                          blkhash.DEFAULT_BLOCK_SIZE)
        error = blkhash.validate(algorithm, block_size)
        if error:
            raise BadRequest(error)

        # Unlike the other endpoints, a failed first check keeps the
        # connection (upstream behaviour clients may rely on).
        image = self.access.open(req, resp, ticket_id, "read",
                                 keep_alive_on_deny=True)
        ticket, ctx = image.ticket, image.context
        size = min(ticket.size, ctx.backend.size())
        log.debug("[%s] CHECKSUM algorithm=%s block_size=%d transfer=%s",
                  req.connection.client, algorithm, block_size,
                  ticket.transfer_id)
        slots = max(2, min(SLOTS, SLOTS_MEMORY // block_size))
        with contextlib.ExitStack() as stack:
            views = slot_views(
                stack, self.buffers, slots, block_size,
                context.buffer_size(self.cfg, ticket.url), owner=ticket)
            digests = ticket.digests
            if (digests is None or digests.algorithm != algorithm
                    or digests.block_size != block_size
                    or digests.size != size):
                # Kept for other blocks: a full read, as without them.
                digests = None
            op = ChecksumOp(ctx.backend, size, algorithm, block_size,
                            views, self.pool, digests=digests)
            result = ticket.run(op)
        resp.send_json(result)
        resp.record("checksum", op.read)


def slot_views(stack: contextlib.ExitStack, pool: buffers.BufferPool,
               slots: int, block_size: int, buffer_size: int,
               owner: Hashable = None) -> list[memoryview]:
    """
    Borrow enough pairs from pool (returned when stack closes) for slots
    views of block_size bytes: pairs of buffer_size when a block fits,
    several blocks per buffer, or else pairs of block_size. The pairs
    are borrowed together (a bounded pool's rule against deadlock).

    >>> with contextlib.ExitStack() as stack:
    ...     views = slot_views(stack, buffers.BufferPool(), 4, 4096, 8192)
    ...     [len(v) for v in views]
    [4096, 4096, 4096, 4096]
    """
    size = max(block_size, buffer_size)
    per_buffer = size // block_size
    pairs = -(-slots // (2 * per_buffer))
    views: list[memoryview] = []
    for pair in stack.enter_context(pool.borrow_many(size, pairs, owner)):
        for buf in pair:
            for i in range(per_buffer):
                views.append(buf[i * block_size:(i + 1) * block_size])
    return views[:slots]


class ChecksumOp(ops.Operation):
    """Compute the block hash of [0, size) of a backend."""

    name = "checksum"

    def __init__(self, backend: Backend, size: int, algorithm: str,
                 block_size: int, slots: list[memoryview],
                 pool: concurrent.futures.Executor,
                 digests: BlockDigests | None = None) -> None:
        super().__init__(0, size)
        self._backend = backend
        self._algorithm = algorithm
        self._block_size = block_size
        # At least two views of block_size bytes, one block in flight each.
        self._slots = slots
        self._pool = pool
        # Hash-on-write digests of the same algorithm, block size and
        # image size, or None.
        self._digests = digests
        # Bytes read from storage.
        self.read = 0

    def _extents(self) -> list[ZeroExtent]:
        digests = self._digests
        if digests is not None and digests.known() == digests.blocks:
            # Every block has a digest: the extents would change nothing.
            return []
        try:
            items = self._backend.extents("zero")
        except UnsupportedContext:
            return []
        return [e for e in extents_mod.clip(items, self.length)
                if isinstance(e, ZeroExtent)]

    def run(self) -> dict[str, Any]:
        algorithm, block_size = self._algorithm, self._block_size
        backend = self._backend
        hasher = blkhash.Hasher(algorithm, block_size)
        zero_digest = blkhash.ZeroDigests(algorithm, block_size)
        views = self._slots
        free = collections.deque(range(len(views)))
        parallel = backend.capabilities.concurrent_reads

        def read(offset: int, length: int, slot: int) -> None:
            n = backend.readinto(offset, views[slot][:length])
            if n < length:
                raise OSError(f"Short read at offset {offset}: {n} of "
                              f"{length} bytes")

        def digest(length: int, slot: int) -> bytes:
            return blkhash.block_digest(algorithm, views[slot][:length])

        def read_digest(offset: int, length: int, slot: int) -> bytes:
            read(offset, length, slot)
            return digest(length, slot)

        # Digests in block order: zero blocks are known at once, data
        # blocks arrive from the pool with the slot they use.
        pending: collections.deque[
            bytes | tuple[concurrent.futures.Future[bytes], int]
        ] = collections.deque()

        def consume() -> None:
            item = pending.popleft()
            if isinstance(item, bytes):
                hasher.update(item)
            else:
                future, slot = item
                try:
                    hasher.update(future.result())
                finally:
                    free.append(slot)

        kept = self._digests
        try:
            for offset, length, is_zero in blkhash.plan(
                    self._extents(), self.length, block_size):
                self._check()
                known = (kept.digest(offset // block_size)
                         if kept is not None else None)
                if known is not None:
                    pending.append(known)
                elif is_zero:
                    pending.append(zero_digest(length))
                else:
                    while not free:
                        consume()
                    slot = free.popleft()
                    self.read += length
                    if parallel:
                        future = self._pool.submit(
                            read_digest, offset, length, slot)
                    else:
                        try:
                            read(offset, length, slot)
                        except BaseException:
                            free.append(slot)
                            raise
                        future = self._pool.submit(digest, length, slot)
                    pending.append((future, slot))
                self.done = offset + length
            while pending:
                consume()
        finally:
            # On errors, let tasks still using our buffers finish before
            # the buffers go back to the pool.
            concurrent.futures.wait(
                [item[0] for item in pending if not isinstance(item, bytes)])
        return blkhash.checksum_result(algorithm, block_size,
                                       hasher.hexdigest())
