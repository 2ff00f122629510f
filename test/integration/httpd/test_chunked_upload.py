# SPDX-License-Identifier: GPL-2.0-or-later
"""
Uploads with ``Transfer-Encoding: chunked``: curl from a pipe over TLS,
plain TCP and the unix socket, Python generator bodies, raw framings
good and bad, and the proxy relaying them to a host.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.daemon_util import (
    PKI,
    PROXY_CONF,
    Daemon,
    put_chunked,
    request,
    running,
)

MiB = 1024**2
Ticket = dict[str, Any]
MakeTicket = Callable[..., Ticket]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon serving plain HTTP on TCP."""
    with running(tmp_path_factory.mktemp("plain"), tls=False) as d:
        yield d


def read_file(ticket: Ticket) -> bytes:
    with open(ticket["_path"], "rb") as f:
        return f.read()


def curl(d: Daemon, transport: str, ticket_id: str, data: bytes,
         *args: str) -> tuple[int, bytes]:
    """curl -T - from a pipe; return (status, body)."""
    if transport == "tls":
        url = [f"https://localhost:{d.port}/images/{ticket_id}",
               "--cacert", f"{PKI}/ca.pem"]
    elif transport == "tcp":
        url = [f"http://localhost:{d.port}/images/{ticket_id}"]
    elif d.local_socket.startswith("\0"):
        url = [f"http://localhost/images/{ticket_id}",
               "--abstract-unix-socket", d.local_socket[1:]]
    else:
        url = [f"http://localhost/images/{ticket_id}",
               "--unix-socket", d.local_socket]
    p = subprocess.run(
        ["curl", "-sS", "-T", "-", "-w", "\n%{http_code}", *url, *args],
        input=data, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    body, _, status = p.stdout.rpartition(b"\n")
    return int(status), body


@pytest.fixture(params=["tls", "tcp", "unix"])
def transport(request: pytest.FixtureRequest, daemon: Daemon,
              plain: Daemon) -> tuple[str, Daemon]:
    return request.param, plain if request.param == "tcp" else daemon


def test_curl_from_pipe(transport: tuple[str, Daemon],
                        make_ticket: MakeTicket) -> None:
    name, d = transport
    ticket = make_ticket(size=8 * MiB)
    d.add_ticket(ticket)
    # Not a multiple of any buffer or block: an unaligned last chunk.
    data = os.urandom(5 * MiB + 12345)
    status, body = curl(d, name, ticket["uuid"], data)
    assert status == 200, body
    image = read_file(ticket)
    assert image[:len(data)] == data
    assert image[len(data):] == bytes(8 * MiB - len(data))


def test_curl_at_offset(daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=4 * MiB)
    daemon.add_ticket(ticket)
    data = os.urandom(MiB)
    status, body = curl(daemon, "unix", ticket["uuid"], data,
                        "-H", "Content-Range: bytes 1000-*/*")
    assert status == 200, body
    image = read_file(ticket)
    assert image[1000:1000 + MiB] == data
    assert image[:1000] == bytes(1000)


def test_curl_past_the_end(transport: tuple[str, Daemon],
                           make_ticket: MakeTicket) -> None:
    name, d = transport
    ticket = make_ticket(size=MiB)
    d.add_ticket(ticket)
    data = os.urandom(MiB + 1)
    status, body = curl(d, name, ticket["uuid"], data)
    assert status == 416, body
    assert b"past the end of the image" in body
    # Everything up to the end written, nothing past it (the file).
    image = read_file(ticket)
    assert len(image) == MiB
    assert image == data[:MiB]


def test_generator_body(daemon: Daemon, make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=4 * MiB)
    daemon.add_ticket(ticket)
    pieces = [os.urandom(n) for n in (1, 4096, 1000000, 7, 2 * MiB)]
    conn = daemon.remote()
    try:
        put_chunked(conn, f"/images/{ticket['uuid']}", pieces)
        # The connection stays usable after a chunked body.
        r = request(conn, "GET", f"/images/{ticket['uuid']}",
                    headers={"Range": "bytes=0-4096"})
        assert r.read() == b"".join(pieces)[:4097]
    finally:
        conn.close()
    data = b"".join(pieces)
    assert read_file(ticket)[:len(data)] == data


# Raw framings on the unix socket.


def exchange(d: Daemon, raw: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; return (everything received, server closed)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(d.local_socket)
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data, True


def put_head(ticket_id: str, *headers: str) -> bytes:
    lines = [f"PUT /images/{ticket_id} HTTP/1.1", "Host: localhost",
             "Transfer-Encoding: chunked", *headers, "", ""]
    return "\r\n".join(lines).encode()


def get_head(ticket_id: str) -> bytes:
    return (f"GET /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n"
            f"Range: bytes=0-3\r\n\r\n").encode()


def test_raw_extensions_trailers_pipelined(daemon: Daemon,
                                           make_ticket: MakeTicket) -> None:
    ticket = make_ticket(size=MiB)
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    body = (b"4;name=value\r\nabcd\r\n"
            b"2 ; x\r\nef\r\n"
            b"0\r\nX-Checksum: 123\r\n\r\n")
    reply, _ = exchange(daemon, put_head(tid) + body + get_head(tid))
    assert reply.startswith(b"HTTP/1.1 200 ")
    # The pipelined GET after the body was served on the same connection.
    assert reply.count(b"HTTP/1.1 ") == 2
    assert reply.endswith(b"abcd")
    assert read_file(ticket)[:6] == b"abcdef"


@pytest.mark.parametrize("framing, message, kept", [
    (b"zz\r\n", b"Invalid chunk size", b""),
    # The payload before the missing CRLF came before the error.
    (b"4\r\nabcdXY\r\n", b"Missing CRLF after chunk data", b"abcd"),
    (b"4\r\r\nabcd\r\n", b"Invalid CR in chunked framing", b""),
    (b"1" * 20 + b"\r\n", b"Chunk size too large", b""),
])
def test_raw_malformed(daemon: Daemon, make_ticket: MakeTicket,
                       framing: bytes, message: bytes, kept: bytes) -> None:
    ticket = make_ticket(size=MiB)
    daemon.add_ticket(ticket)
    tid = ticket["uuid"]
    # A good first chunk, then the bad framing, then a request that must
    # never be served: the connection closes after the 400.
    good = b"%x\r\n" % 8192 + b"g" * 8192 + b"\r\n"
    reply, _ = exchange(daemon, put_head(tid) + good + framing +
                        b"5\r\nafter\r\n0\r\n\r\n" + get_head(tid))
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert message in reply
    assert b"Connection: close" in reply
    assert reply.count(b"HTTP/1.1 ") == 1
    # The data before the error is written, nothing after it.
    image = read_file(ticket)
    written = b"g" * 8192 + kept
    assert image[:len(written)] == written
    assert image[len(written):] == bytes(MiB - len(written))


@pytest.mark.parametrize("headers, status", [
    (["Content-Length: 4"], 400),
    (["Transfer-Encoding: gzip"], 501),
])
def test_raw_refused_framing(daemon: Daemon, make_ticket: MakeTicket,
                             headers: list[str], status: int) -> None:
    ticket = make_ticket(size=MiB)
    daemon.add_ticket(ticket)
    reply, _ = exchange(daemon, put_head(ticket["uuid"], *headers) +
                        b"4\r\nabcd\r\n0\r\n\r\n")
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert read_file(ticket) == bytes(MiB)


def test_chunked_ticket_json(daemon: Daemon) -> None:
    # Small JSON bodies (the control API) may come chunked too.
    body = (b'{"uuid": "chunked-json", "size": 1024, "url": '
            b'"file:///var/tmp/x", "timeout": 60, "ops": ["read"]}')
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(daemon.control_path)
        s.sendall(b"PUT /tickets/chunked-json HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                  + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    assert daemon.ticket("chunked-json")["size"] == 1024
    daemon.control("DELETE", "/tickets/chunked-json")


# The proxy relays chunked uploads to the host.


def test_proxy_relays_chunked(tmp_path_factory: pytest.TempPathFactory,
                              make_ticket: MakeTicket) -> None:
    with running(tmp_path_factory.mktemp("host"),
                 extra_conf="[local]\nenable = false\n") as host, \
            running(tmp_path_factory.mktemp("proxy"),
                    extra_conf=PROXY_CONF) as proxy:
        ticket = make_ticket(size=4 * MiB)
        host.add_ticket(ticket)
        proxy_ticket = dict(ticket)
        proxy_ticket["url"] = (f"https://localhost:{host.port}/images/"
                               f"{ticket['uuid']}")
        proxy.add_ticket(proxy_ticket)
        data = os.urandom(3 * MiB + 5)
        status, body = curl(proxy, "tls", ticket["uuid"], data)
        assert status == 200, body
        assert read_file(ticket)[:len(data)] == data
        # Past the end through the proxy: refused, nothing past it.
        status, body = curl(proxy, "tls", ticket["uuid"],
                            os.urandom(4 * MiB + 1))
        assert status == 416, body
        assert len(read_file(ticket)) == 4 * MiB


def test_tls_generator_body_context(daemon: Daemon,
                                    make_ticket: MakeTicket) -> None:
    # A client of its own over TLS, chunks of odd sizes.
    ticket = make_ticket(size=2 * MiB)
    daemon.add_ticket(ticket)
    ctx = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
    conn = http.client.HTTPSConnection("localhost", daemon.port,
                                       context=ctx, timeout=60)
    data = os.urandom(2 * MiB)
    try:
        put_chunked(conn, f"/images/{ticket['uuid']}?flush=n",
                    (data[i:i + 99991] for i in range(0, len(data), 99991)))
    finally:
        conn.close()
    assert read_file(ticket) == data
