# SPDX-License-Identifier: GPL-2.0-or-later
"""
/images/{ticket-id}/extents: zero, dirty and written extents of an image.

``start`` and ``length`` ask for a window: the extents covering exactly
``[start, min(start + length, size))``, cut at both ends, so a client of
a multi-TiB image can start moving data before the whole map is known.
Without them the window is the whole image, as upstream answers.

The answer is streamed: its JSON is written in pieces as the backend
yields the extents (``extents.json_pieces``), so memory does not grow
with the map and the client reads the first extents while the rest of
the image is scanned. HTTP/1.1 requests get it chunked; HTTP/1.0 ones,
which cannot read chunked bodies, get it whole with its length, as
before. The head waits for the first extent, so a backend failing at
once (no such context, the NBD server gone) still gets its status; a
failure after the head closes the connection before the last chunk,
which every HTTP/1.1 client reports as an incomplete answer (http.client
raises IncompleteRead), never as a shorter JSON that parses: the closing
bracket comes only in the last piece.
"""

from __future__ import annotations

import logging
from typing import Iterable

from ...backends.base import UnsupportedContext
from ...config import Config
from ...http import query as http_query
from ...transfer import ops
from ...transfer.store import TicketStore
from ...util import extents as extents_mod
from ..errors import BadRequest, NotFound
from ..message import Request, Response
from .prologue import ImageAccess

log = logging.getLogger("extents")

CONTEXTS = ("zero", "dirty", "written")

# How long a written-extents answer waits for a write still running at
# its start (Ticket.wait_writes_at). A cut request's operation notices the
# cut on its next receive, within milliseconds when the peer closed; a
# peer lost without a close is noticed only at the socket timeout, and
# then the answer goes without that write's prefix rather than hold the
# client that long.
WRITTEN_SETTLE = 5.0


class Extents:
    def __init__(self, cfg: Config, tickets: TicketStore) -> None:
        self.cfg = cfg
        self.tickets = tickets
        self.access = ImageAccess(cfg, tickets)

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        ctx_name = req.query.get("context", "zero")
        if ctx_name not in CONTEXTS:
            raise BadRequest(f"Invalid value for 'context': {ctx_name!r} "
                             f"(expecting one of {', '.join(CONTEXTS)})")
        start = http_query.parse_int(req.query, "start", 0)
        length = http_query.parse_int(req.query, "length", 0) \
            if "length" in req.query else None
        image = self.access.open(req, resp, ticket_id, "read")
        ticket, ctx = image.ticket, image.context
        if ctx_name == "dirty" and not ticket.dirty:
            raise NotFound("Ticket does not support dirty extents")
        size = ticket.size
        if start > size:
            raise BadRequest(f"Invalid value for 'start': {start} (past the "
                             f"end of the image at {size})")
        end = size if length is None else min(size, start + length)
        log.debug("[%s] EXTENTS context=%s start=%d end=%d transfer=%s",
                  req.connection.client, ctx_name, start, end,
                  ticket.transfer_id)

        if ctx_name == "written":
            # The ticket's own ledger: no backend call, always available.
            # A client retrying a cut PUT asks from the PUT's offset,
            # maybe before the cut PUT's operation entered its written
            # prefix: let it finish first (bounded).
            if not ticket.wait_writes_at(start, WRITTEN_SETTLE):
                log.warning("[%s] EXTENTS context=written: a write at %d "
                            "still runs after %.1f s", req.connection.client,
                            start, WRITTEN_SETTLE)
            written = ticket.ledger.extents(start, end - start)
            send(req, resp, written)
            resp.record("extents")
            return

        def collect() -> None:
            try:
                send(req, resp, ctx.backend.extents(ctx_name, start, end))
            except UnsupportedContext as e:
                raise NotFound(f"Operation not supported: {e}") from None

        ticket.run(ops.Call(collect, "extents"))
        resp.record("extents")


def send(req: Request, resp: Response,
         extents: Iterable[extents_mod.Extent | extents_mod.WrittenExtent]
         ) -> None:
    """
    Send the JSON of extents (and a line end) as they come; see the
    module docstring.
    """
    resp.headers["Content-Type"] = "application/json"
    # The first piece as soon as it holds an extent: the head waits for
    # it, not for a whole piece.
    pieces = extents_mod.json_pieces(extents, first=1)
    first = next(pieces)
    if req.head.version == "HTTP/1.0":
        resp.send(first + b"".join(pieces) + b"\n")
        return
    resp.start_chunked(first)
    for piece in pieces:
        resp.write_chunk(piece)
    resp.end_chunked(b"\n")
