# SPDX-License-Identifier: GPL-2.0-or-later
"""net.unixhttp against a real HTTP server on a unix socket."""

from __future__ import annotations

import http.server
import os
import pathlib
import socketserver
import threading
import uuid
from collections.abc import Iterator

import pytest

from ovirt_imageio.net.unixhttp import UnixHTTPConnection


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, Server)
        body = f"{self.path} {server.peers.index(self.connection)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The base class formats client_address, empty on unix sockets.
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(path, Handler)
        # Accepted connections in order, to tell reuse from reconnecting.
        self.peers: list[object] = []

    def verify_request(self, request: object, client: object) -> bool:
        self.peers.append(request)
        return True


@pytest.fixture(params=["pathname", "abstract"])
def server(request: pytest.FixtureRequest,
           tmp_path: pathlib.Path) -> Iterator[Server]:
    if request.param == "pathname":
        path = str(tmp_path / "sock")
    else:
        path = "\0/test/unixhttp/" + str(uuid.uuid4())
    srv = Server(path)
    # shutdown() waits for the loop's next poll: keep it short.
    t = threading.Thread(target=srv.serve_forever, args=(0.05,),
                         daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()


def get(conn: UnixHTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read()


def test_requests_share_one_connection(server: Server) -> None:
    conn = UnixHTTPConnection(server.server_address)  # type: ignore[arg-type]
    try:
        assert get(conn, "/a") == b"/a 0"
        assert get(conn, "/b") == b"/b 0"
    finally:
        conn.close()
    assert len(server.peers) == 1


def test_reconnects_after_close(server: Server) -> None:
    conn = UnixHTTPConnection(server.server_address)  # type: ignore[arg-type]
    try:
        assert get(conn, "/a") == b"/a 0"
        conn.close()
        assert get(conn, "/b") == b"/b 1"
    finally:
        conn.close()


def test_timeouts(server: Server) -> None:
    conn = UnixHTTPConnection(server.server_address,  # type: ignore[arg-type]
                              timeout=7, connect_timeout=3)
    try:
        conn.connect()
        assert conn.sock is not None
        # Connecting used connect_timeout; what follows uses timeout.
        assert conn.sock.gettimeout() == 7
    finally:
        conn.close()


def test_connect_timeout_defaults_to_timeout() -> None:
    assert UnixHTTPConnection("/no/such", timeout=5).connect_timeout == 5
    assert UnixHTTPConnection("/no/such", timeout=None).connect_timeout \
        is None


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_failed_connect_leaks_no_descriptor(tmp_path: pathlib.Path) -> None:
    conn = UnixHTTPConnection(str(tmp_path / "missing"))
    before = open_fds()
    # Keep the errors: their tracebacks hold connect()'s frame, so a
    # socket it left open would not be collected behind our back.
    errors = []
    for _ in range(3):
        with pytest.raises(FileNotFoundError) as e:
            conn.connect()
        errors.append(e)
    assert open_fds() == before
    assert conn.sock is None
