# SPDX-License-Identifier: GPL-2.0-or-later
"""
One HTTP/1.1 connection: read request heads, dispatch, apply the
connection rules, repeat.

Connection rules (reference section 2), applied after every request:

- The client asked for it: ``Connection: close``, HTTP/1.0 without
  keep-alive, or ``close=y`` in the query -> close after the response.
- The request body was not read to its end (the handler failed before
  reading it) -> ``Connection: close``; the unread bytes cannot be told
  apart from the next request.
- 403 -> close, so a canceled transfer cannot go on over a kept-alive
  connection.
- An error after the response head was sent -> close at once; the client
  sees a truncated body, which is the only way to signal it.
- A malformed request head -> error response, then close (the parser
  cannot resynchronise).

Between requests the connection waits ``timeout`` seconds (60 until a
ticket is used, then the ticket's ``inactivity_timeout``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable, Protocol

from ..http import headers as http_headers
from ..http import response as http_response
from ..http.errors import ProtocolError
from ..http.parser import RequestParser
from .errors import Forbidden
from .message import Body, Request, Response
from .stream import Stream

log = logging.getLogger("server")

# Connection ids shown in logs; a process-wide counter.
_ids = itertools.count(1)

# Timeout for connections that have not used a ticket yet.
DEFAULT_TIMEOUT = 60.0

# How much a connection reads at a time while waiting for a head.
RECV_SIZE = 65536


class Dispatcher(Protocol):
    def dispatch(self, req: Request, resp: Response) -> None: ...


class Connection:
    """State of one client connection, shared by its requests."""

    def __init__(self, stream: Stream, dispatcher: Dispatcher,
                 client: str = "local", service: str = "",
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.id = next(_ids)
        self.stream = stream
        self.client = client
        self.service = service
        self._dispatcher = dispatcher
        self.timeout = timeout
        # Per-connection objects keyed by handlers (e.g. backends opened
        # for a ticket); closed with the connection.
        self.context: dict[Any, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self.requests = 0
        self.started = time.monotonic()
        stream.settimeout(timeout)

    def set_timeout(self, timeout: float) -> None:
        if timeout != self.timeout:
            self.timeout = timeout
            self.stream.settimeout(timeout)

    def on_close(self, func: Callable[[], None]) -> None:
        self._closers.append(func)

    def serve(self) -> None:
        log.info("OPEN connection=%s client=%s", self.id, self.client)
        try:
            self._serve()
        except (ConnectionError, TimeoutError) as e:
            log.debug("Connection %s ended: %s", self.id, e)
        except OSError as e:
            log.debug("Connection %s failed: %s", self.id, e)
        finally:
            self.close()

    def close(self) -> None:
        while self._closers:
            func = self._closers.pop()
            try:
                func()
            except Exception:
                log.exception("Error closing connection %s resource",
                              self.id)
        self.stream.close()
        log.info("CLOSE connection=%s client=%s [requests=%d, %.6f s]",
                 self.id, self.client, self.requests,
                 time.monotonic() - self.started)

    def _serve(self) -> None:
        parser = self._parser = RequestParser()
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            try:
                head = parser.next_head()
                while head is None:
                    n = self.stream.recv_into(view)
                    if n == 0:
                        return
                    parser.feed(bytes(view[:n]))
                    head = parser.next_head()
            except ProtocolError as e:
                log.warning("Bad request from %s: %s", self.client,
                            e.message)
                resp = Response(self.stream)
                resp.close_connection = True
                resp.send_error(e.status, e.message, e.headers)
                return
            except TimeoutError:
                log.debug("Connection %s idle for %s seconds",
                          self.id, self.timeout)
                return

            self.requests += 1
            if not self._handle(head, parser.take_buffered()):
                return

    def _handle(self, head: Any, prefix: bytes) -> bool:
        """Serve one request; return False to close the connection."""
        resp = Response(self.stream)
        try:
            length = http_headers.content_length(head.headers) or 0
            expect = http_headers.expects_continue(head.headers)
            keep_alive = http_headers.keep_alive(head.version,
                                                 head.headers)
        except ProtocolError as e:
            resp.close_connection = True
            resp.send_error(e.status, e.message, e.headers)
            return False

        continue_sent = threading.Event() if expect else None

        def send_continue() -> None:
            # Interim 100 only when the handler really reads the body,
            # so a request rejected early never makes the client send it.
            if continue_sent is not None and not continue_sent.is_set():
                continue_sent.set()
                if not resp.started:
                    self.stream.sendall(http_response.CONTINUE)

        body = Body(self.stream, prefix, length, on_first_read=send_continue)
        req = Request(head, body, self)
        resp.close_connection = not keep_alive

        try:
            self._dispatcher.dispatch(req, resp)
        except ProtocolError as e:
            return self._error(req, resp, e)
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            log.exception("Internal error handling %s %s",
                          req.method, req.path)
            self._error(req, resp, ProtocolError(500, "Internal server error"))
            return False

        if body.remaining:
            # The handler did not read the body; the unread bytes cannot
            # be told apart from the next request.
            resp.close_connection = True
        if not resp.started:
            # A handler that wrote nothing answers with its status and an
            # empty body.
            resp.send()
        if resp.close_connection:
            return False
        # Bytes after the body are the next pipelined request.
        self._parser.feed(body.leftover)
        return True

    def _error(self, req: Request, resp: Response, err: ProtocolError
               ) -> bool:
        """Send an error response; False if the connection must close."""
        status, message = err.status, err.message
        if status >= 500:
            log.error("Server error %s for %s %s: %s", status, req.method,
                      req.path, message)
        else:
            log.info("Client error %s for %s %s: %s", status, req.method,
                     req.path, message)
        if resp.started:
            # Too late for a status: the only signal left is closing.
            return False
        if req.body.remaining:
            resp.close_connection = True
        if isinstance(err, Forbidden) and not err.keep_alive:
            resp.close_connection = True
        # Keep CORS headers set before the failure (browsers need them to
        # read the error), drop anything else the handler prepared.
        resp.headers = {k: v for k, v in resp.headers.items()
                        if k.lower().startswith("access-control-")}
        resp.send_error(status, message, err.headers)
        if not resp.close_connection:
            self._parser.feed(req.body.leftover)
        return not resp.close_connection
