# SPDX-License-Identifier: GPL-2.0-or-later
"""
The http backend: an image served by another imageio daemon.

The daemon uses it in its proxy role (a ticket whose url is a host
daemon's transfer URL), and the client library uses it to talk to a
daemon or a proxy.

Theory of operation
-------------------

One backend is one persistent HTTP/1.1 connection (http.client), used by
one thread at a time, like every backend. Concurrency comes from more
backends: ``clone()`` opens another connection with the same settings and
what was learned about the remote, without asking again.

Opening sends ``OPTIONS <transfer path>`` and adopts what the remote
reports:

- ``features``: "extents", "zero" and "flush" select between the native
  request and its emulation (below);
- ``max_readers`` and ``max_writers`` (1 when absent: an old server that
  does not say may not cope with more), capped at our max_connections;
- ``unix_socket``: the remote's local service. When the remote is on this
  host (the TCP peer address equals our local address), the backend moves
  to HTTP over that socket, which skips TLS and TCP. If that fails the
  backend keeps TCP and logs a warning.

Old daemons answer OPTIONS with 405 (only GET and PUT existed) and old
proxies with 204; both, and a body that is not the expected JSON, mean "no
features": zero is emulated by writing zeros, flush happens on every PUT
(the server's default), and the zero extents are one data extent.

Requests per operation:

- readinto: ``GET`` with ``Range``; the answer must be 206 for the
  requested offset with a Content-Length no larger than asked (shorter
  only at the end of the image).
- write: ``PUT`` with ``Content-Range: bytes FIRST-LAST/*`` and
  ``flush=n`` when the remote can flush separately, in requests of at most
  buffer_size bytes.
- zero: ``PATCH {"op": "zero", ...}`` asking the remote to flush only when
  it cannot be asked separately; without the zero feature, a PUT of zeros.
- flush: ``PATCH {"op": "flush"}`` when supported; else a no-op, since
  every PUT already flushed.
- extents: ``GET <path>/extents?context=C&start=S&length=L``, in windows
  yielded as they come (``http_extents``); a remote ignoring the window
  answers the whole map, which is then used for every window. Whole maps
  are cached per backend until the next write or zero through it; 404
  means the context is unsupported.
- size: the end of the last zero extent when the first window holds the
  whole image, else the complete length of the ``Content-Range`` of a
  one byte GET; without extents, the Content-Length of a GET whose body
  is never read (the connection is dropped, since old servers have no
  HEAD).

Errors (details in ``http_connection``): an error status from the remote
raises ``RemoteError`` with that status and the start of the remote's
message, which is also what a proxy answers its own client. Failing to
connect, a broken connection and timeouts raise ``ConnectionFailed`` (a
BackendError and an OSError). A request that finds its kept-alive
connection closed by the remote while idle is sent once more on a new
connection, when its body can be sent again.

Retries (``http_retry``): with a retry policy (``open(retry=...)``; the
client library passes one, the daemon's proxy role does not), a request
whose connection broke, or that was answered 503, is sent again on a new
connection after a growing delay, a bounded number of times. Every
operation is retried as a whole: a write's PUT re-sends its whole body
from the caller's buffer, a read asks again for the bytes it still lacks.
A streamed PUT (``put_stream``) is retried only when its body can be
produced again.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import urllib.parse
from typing import Any, Callable, Iterator, TypeVar

from ..http.errors import ProtocolError
from ..http.ranges import format_content_range, parse_content_range
from ..util import redact
from ..util.extents import E, Extent, WrittenExtent, ZeroExtent, window
from ..util.tls import client_context
from . import http_extents
from .base import (
    BackendError,
    Capabilities,
    Mode,
    UnsupportedContext,
    byte_view,
)
from .http_connection import (
    BodySender,
    Connection,
    ConnectionBroken,
    ConnectionFailed,
)
from .http_replies import (
    Remote,
    parse_extents,
    parse_options,
    parse_written,
)
from .http_retry import NO_RETRY, Retry

__all__ = ["BodySender", "ConnectionBroken", "ConnectionFailed",
           "HTTPBackend", "RangeBody", "Retry", "open"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# Zeros sent by the zero emulation; immutable, so shared by all backends.
ZERO_BUFFER_SIZE = 128 * 1024
_ZEROS = memoryview(bytes(ZERO_BUFFER_SIZE))

Address = str | tuple[str, int]


@dataclasses.dataclass(frozen=True)
class _Settings:
    """How to reach the remote; shared by a backend and its clones."""

    scheme: str
    host: str
    port: int
    path: str
    ca_file: str | None
    secure: bool
    connect_timeout: float
    read_timeout: float
    buffer_size: int
    max_connections: int
    retry: Retry
    # Whether a cut streamed PUT is sent again from the end of its written
    # prefix in the ticket's ledger (``trust_ledger``).
    resume_puts: bool = False

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def open(
    url: str,
    mode: Mode,
    *,
    ca_file: str | None = None,
    secure: bool = True,
    connect_timeout: float = 10,
    read_timeout: float = 60,
    buffer_size: int = 8 * 1024**2,
    prefer_unix_socket: bool = True,
    max_connections: int = 8,
    retry: Retry = NO_RETRY,
) -> HTTPBackend:
    """
    Open the image at a daemon's transfer URL, e.g.
    ``https://host:54322/images/TICKET-ID``.

    mode "r" allows reads only; "r+" reads and writes (the remote ticket
    must allow them too). An https server is verified with ca_file (None:
    the system store) unless secure is False. Writes are sent in requests
    of at most buffer_size bytes. The remote's max_readers and
    max_writers are capped at max_connections. retry says which failed
    requests are sent again (see http_retry); by default none.

    Raises RemoteError if the remote rejects the OPTIONS request (403 for
    an unknown ticket) and ConnectionFailed if it cannot be reached.

    >>> with open("https://host:54322/images/123", "r",
    ...           ca_file="ca.pem") as b:            # doctest: +SKIP
    ...     n = b.readinto(0, memoryview(bytearray(4096)))
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"Invalid mode: {mode!r}")
    if buffer_size < 1:
        raise ValueError(f"Invalid buffer_size: {buffer_size}")
    if max_connections < 1:
        raise ValueError(f"Invalid max_connections: {max_connections}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not the URL itself: it holds the remote ticket id, a secret.
        raise BackendError("Invalid transfer URL: expecting "
                           "https://HOST[:PORT]/images/TICKET")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BackendError("Invalid port in transfer URL") from None
    settings = _Settings(
        scheme=parts.scheme, host=parts.hostname, port=port,
        path=parts.path or "/", ca_file=ca_file, secure=secure,
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        buffer_size=buffer_size, max_connections=max_connections,
        retry=retry)
    backend = HTTPBackend(settings, mode, Remote(), http_extents.Cache())
    try:
        backend._negotiate(prefer_unix_socket)
    except BaseException:
        backend.close()
        raise
    return backend


class HTTPBackend:
    """An image behind a daemon's transfer URL; see open()."""

    def __init__(self, settings: _Settings, mode: Mode, remote: Remote,
                 extents: http_extents.Cache) -> None:
        self._settings = settings
        self._mode = mode
        self._remote = remote
        # Per context, until the next write or zero through this backend.
        self._extents = extents
        self._conn = _connect(settings, remote.unix_socket)
        self._closed = False

    def __repr__(self) -> str:
        # The path holds the remote ticket id, a secret.
        path = redact.path(self._settings.path)
        return (f"<HTTPBackend {self._settings.where}{path} "
                f"mode={self._mode!r} address={self.server_address!r}>")

    def __enter__(self) -> HTTPBackend:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # Backend protocol.

    @property
    def name(self) -> str:
        return "http"

    @property
    def capabilities(self) -> Capabilities:
        features = self._remote.features
        # Whether the remote has dirty extents shows only when asking.
        contexts = {"zero", "dirty"} if "extents" in features else {"zero"}
        return Capabilities(
            block_size=1,
            max_readers=self._remote.max_readers,
            max_writers=self._remote.max_writers,
            extents=frozenset(contexts),
            zero="zero" in features,
            flush="flush" in features,
        )

    def size(self) -> int:
        cache = self._extents
        if cache.size is None:
            size = self._fetch_size()
            if cache.size is None:
                cache.size = size
            return size
        return cache.size

    def readinto(self, offset: int, buf: memoryview) -> int:
        view = byte_view(buf)
        if offset < 0:
            raise ValueError(f"Invalid offset: {offset}")
        if not view:
            return 0
        done = 0

        def attempt() -> int:
            # A retry asks only for what the broken ones did not bring.
            nonlocal done
            try:
                return done + self._read(offset + done, view[done:])
            except ConnectionBroken as e:
                done += e.received
                raise

        return self._retrying(f"GET of {len(view)} bytes at {offset}",
                              attempt)

    def write(self, offset: int, buf: memoryview) -> None:
        self._check_writable("write")
        view = byte_view(buf)
        if offset < 0:
            raise ValueError(f"Invalid offset: {offset}")
        self._extents.clear()
        # Bounded requests keep each one well inside the read timeout.
        step = self._settings.buffer_size
        for pos in range(0, len(view), step):
            # The caller's buffer is still ours, so a retry re-sends the
            # same bytes; writing them twice is harmless.
            self._put_retrying(offset + pos,
                               _send_view(view[pos:pos + step]))

    def zero(self, offset: int, length: int) -> None:
        self._check_writable("zero")
        _check_range(offset, length)
        if length == 0:
            return
        self._extents.clear()
        if "zero" not in self._remote.features:
            self._put_retrying(offset, (length, _send_zeros(length)))
            return
        self._patch({"op": "zero", "offset": offset, "size": length,
                     # Without a separate flush it must be durable now.
                     "flush": "flush" not in self._remote.features})

    def flush(self) -> None:
        # Nothing was written through a read only backend, and without
        # the flush feature every PUT was flushed by the remote already.
        if self._mode == "r" or "flush" not in self._remote.features:
            return
        self._patch({"op": "flush"})

    def extents(self, context: str = "zero", start: int = 0,
                end: int | None = None) -> Iterator[Extent]:
        """
        Yield the extents of [start, end) (see backends.base), asking the
        remote in windows; the first window is asked now, so errors such
        as UnsupportedContext are raised by this call, not on iteration.
        """
        cache = self._extents
        generation = cache.generation
        whole = cache.maps.get(context)
        if whole is None and ("extents" not in self._remote.features
                              or cache.windows is False):
            whole = self._fetch_extents(context)
            cache.store(context, whole, generation)
        if whole is None:
            length = http_extents.FIRST_WINDOW
            if end is not None:
                length = min(length, end - start)
            if length <= 0:
                return iter(())
            first = self._fetch_window(context, start, length)
            if first.whole:
                cache.windows = False
                whole = first.extents
                cache.store(context, whole, generation)
            else:
                cache.windows = True
                return self._windows(
                    context, first, start, length, end,
                    keep=lambda found: cache.store(context, found,
                                                   generation))
        if start == 0 and end is None:
            return iter(whole)
        return window(whole, start, (whole[-1].end if whole else 0)
                      if end is None else end)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()

    # For the client library.

    @property
    def server_address(self) -> Address:
        """The remote's unix socket if we use it, else (host, port)."""
        if self._remote.unix_socket is not None:
            return self._remote.unix_socket
        return (self._settings.host, self._settings.port)

    @property
    def features(self) -> frozenset[str]:
        """The features the remote reported in OPTIONS."""
        return self._remote.features

    @property
    def max_readers(self) -> int:
        return self._remote.max_readers

    @property
    def max_writers(self) -> int:
        return self._remote.max_writers

    @property
    def hash_on_write(self) -> tuple[str, int] | None:
        """
        (algorithm, block size) of the remote ticket's hash-on-write, from
        OPTIONS: a checksum with these is answered mostly from digests
        kept while writing. None if the ticket has none.
        """
        return self._remote.checksum

    def written_extents(self, start: int = 0, end: int | None = None
                        ) -> Iterator[WrittenExtent]:
        """
        What the remote's ticket ledger says was written in ``[start,
        end)`` (None: to the image end): the ``written`` extents context,
        asked in windows as ``extents()`` asks the others (the first one
        now), and never cached, since uploads change it. The extents end
        earlier where the image does. UnsupportedContext when the remote
        has no "written" feature.
        """
        if "written" not in self._remote.features:
            raise UnsupportedContext(
                f"Remote {self._settings.where} does not report written "
                f"extents")
        length = http_extents.FIRST_WINDOW
        if end is not None:
            length = min(length, end - start)
        if length <= 0:
            return iter(())
        if self._extents.windows is False:
            whole = self._parsed(parse_written,
                                 self._get_extents({"context": "written"}))
        else:
            first = self._parsed(
                http_extents.parse_written_window,
                self._window_items("written", start, length), start, length)
            if not first.whole:
                self._extents.windows = True
                return self._windows(
                    "written", first, start, length, end,
                    http_extents.parse_written_window)
            self._extents.windows = False
            whole = first.extents
        return window(whole, start, (whole[-1].end if whole else 0)
                      if end is None else end)

    @property
    def retry(self) -> Retry:
        """The retry policy (http_retry) of this backend and its clones."""
        return self._settings.retry

    def clone(self) -> HTTPBackend:
        """
        Return a backend on a new connection to the same remote, with the
        same settings, features and cached extents; no OPTIONS is sent.
        """
        return HTTPBackend(self._settings, self._mode, self._remote,
                           self._extents.copy())

    def trust_ledger(self) -> None:
        """
        Declare that every range the remote ticket's ledger reports as
        written inside the ranges this backend (and its later clones)
        will write is written by this backend: the ledger had nothing
        there before (a fresh ticket, or a resumed upload, which writes
        only unwritten ranges). Then a cut streamed PUT is sent again
        from the end of its written prefix (``resumes_puts``), not whole.
        Without the "written" feature or retries, nothing changes.
        """
        self._settings = dataclasses.replace(self._settings,
                                             resume_puts=True)

    @property
    def resumes_puts(self) -> bool:
        """Whether a cut streamed PUT with ``resend`` is sent again only
        from the end of what the remote wrote of it."""
        return (self._settings.resume_puts
                and "written" in self._remote.features
                and self._settings.retry.retries > 0)

    def put_stream(self, offset: int, length: int, send: BodySender,
                   repeatable: bool = False,
                   resend: Callable[[int], BodySender] | None = None
                   ) -> None:
        """
        Write length bytes at offset in one PUT whose body send produces:
        send(send_data) must pass exactly length bytes to send_data, in
        parts (client._stream feeds it from a reader). With repeatable,
        send produces the same bytes again each time it is called, so a
        failed request may be sent again, whole; else it is sent once,
        since a stream cannot be rewound. With resend (resend(skip) sends
        the body from its byte skip on) and ``resumes_puts``, a retry
        asks the ticket's ledger what the cut PUT wrote and sends only
        the rest.
        """
        self._check_writable("write")
        _check_range(offset, length)
        if length == 0:
            return
        self._extents.clear()
        if resend is not None and self.resumes_puts:
            self._put_resuming(offset, length, send, resend)
        elif repeatable:
            self._put_retrying(offset, (length, send))
        else:
            self._put(offset, (length, send), retry=False)

    def _put_resuming(self, offset: int, length: int, send: BodySender,
                      resend: Callable[[int], BodySender]) -> None:
        """
        A streamed PUT under the retry policy whose retries send only
        what the remote lacks: the daemon records the prefix of a cut
        PUT that reached storage in the ticket's ledger (transfer.ledger),
        and every range written there inside this PUT's range was
        written by it (``trust_ledger``). The prefix is asked on the new
        connection, within the attempt, so failing to ask is retried
        like the PUT.
        """
        end = offset + length
        pos = offset
        attempts = 0

        def attempt() -> None:
            nonlocal pos, attempts
            attempts += 1
            if attempts == 1:
                self._put(offset, (length, send), retry=True)
                return
            written = self._written_prefix(pos, end)
            log.info("PUT at %d: %d of %d bytes written before the cut, "
                     "sending the other %d", offset, written - offset,
                     length, end - written)
            pos = written
            if pos < end:
                self._put(pos, (end - pos, resend(pos - offset)),
                          retry=True)

        self._retrying(f"PUT of {length} bytes at {offset}", attempt)

    def _written_prefix(self, start: int, end: int) -> int:
        """Where the written range of the ledger starting at start ends
        (start when nothing is written there), at most end. Asked once:
        the caller's attempt is what the retry policy repeats."""
        items = self._get_extents_once(
            {"context": "written", "start": start, "length": end - start})
        found = self._parsed(http_extents.parse_written_window, items,
                             start, end - start)
        for ext in found.extents:
            # A server ignoring the window answers the whole map.
            if ext.start <= start < ext.end:
                return min(ext.end, end) if ext.written else start
        return start

    def get_stream(self, offset: int, length: int) -> RangeBody:
        """
        Start a GET of [offset, offset + length), which the image must hold
        whole, and return its body to read in parts (client._stream sends
        it to a writer).
        """
        _check_range(offset, length)
        resp = self._retrying(f"GET of {length} bytes at {offset}",
                              lambda: self._get_exact(offset, length))
        return RangeBody(self, resp, offset, length)

    # Opening.

    def _negotiate(self, prefer_unix_socket: bool) -> None:
        status, body = self._retrying("OPTIONS", self._options)
        if status in (204, 405):
            # Old proxy (204) or old daemon (405): GET and PUT only.
            log.debug("Remote %s answered OPTIONS with %s: no features",
                      self._settings.where, status)
            return
        try:
            options = json.loads(body)
        except ValueError:
            options = None
        if not isinstance(options, dict):
            log.warning("Remote %s sent an invalid OPTIONS reply: assuming "
                        "no features", self._settings.where)
            return
        self._remote = parse_options(options, self._settings.max_connections)
        unix_socket = options.get("unix_socket")
        if (prefer_unix_socket and isinstance(unix_socket, str)
                and unix_socket and self._conn.is_local()):
            self._use_unix_socket(unix_socket)

    def _use_unix_socket(self, path: str) -> None:
        conn = _connect(self._settings, path)
        try:
            conn.connect()
        except ConnectionFailed as e:
            log.warning("Keeping TCP to %s: %s", self._settings.where, e)
            return
        self._conn.close()
        self._conn = conn
        self._remote = dataclasses.replace(self._remote, unix_socket=path)
        log.debug("Using the local socket of %s", self._settings.where)

    def _options(self) -> tuple[int, bytes]:
        """The status and body of an OPTIONS request that succeeded."""
        resp = self._request("OPTIONS", self._settings.path)
        if resp.status not in (200, 204, 405):
            raise self._conn.unexpected(resp)
        return resp.status, self._conn.read_small(resp)

    # Requests.

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """attempt() under the retry policy; see http_retry."""
        return self._settings.retry.call(what, self._settings.where,
                                         attempt)

    def _read(self, offset: int, view: memoryview) -> int:
        """One attempt of readinto()."""
        resp = self._get_range(offset, len(view))
        n = self._content_length(resp)
        if n > len(view):
            self._conn.close()
            raise BackendError(f"Remote sent {n} bytes for a request of "
                               f"{len(view)} bytes")
        self._conn.read_into(resp, view[:n])
        return n

    def _get_exact(self, offset: int, length: int
                   ) -> http.client.HTTPResponse:
        """GET a range the image must hold whole; the body is not read."""
        resp = self._get_range(offset, length)
        n = self._content_length(resp)
        if n != length:
            self._conn.close()
            raise BackendError(f"Remote has {n} of the {length} bytes "
                               f"requested at offset {offset}")
        return resp

    def _request(self, method: str, target: str,
                 headers: dict[str, str] | None = None,
                 body: tuple[int, BodySender] | None = None,
                 retry: bool = True) -> http.client.HTTPResponse:
        if self._closed:
            raise BackendError("Backend is closed")
        length, send = body if body is not None else (None, None)
        return self._conn.request(method, target, headers, length, send,
                                  retry)

    def _get_range(self, offset: int, length: int
                   ) -> http.client.HTTPResponse:
        """GET [offset, offset+length) and check the 206 head."""
        last = offset + length - 1
        resp = self._request("GET", self._settings.path,
                             {"Range": f"bytes={offset}-{last}"})
        if resp.status != 206:
            raise self._conn.unexpected(resp)
        value = resp.getheader("content-range", "")
        try:
            first: int | None = parse_content_range(value).first
        except ProtocolError:
            # Never pass a parser's 400 on: the remote is at fault here.
            first = None
        if first != offset:
            self._conn.close()
            raise BackendError(f"Remote answered a read at offset {offset} "
                               f"with Content-Range {value!r}")
        return resp

    def _put(self, offset: int, body: tuple[int, BodySender],
             retry: bool) -> None:
        target = self._settings.path
        if "flush" in self._remote.features:
            target += "?flush=n"
        length = body[0]
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": format_content_range(
                offset, offset + length - 1, None),
        }
        resp = self._request("PUT", target, headers, body, retry)
        if resp.status != 200:
            raise self._conn.unexpected(resp)
        self._conn.read_small(resp)

    def _put_retrying(self, offset: int, body: tuple[int, BodySender]
                      ) -> None:
        """A PUT whose body can be sent again, under the retry policy."""
        self._retrying(f"PUT of {body[0]} bytes at {offset}",
                       lambda: self._put(offset, body, retry=True))

    def _patch(self, msg: dict[str, Any]) -> None:
        # A zero or flush done twice has the effect of doing it once.
        self._retrying(f"PATCH {msg['op']}", lambda: self._patch_once(msg))

    def _patch_once(self, msg: dict[str, Any]) -> None:
        data = memoryview(json.dumps(msg).encode())
        resp = self._request("PATCH", self._settings.path,
                             {"Content-Type": "application/json"},
                             _send_view(data))
        if resp.status != 200:
            raise self._conn.unexpected(resp)
        self._conn.read_small(resp)

    def _fetch_extents(self, context: str) -> list[Extent]:
        """The whole map, in one request."""
        if "extents" not in self._remote.features:
            if context != "zero":
                raise UnsupportedContext(
                    f"Remote {self._settings.where} does not report "
                    f"{context!r} extents")
            size = self._retrying("GET of the image size",
                                  self._emulated_head)
            return [ZeroExtent(0, size, False, False)] if size else []
        items = self._get_extents({"context": context})
        try:
            return parse_extents(items, context)
        except (ValueError, TypeError, KeyError) as e:
            raise self._invalid_extents(e) from None

    def _fetch_window(self, context: str, start: int, length: int
                      ) -> http_extents.Window[Extent]:
        items = self._window_items(context, start, length)
        return self._parsed(http_extents.parse_window, items, context,
                            start, length)

    def _parsed(self, parse: Callable[..., T], *args: Any) -> T:
        """parse(*args), an invalid answer raising BackendError."""
        try:
            return parse(*args)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise self._invalid_extents(e) from None

    def _window_items(self, context: str, start: int, length: int) -> Any:
        return self._get_extents({"context": context, "start": start,
                                  "length": length})

    def _windows(self, context: str, first: http_extents.Window[E],
                 start: int, length: int, end: int | None,
                 parse: http_extents.ParseWindow[E] | None = None,
                 keep: Callable[[list[E]], None] | None = None
                 ) -> Iterator[E]:
        """
        The extents of first and of the windows after it; ``keep``
        receives the whole map when the windows covered it from 0.
        """
        collected: list[E] | None = \
            [] if keep is not None and start == 0 and end is None else None
        found = http_extents.windows(self._window_items, context, first,
                                     start, length, end, self._extents.size,
                                     parse)
        try:
            for ext in http_extents.extents_of(found):
                if collected is not None:
                    collected.append(ext)
                yield ext
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise self._invalid_extents(e) from None
        if collected is not None and keep is not None:
            keep(collected)

    def _get_extents(self, query: dict[str, Any]) -> Any:
        """GET <path>/extents?query; the JSON answer."""
        return self._retrying(f"GET of {query['context']} extents",
                              lambda: self._get_extents_once(query))

    def _get_extents_once(self, query: dict[str, Any]) -> Any:
        target = f"{self._settings.path}/extents?" + urllib.parse.urlencode(
            query)
        resp = self._request("GET", target)
        if resp.status == 404:
            raise UnsupportedContext(self._conn.remote_error(resp).message)
        if resp.status != 200:
            raise self._conn.unexpected(resp)
        body = self._conn.read_all(resp)
        try:
            return json.loads(body)
        except ValueError as e:
            raise self._invalid_extents(e) from None

    def _invalid_extents(self, e: Exception) -> BackendError:
        return BackendError(f"Invalid extents from {self._settings.where}: "
                            f"{e}")

    def _fetch_size(self) -> int:
        if ("extents" in self._remote.features
                and "zero" not in self._extents.maps
                and self._extents.windows is not False):
            generation = self._extents.generation
            first = http_extents.FIRST_WINDOW
            w = self._fetch_window("zero", 0, first)
            if w.whole or (w.end or 0) < first:
                # The first window holds the whole image.
                self._extents.windows = not w.whole
                self._extents.store("zero", w.extents, generation)
                return w.end or 0
            self._extents.windows = True
            size = self._range_size()
            if size is not None:
                return size
        end = 0
        for extent in self.extents("zero"):
            end = extent.end
        return end

    def _range_size(self) -> int | None:
        """The complete length of a one byte GET's Content-Range."""
        return self._retrying("GET of the image size", self._range_size_once)

    def _range_size_once(self) -> int | None:
        resp = self._get_range(0, 1)
        complete = parse_content_range(
            resp.getheader("content-range", "")).complete
        self._conn.read_small(resp)
        return complete

    def _emulated_head(self) -> int:
        """The size from a GET's Content-Length; the body is never read."""
        resp = self._request("GET", self._settings.path)
        if resp.status != 200:
            raise self._conn.unexpected(resp)
        try:
            return self._content_length(resp)
        finally:
            self._conn.close()

    # Helpers.

    def _content_length(self, resp: http.client.HTTPResponse) -> int:
        value = resp.getheader("content-length", "")
        if not (value.isascii() and value.isdigit()):
            self._conn.close()
            raise BackendError(f"Invalid Content-Length from "
                               f"{self._settings.where}: {value!r}")
        return int(value)

    def _check_writable(self, operation: str) -> None:
        if self._mode != "r+":
            raise BackendError(f"{operation}: backend opened read only")


class RangeBody:
    """
    The body of a ranged GET, read in parts; see HTTPBackend.get_stream().

    When the connection breaks while reading it, a new GET asks for the
    part not received yet, under the backend's retry policy, so no byte
    is received twice.

    Closing it before the whole body was read drops the connection (the
    rest of the body is still on it); the next request reconnects.
    """

    def __init__(self, backend: HTTPBackend, resp: http.client.HTTPResponse,
                 offset: int, length: int) -> None:
        self._backend = backend
        self._conn = backend._conn
        # None after a failure: the next attempt sends a new GET.
        self._resp: http.client.HTTPResponse | None = resp
        self._pos = offset
        self._left = length

    def __enter__(self) -> RangeBody:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    @property
    def left(self) -> int:
        """Bytes of the body not read yet."""
        return self._left

    def readinto(self, view: memoryview) -> None:
        """Fill view with the next len(view) bytes of the body."""
        if len(view) > self._left:
            raise ValueError(f"Reading {len(view)} bytes, {self._left} left")
        if not view:
            return
        filled = 0

        def attempt() -> None:
            nonlocal filled
            if self._resp is None:
                self._resp = self._backend._get_exact(
                    self._pos + filled, self._left - filled)
            try:
                self._conn.read_into(self._resp, view[filled:])
            except ConnectionFailed as e:
                # read_into closed the connection; the rest of this body
                # is gone with it.
                self._resp = None
                if isinstance(e, ConnectionBroken):
                    filled += e.received
                raise

        self._backend._retrying(
            f"GET of {self._left} bytes at {self._pos}", attempt)
        self._pos += len(view)
        self._left -= len(view)

    def close(self) -> None:
        if self._left:
            self._left = 0
            self._conn.close()


def _connect(settings: _Settings, unix_socket: str | None) -> Connection:
    """A (not yet connected) connection to the remote."""
    if unix_socket is not None:
        return Connection.unix(
            unix_socket, f"the local socket of {settings.where}",
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout)
    context = None
    if settings.scheme == "https":
        context = client_context(settings.ca_file, settings.secure)
    return Connection.tcp(
        settings.host, settings.port, settings.where, context=context,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout)


# Bodies.

def _send_view(view: memoryview) -> tuple[int, BodySender]:
    def send(send_data: Callable[[memoryview], None]) -> None:
        send_data(view)
    return len(view), send


def _send_zeros(length: int) -> BodySender:
    def send(send_data: Callable[[memoryview], None]) -> None:
        done = 0
        while done < length:
            n = min(len(_ZEROS), length - done)
            send_data(_ZEROS[:n])
            done += n
    return send


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"Invalid range: offset={offset} length={length}")
