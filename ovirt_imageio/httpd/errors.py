# SPDX-License-Identifier: GPL-2.0-or-later
"""
Errors raised by handlers, each carrying the HTTP status it maps to, and
the status of each error of the transfer core (:func:`from_transfer`).
Anything else escaping a handler is an internal error answered with a
generic 500 (its details go to the log only).
"""

from __future__ import annotations

from ..http.errors import ProtocolError
from ..transfer import errors as transfer


class HandlerError(ProtocolError):
    """
    A request error with its HTTP status, raised by handlers and the
    router.
    """

    status_code = 500

    def __init__(self, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(self.status_code, message, headers)


class BadRequest(HandlerError):
    status_code = 400


class Forbidden(HandlerError):
    """
    Unknown, expired or canceled ticket, or an operation the ticket does
    not allow. The connection is closed after answering, so a canceled
    transfer cannot go on over a kept-alive connection.
    """

    status_code = 403

    def __init__(self, reason: str, keep_alive: bool = False) -> None:
        super().__init__(
            f"You are not allowed to access this resource: {reason}")
        self.reason = reason
        # Only the checksum endpoint's first check keeps the connection.
        self.keep_alive = keep_alive


class NotFound(HandlerError):
    status_code = 404


class MethodNotAllowed(HandlerError):
    status_code = 405


class Conflict(HandlerError):
    status_code = 409


class RangeNotSatisfiable(HandlerError):
    """416, always with ``Content-Range: bytes */<size>``."""

    status_code = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message, {"Content-Range": f"bytes */{size}"})
        self.size = size


class PartialContent(HandlerError):
    """The body or the backend gave fewer bytes than were needed."""

    status_code = 400

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(
            f"Requested {requested} bytes, available {available} bytes")
        self.requested = requested
        self.available = available


class InternalError(HandlerError):
    status_code = 500


# The answer to each error of the transfer core, most specific first.
_TRANSFER_STATUS: tuple[tuple[type[transfer.TransferError], int], ...] = (
    (transfer.InvalidTicket, 400),
    (transfer.ShortData, 400),
    (transfer.TicketNotFound, 404),
    (transfer.TicketBusy, 409),
)


def from_transfer(e: transfer.TransferError) -> ProtocolError:
    """
    The HTTP error answering an error of the transfer core.

        >>> from_transfer(transfer.TicketNotFound("No such ticket")).status
        404
        >>> err = from_transfer(transfer.AccessDenied("expired"))
        >>> err.status, err.keep_alive
        (403, False)
    """
    if isinstance(e, transfer.AccessDenied):
        return Forbidden(e.reason, keep_alive=e.keep_alive)
    if isinstance(e, transfer.BeyondEnd):
        return RangeNotSatisfiable(e.message, e.size)
    for kind, status in _TRANSFER_STATUS:
        if isinstance(e, kind):
            return ProtocolError(status, e.message)
    return ProtocolError(500, e.message)
