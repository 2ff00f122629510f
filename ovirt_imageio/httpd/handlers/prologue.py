# SPDX-License-Identifier: GPL-2.0-or-later
"""
The prologue of the image handlers (``/images/{ticket-id}`` and its
``extents`` and ``checksum`` children).

Every image request starts the same way, in this order:

1. A ticket id is required: an empty one is 400.
2. The ticket must allow the operation now (``TicketStore.authorize``):
   unknown, expired, canceled or forbidding the operation is 403.
3. A request writing a byte range must fit in the ticket: 416 if not.
   Checked before the backend is opened, so an oversized request costs
   no storage access.
4. The connection's backend for the ticket (``transfer.context.get``):
   opened on first use, then kept for the connection's later requests.

The response learns the backend's name, so the metrics count the bytes
the handler records under the right backend.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass

from ... import backends
from ...config import Config
from ...transfer import buffers, context
from ...transfer.errors import AccessDenied
from ...transfer.store import TicketStore
from ...transfer.tickets import Ticket
from ..errors import BadRequest, RangeNotSatisfiable
from ..message import Request, Response


@dataclass(frozen=True)
class OpenImage:
    """A request's authorized ticket and its connection's backend."""

    ticket: Ticket
    context: context.BackendContext


class ImageAccess:
    """
    Runs the prologue for the image handlers of one service.

    Example::

        access = ImageAccess(cfg, tickets)
        image = access.open(req, resp, ticket_id, "write",
                            span=(offset, length))
        ticket.run(ops.Write(image.context.backend, ...))
    """

    def __init__(self, cfg: Config, tickets: TicketStore) -> None:
        self.cfg = cfg
        self.tickets = tickets

    def open(self, req: Request, resp: Response, ticket_id: str, op: str,
             *, span: tuple[int, int] | None = None,
             keep_alive_on_deny: bool = False) -> OpenImage:
        """
        Authorize ``op`` ("read" or "write") on ``ticket_id``, check that
        ``span`` (offset, length), if given, is inside the ticket, and
        return the ticket with the connection's backend for it.

        ``keep_alive_on_deny`` keeps the connection open when the ticket
        refuses (the checksum endpoint's upstream behaviour); other
        handlers close it, so a canceled transfer cannot go on.
        """
        if not ticket_id:
            raise BadRequest("Ticket id is required")
        try:
            ticket = self.tickets.authorize(ticket_id, op)
        except AccessDenied as e:
            if not keep_alive_on_deny:
                raise
            raise AccessDenied(e.reason, keep_alive=True) from None
        if span is not None:
            offset, length = span
            if offset + length > ticket.size:
                raise RangeNotSatisfiable(
                    f"Requested range {offset}-{offset + length - 1} is "
                    f"beyond ticket size {ticket.size}", ticket.size)
        ctx = context.get(req.connection, ticket, self.cfg)
        resp.backend = backends.scheme(ticket.url)
        return OpenImage(ticket, ctx)


class DataHandler:
    """
    Base of the handlers that move image data: the configuration, the
    tickets, the IO pool overlapping storage with the network, the buffer
    pool, and the prologue.
    """

    def __init__(self, cfg: Config, tickets: TicketStore,
                 pool: concurrent.futures.Executor,
                 buffer_pool: buffers.BufferPool) -> None:
        self.cfg = cfg
        self.tickets = tickets
        self.pool = pool
        self.buffers = buffer_pool
        self.access = ImageAccess(cfg, tickets)
