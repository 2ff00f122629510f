# SPDX-License-Identifier: GPL-2.0-or-later
"""
One HTTP/1.1 connection: read request heads, dispatch, apply the
connection rules, repeat.

Connection rules (reference section 2): whether the connection serves
another request, announces ``Connection: close`` or lingers before
closing is decided by ``keepalive.decide`` from what happened to the
request (its version and headers, the handler's close request, the kind
of failure, an unread body, a started response, draining); the rules are
written at the top of ``keepalive``. A request head the parser rejects
has no request to decide about: error response, then close (the parser
cannot resynchronise).

Timeouts, per phase:

- Between requests the connection waits ``timeout`` seconds (60 until a
  ticket is used, then the ticket's ``inactivity_timeout``), then closes
  quietly.
- Once the first byte of a head arrived, the whole head must arrive
  within ``header_timeout`` seconds, else 408 and close: every receive
  also waits at most until that deadline, so a client sending one byte
  at a time cannot hold the connection's thread.
- A body is read with ``timeout`` per receive, not in total: a big
  upload over a slow link is legitimate, while a stalled one ends after
  ``timeout``.

Errors escaping a handler are mapped to statuses in one place
(``map_error``): backend OSErrors by errno, backend errors by kind, and
anything else is a bug answered with a generic 500. Messages sent to
clients never hold local paths (``OSError.filename`` stays in the log).

Draining (graceful stop): ``drain()`` asks the connection to end after
the request it is serving, or at once if it is waiting for a request. A
small lock makes "serving a request" and "draining" exclusive, so a
request is either served to its end or never started.

Every finished request becomes a ``stats.RequestRecord`` of what its
handler recorded on the response (``Response.record``: phase, bytes,
backend; nothing if the request failed, except the bytes a cut upload
wrote), added to the connection's
statistics (logged on the ``CLOSE`` line) and given to the observer, if
any. Ticket ids in logged paths are shortened: they are secrets.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Any, Protocol

from ..backends.base import BackendError, Unreachable
from ..http import headers as http_headers
from ..http import response as http_response
from ..http.errors import ProtocolError
from ..http.parser import RequestHead, RequestParser
from ..transfer import connection
from ..transfer.errors import TransferError
from ..transfer.stream import Stream
from ..util import redact
from . import errors
from .chunked_body import ChunkedBody
from .errors import Forbidden
from .keepalive import Decision, Exchange, Failure, decide
from .message import Body, Request, Response
from .stats import ConnectionStats, RequestRecord

log = logging.getLogger("server")

# Bounds for reading what a client still sends after an error response,
# before closing (see Connection._discard_input).
LINGER_BYTES = 4 * 1024**2
LINGER_TIMEOUT = 2.0

# Timeout for connections that have not used a ticket yet.
DEFAULT_TIMEOUT = 60.0

# Bound on the time to receive a whole request head ([daemon]
# header_timeout).
DEFAULT_HEADER_TIMEOUT = 60.0

# How much a connection reads at a time while waiting for a head.
RECV_SIZE = 65536


class Dispatcher(Protocol):
    def dispatch(self, req: Request, resp: Response) -> None: ...


class Observer(connection.Observer, Protocol):
    """Receives connection events; ``metrics.Metrics`` implements it."""

    def request_done(self, record: RequestRecord) -> None: ...


# Storage errors answered with a status of their own; see map_error().
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_STORAGE_REFUSED = frozenset({errno.EROFS, errno.EPERM, errno.EACCES})


def map_error(e: Exception) -> ProtocolError | None:
    """
    The error response for an exception a handler let escape, or None
    for an unexpected one (a bug: generic 500, logged with traceback).

    - ``backends.base.Unreachable`` (NBD server or remote daemon gone):
      502 with the backend's message.
    - Other backend errors: 500 with the backend's message.
    - OSError with ENOSPC or EDQUOT: 507; EROFS, EPERM or EACCES: 403
      (the storage refuses, retrying cannot help); any other errno:
      500. The message is the strerror ("pwrite: No space left on
      device" from ioutil): never ``filename``, which is a local path.

    Backend messages are written for clients, without local paths or
    ticket ids. Client disconnects (ConnectionError, TimeoutError) are
    not mapped: they end the connection.

        >>> map_error(OSError(errno.ENOSPC, "pwrite: No space left on "
        ...                   "device", "/var/tmp/disk")).status
        507
    """
    if isinstance(e, Unreachable):
        return ProtocolError(502, str(e))
    if isinstance(e, BackendError):
        return ProtocolError(500, str(e))
    if isinstance(e, OSError):
        if e.errno is None:
            # Raised with a message only, by our own code.
            reason = str(e.args[0]) if e.args else "I/O error"
        else:
            reason = e.strerror or os.strerror(e.errno)
        if e.errno in _STORAGE_FULL:
            return ProtocolError(507, reason)
        if e.errno in _STORAGE_REFUSED:
            return ProtocolError(403, reason)
        return ProtocolError(500, reason)
    return None




class Connection(connection.Connection):
    """State of one client connection, shared by its requests."""

    _log = log

    def __init__(self, stream: Stream, dispatcher: Dispatcher,
                 client: str = "local", service: str = "",
                 timeout: float = DEFAULT_TIMEOUT,
                 observer: Observer | None = None,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
        super().__init__(stream, client, service, observer)
        self._observer: Observer | None = observer
        self._dispatcher = dispatcher
        self.timeout = timeout
        self.header_timeout = header_timeout
        # Per-connection objects keyed by handlers (e.g. backends opened
        # for a ticket); closed with the connection.
        self.context: dict[Any, Any] = {}
        self.requests = 0
        # Set when closing after an error left part of a body unread.
        self._linger = False
        self.stats = ConnectionStats()
        # Set while serving a request (see "Draining" above).
        self._busy = False
        stream.settimeout(timeout)

    def set_timeout(self, timeout: float) -> None:
        if timeout != self.timeout:
            self.timeout = timeout
            self.stream.settimeout(timeout)

    def drain(self) -> None:
        """
        End the connection after its current request, or now if it has
        none. Safe to call from any thread.
        """
        with self._state_lock:
            self._draining = True
            busy = self._busy
        if not busy:
            # Wakes the thread blocked reading the next request head.
            self.stream.shutdown()

    def _discard_input(self) -> None:
        """
        Read and drop what the client is still sending before closing.

        Closing a socket with unread input makes the kernel answer with a
        reset, which can destroy the error response the client has not
        read yet. The client got "Connection: close", so it normally
        closes at once; the bounds keep a client that goes on sending
        from holding the thread.
        """
        scratch = memoryview(bytearray(65536))
        left = LINGER_BYTES
        try:
            self.stream.settimeout(LINGER_TIMEOUT)
            deadline = time.monotonic() + LINGER_TIMEOUT
            while left > 0 and time.monotonic() < deadline:
                n = self.stream.recv_into(scratch)
                if n == 0:
                    break
                left -= n
        except (OSError, ValueError):
            pass

    def _before_close(self) -> None:
        if self._linger:
            self._discard_input()

    def _close_stats(self, seconds: float) -> str:
        return self.stats.format(seconds)

    def _serve(self) -> None:
        parser = self._parser = RequestParser()
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        while True:
            with self._state_lock:
                self._busy = False
                if self._draining:
                    return
            try:
                head = self._read_head(parser, view)
                if head is None:
                    return
            except ProtocolError as e:
                log.warning("Bad request from %s: %s", self.client,
                            redact.text(e.message))
                # No request to record, but an error answer all the same.
                if self._observer is not None:
                    self._observer.error(
                        self.service, "server" if e.status >= 500
                        else "client")
                resp = Response(self.stream)
                resp.close_connection = True
                resp.send_error(e.status, e.message, e.headers)
                return
            except TimeoutError:
                log.debug("Connection %s idle for %s seconds",
                          self.id, self.timeout)
                return
            except OSError:
                if self._draining:
                    return
                raise

            with self._state_lock:
                if self._draining:
                    return
                self._busy = True
            self.requests += 1
            if not self._handle(head, parser.take_buffered()):
                return

    def _read_head(self, parser: RequestParser, view: memoryview
                   ) -> RequestHead | None:
        """
        Receive until the parser has a head; None at end of stream.

        Idle time before the first byte is bounded by ``timeout``
        (TimeoutError); from the first byte on, the whole head must come
        within ``header_timeout`` (ProtocolError 408).
        """
        head = parser.next_head()
        deadline: float | None = None
        try:
            while head is None:
                if deadline is None and parser.buffered_size:
                    deadline = time.monotonic() + self.header_timeout
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("request head deadline")
                    self.stream.settimeout(min(self.timeout, remaining))
                n = self.stream.recv_into(view)
                if n == 0:
                    return None
                parser.feed(bytes(view[:n]))
                head = parser.next_head()
        except TimeoutError:
            if deadline is None:
                raise
            raise ProtocolError(
                408, f"Request Timeout: request head not received within "
                f"{self.header_timeout:g} seconds") from None
        finally:
            if deadline is not None:
                self.stream.settimeout(self.timeout)
        return head

    def _handle(self, head: Any, prefix: bytes) -> bool:
        """Serve one request; return False to close the connection."""
        start = time.monotonic()
        resp = Response(self.stream)
        try:
            chunked = http_headers.check_transfer_encoding(head.headers,
                                                           head.version)
            length = http_headers.content_length(head.headers) or 0
            expect = http_headers.expects_continue(head.headers)
        except ProtocolError as e:
            # Framing headers we cannot trust: the next request's start is
            # unknown.
            resp.close_connection = decide(Exchange(
                head.version, head.headers, failure=Failure.BAD_HEAD)
            ).close_header
            resp.send_error(e.status, e.message, e.headers)
            self._record(head.method, head.path, resp, start, ok=False)
            return False

        continue_sent = threading.Event() if expect else None

        def send_continue() -> None:
            # Interim 100 only when the handler really reads the body,
            # so a request rejected early never makes the client send it.
            if continue_sent is not None and not continue_sent.is_set():
                continue_sent.set()
                if not resp.started:
                    self.stream.sendall(http_response.CONTINUE)

        body: Body | ChunkedBody
        if chunked:
            body = ChunkedBody(self.stream, prefix,
                               on_first_read=send_continue)
        else:
            body = Body(self.stream, prefix, length,
                        on_first_read=send_continue)
        req = Request(head, body, self)
        # Responses a handler starts itself announce what is known before
        # it runs (its body is still to be read).
        resp.close_connection = decide(Exchange(
            head.version, head.headers, draining=self._draining)
        ).close_header

        try:
            self._dispatcher.dispatch(req, resp)
        except ProtocolError as e:
            keep = self._error(req, resp, e)
        except TransferError as e:
            keep = self._error(req, resp, errors.from_transfer(e))
        except (ConnectionError, TimeoutError):
            raise
        except Exception as e:
            err = map_error(e)
            if err is None:
                log.exception("Internal error handling %s %s",
                              req.method, redact.path(req.path))
                keep = self._error(
                    req, resp, ProtocolError(500, "Internal server error"),
                    failure=Failure.BUG)
            else:
                # The full error (with a file name, if any) for the log
                # only.
                keep = self._error(req, resp, err, detail=str(e))
        else:
            decision = self._decide(req, resp)
            self._linger = decision.linger
            if not resp.started:
                # A handler that wrote nothing answers with its status
                # and an empty body.
                resp.close_connection = decision.close_header
                resp.send()
            keep = decision.keep_alive
            self._record(req.method, req.path, resp, start, ok=True)
            if keep:
                # Bytes after the body are the next pipelined request.
                self._parser.feed(body.leftover)
            return keep
        self._record(req.method, req.path, resp, start, ok=False)
        return keep

    def _decide(self, req: Request, resp: Response,
                failure: Failure = Failure.NONE) -> Decision:
        """Apply the connection rules (keepalive.decide) to a request."""
        return decide(Exchange(
            req.head.version, req.headers,
            close_requested=resp.close_connection, failure=failure,
            body_unread=not req.body.done,
            response_started=resp.started, draining=self._draining))

    def _record(self, method: str, path: str, resp: Response,
                start: float, ok: bool) -> None:
        """
        Account a finished request in the stats and the observer: what
        its handler recorded if it succeeded (or recorded as counting
        even if it failed), else no phase.
        """
        ok = (ok and resp.status < 400) or (
            resp.counts_if_failed and resp.nbytes > 0)
        record = RequestRecord(
            self.service, method, path, resp.status,
            time.monotonic() - start, resp.phase if ok else None,
            resp.nbytes if ok else 0, resp.backend)
        self.stats.add(record)
        if self._observer is not None:
            self._observer.request_done(record)

    def _error(self, req: Request, resp: Response, err: ProtocolError,
               detail: str | None = None,
               failure: Failure = Failure.ERROR) -> bool:
        """
        Send an error response; False if the connection must close.
        ``detail`` (a mapped backend error in full) is logged instead of
        the message, as an error whatever the status: it is a server-side
        problem.
        """
        status, message = err.status, err.message
        path = redact.path(req.path)
        if detail is not None:
            log.error("Backend error %s for %s %s: %s", status, req.method,
                      path, detail)
        elif status >= 500:
            log.error("Server error %s for %s %s: %s", status, req.method,
                      path, message)
        else:
            log.info("Client error %s for %s %s: %s", status, req.method,
                     path, message)
        if isinstance(err, Forbidden) and not err.keep_alive:
            failure = Failure.DENIED
        decision = self._decide(req, resp, failure)
        if resp.started:
            # Too late for a status: the only signal left is closing.
            return decision.keep_alive
        self._linger = decision.linger
        resp.close_connection = decision.close_header
        # Keep CORS headers set before the failure (browsers need them to
        # read the error), drop anything else the handler prepared.
        resp.headers = {k: v for k, v in resp.headers.items()
                        if k.lower().startswith("access-control-")}
        resp.send_error(status, message, err.headers)
        if decision.keep_alive:
            self._parser.feed(req.body.leftover)
        return decision.keep_alive
