# SPDX-License-Identifier: GPL-2.0-or-later
"""
CORS headers for browser clients (reference 2.9).

Each header is added only when the request carries the matching one, and
before the handler runs, so error responses carry them too: a browser
cannot show the reason of a 403 unless the response allows its origin.
"""

from __future__ import annotations

from .message import Request, Response

MAX_AGE = "86400"


def apply(req: Request, resp: Response, allow_methods: str = "*") -> None:
    added = False
    if req.header("origin") is not None:
        resp.headers["Access-Control-Allow-Origin"] = "*"
        added = True
    if req.header("access-control-request-headers") is not None:
        resp.headers["Access-Control-Allow-Headers"] = "*"
        added = True
    if req.header("access-control-request-method") is not None:
        resp.headers["Access-Control-Allow-Methods"] = allow_methods
        added = True
    if added:
        resp.headers["Access-Control-Max-Age"] = MAX_AGE
