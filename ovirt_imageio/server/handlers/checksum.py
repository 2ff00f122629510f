# SPDX-License-Identifier: GPL-2.0-or-later
"""
/images/{ticket-id}/checksum and /images/{ticket-id}/checksum/algorithms.

The checksum is ``ovirt_imageio.blkhash`` over the image. Zero blocks
(from the backend's zero extents) are never read. Data blocks are read in
order by the request thread and hashed by the IO pool, at most two blocks
ahead, so reading the next block overlaps hashing the previous ones and
memory stays at three blocks per request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from typing import Any

from ... import blkhash, extents as extents_mod, ioutil
from ...backends.base import Backend, UnsupportedContext
from ...extents import ZeroExtent
from .. import context, ops
from ..config import Config
from ..errors import BadRequest, Forbidden
from ..message import Request, Response
from ..tickets import TicketStore

log = logging.getLogger("checksum")

# Blocks being hashed while the next one is read.
HASH_AHEAD = 2


class Algorithms:
    """Allowed algorithms; needs no ticket (any id works)."""

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        resp.send_json({"algorithms": blkhash.algorithms()})


class Checksum:
    def __init__(self, cfg: Config, tickets: TicketStore,
                 pool: concurrent.futures.Executor) -> None:
        self.cfg = cfg
        self.tickets = tickets
        self.pool = pool

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        if not ticket_id:
            raise BadRequest("Ticket id is required")
        algorithm = req.query.get("algorithm", blkhash.DEFAULT_ALGORITHM)
        raw_size = req.query.get("block_size",
                                 str(blkhash.DEFAULT_BLOCK_SIZE))
        try:
            block_size = int(raw_size)
        except ValueError:
            raise BadRequest(f"Invalid value for 'block_size': {raw_size!r}"
                             " (expecting an integer)") from None
        error = blkhash.validate(algorithm, block_size)
        if error:
            raise BadRequest(error)

        try:
            ticket = self.tickets.authorize(ticket_id, "read")
        except Forbidden as e:
            # Unlike the other endpoints, a failed first check keeps the
            # connection (upstream behaviour clients may rely on).
            raise Forbidden(e.reason, keep_alive=True) from None

        ctx = context.get(req.connection, ticket, self.cfg)
        size = min(ticket.size, ctx.backend.size())
        log.debug("[%s] CHECKSUM algorithm=%s block_size=%d transfer=%s",
                  req.connection.client, algorithm, block_size,
                  ticket.transfer_id)
        op = ChecksumOp(ctx.backend, size, algorithm, block_size, self.pool)
        resp.send_json(ticket.run(op))


class ChecksumOp(ops.Operation):
    """Compute the block hash of [0, size) of a backend."""

    name = "checksum"

    def __init__(self, backend: Backend, size: int, algorithm: str,
                 block_size: int, pool: concurrent.futures.Executor
                 ) -> None:
        super().__init__(0, size)
        self._backend = backend
        self._algorithm = algorithm
        self._block_size = block_size
        self._pool = pool

    def _extents(self) -> list[ZeroExtent]:
        try:
            items = self._backend.extents("zero")
        except UnsupportedContext:
            return []
        return [e for e in extents_mod.clip(items, self.length)
                if isinstance(e, ZeroExtent)]

    def run(self) -> dict[str, Any]:
        algorithm, block_size = self._algorithm, self._block_size
        hasher = blkhash.Hasher(algorithm, block_size)
        zero_digest = blkhash.ZeroDigests(algorithm, block_size)
        maps = [ioutil.aligned_buffer(block_size)
                for _ in range(HASH_AHEAD + 1)]
        # Digests in block order: zero blocks are known at once, data
        # blocks arrive from the pool with the buffer slice they hash.
        pending: collections.deque[
            bytes | tuple[concurrent.futures.Future[bytes], memoryview]
        ] = collections.deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                item = pending.popleft()
                if isinstance(item, bytes):
                    hasher.update(item)
                else:
                    future, view = item
                    try:
                        hasher.update(future.result())
                    finally:
                        view.release()

        try:
            slot = 0
            for offset, length, is_zero in blkhash.plan(
                    self._extents(), self.length, block_size):
                self._check()
                if is_zero:
                    pending.append(zero_digest(length))
                else:
                    # Before reusing a buffer, its block must be hashed.
                    drain(HASH_AHEAD)
                    view = memoryview(maps[slot])[:length]
                    slot = (slot + 1) % len(maps)
                    try:
                        n = self._backend.readinto(offset, view)
                        if n < length:
                            raise OSError(
                                f"Short read at offset {offset}: {n} of "
                                f"{length} bytes")
                    except BaseException:
                        view.release()
                        raise
                    pending.append((self._pool.submit(
                        blkhash.block_digest, algorithm, view), view))
                self.done = offset + length
            drain(0)
        finally:
            # On errors, wait for hashing still running on our buffers
            # before unmapping them.
            for item in pending:
                if not isinstance(item, bytes):
                    concurrent.futures.wait([item[0]])
                    item[1].release()
            for m in maps:
                m.close()
        return blkhash.checksum_result(algorithm, block_size,
                                       hasher.hexdigest())
