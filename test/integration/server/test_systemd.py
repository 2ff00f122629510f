# SPDX-License-Identifier: GPL-2.0-or-later
"""
systemd integration: readiness on the notify socket, and the graceful
stop on SIGTERM (running requests finish, idle connections close, stalled
ones are cut after a bound).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import pytest

from ovirt_imageio.httpd import services
from ovirt_imageio.httpd.message import Request, Response
from ovirt_imageio.httpd.router import Router
from ovirt_imageio.net.unixhttp import UnixHTTPConnection
from ovirt_imageio.server import systemd
from ovirt_imageio.transfer import listen

from support.daemon_util import Daemon, request

# Unit: sd_notify.


@pytest.fixture
def notify_socket(tmp_path: Any) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()


def test_notify_pathname(notify_socket: tuple[socket.socket, str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_notify_abstract(monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd passes abstract names with "@" for the leading NUL.
    name = f"ovirt-imageio-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_socket_gone(tmp_path: Any,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A service manager that went away must not break the daemon.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    assert not systemd.notify("READY=1")


# A real daemon.


def test_ready_after_every_service_listens(tmp_path: Any) -> None:
    d = Daemon(tmp_path, tls=False, keep_notify=True)
    d.start()  # Returns once READY=1 was received.
    try:
        # Every service accepts right away: READY=1 came after listen().
        probes = [
            (d.remote(), "OPTIONS", "/images/*", 200),
            (d.local(), "OPTIONS", "/images/*", 200),
            (UnixHTTPConnection(d.control_path), "GET", "/tickets/x", 404),
        ]
        for conn, method, path, status in probes:
            try:
                r = request(conn, method, path)
                r.read()
                assert r.status == status
            finally:
                conn.close()
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait_notify() == b"STOPPING=1"
    finally:
        assert d.stop() == 0


def read_head(sock: socket.socket) -> bytes:
    """Read one response head (through the blank line)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"EOF after {data!r}")
        data += chunk
    return data


def test_sigterm_drains_running_upload(tmp_path: Any,
                                       make_ticket: Any) -> None:
    size = 1024**2
    ticket = make_ticket(size=size)
    d = Daemon(tmp_path, tls=False, keep_notify=True)
    d.start()
    try:
        d.add_ticket({k: v for k, v in ticket.items() if k != "_path"})

        # An idle keep-alive connection: it must be closed at once.
        idle = d.local()
        r = request(idle, "OPTIONS", f"/images/{ticket['uuid']}")
        r.read()
        assert r.status == 200

        # An upload in progress: 100-continue proves the handler runs.
        data = os.urandom(size)
        up = socket.create_connection(("localhost", d.port), timeout=30)
        up.sendall(
            f"PUT /images/{ticket['uuid']} HTTP/1.1\r\n"
            f"Host: localhost\r\n"
            f"Content-Length: {size}\r\n"
            f"Expect: 100-continue\r\n\r\n".encode())
        assert read_head(up).startswith(b"HTTP/1.1 100 ")
        up.sendall(data[:size // 2])

        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait_notify() == b"STOPPING=1"

        # The idle connection is closed without waiting for the upload.
        assert idle.sock is not None
        idle.sock.settimeout(30)
        assert idle.sock.recv(1) == b""
        idle.close()

        # The upload completes, then the connection ends.
        up.sendall(data[size // 2:])
        head = read_head(up)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert up.recv(1) == b""
        up.close()

        assert d.proc.wait(60) == 0
    finally:
        assert d.stop() == 0
    with open(ticket["_path"], "rb") as f:
        assert f.read() == data
    assert "Stopped" in d.log()


# The drain bound, on an in-process service.


class Stalled:
    """A handler reading a body the client never finishes."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.error: BaseException | None = None

    def put(self, req: Request, resp: Response) -> None:
        self.entered.set()
        # The client sends a Content-Length, never a chunked body.
        length = req.content_length
        assert length is not None
        try:
            req.body.read(length)
        except BaseException as e:
            self.error = e
            raise


def test_stop_cuts_stalled_request_after_bound() -> None:
    handler = Stalled()
    sock = listen.tcp_socket("127.0.0.1", 0)
    service = services.Service("test.service", sock,
                               Router([(r"/stalled", handler)]))
    service.start()
    client = socket.create_connection(("127.0.0.1", service.port),
                                      timeout=30)
    try:
        client.sendall(b"PUT /stalled HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        assert handler.entered.wait(30)
        assert service.connections == 1
        service.stop(drain_timeout=0.2)
        # Stopped although the request never finished, and the
        # connection is gone.
        assert service.connections == 0
        assert handler.error is not None
        try:
            rest = client.recv(4096)
        except ConnectionResetError:
            rest = b""
        while rest:
            try:
                rest = client.recv(4096)
            except ConnectionResetError:
                break
    finally:
        client.close()


def test_stop_without_connections() -> None:
    # Nothing to drain: stop() returns at once; a second close() is
    # harmless.
    sock = listen.tcp_socket("127.0.0.1", 0)
    service = services.Service("test.service", sock, Router([]))
    service.start()
    service.stop(drain_timeout=0)
    service.close()
    assert service.connections == 0


def test_repeated_sigterm_still_exits_cleanly(tmp_path: Any) -> None:
    # systemd, an operator or a test harness may signal again while the
    # daemon shuts down; that must never kill it with the signal, also
    # not while the interpreter exits.
    d = Daemon(tmp_path, tls=False)
    d.start()
    try:
        assert d.proc is not None
        while d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(0.0005)
        assert d.proc.returncode == 0
    finally:
        d.stop()
