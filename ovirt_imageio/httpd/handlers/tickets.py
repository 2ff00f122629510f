# SPDX-License-Identifier: GPL-2.0-or-later
"""/tickets/{id}: the control API used by the management system."""

from __future__ import annotations

import logging

from ...config import Config, allowed_dirs
from ...transfer import allowed_paths, ticketspec
from ...transfer.errors import InvalidTicket
from ...transfer.store import TicketStore
from ...util import redact
from ..errors import BadRequest
from ..message import Request, Response

log = logging.getLogger("tickets")

# Ticket JSON is small; anything bigger is a mistake or abuse.
MAX_TICKET_SIZE = 64 * 1024


class Tickets:
    def __init__(self, cfg: Config, tickets: TicketStore) -> None:
        self.cfg = cfg
        self.tickets = tickets

    def get(self, req: Request, resp: Response, ticket_id: str) -> None:
        if not ticket_id:
            raise BadRequest("Ticket id is required")
        ticket = self.tickets.get(ticket_id)
        resp.send_json(ticket.status())

    def put(self, req: Request, resp: Response, ticket_id: str) -> None:
        if not ticket_id:
            raise BadRequest("Ticket id is required")
        try:
            obj = req.json(MAX_TICKET_SIZE)
        except BadRequest as e:
            raise BadRequest(f"Ticket is not in a json format: {e}"
                             ) from None
        spec = ticketspec.parse(
            obj, default_inactivity_timeout=self.cfg.daemon
            .inactivity_timeout)
        if not allowed_paths.is_allowed(spec.url,
                                        allowed_dirs(self.cfg.daemon)):
            log.warning("Refusing ticket=%s transfer=%s: %s",
                        redact.short_id(spec.uuid), spec.transfer_id,
                        allowed_paths.RULE)
            raise InvalidTicket(f"Invalid ticket: {allowed_paths.RULE}")
        self.tickets.add(spec)
        log.info("ADD ticket=%s transfer=%s size=%d ops=%s url=%s",
                 redact.short_id(spec.uuid), spec.transfer_id, spec.size,
                 list(spec.ops), redact.text(spec.url))

    def patch(self, req: Request, resp: Response, ticket_id: str) -> None:
        if not ticket_id:
            raise BadRequest("Ticket id is required")
        msg = req.json(MAX_TICKET_SIZE)
        if not isinstance(msg, dict):
            raise BadRequest("Invalid patch: expecting a JSON object")
        if "timeout" not in msg and "rate_limit" not in msg:
            raise BadRequest("Missing required value for 'timeout'")
        timeout = msg.get("timeout")
        if timeout is not None and (
                not isinstance(timeout, int) or isinstance(timeout, bool)
                or timeout < 0):
            raise BadRequest(f"Invalid value for 'timeout': {timeout!r} "
                             "(expecting a non-negative integer)")
        rate = None
        if "rate_limit" in msg:
            rate = ticketspec.parse_rate_limit(msg["rate_limit"])
        ticket = self.tickets.get(ticket_id)
        if timeout is not None:
            log.info("EXTEND ticket=%s timeout=%d",
                     redact.short_id(ticket_id), timeout)
            ticket.extend(timeout)
        if rate is not None:
            log.info("RATE ticket=%s rate_limit=%d",
                     redact.short_id(ticket_id), rate)
            ticket.set_rate_limit(rate)

    def delete(self, req: Request, resp: Response, ticket_id: str) -> None:
        resp.status = 204
        if not ticket_id:
            log.info("REMOVE all tickets")
            self.tickets.clear()
            return
        log.info("REMOVE ticket=%s", redact.short_id(ticket_id))
        self.tickets.remove(ticket_id, self.cfg.control.remove_timeout)
