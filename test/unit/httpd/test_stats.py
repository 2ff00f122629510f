# SPDX-License-Identifier: GPL-2.0-or-later
"""
What requests did: ``Response.record``, how a connection turns it into a
``RequestRecord`` (only for requests that succeed), and the per-phase
statistics of the CLOSE log line.
"""

from __future__ import annotations

import pytest

from ovirt_imageio.httpd.connection import Connection
from ovirt_imageio.httpd.errors import BadRequest
from ovirt_imageio.httpd.message import Request, Response
from ovirt_imageio.httpd.stats import (
    ConnectionStats,
    RequestRecord,
    format_bytes,
)
from ovirt_imageio.transfer.stream import MockStream

MiB = 1024**2


class _Recording:
    """A dispatcher whose handler records a phase, then may fail."""

    def __init__(self, phase: str, nbytes: int,
                 error: Exception | None = None) -> None:
        self.phase = phase
        self.nbytes = nbytes
        self.error = error

    def dispatch(self, req: Request, resp: Response) -> None:
        resp.backend = "memory"
        resp.record(self.phase, self.nbytes)
        if self.error is not None:
            raise self.error


class _Observer:
    """Keeps the records a connection reports."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def connection_opened(self, service: str) -> None:
        pass

    def connection_closed(self, service: str) -> None:
        pass

    def error(self, service: str, kind: str) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        self.records.append(record)


def serve(dispatcher: _Recording) -> tuple[Connection, list[RequestRecord]]:
    observer = _Observer()
    stream = MockStream([b"PUT /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"])
    conn = Connection(stream, dispatcher, service="s", observer=observer)
    conn.serve()
    return conn, observer.records


def test_success_counts_what_the_handler_recorded() -> None:
    conn, records = serve(_Recording("write", 4096))
    [r] = records
    assert (r.service, r.method, r.path, r.status) == ("s", "PUT", "/x", 200)
    assert (r.phase, r.nbytes, r.backend) == ("write", 4096, "memory")
    assert conn.stats.phase("write") == (1, r.seconds, 4096)


def test_failure_counts_no_phase() -> None:
    conn, records = serve(_Recording("write", 4096, BadRequest("no")))
    [r] = records
    assert r.status == 400
    assert (r.phase, r.nbytes) == (None, 0)
    assert conn.stats.requests == 1
    assert conn.stats.phase("write") == (0, 0.0, 0)


def test_record_rejects_unknown_phase() -> None:
    resp = Response(MockStream())
    with pytest.raises(ValueError):
        resp.record("upload", 1)
    resp.record("zero", 10)
    assert (resp.phase, resp.nbytes) == ("zero", 10)


def record(phase: str | None, seconds: float, nbytes: int = 0
           ) -> RequestRecord:
    return RequestRecord("remote.service", "GET", "/images/x", 200,
                         seconds, phase, nbytes)


def test_stats_format() -> None:
    s = ConnectionStats()
    s.add(record("write", 1.0, 4 * MiB))
    s.add(record("write", 1.0, 4 * MiB))
    s.add(record("flush", 0.5))
    s.add(record(None, 0.25))
    assert s.format(10.0) == (
        "[connection 1 ops, 10.000000 s] "
        "[dispatch 4 ops, 2.750000 s] "
        "[write 2 ops, 2.000000 s, 8.00 MiB, 4.00 MiB/s] "
        "[flush 1 ops, 0.500000 s]")
    assert s.phase("write") == (2, 2.0, 8 * MiB)
    assert s.phase("read") == (0, 0.0, 0)


def test_stats_zero_seconds() -> None:
    s = ConnectionStats()
    s.add(record("read", 0.0, 0))
    assert "[read 1 ops, 0.000000 s, 0 bytes, 0 bytes/s]" in s.format(0.0)


@pytest.mark.parametrize("n,text", [
    (0, "0 bytes"),
    (1023, "1023 bytes"),
    (1024, "1.00 KiB"),
    (1536, "1.50 KiB"),
    (MiB, "1.00 MiB"),
    (1024**3 * 3, "3.00 GiB"),
    (1024**4 * 2048, "2048.00 TiB"),
])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
