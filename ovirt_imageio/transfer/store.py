# SPDX-License-Identifier: GPL-2.0-or-later
"""
The installed tickets, and the authorizer of every data request.

The store maps ticket ids to ``tickets.Ticket`` under its own lock, held
only for the dict (it is never held with a ticket's lock; see the lock
rules in ``tickets.py``). Removing a ticket cancels it first and drops it
only once its operations stopped. It also owns where ledgers survive the
daemon (``ledger.LedgerFiles``): it restores a ticket's ledger when the
ticket is installed again, saves it after flushes (the client's and the
daemon's own checkpoints) and at a clean stop, and deletes it with the
ticket.

Ticket ids are bearer secrets: log lines and errors show
``redact.short_id(uuid)`` only.
"""

from __future__ import annotations

import logging
import threading
import time

from ..util.redact import short_id
from .errors import AccessDenied, TicketBusy, TicketNotFound
from .ledger import Ledger, LedgerFiles, checkpoint_bound
from .tickets import Clock, Ticket, canceled_error
from .ticketspec import TicketSpec

log = logging.getLogger(__name__)


class TicketStore:
    """
    The installed tickets, by uuid, and the authorizer for data requests.

    Example::

        >>> from .ticketspec import parse
        >>> store = TicketStore()
        >>> t = store.add(parse({"uuid": "a1b2c3d4e5", "size": 100,
        ...                      "ops": ["write"], "timeout": 60,
        ...                      "url": "file:///tmp/x"}))
        >>> store.authorize("a1b2c3d4e5", "read") is t
        True
    """

    def __init__(self, clock: Clock = time.monotonic,
                 ledgers: LedgerFiles | None = None,
                 checkpoint: int = 0) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}
        # Where durable written ranges survive the daemon; None: nowhere.
        self._ledgers = ledgers
        # ``[daemon] checkpoint_size``: bytes written between the daemon's
        # own flushes, bounded per ticket by ``ledger.checkpoint_bound``.
        self._checkpoint = checkpoint

    def add(self, spec: TicketSpec) -> Ticket:
        """
        Install a ticket, silently replacing one with the same uuid. The
        replaced ticket is left alone: operations already running on it
        finish against it, and its contexts close with their connections.

        The ledger carries over from a replaced ticket of the same image
        (url and size), else from the ledger file a previous run of the
        daemon saved for it; anything else starts empty.
        """
        with self._lock:
            old = self._tickets.get(spec.uuid)
        if old is not None and (old.url, old.size) == (spec.url, spec.size):
            ledger = old.ledger
        else:
            durable = None
            if self._ledgers is not None:
                durable = self._ledgers.load(spec.uuid, spec.url, spec.size)
            ledger = Ledger(spec.size, durable)
            if durable:
                log.info("Restored %d written bytes of transfer %s",
                         ledger.written(), spec.transfer_id)
        # Checkpoints only matter where a ledger survives the daemon, and
        # only for tickets that write.
        checkpoint = 0
        if self._ledgers is not None and "write" in spec.ops:
            checkpoint = checkpoint_bound(self._checkpoint, spec.size)
        ticket = Ticket(spec, clock=self._clock, ledger=ledger,
                        on_durable=self._save, checkpoint=checkpoint)
        with self._lock:
            replaced = spec.uuid in self._tickets
            self._tickets[spec.uuid] = ticket
        log.info("%s ticket %s transfer=%s ops=%s size=%d timeout=%d",
                 "Replacing" if replaced else "Adding", short_id(spec.uuid),
                 spec.transfer_id, ",".join(spec.ops), spec.size,
                 spec.timeout)
        return ticket

    def _save(self, ticket: Ticket) -> None:
        if self._ledgers is not None:
            self._ledgers.save(ticket.uuid, ticket.url, ticket.size,
                               ticket.ledger.durable())

    def get(self, uuid: str) -> Ticket:
        """The ticket ``uuid``; ``TicketNotFound`` if not installed."""
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise TicketNotFound(f"No such ticket: {short_id(uuid)}")
        return ticket

    def authorize(self, uuid: str, op: str) -> Ticket:
        """
        Return the ticket ``uuid`` if it allows ``op`` ("read" or
        "write") now, else raise ``AccessDenied``. Checks, in order: unknown
        id, canceled, expired, operation not allowed.
        """
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise AccessDenied(f"No such ticket {short_id(uuid)}")
        if ticket.canceled:
            raise canceled_error(ticket.transfer_id)
        if ticket.expired:
            raise AccessDenied(f"Ticket {short_id(uuid)} expired")
        if not ticket.may(op):
            raise AccessDenied(f"Ticket {short_id(uuid)} forbids {op}")
        return ticket

    def remove(self, uuid: str, timeout: float) -> None:
        """
        Cancel and drop the ticket ``uuid``; unknown ids are ignored.

        Waits up to ``timeout`` seconds for its operations to stop. If
        they do not, raise ``TicketBusy`` and keep the (canceled) ticket so
        the caller can retry; with ``timeout <= 0`` return at once
        instead, leaving the ticket for the caller to poll and delete
        again.
        """
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            log.debug("Ticket %s not found, nothing to remove",
                      short_id(uuid))
            return

        if not ticket.cancel(timeout):
            if timeout <= 0:
                log.info("Transfer=%s still active, ticket %s kept",
                         ticket.transfer_id, short_id(uuid))
                return
            raise TicketBusy(
                f"Timeout cancelling transfer {ticket.transfer_id}")

        with self._lock:
            # A new ticket may have been installed under the same uuid
            # while we waited; it is not ours to drop.
            if self._tickets.get(uuid) is ticket:
                del self._tickets[uuid]
                dropped = True
            else:
                dropped = False
        if dropped and self._ledgers is not None:
            self._ledgers.remove(uuid)
        log.info("Removed ticket %s transfer=%s", short_id(uuid),
                 ticket.transfer_id)

    def clear(self) -> None:
        """
        Drop all tickets at once, without waiting. Each is canceled: its
        running operations are asked to stop (they end with 403), and its
        contexts are closed now if it is idle, else when their
        connections close.
        """
        with self._lock:
            tickets = list(self._tickets.values())
            self._tickets.clear()
        log.info("Removing all tickets (%d)", len(tickets))
        for ticket in tickets:
            ticket.cancel(0)
            # A clean stop keeps what is durable for the next run; the
            # tickets are not deleted, only forgotten by this process.
            if ticket.ledger.durable():
                try:
                    self._save(ticket)
                except OSError as e:
                    log.warning("Cannot save the ledger of transfer %s: %s",
                                ticket.transfer_id, e)

    def tickets(self) -> list[Ticket]:
        """A snapshot of the installed tickets."""
        with self._lock:
            return list(self._tickets.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._tickets)

    def __contains__(self, uuid: object) -> bool:
        with self._lock:
            return uuid in self._tickets
