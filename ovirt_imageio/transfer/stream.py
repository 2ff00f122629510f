# SPDX-License-Identifier: GPL-2.0-or-later
"""
A connection's IO seam, shared by the protocol doors.

Everything a door's connection does to its peer goes through the small
``Stream`` interface below, so the connection logic runs unchanged over a
plain TCP or unix socket, a TLS socket, or a scripted ``MockStream`` in
tests.

Plain sockets take the fast path: ``recv_full`` and ``sendall`` run in the
C extension with the GIL released, so a connection thread filling an
8 MiB buffer does not hold up the other connections. TLS sockets read
and write bodies the same way through ``util.tlsio`` when it can reach the
socket's OpenSSL object, and through the ssl module's per-record calls
otherwise.
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Protocol, Sequence

from ..native import ioutil, tlsio
from ..native.ioutil import Buffer


class Stream(Protocol):
    def recv_into(self, buf: memoryview) -> int:
        """Read what is available (at least 1 byte); 0 means EOF."""
        ...

    def recv_full(self, buf: memoryview) -> int:
        """Fill buf; return less than len(buf) only at EOF."""
        ...

    def sendall(self, data: Buffer) -> None:
        ...

    def send_some(self, data: Buffer) -> int:
        """
        Send what the stream takes now, without waiting, and return how
        much of data that was, so one thread can go on receiving while
        its peer is slow to read (the NBD door). After a call returning
        n < len(data), the next send_some or sendall must start with
        data[n:]: a TLS stream may hold records of those bytes encrypted
        but not sent.
        """
        ...

    def settimeout(self, timeout: float | None) -> None:
        ...

    def wait_readable(self, wake: int) -> bool:
        """
        Wait until the stream has bytes to read (or has ended), or until
        the descriptor ``wake`` is readable; True when the stream is. It
        lets one thread both receive requests and send replies that other
        threads complete (the NBD door's TLS connections). The stream's
        timeout bounds the wait: TimeoutError, as for a read.
        """
        ...

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        """
        Like ``wait_readable``, also waiting until the stream can take
        more bytes when ``write``, and until ``wake`` is writable when
        ``wake_write``: (stream readable, stream writable).
        """
        ...

    def readable_now(self) -> bool:
        """Whether a read would not wait: bytes are there (on TLS, maybe
        only in records already received), or the stream ended."""
        ...

    def shutdown(self) -> None:
        """Wake up any thread blocked on the stream; safe from any thread."""
        ...

    def close(self) -> None:
        ...


class SocketStream:
    """A plain (non-TLS) TCP or unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()

    def fileno(self) -> int:
        """The socket's descriptor, for C loops serving it themselves."""
        return self._sock.fileno()

    @property
    def timeout(self) -> float | None:
        """Seconds a wait on the socket may take; None: no bound."""
        return self._timeout

    def recv_into(self, buf: memoryview) -> int:
        return ioutil.recv_some(self._sock.fileno(), buf, self._timeout)

    def recv_full(self, buf: memoryview) -> int:
        return ioutil.recv_full(self._sock.fileno(), buf, self._timeout)

    def sendall(self, data: Buffer) -> None:
        ioutil.send_full(self._sock.fileno(), data, self._timeout)

    def chunked_receiver(self) -> ioutil.ChunkedReceiver:
        """The C receive loop for a chunked body on this socket."""
        return ioutil.ChunkedReceiver(self._sock.fileno(), self._timeout)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)
        self._timeout = timeout

    def send_some(self, data: Buffer) -> int:
        return ioutil.send_some(self._sock.fileno(), data)

    def wait_readable(self, wake: int) -> bool:
        return _wait_io(self._sock.fileno(), wake, True, False, False,
                        self._timeout)[0]

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        return _wait_io(self._sock.fileno(), wake, read, write, wake_write,
                        self._timeout)

    def readable_now(self) -> bool:
        return _readable_now(self._sock.fileno())

    def shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # Peer already gone.

    def close(self) -> None:
        self.shutdown()
        self._sock.close()


class TLSStream:
    """
    A TLS socket after the handshake.

    ssl_handle is what ``tlsio.prepare`` returned for the socket; None
    means the slower per-record reads.
    """

    def __init__(self, sock: ssl.SSLSocket,
                 ssl_handle: int | None = None) -> None:
        self._sock = sock
        self._handle = ssl_handle
        # send_some's records not sent yet, of its first _taken bytes,
        # in _records. Reads never write records here meanwhile: Python
        # disables renegotiation, and OpenSSL answers a KeyUpdate with
        # its next write, which comes after these.
        self._records: bytearray | None = None
        self._unsent: memoryview | None = None
        self._taken = 0

    def recv_into(self, buf: memoryview) -> int:
        return self._sock.recv_into(buf)

    def recv_full(self, buf: memoryview) -> int:
        return tlsio.recv_full(self._sock, self._handle, buf)

    def sendall(self, data: Buffer) -> None:
        view = self._send_unsent(memoryview(data).cast("B"))
        if view:
            tlsio.send_all(self._sock, self._handle, view)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def send_some(self, data: Buffer) -> int:
        view = memoryview(data).cast("B")
        if self._handle is None:
            self.sendall(view)
            return len(view)
        # Piece after piece while the socket takes them whole: stopping
        # after one would tell the caller the socket is full when it is
        # not, and it would wait for room it already has.
        done = 0
        while True:
            if self._unsent is None:
                if done == len(view):
                    return done
                # Records of the next piece, sent as far as the socket
                # takes them; the rest waits, and no other record may
                # pass it.
                piece = view[done:done + ioutil.TLS_ENCRYPT_MAX]
                if self._records is None:
                    self._records = bytearray(ioutil.TLS_ENCRYPT_MAX
                                              + ioutil.TLS_ENCRYPT_SLACK)
                n = ioutil.tls_encrypt(self._handle, piece, self._records)
                self._unsent = memoryview(self._records)[:n]
                self._taken = len(piece)
            sent = ioutil.send_some(self._sock.fileno(), self._unsent)
            if sent < len(self._unsent):
                self._unsent = self._unsent[sent:]
                return done
            self._unsent = None
            done += self._taken

    def _send_unsent(self, view: memoryview) -> memoryview:
        """Finish sending records of a send_some; the rest of view."""
        if self._unsent is None:
            return view
        ioutil.send_full(self._sock.fileno(), self._unsent,
                         self._sock.gettimeout())
        self._unsent = None
        return view[self._taken:]

    def wait_readable(self, wake: int) -> bool:
        return self.wait_io(wake, True, False)[0]

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        if read and tlsio.has_pending(self._sock, self._handle):
            return True, False
        return _wait_io(self._sock.fileno(), wake, read, write, wake_write,
                        self._sock.gettimeout())

    def readable_now(self) -> bool:
        return (tlsio.has_pending(self._sock, self._handle)
                or _readable_now(self._sock.fileno()))

    def shutdown(self) -> None:
        # Shut down the TCP socket under TLS without a close_notify: the
        # point is to wake a blocked thread, not a clean TLS goodbye.
        try:
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.shutdown()
        self._sock.close()


class ReadAhead:
    """
    A Stream reading ahead of its caller: a read smaller than ``size``
    takes what the stream has, up to ``size`` bytes, and later reads are
    served from those first; larger reads go to the stream directly once
    the bytes read ahead are used up. ``prefix`` is served first: bytes
    received before the stream was wrapped (an NBD client's requests
    sent with its handshake).

    Why: an NBD client keeps dozens of requests in flight and sends each
    new 28-byte header as soon as a reply comes back, so several headers
    are often there at once. Read one by one, each took a poll (is
    another one there?) and a read of its own; relaying a download, those
    were a third of the door's system calls. A WRITE's data beyond what
    came with its header is read straight into the request's buffer, so
    read-ahead copies at most ``size`` bytes of it.

    Readiness counts the bytes read ahead: ``readable_now``,
    ``wait_readable`` and ``wait_io`` (when asked to read) answer at
    once while any are left, since the kernel no longer sees them.
    """

    def __init__(self, stream: Stream, prefix: bytes = b"",
                 size: int = 4096) -> None:
        self.stream = stream
        self._size = size
        self._buf = bytearray(max(size, len(prefix)))
        self._view = memoryview(self._buf)
        self._view[:len(prefix)] = prefix
        # Bytes read ahead and not yet taken: _buf[_start:_end].
        self._start = 0
        self._end = len(prefix)

    def take_buffered(self) -> bytes:
        """
        The bytes read ahead and not yet taken, which then leave this
        stream: for a caller reading the socket itself for a while (the
        NBD door's relay loop), which gives back what it leaves unread
        with ``unread``.
        """
        data = bytes(self._view[self._start:self._end])
        self._start = self._end = 0
        return data

    def unread(self, data: bytes) -> None:
        """Serve ``data`` before anything read ahead."""
        if not data:
            return
        joined = data + bytes(self._view[self._start:self._end])
        if len(joined) > len(self._buf):
            self._buf = bytearray(len(joined))
            self._view = memoryview(self._buf)
        self._view[:len(joined)] = joined
        self._start, self._end = 0, len(joined)

    def _take(self, buf: memoryview) -> int:
        n = min(len(buf), self._end - self._start)
        buf[:n] = self._view[self._start:self._start + n]
        self._start += n
        return n

    def _fill(self) -> int:
        """Read what the stream has (waiting for 1 byte); 0 at EOF."""
        n = self.stream.recv_into(self._view[:self._size])
        self._start, self._end = 0, n
        return n

    def recv_into(self, buf: memoryview) -> int:
        if self._start < self._end:
            return self._take(buf)
        if len(buf) >= self._size:
            return self.stream.recv_into(buf)
        if self._fill() == 0:
            return 0
        return self._take(buf)

    def recv_full(self, buf: memoryview) -> int:
        pos = self._take(buf)
        while pos < len(buf):
            if len(buf) - pos >= self._size:
                return pos + self.stream.recv_full(buf[pos:])
            if self._fill() == 0:
                break
            pos += self._take(buf[pos:])
        return pos

    def sendall(self, data: Buffer) -> None:
        self.stream.sendall(data)

    def send_some(self, data: Buffer) -> int:
        return self.stream.send_some(data)

    def settimeout(self, timeout: float | None) -> None:
        self.stream.settimeout(timeout)

    def wait_readable(self, wake: int) -> bool:
        return self._start < self._end or self.stream.wait_readable(wake)

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        if read and self._start < self._end:
            return True, False
        return self.stream.wait_io(wake, read, write, wake_write)

    def readable_now(self) -> bool:
        return self._start < self._end or self.stream.readable_now()

    def shutdown(self) -> None:
        self.stream.shutdown()

    def close(self) -> None:
        self.stream.close()


class MockStream:
    """
    A scripted peer for tests: ``recv_into`` returns the given chunks one
    at a time (then EOF), ``sendall`` records what the server sent.
    """

    def __init__(self, chunks: Sequence[bytes] = ()) -> None:
        self._chunks = [bytes(c) for c in chunks if c]
        self.sent = bytearray()
        self.timeout: float | None = None
        self.closed = False

    def recv_into(self, buf: memoryview) -> int:
        if not self._chunks:
            return 0
        chunk = self._chunks[0]
        n = min(len(buf), len(chunk))
        buf[:n] = chunk[:n]
        if n == len(chunk):
            self._chunks.pop(0)
        else:
            self._chunks[0] = chunk[n:]
        return n

    def recv_full(self, buf: memoryview) -> int:
        pos = 0
        while pos < len(buf):
            n = self.recv_into(buf[pos:])
            if n == 0:
                break
            pos += n
        return pos

    def sendall(self, data: Buffer) -> None:
        self.sent += data

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def send_some(self, data: Buffer) -> int:
        self.sent += data
        return len(memoryview(data).cast("B"))

    def wait_readable(self, wake: int) -> bool:
        # Every chunk is there at once, and so is the EOF after them.
        return True

    def wait_io(self, wake: int, read: bool, write: bool,
                wake_write: bool = False) -> tuple[bool, bool]:
        return read, write

    def readable_now(self) -> bool:
        return True

    def shutdown(self) -> None:
        self._chunks = []

    def close(self) -> None:
        self.closed = True


def _readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _wait_io(fd: int, wake: int, read: bool, write: bool, wake_write: bool,
             timeout: float | None) -> tuple[bool, bool]:
    poller = select.poll()
    mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
    if mask:
        poller.register(fd, mask)
    poller.register(wake, select.POLLIN | (select.POLLOUT if wake_write
                                           else 0))
    events = poller.poll(None if timeout is None else timeout * 1000)
    if not events:
        raise TimeoutError("timed out")
    readable = writable = False
    for ready, got in events:
        if ready == fd:
            # Errors and hang-ups count as both: the read or the send
            # reports them.
            bad = got & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
            readable = read and bool(got & select.POLLIN or bad)
            writable = write and bool(got & select.POLLOUT or bad)
    return readable, writable


def wrap(sock: socket.socket, ssl_handle: int | None = None) -> Stream:
    """Return the stream for an accepted socket (see TLSStream)."""
    if isinstance(sock, ssl.SSLSocket):
        return TLSStream(sock, ssl_handle)
    return SocketStream(sock)


def accept_tls(sock: socket.socket, ctx: ssl.SSLContext,
               timeout: float) -> Stream:
    """
    Run the server side of a TLS handshake on ``sock`` and return the
    TLS stream. The ssl module bounds the whole handshake by the socket
    timeout, so a client cannot trickle it. Raises OSError or
    ssl.SSLError if the handshake fails; the caller closes ``sock``.
    """
    sock.settimeout(timeout)
    tls = ctx.wrap_socket(sock, server_side=True,
                          do_handshake_on_connect=False)
    # Read-ahead must be set before the handshake allocates OpenSSL's
    # read buffer.
    handle = tlsio.prepare(tls, tlsio.SERVER_READ_BUFFER)
    tls.do_handshake()
    return wrap(tls, handle)
