# SPDX-License-Identifier: GPL-2.0-or-later
"""
Route a request to a handler.

Routes are regular expressions tried in order against the decoded path;
the first match wins (so ``/images/ID/extents`` must come before
``/images/ID``). Groups become handler arguments. A handler is an object
with a method per HTTP verb (``get``, ``put``, ...); a verb it does not
have is 405.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from ..util import redact
from .errors import MethodNotAllowed, NotFound
from .message import Request, Response

# The verbs any route may have; others are 405 before routing.
METHODS = frozenset({"GET", "PUT", "PATCH", "POST", "DELETE", "OPTIONS",
                     "HEAD"})

Route = tuple[str, object]


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = [(re.compile(pattern + "$"), handler)
                        for pattern, handler in routes]

    def resolve(self, method: str, path: str
                ) -> tuple[Callable[..., Any], tuple[str, ...]]:
        """Return the handler method and its path arguments."""
        if method not in METHODS:
            raise MethodNotAllowed(f"Method {method!r} is not allowed")
        for regex, handler in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            func = getattr(handler, method.lower(), None)
            # Messages are logged: ticket ids in paths are shortened.
            if func is None:
                raise MethodNotAllowed(
                    f"Method {method} is not allowed for "
                    f"{redact.path(path)!r}")
            return func, match.groups()
        raise NotFound(f"No handler for {redact.path(path)!r}")

    def dispatch(self, req: Request, resp: Response) -> None:
        func, args = self.resolve(req.method, req.path)
        func(req, resp, *args)
