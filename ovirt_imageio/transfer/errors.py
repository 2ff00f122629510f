# SPDX-License-Identifier: GPL-2.0-or-later
"""
Errors of the transfer core, one root: :class:`TransferError`.

They say what went wrong with a ticket or an operation, never how a
protocol answers it: each protocol door maps them to its own answer (the
HTTP door to a status in ``httpd/errors.py``). Messages are written for
clients: they never hold a whole ticket id or a local path.
"""

from __future__ import annotations


class TransferError(Exception):
    """Root of the errors raised by tickets and operations."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTicket(TransferError):
    """A ticket description that does not validate."""


class TicketNotFound(TransferError):
    """A ticket looked up by id (the control API) is not installed."""


class AccessDenied(TransferError):
    """
    Unknown, expired or canceled ticket, or an operation the ticket does
    not allow. ``keep_alive`` says whether the door may keep serving the
    connection after answering; by default it must not, so a canceled
    transfer cannot go on over a kept-alive connection.
    """

    def __init__(self, reason: str, keep_alive: bool = False) -> None:
        super().__init__(
            f"You are not allowed to access this resource: {reason}")
        self.reason = reason
        self.keep_alive = keep_alive


class TicketBusy(TransferError):
    """A canceled ticket still has operations running."""


class ShortData(TransferError):
    """The source gave fewer bytes than an operation needed."""

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(
            f"Requested {requested} bytes, available {available} bytes")
        self.requested = requested
        self.available = available


class BeyondEnd(TransferError):
    """A request reaching past the end of the ticket's image."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size
