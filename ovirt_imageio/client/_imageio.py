# SPDX-License-Identifier: GPL-2.0-or-later
"""
ImageioClient: low level access to one transfer URL.

A thin layer over the http backend that keeps upstream's method names and
argument order (offset first), bounds checks, and the proxy fallback. The
backend negotiates features with OPTIONS and moves to the daemon's unix
socket by itself when the daemon runs on this host.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import urllib.parse
from types import TracebackType
from typing import Any, Callable, Iterator

from ..backends import base
from ..backends import http as http_backend
from ..backends.http_retry import Retry
from ..util import redact, tls
from ..util.extents import Extent
from . import _errors, _stream
from ._io import BUFFER_SIZE, MAX_BUFFER_SIZE, MIN_BUFFER_SIZE
from ._stream import Reader, Writer

log = logging.getLogger("client")

# How many times a request that failed on a broken connection (or a 503)
# is sent again by default; see backends.http_retry.
RETRIES = 3

# The most the command line accepts: with the backoff capped at 30 s,
# about an hour of trying.
MAX_RETRIES = 128

# A retries count, or a whole policy (backoff, and a sleep function that
# tests replace).
Retries = int | Retry


def retry_policy(retries: Retries) -> Retry:
    """
    The policy for a retries option: an int is a count with the default
    backoff (0.5 s, doubled each time).

    >>> retry_policy(2).retries
    2
    """
    if isinstance(retries, Retry):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int) \
            or retries < 0:
        raise ValueError(f"Invalid retries: {retries!r}")
    return Retry(retries=retries)


def connect(url: str, mode: base.Mode, cafile: str | None, secure: bool,
            proxy_url: str | None = None, buffer_size: int = BUFFER_SIZE,
            retries: Retries = RETRIES
            ) -> tuple[http_backend.HTTPBackend, str]:
    """
    Open an http backend for url; if that fails with a connection error
    and proxy_url is set, use proxy_url instead (the transfer URL names a
    host this machine may not reach; the proxy runs on the engine).
    Requests of the backend and its clones are retried as retries says.
    Returns the backend and the URL it uses.
    """
    buffer_size = max(MIN_BUFFER_SIZE, min(buffer_size, MAX_BUFFER_SIZE))
    retry = retry_policy(retries)
    try:
        return http_backend.open(url, mode, ca_file=cafile, secure=secure,
                                 buffer_size=buffer_size, retry=retry), url
    except OSError as e:
        # ConnectionFailed is an OSError; RemoteError (the server said
        # no) is not, and is final.
        if proxy_url is None:
            raise
        # Transfer URLs hold ticket ids, secrets.
        log.info("Cannot connect to %s (%s), using proxy %s",
                 redact.text(url), e, redact.text(proxy_url))
    return http_backend.open(proxy_url, mode, ca_file=cafile, secure=secure,
                             buffer_size=buffer_size,
                             retry=retry), proxy_url


class ImageioClient:
    """
    Read and write an image through a transfer URL.

    Example::

        with ImageioClient(url, cafile="ca.pem") as client:
            buf = bytearray(client.size())
            client.read(0, buf)
            client.write(0, b"new data")
            client.zero(4096, 65536)
            client.flush()

    Writes use ``flush=n`` when the server can flush, so call ``flush()``
    before closing to make them durable.

    A request that fails on a broken connection, or is answered 503, is
    sent again on a new connection, up to retries times (an int, or a
    ``Retry`` policy); ``read_from`` streams from its reader only once,
    unless the reader is seekable.
    """

    @_errors.api
    def __init__(self, transfer_url: str, cafile: str | None = None,
                 secure: bool = True, proxy_url: str | None = None,
                 buffer_size: int = BUFFER_SIZE,
                 retries: Retries = RETRIES) -> None:
        self._cafile = cafile
        self._secure = secure
        self._buffer = bytearray(buffer_size)
        self._backend: http_backend.HTTPBackend | None
        self._backend, self._url = connect(
            transfer_url, "r+", cafile, secure, proxy_url, buffer_size,
            retries)

    def __enter__(self) -> ImageioClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    @_errors.api
    def max_readers(self) -> int:
        """How many connections the server suggests for reading."""
        return self._open().capabilities.max_readers

    @property
    @_errors.api
    def max_writers(self) -> int:
        """How many connections the server suggests for writing."""
        return self._open().capabilities.max_writers

    @_errors.api
    def size(self) -> int:
        """The image size in bytes."""
        return self._open().size()

    @_errors.api
    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """
        Yield ZeroExtent ("zero") or DirtyExtent ("dirty") items. The
        server is asked in windows as the items are consumed (the first
        one now, so errors such as an unsupported context come from this
        call), or for the whole map if it does not support windows.
        """
        return _errors.api_iter(self._open().extents(context))

    @_errors.api
    def read(self, offset: int, buffer: Any) -> int:
        """
        Read len(buffer) bytes at offset into buffer; returns the number of
        bytes read. Raises ValueError for a range past the image end.
        """
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        return self._open().readinto(offset, view)

    @_errors.api
    def write(self, offset: int, buffer: Any) -> int:
        """Write buffer at offset; returns the number of bytes written."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        self._open().write(offset, view)
        return len(view)

    @_errors.api
    def read_from(self, reader: Reader, offset: int, length: int) -> None:
        """
        Write length bytes read from reader (an object with
        ``readinto(buf)``, like a file) at offset, in one streaming PUT.
        """
        self._check_range(offset, length)
        _stream.read_from(self._open(), reader, offset, length,
                          memoryview(self._buffer),
                          rewind=_rewinder(reader))

    @_errors.api
    def write_to(self, writer: Writer, offset: int, length: int) -> None:
        """
        Send length bytes at offset to writer (an object with
        ``write(buf)``, like a file), from one streaming GET.
        """
        self._check_range(offset, length)
        _stream.write_to(self._open(), writer, offset, length,
                         memoryview(self._buffer))

    @_errors.api
    def zero(self, offset: int, length: int) -> None:
        """Make a range read as zeros without sending zeros."""
        self._check_range(offset, length)
        self._open().zero(offset, length)

    @_errors.api
    def flush(self) -> None:
        """Make previous writes durable."""
        self._open().flush()

    @_errors.api
    def checksum(self, algorithm: str = "blake2b",
                 block_size: int = 4 * 1024**2) -> dict[str, Any]:
        """The server's block checksum of the image (see checksum())."""
        return remote_checksum(self._url, self._cafile, self._secure,
                               algorithm=algorithm, block_size=block_size)

    @_errors.api
    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def _open(self) -> http_backend.HTTPBackend:
        if self._backend is None:
            raise ValueError("ImageioClient is closed")
        return self._backend

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"Invalid range offset={offset} "
                             f"length={length}")
        size = self._open().size()
        if offset + length > size:
            raise ValueError(f"Range offset={offset} length={length} is "
                             f"beyond image size {size}")


def _rewinder(reader: Reader) -> Callable[[int], None] | None:
    """Moving a seekable reader back to skip bytes past here, to send (the
    rest of) a range again."""
    seekable = getattr(reader, "seekable", None)
    if not (callable(seekable) and seekable()):
        return None
    file: Any = reader
    pos = file.tell()
    return lambda skip: file.seek(pos + skip)


def remote_checksum(url: str, cafile: str | None, secure: bool, *,
                    algorithm: str = "blake2b",
                    block_size: int = 4 * 1024**2,
                    timeout: float = 300) -> dict[str, Any]:
    """
    GET <url>/checksum: the server's block checksum of the image, as
    {"algorithm", "block_size", "checksum"}. Raises base.RemoteError for
    an error status, OSError when the server cannot be reached.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Invalid transfer URL: {url!r}")
    query = urllib.parse.urlencode(
        {"algorithm": algorithm, "block_size": block_size})
    path = f"{parts.path.rstrip('/')}/checksum?{query}"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout,
            context=tls.client_context(cafile, secure))
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                          timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except http.client.HTTPException as e:
        raise OSError(errno.EIO, f"Invalid checksum response: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        message = body.decode("utf-8", errors="replace").strip()
        raise base.RemoteError(resp.status, message or resp.reason)
    try:
        result = json.loads(body)
    except ValueError:
        raise OSError(errno.EIO, "Invalid checksum response") from None
    if not isinstance(result, dict) or "checksum" not in result:
        raise OSError(errno.EIO, f"Invalid checksum response: {result!r}")
    return result
