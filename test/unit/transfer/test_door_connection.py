# SPDX-License-Identifier: GPL-2.0-or-later
"""
The connection life cycle both doors share (``transfer.connection``):
ids, close hooks, observer events and how an ended client counts.
"""

from __future__ import annotations

import pytest

from ovirt_imageio.transfer import connection
from ovirt_imageio.transfer.stream import MockStream


class _Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def connection_opened(self, service: str) -> None:
        self.events.append(("opened", service))

    def connection_closed(self, service: str) -> None:
        self.events.append(("closed", service))

    def error(self, service: str, kind: str) -> None:
        self.events.append(("error", service, kind))


class _Echo(connection.Connection):
    """A door that echoes until EOF, or fails with ``failure``."""

    def __init__(self, stream: MockStream, observer: _Observer,
                 failure: Exception | None = None) -> None:
        super().__init__(stream, "local", "s", observer)
        self.failure = failure

    def _serve(self) -> None:
        buf = memoryview(bytearray(16))
        while n := self.stream.recv_into(buf):
            self.stream.sendall(buf[:n])
        if self.failure is not None:
            raise self.failure

    def drain(self) -> None:
        self.abort()

    def _close_stats(self, seconds: float) -> str:
        return "[echo]"


class _Other(_Echo):
    pass


def test_ids_are_unique_across_doors() -> None:
    a = _Echo(MockStream(), _Observer())
    b = _Other(MockStream(), _Observer())
    c = _Echo(MockStream(), _Observer())
    assert b.id == a.id + 1
    assert c.id == b.id + 1


def test_serve_runs_hooks_in_reverse_then_closes() -> None:
    observer = _Observer()
    stream = MockStream([b"hello"])
    conn = _Echo(stream, observer)
    order: list[str] = []
    conn.on_close(lambda: order.append("first"))
    conn.on_close(lambda: order.append("second"))
    conn.serve()
    assert stream.sent == b"hello"
    assert order == ["second", "first"]
    assert stream.closed
    assert observer.events == [("opened", "s"), ("closed", "s")]


def test_failing_hook_does_not_stop_the_others() -> None:
    stream = MockStream()
    conn = _Echo(stream, _Observer())
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("broken")

    conn.on_close(lambda: ran.append("ran"))
    conn.on_close(broken)
    conn.serve()
    assert ran == ["ran"]
    assert stream.closed


@pytest.mark.parametrize("failure", [
    ConnectionResetError("reset"), TimeoutError("timed out"),
    OSError("failed")])
def test_client_failure_counts_as_connection_error(
        failure: Exception) -> None:
    observer = _Observer()
    _Echo(MockStream(), observer, failure).serve()
    assert observer.events == [
        ("opened", "s"), ("error", "s", "connection"), ("closed", "s")]


def test_aborted_connection_counts_no_error() -> None:
    observer = _Observer()
    conn = _Echo(MockStream([b"x"]), observer, ConnectionResetError())
    conn.abort()
    conn.serve()
    assert observer.events == [("opened", "s"), ("closed", "s")]
