# SPDX-License-Identifier: GPL-2.0-or-later
"""The HTTP answer to each error of the transfer core."""

from __future__ import annotations

import pytest

from ovirt_imageio.httpd import errors
from ovirt_imageio.transfer import errors as transfer


@pytest.mark.parametrize("error, status, message", [
    (transfer.InvalidTicket("Invalid ticket: x"), 400, "Invalid ticket: x"),
    (transfer.ShortData(10, 4), 400,
     "Requested 10 bytes, available 4 bytes"),
    (transfer.TicketNotFound("No such ticket: abc"), 404,
     "No such ticket: abc"),
    (transfer.TicketBusy("Ticket busy"), 409, "Ticket busy"),
    (transfer.AccessDenied("expired"), 403,
     "You are not allowed to access this resource: expired"),
    (transfer.TransferError("other"), 500, "other"),
])
def test_from_transfer(error: transfer.TransferError, status: int,
                       message: str) -> None:
    err = errors.from_transfer(error)
    assert (err.status, err.message) == (status, message)


@pytest.mark.parametrize("keep_alive", [True, False])
def test_access_denied_keeps_connection_only_when_asked(
        keep_alive: bool) -> None:
    err = errors.from_transfer(transfer.AccessDenied("x", keep_alive))
    assert isinstance(err, errors.Forbidden)
    assert err.keep_alive is keep_alive
