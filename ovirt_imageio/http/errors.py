# SPDX-License-Identifier: GPL-2.0-or-later
"""The one exception type of the pure HTTP layer."""

from __future__ import annotations


class ProtocolError(Exception):
    """
    A request the server must reject, with the status to answer.

    Raised by the parsers in this package; the server turns it into an
    error response whose text/plain body is ``message``. ``headers`` are
    extra response headers (for example ``Content-Range`` for 416).
    """

    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
