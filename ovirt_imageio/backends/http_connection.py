# SPDX-License-Identifier: GPL-2.0-or-later
"""
One persistent HTTP/1.1 connection to an imageio daemon, for the http
backend.

http.client does the protocol; this module adds what a backend needs
around it:

- Transports: TCP (plain or TLS) with a connect timeout apart from the
  read timeout, TCP_NODELAY, and both ends' addresses recorded so the
  backend can tell a remote on this host; or a unix socket (pathname or
  abstract), for a daemon's local service.
- Failures as two exception types: ``RemoteError`` when the remote
  answered with an error status (status, start of its message and, for
  416, its Content-Range), and ``ConnectionFailed`` when it could not be
  reached, or its subclass ``ConnectionBroken`` when the connection broke
  or a timeout expired once connected (what ``http_retry`` retries).
  Nothing else escapes, so a proxy never mistakes a network failure for
  its own client's connection dropping.
- Stale connections: a server closes kept-alive connections that stay
  idle too long. Before reusing a connection we look whether the server
  closed it (its socket is readable while idle) and connect again if so.
  If it closes it just as we send, the request fails before any answer
  (reset, broken pipe, or EOF) and is sent once more, at once, on a new
  connection. Only a request without a body, or with a small one, is
  taken for a victim of such a race: a large body that failed while
  being sent met a connection that broke under it (a proxy cutting long
  requests), which is for the caller's retry policy (``http_retry``) to
  handle, with its delays and warnings.
- Early answers: a server may reject a request (403, 416) before reading
  its body and close the connection, so sending the rest of the body
  fails. The answer is still read and reported instead of the send error.

The connection is used by one thread at a time, like its backend. After
any failure the socket is closed; the next request connects again.
"""

from __future__ import annotations

import http.client
import logging
import select
import socket
import ssl
from typing import Callable

from ..native import ioutil, tlsio
from ..net import unixhttp
from .base import BackendError, RemoteError, Unreachable

log = logging.getLogger(__name__)

# Only this much of a remote error message is passed on.
MAX_ERROR_MESSAGE = 512

# Plain socket body reads are timed per slice this large (_recv_plain).
RECV_SLICE = 1024**2

# Error and OPTIONS bodies are tiny; a longer one is cut here and its
# connection dropped, so a broken remote cannot make us buffer much.
MAX_SMALL_BODY = 64 * 1024

# Bodies up to this size are sent again at once after a failure that
# looks like a connection closed while idle (see the module docstring).
STALE_RESEND = 64 * 1024

# Failures of a reused connection meaning the remote closed it while
# idle, before our request reached it.
_STALE = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError,
          ssl.SSLZeroReturnError)

# Sends the body of a request, by calling its argument with each piece.
BodySender = Callable[[Callable[[memoryview], None]], None]


class ConnectionFailed(Unreachable, OSError):
    """Cannot connect to the remote, or the connection broke or timed out."""


class ConnectionBroken(ConnectionFailed):
    """
    The connection broke or timed out after it was made: the request may
    not have reached the remote, or its answer did not reach us whole.
    received counts the body bytes read into the caller's buffer before
    (Connection.read_into), so a retry can ask only for the rest.
    """

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class Connection:
    """
    A persistent connection to one daemon; see the module docstring.

    >>> conn = Connection.tcp("localhost", 54322, "https://localhost:54322",
    ...                       context=ctx)                # doctest: +SKIP
    >>> resp = conn.request("OPTIONS", "/images/123")     # doctest: +SKIP
    >>> conn.read_small(resp)                             # doctest: +SKIP
    b'{"features": [...]}\\n'
    """

    def __init__(self, conn: http.client.HTTPConnection, where: str) -> None:
        self._conn = conn
        # The response whose buffered body bytes were all taken, so the
        # rest can be read from the socket directly (see _read_direct).
        self._drained: http.client.HTTPResponse | None = None
        # Names the remote in messages; no secrets, no local paths.
        self.where = where

    @classmethod
    def tcp(cls, host: str, port: int, where: str, *,
            context: ssl.SSLContext | None = None,
            connect_timeout: float = 10, read_timeout: float = 60
            ) -> Connection:
        """A connection over TCP, with TLS when context is given."""
        return cls(_TCPConnection(host, port, connect_timeout, read_timeout,
                                  context), where)

    @classmethod
    def unix(cls, path: str, where: str, *, connect_timeout: float = 10,
             read_timeout: float = 60) -> Connection:
        """A connection over a unix socket (abstract if path starts \\0)."""
        return cls(unixhttp.UnixHTTPConnection(
            path, timeout=read_timeout, connect_timeout=connect_timeout),
            where)

    def is_local(self) -> bool:
        """
        Whether the last TCP connection had equal peer and local
        addresses, meaning the remote runs on this host.
        """
        conn = self._conn
        return (isinstance(conn, _TCPConnection)
                and conn.peer_host is not None
                and conn.peer_host == conn.local_host)

    def connect(self) -> None:
        """Connect now if not connected; raises ConnectionFailed."""
        if self._conn.sock is not None:
            return
        try:
            self._conn.connect()
        except (OSError, http.client.HTTPException) as e:
            self._conn.close()
            raise ConnectionFailed(
                f"Cannot connect to {self.where}: {e}") from e

    def close(self) -> None:
        """Close the socket; a later request connects again."""
        self._conn.close()

    # Requests.

    def request(self, method: str, target: str,
                headers: dict[str, str] | None = None,
                length: int | None = None, send: BodySender | None = None,
                retry: bool = True) -> http.client.HTTPResponse:
        """
        Send a request and return the response with its head read; the
        caller reads or drops the body.

        send(send_data) must send exactly length bytes of body. With
        retry, a request that fails on a stale connection is sent once
        more on a new one, calling send again.
        """
        self._drop_if_closed()
        while True:
            reused = self._conn.sock is not None
            try:
                return self._exchange(method, target, headers or {}, length,
                                      send)
            except _StaleConnection as e:
                if not (retry and reused):
                    raise self._failed(method, e.error) from e.error
                log.debug("Connection to %s was closed while idle, "
                          "retrying %s: %s", self.where, method, e.error)
                retry = False

    def _exchange(self, method: str, target: str, headers: dict[str, str],
                  length: int | None, send: BodySender | None
                  ) -> http.client.HTTPResponse:
        self.connect()
        conn = self._conn
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if length is not None:
                conn.putheader("Content-Length", str(length))
            conn.endheaders()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise self._broken(method, e, stale=True) from e

        send_error: OSError | None = None
        started = False
        if send is not None:
            handle = getattr(conn, "ssl_handle", None)

            def send_data(data: memoryview) -> None:
                nonlocal started
                started = True
                try:
                    sock = conn.sock
                    if handle is not None and isinstance(sock,
                                                         ssl.SSLSocket):
                        # Many records per send(2), see tlsio.
                        tlsio.send_all(sock, handle, data)
                    else:
                        conn.send(data)
                except OSError as e:
                    raise _SendFailed(e) from e

            try:
                send(send_data)
            except _SendFailed as e:
                # The remote may have answered before reading everything;
                # its answer says why.
                send_error = e.error
            except BaseException:
                # Whatever failed while producing the body, the request
                # is cut short and the connection unusable.
                conn.close()
                raise

        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            error = send_error or e
            stale = not started or (length or 0) <= STALE_RESEND
            raise self._broken(method, error, stale=stale) from error

        if send_error is not None:
            try:
                if resp.status >= 400:
                    raise self.remote_error(resp)
            finally:
                conn.close()
            raise self._failed(method, send_error) from send_error
        return resp

    def _drop_if_closed(self) -> None:
        """
        Close an idle connection the remote closed (or sent unasked
        bytes on), so the next request connects again instead of failing.
        """
        sock = self._conn.sock
        if sock is None:
            return
        # poll, not select: a daemon may have descriptors above 1024.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if poller.poll(0):
            log.debug("Connection to %s was closed while idle", self.where)
            self._conn.close()

    # Responses.

    def read_into(self, resp: http.client.HTTPResponse, view: memoryview
                  ) -> None:
        """Fill view from the body, or drop the connection and fail."""
        done = 0
        try:
            while done < len(view):
                n = self._read_direct(resp, view[done:])
                if n is None:
                    n = resp.readinto(view[done:])
                if not n:
                    raise ConnectionBroken(
                        f"{self.where} closed the connection after {done} "
                        f"of {len(view)} bytes", received=done)
                done += n
        except ConnectionFailed:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            self.close()
            error = self._failed("GET", e)
            error.received = done
            raise error from e

    def _read_direct(self, resp: http.client.HTTPResponse,
                     view: memoryview) -> int | None:
        """
        Read into view past http.client, straight from the socket in one
        C call (through tlsio for TLS), or return None when that cannot be
        done.

        http.client keeps a buffered reader over the socket that may hold
        the start of the body; that part is taken through the response
        first, so the socket read continues exactly where it stopped. The
        response's byte count is kept up to date, and a finished response
        is closed the way http.client closes it, so the connection can be
        reused.
        """
        handle = getattr(self._conn, "ssl_handle", None)
        sock = self._conn.sock
        fp = resp.fp
        if (sock is None or fp is None or resp.chunked or not resp.length
                or (isinstance(sock, ssl.SSLSocket) and handle is None)):
            return None
        want = min(len(view), resp.length)
        if self._drained is not resp:
            # peek() returns what is buffered without I/O, or reads once
            # from the socket when nothing is; either way, once that much
            # is taken the buffer is empty.
            buffered = len(fp.peek(1))
            n = resp.readinto(view[:min(buffered, want)])
            if n == buffered:
                self._drained = resp
            return n
        if handle is not None:
            assert isinstance(sock, ssl.SSLSocket)
            n = tlsio.recv_full(sock, handle, view[:want])
        else:
            n = _recv_plain(sock, view[:want])
        resp.length -= n
        if resp.length == 0:
            resp.read()  # Closes the response; there is nothing left.
        return n

    def read_small(self, resp: http.client.HTTPResponse) -> bytes:
        """Read a small body; a large one is cut and the connection dropped."""
        try:
            if resp.length is not None and resp.length <= MAX_SMALL_BODY:
                return resp.read()
            data = resp.read(MAX_SMALL_BODY)
            self.close()
            return data
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise self._failed("read", e) from e

    def read_all(self, resp: http.client.HTTPResponse) -> bytes:
        """Read the whole body (extents can be megabytes)."""
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise self._failed("read", e) from e

    def remote_error(self, resp: http.client.HTTPResponse) -> RemoteError:
        """Read an error response into the RemoteError to pass on."""
        body = self.read_small(resp)
        message = body[:MAX_ERROR_MESSAGE].decode("utf-8", "replace").strip()
        headers = {}
        if resp.status == 416:
            content_range = resp.getheader("content-range")
            if content_range:
                headers["Content-Range"] = content_range
        return RemoteError(resp.status, message or resp.reason, headers)

    def unexpected(self, resp: http.client.HTTPResponse) -> BackendError:
        """The error for a response with a status the caller did not want."""
        if resp.status >= 400:
            return self.remote_error(resp)
        self.close()
        return BackendError(f"Unexpected response from {self.where}: "
                            f"{resp.status} {resp.reason}")

    # Failures.

    def _broken(self, method: str, error: BaseException, stale: bool
                ) -> Exception:
        """
        A stale connection (worth one more try at once) when stale allows
        it, or a broken one.
        """
        if stale and isinstance(error, _STALE):
            return _StaleConnection(error)
        return self._failed(method, error)

    def _failed(self, method: str, error: BaseException) -> ConnectionBroken:
        if isinstance(error, TimeoutError):
            return ConnectionBroken(
                f"Timeout in {method} request to {self.where}")
        return ConnectionBroken(
            f"Connection to {self.where} failed in {method} request: "
            f"{error}")


class _SendFailed(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _StaleConnection(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _recv_plain(sock: socket.socket, view: memoryview) -> int:
    """
    Fill view from a plain socket in C, short only at end of stream.

    ioutil.recv_full bounds a whole call by the timeout; slices of
    RECV_SLICE keep the socket timeout meaning "no progress for that
    long", as with recv_into, even on a slow link.
    """
    timeout = sock.gettimeout()
    done = 0
    while done < len(view):
        want = min(len(view) - done, RECV_SLICE)
        n = ioutil.recv_full(sock.fileno(), view[done:done + want], timeout)
        done += n
        if n < want:
            break
    return done


# Transports.

class _TCPConnection(http.client.HTTPConnection):
    """http.client over TCP or TLS; see Connection.tcp()."""

    def __init__(self, host: str, port: int, connect_timeout: float,
                 read_timeout: float,
                 context: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=read_timeout)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._context = context
        self.peer_host: str | None = None
        self.local_host: str | None = None
        # Bodies are read and sent through tlsio when this is set (TLS
        # only).
        self.ssl_handle: int | None = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port),
                                        self._connect_timeout)
        try:
            # Requests are small heads followed by large bodies; Nagle's
            # algorithm would only delay the heads.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.peer_host = sock.getpeername()[0]
            self.local_host = sock.getsockname()[0]
            self.ssl_handle = None
            if self._context is not None:
                # The handshake counts as connecting. Read-ahead must be
                # set before it allocates OpenSSL's read buffer.
                sock = self._context.wrap_socket(
                    sock, server_hostname=self.host,
                    do_handshake_on_connect=False)
                self.ssl_handle = tlsio.prepare(sock,
                                                tlsio.CLIENT_READ_BUFFER)
                sock.do_handshake()
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
