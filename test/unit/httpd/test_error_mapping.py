# SPDX-License-Identifier: GPL-2.0-or-later
"""
Error mapping, the one place where exceptions become statuses
(``connection.map_error``), and how a connection answers them and its
timeouts, over a scripted stream. Faults under a real daemon are tested
in test/integration/httpd/test_faults.py.
"""

from __future__ import annotations

import errno
import http.client
from typing import Any

import pytest

from ovirt_imageio.backends.base import BackendError
from ovirt_imageio.backends.http_connection import ConnectionFailed
from ovirt_imageio.backends.nbd_connect import ConnectError
from ovirt_imageio.httpd.connection import Connection, map_error
from ovirt_imageio.httpd.message import Response
from ovirt_imageio.transfer.stream import MockStream


@pytest.mark.parametrize("error,status,message", [
    (OSError(errno.ENOSPC, "pwrite: No space left on device",
             "/secret/disk"), 507, "pwrite: No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 507,
     "Disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/secret/disk"), 403,
     "Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/secret/disk"),
     403, "Permission denied"),
    (OSError(errno.EPERM, "write: backend opened read only"), 403,
     "write: backend opened read only"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory",
                       "/secret/disk"), 500, "No such file or directory"),
    (OSError(errno.EIO, "NBD read failed: Input/output error"), 500,
     "NBD read failed: Input/output error"),
    (OSError(errno.EIO, None), 500, "Input/output error"),
    (OSError("Short read at offset 0: 1 of 2 bytes"), 500,
     "Short read at offset 0: 1 of 2 bytes"),
    (ConnectError("Cannot connect to NBD server: Connection refused"),
     502, "Cannot connect to NBD server: Connection refused"),
    (ConnectionFailed("Cannot connect to host:54322: refused"), 502,
     "Cannot connect to host:54322: refused"),
    (BackendError("Unsupported file type: not a regular file or a block "
                  "device"), 500, "Unsupported file type: not a regular "
     "file or a block device"),
])
def test_map_error(error: Exception, status: int, message: str) -> None:
    err = map_error(error)
    assert err is not None
    assert (err.status, err.message) == (status, message)
    assert "/secret" not in err.message


@pytest.mark.parametrize("error", [
    ValueError("bug"), KeyError("bug"), RuntimeError("bug"),
])
def test_map_error_leaves_bugs_generic(error: Exception) -> None:
    assert map_error(error) is None


class _Failing:
    """A dispatcher whose handler raises a given exception."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def dispatch(self, req: Any, resp: Any) -> None:
        raise self.error


@pytest.mark.parametrize("error,status,keep_alive", [
    (OSError(errno.ENOSPC, "pwrite: No space left on device", "/a/b"),
     507, True),
    (ConnectError("Cannot connect to NBD server: No such file"), 502,
     True),
    (ValueError("bug at /a/b"), 500, False),
])
def test_connection_answers_mapped_error(error: Exception, status: int,
                                         keep_alive: bool) -> None:
    stream = MockStream([b"GET /images/x HTTP/1.1\r\n\r\n"
                         b"GET /images/x HTTP/1.1\r\n\r\n"])
    Connection(stream, _Failing(error)).serve()
    sent = bytes(stream.sent)
    assert sent.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"/a/b" not in sent
    # A mapped error is an answer like any other; a bug closes, and says
    # so.
    assert sent.count(b"HTTP/1.1 ") == (2 if keep_alive else 1)
    assert (b"\r\nConnection: close\r\n" in sent) is not keep_alive


class _SlowStream(MockStream):
    """A peer that sends part of a head, then nothing (timeouts)."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.timeouts: list[float | None] = []

    def settimeout(self, timeout: float | None) -> None:
        super().settimeout(timeout)
        self.timeouts.append(timeout)

    def recv_into(self, buf: memoryview) -> int:
        n = super().recv_into(buf)
        if n == 0:
            raise TimeoutError("timed out")
        return n


def test_partial_head_timeout_is_408() -> None:
    stream = _SlowStream([b"GET /images/x HTTP/1.1\r\n", b"Host: a"])
    conn = Connection(stream, _Failing(ValueError()), timeout=60,
                      header_timeout=5)
    conn.serve()
    assert bytes(stream.sent).startswith(b"HTTP/1.1 408 Request Timeout")
    # While the head was incomplete, receives waited at most until the
    # head deadline, never the whole idle timeout.
    waits = [t for t in stream.timeouts[1:-1] if t is not None]
    assert waits and all(0 < t <= 5 for t in waits)


def test_idle_timeout_closes_quietly() -> None:
    stream = _SlowStream([])
    Connection(stream, _Failing(ValueError()), timeout=60,
               header_timeout=5).serve()
    assert stream.sent == b""
    assert stream.closed


@pytest.mark.parametrize("status", [408, 502, 507])
def test_new_statuses_have_reasons(status: int) -> None:
    stream = MockStream()
    Response(stream).send_error(status, "x")
    assert bytes(stream.sent).startswith(
        f"HTTP/1.1 {status} {http.client.responses[status]}\r\n".encode())

