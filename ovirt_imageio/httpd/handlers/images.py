# SPDX-License-Identifier: GPL-2.0-or-later
"""
/images/{ticket-id}: read, write, zero and flush image data.

Every handler runs the image prologue first (``prologue.ImageAccess``:
ticket id, authorization, range, the connection's backend), then runs an
operation under ``Ticket.run`` so the ticket tracks progress and can
cancel it, then records what it did on the response (``Response.record``)
for the statistics and metrics. Data operations lease their two buffers
from the daemon's pool for as long as they run (``buffers.BufferPool``),
waiting for room when it is full; the pool is fair between tickets.
"""

from __future__ import annotations

import logging
from typing import Any

from ...backends.base import Backend
from ...http import query as http_query
from ...http import ranges
from ...transfer import buffers, context, ops, streaming
from .. import cors
from ..chunked_body import ChunkedBody
from ..errors import BadRequest
from ..message import Request, Response
from .prologue import DataHandler

log = logging.getLogger("images")

ALL_FEATURES = ["checksum", "extents", "flush", "written", "zero"]
READ_FEATURES = ["checksum", "extents", "written"]


class Images(DataHandler):
    # OPTIONS

    def options(self, req: Request, resp: Response, ticket_id: str) -> None:
        cors.apply(req, resp, allow_methods="OPTIONS,GET,PUT")
        body: dict[str, Any]
        if ticket_id == "*":
            # What the server can do, for clients probing before they
            # have a ticket.
            resp.headers["Allow"] = "OPTIONS,GET,PUT,PATCH"
            body = {"features": ALL_FEATURES}
        else:
            image = self.access.open(req, resp, ticket_id, "read")
            ticket = image.ticket
            caps = image.context.backend.capabilities
            ticket.touch()
            if ticket.may("write"):
                resp.headers["Allow"] = "OPTIONS,GET,PUT,PATCH"
                features = ALL_FEATURES
            else:
                resp.headers["Allow"] = "OPTIONS,GET"
                features = READ_FEATURES
            body = {
                "features": features,
                "max_readers": caps.max_readers,
                "max_writers": caps.max_writers,
            }
            if ticket.digests is not None:
                # Hash-on-write: the checksum a client should ask for,
                # answered from the digests kept while writing.
                body["checksum"] = {
                    "algorithm": ticket.digests.algorithm,
                    "block_size": ticket.digests.block_size,
                }
        if self.cfg.local.enable:
            body["unix_socket"] = self.cfg.local.socket
        if self.cfg.nbd.enable:
            # The NBD door serves the same tickets (docs/nbd.md).
            body["nbd_socket"] = self.cfg.nbd.socket
            if self.cfg.nbd.port != -1:
                body["nbd_port"] = self.cfg.nbd.port
        resp.send_json(body)
        resp.record("options")

    # GET / HEAD

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        self._download(req, resp, ticket_id, send_body=True)

    def head(self, req: Request, resp: Response, ticket_id: str) -> None:
        self._download(req, resp, ticket_id, send_body=False)

    def _download(self, req: Request, resp: Response, ticket_id: str,
                  send_body: bool) -> None:
        cors.apply(req, resp)
        if http_query.parse_flag(req.query, "close", False):
            resp.close_connection = True
        image = self.access.open(req, resp, ticket_id, "read")
        ticket, ctx = image.ticket, image.context
        available = min(ticket.size, ctx.backend.size())

        header = req.header("range")
        rng = ranges.parse_range(header) if header is not None else None
        offset, length, partial = ranges.resolve_range(rng, available)

        resp.headers["Content-Type"] = "application/octet-stream"
        resp.headers["Accept-Ranges"] = "bytes"
        if ticket.filename:
            resp.headers["Content-Disposition"] = (
                f"attachment; filename={ticket.filename}")
        else:
            resp.headers["Content-Disposition"] = "attachment"
        if partial:
            resp.status = 206
            resp.headers["Content-Range"] = ranges.format_content_range(
                offset, offset + length - 1, available)

        log.debug("[%s] %s size=%d offset=%d close=%s transfer=%s",
                  req.connection.client, "READ" if send_body else "HEAD",
                  length, offset, resp.close_connection, ticket.transfer_id)

        if not send_body or length == 0:
            resp.start(length)
            ticket.touch()
            if send_body:
                resp.record("read", 0)
            return

        writer = _LazyStart(resp, length)
        size = context.buffer_size(self.cfg, ticket.url)
        with self.buffers.lease(size, owner=ticket) as bufs:
            op = ops.Read(ctx.backend, writer, offset, length, bufs,
                          pool=self.pool,
                          abort=req.connection.abort)
            ticket.run(op)
        resp.record("read", length)

    # PUT

    def put(self, req: Request, resp: Response, ticket_id: str) -> None:
        cors.apply(req, resp)
        chunked = isinstance(req.body, ChunkedBody)
        if req.header("content-length") is None and not chunked:
            raise BadRequest("Content-Length header is required")
        flush = http_query.parse_flag(req.query, "flush", True)
        if http_query.parse_flag(req.query, "close", False):
            resp.close_connection = True

        offset = 0
        header = req.header("content-range")
        if header is not None:
            offset = ranges.parse_content_range(header).first

        if isinstance(req.body, ChunkedBody):
            self._put_stream(req, resp, ticket_id, req.body, offset, flush)
            return
        length = req.body.length
        image = self.access.open(req, resp, ticket_id, "write",
                                 span=(offset, length))
        ticket, ctx = image.ticket, image.context
        log.debug("[%s] WRITE size=%d offset=%d flush=%s close=%s "
                  "transfer=%s", req.connection.client, length, offset,
                  flush, resp.close_connection, ticket.transfer_id)
        size = context.buffer_size(self.cfg, ticket.url)
        with self.buffers.lease(size, owner=ticket,
                                kind=_write_buffers(ctx.backend)) as bufs:
            op = ops.Write(ctx.backend, req.body, offset, length, bufs,
                           flush=flush, pool=self.pool,
                           abort=req.connection.abort)
            try:
                ticket.run(op)
            finally:
                # A cut body's prefix reached storage and the ledger (a
                # retry sends only the rest): the metrics count it too.
                resp.record("write", op.done, counts_if_failed=True)

    def _put_stream(self, req: Request, resp: Response, ticket_id: str,
                    body: ChunkedBody, offset: int, flush: bool) -> None:
        """
        A chunked upload: written sequentially from offset (Content-Range
        ``bytes N-*/*``, or 0) until the body ends; past the ticket's end
        it is refused (416) with nothing written beyond it.
        """
        image = self.access.open(req, resp, ticket_id, "write",
                                 span=(offset, 0))
        ticket, ctx = image.ticket, image.context
        log.debug("[%s] WRITE chunked offset=%d flush=%s close=%s "
                  "transfer=%s", req.connection.client, offset, flush,
                  resp.close_connection, ticket.transfer_id)
        size = context.buffer_size(self.cfg, ticket.url)
        with self.buffers.lease(size, owner=ticket,
                                kind=_write_buffers(ctx.backend)) as bufs:
            op = streaming.StreamWrite(
                ctx.backend, body, offset, ticket.size - offset, bufs,
                flush=flush, pool=self.pool, abort=req.connection.abort)
            try:
                ticket.run(op)
            finally:
                resp.record("write", op.done, counts_if_failed=True)

    # PATCH

    def patch(self, req: Request, resp: Response, ticket_id: str) -> None:
        msg = req.json()
        if not isinstance(msg, dict):
            raise BadRequest("Invalid PATCH message: expecting a JSON "
                             "object")
        op = msg.get("op")
        if op == "zero":
            self._zero(req, resp, ticket_id, msg)
        elif op == "flush":
            self._flush(req, resp, ticket_id)
        elif op is None:
            raise BadRequest("Missing required value for 'op'")
        else:
            raise BadRequest(f"Invalid value for 'op': {op!r} (expecting "
                             "'zero' or 'flush')")

    def _zero(self, req: Request, resp: Response, ticket_id: str,
              msg: dict[str, Any]) -> None:
        size = _integer(msg, "size", None)
        offset = _integer(msg, "offset", 0)
        flush = msg.get("flush", False)
        if not isinstance(flush, bool):
            raise BadRequest(f"Invalid value for 'flush': {flush!r} "
                             "(Boolean required)")
        image = self.access.open(req, resp, ticket_id, "write",
                                 span=(offset, size))
        ticket = image.ticket
        log.debug("[%s] ZERO size=%d offset=%d flush=%s transfer=%s",
                  req.connection.client, size, offset, flush,
                  ticket.transfer_id)
        ticket.run(ops.Zero(image.context.backend, offset, size,
                            flush=flush))
        resp.record("zero", size)

    def _flush(self, req: Request, resp: Response, ticket_id: str) -> None:
        image = self.access.open(req, resp, ticket_id, "write")
        ticket = image.ticket
        log.info("[%s] FLUSH transfer=%s", req.connection.client,
                 ticket.transfer_id)
        ticket.run(ops.Flush(image.context.backend))
        resp.record("flush")


def _write_buffers(backend: Backend) -> buffers.Kind:
    """The kind of buffers an upload to backend borrows."""
    return ("bytearray" if backend.capabilities.bytearray_buffers
            else "aligned")


def _integer(msg: dict[str, Any], name: str, default: int | None) -> int:
    value = msg.get(name, default)
    if value is None:
        raise BadRequest(f"Missing required value for {name!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid value for {name!r}: {value!r} "
                         "(Integer required)")
    if value < 0:
        raise BadRequest(f"Invalid value for {name!r}: {value} "
                         "(must be zero or positive)")
    if value > ranges.MAX_NUMBER:
        # Found with the fuzz harness: sums of huge values could not be
        # formatted into the 416 message (str() limits digits).
        raise BadRequest(f"Invalid value for {name!r}: too large")
    return value


class _LazyStart:
    """
    Send the response head only with the first body bytes, so an error
    before any data is read still gets a proper status.
    """

    def __init__(self, resp: Response, length: int) -> None:
        self._resp = resp
        self._length = length

    def write(self, data: Any) -> None:
        if not self._resp.started:
            self._resp.start(self._length)
        self._resp.write(data)

