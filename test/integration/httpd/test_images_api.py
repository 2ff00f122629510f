# SPDX-License-Identifier: GPL-2.0-or-later
"""
The images API against a real daemon over TLS, plain TCP and the unix
socket: byte-exact data, statuses, headers and connection rules.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import ssl
from typing import Any, Callable, Iterator

import pytest

from support.daemon_util import PKI, Daemon, request, running

# "tls" and "local" talk to a daemon with TLS on its remote port (its
# unix socket is plain HTTP), "tcp" to a daemon without TLS.
TRANSPORTS = ["tls", "tcp", "local"]


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("tls-daemon")) as d:
        yield d


@pytest.fixture(scope="module")
def tcp_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("tcp-daemon"), tls=False) as d:
        yield d


@pytest.fixture(params=TRANSPORTS)
def transport(request: Any) -> str:
    return str(request.param)


@pytest.fixture
def daemon(transport: str, request: Any) -> Daemon:
    name = "tcp_daemon" if transport == "tcp" else "tls_daemon"
    d: Daemon = request.getfixturevalue(name)
    return d


def connect(daemon: Daemon, transport: str) -> http.client.HTTPConnection:
    return daemon.local() if transport == "local" else daemon.remote()


@pytest.fixture
def conn(daemon: Daemon, transport: str
         ) -> Iterator[http.client.HTTPConnection]:
    c = connect(daemon, transport)
    yield c
    c.close()


def read_file(ticket: dict[str, Any]) -> bytes:
    with open(ticket["_path"], "rb") as f:
        return f.read()


# OPTIONS

def test_options_star(daemon: Daemon, conn: http.client.HTTPConnection
                      ) -> None:
    r = request(conn, "OPTIONS", "/images/*")
    body = json.loads(r.read())
    assert r.status == 200
    assert r.getheader("allow") == "OPTIONS,GET,PUT,PATCH"
    assert body["features"] == [
        "checksum", "extents", "flush", "written", "zero"]
    assert body["unix_socket"] == daemon.local_socket
    assert "max_readers" not in body


@pytest.mark.parametrize("ops,allow,features", [
    (["read"], "OPTIONS,GET", ["checksum", "extents", "written"]),
    (["write"], "OPTIONS,GET,PUT,PATCH",
     ["checksum", "extents", "flush", "written", "zero"]),
    (["read", "write"], "OPTIONS,GET,PUT,PATCH",
     ["checksum", "extents", "flush", "written", "zero"]),
])
def test_options_ticket(daemon: Daemon, conn: http.client.HTTPConnection,
                        make_ticket: Callable[..., dict[str, Any]],
                        ops: list[str], allow: str, features: list[str]
                        ) -> None:
    ticket = make_ticket(ops=ops)
    daemon.add_ticket(ticket)
    r = request(conn, "OPTIONS", f"/images/{ticket['uuid']}")
    body = json.loads(r.read())
    assert r.status == 200
    assert r.getheader("allow") == allow
    assert body["features"] == features
    assert body["max_readers"] == 8
    assert body["max_writers"] == 8
    assert body["unix_socket"] == daemon.local_socket


# GET

def test_get_full(daemon: Daemon, conn: http.client.HTTPConnection,
                  make_ticket: Callable[..., dict[str, Any]]) -> None:
    data = os.urandom(1024**2 + 4096)
    ticket = make_ticket(size=len(data), data=data, filename="disk.raw")
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}")
    assert r.status == 200
    assert r.getheader("content-length") == str(len(data))
    assert r.getheader("content-type") == "application/octet-stream"
    assert r.getheader("content-disposition") == \
        "attachment; filename=disk.raw"
    assert r.getheader("accept-ranges") == "bytes"
    assert r.getheader("server", "").startswith("imageio/")
    assert r.getheader("date")
    assert r.read() == data


def test_get_ticket_larger_than_image(
        daemon: Daemon, conn: http.client.HTTPConnection,
        make_ticket: Callable[..., dict[str, Any]]) -> None:
    data = os.urandom(8192)
    ticket = make_ticket(size=16384, data=data)
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}")
    assert r.status == 200
    assert r.read() == data


@pytest.mark.parametrize("header,start,end", [
    ("bytes=0-0", 0, 1),
    ("bytes=1-4095", 1, 4096),
    ("bytes=511-8192", 511, 8193),
    ("bytes=100000-", 100000, 300000),
    ("bytes=299999-299999", 299999, 300000),
    # Clamped to the end instead of 416 (RFC 7233 2.1).
    ("bytes=299990-300010", 299990, 300000),
    ("bytes=0-999999999", 0, 300000),
])
def test_get_range(daemon: Daemon, conn: http.client.HTTPConnection,
                   make_ticket: Callable[..., dict[str, Any]], header: str,
                   start: int, end: int) -> None:
    data = os.urandom(300000)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}",
                headers={"Range": header})
    assert r.status == 206
    assert r.getheader("content-range") == \
        f"bytes {start}-{end - 1}/{len(data)}"
    assert r.read() == data[start:end]


@pytest.mark.parametrize("header", [
    "bytes=300000-", "bytes=300000-300001", "bytes=999999-",
    "bytes=-100", "bytes=5-2", "bytes=0-1,4-5", "lines=0-1", "bytes=x-",
])
def test_get_range_unsatisfiable(
        daemon: Daemon, conn: http.client.HTTPConnection,
        make_ticket: Callable[..., dict[str, Any]], header: str) -> None:
    ticket = make_ticket(size=300000, data=os.urandom(300000))
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}",
                headers={"Range": header})
    body = r.read()
    assert r.status == 416
    assert body
    # The connection stays usable after a 416.
    r = request(conn, "OPTIONS", "/images/*")
    r.read()
    assert r.status == 200


def test_get_range_past_end_content_range(
        daemon: Daemon, conn: http.client.HTTPConnection,
        make_ticket: Callable[..., dict[str, Any]]) -> None:
    ticket = make_ticket(size=300000, data=os.urandom(300000))
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}",
                headers={"Range": "bytes=300000-"})
    r.read()
    assert r.status == 416
    assert r.getheader("content-range") == "bytes */300000"


def test_head(daemon: Daemon, conn: http.client.HTTPConnection,
              make_ticket: Callable[..., dict[str, Any]]) -> None:
    ticket = make_ticket(size=12345, data=os.urandom(12345))
    daemon.add_ticket(ticket)
    r = request(conn, "HEAD", f"/images/{ticket['uuid']}")
    assert r.status == 200
    assert r.getheader("content-length") == "12345"
    assert r.getheader("accept-ranges") == "bytes"
    assert r.read() == b""
    # Connection still in sync: the next request works.
    r = request(conn, "HEAD", f"/images/{ticket['uuid']}",
                headers={"Range": "bytes=10-19"})
    assert r.status == 206
    assert r.getheader("content-length") == "10"
    assert r.getheader("content-range") == "bytes 10-19/12345"
    r.read()


# PUT

def test_put_random_unaligned(daemon: Daemon,
                              conn: http.client.HTTPConnection,
                              make_ticket: Callable[..., dict[str, Any]]
                              ) -> None:
    size = 1024**2
    ticket = make_ticket(size=size)
    daemon.add_ticket(ticket)
    model = bytearray(size)
    rnd = random.Random(42)
    for _ in range(20):
        offset = rnd.randrange(size - 1)
        length = rnd.randrange(1, min(size - offset, 300000) + 1)
        data = os.urandom(length)
        r = request(conn, "PUT", f"/images/{ticket['uuid']}?flush=n",
                    body=data, headers={
                        "Content-Range":
                            f"bytes {offset}-{offset + length - 1}/*"})
        assert r.status == 200, r.read()
        r.read()
        model[offset:offset + length] = data
    r = request(conn, "PATCH", f"/images/{ticket['uuid']}",
                body=json.dumps({"op": "flush"}))
    r.read()
    assert r.status == 200
    assert read_file(ticket) == bytes(model)
    r = request(conn, "GET", f"/images/{ticket['uuid']}")
    assert r.read() == bytes(model)


def test_put_whole_and_transferred(
        daemon: Daemon, conn: http.client.HTTPConnection,
        make_ticket: Callable[..., dict[str, Any]]) -> None:
    data = os.urandom(512 * 1024 + 3)
    ticket = make_ticket(size=len(data), ops=["write"])
    daemon.add_ticket(ticket)
    r = request(conn, "PUT", f"/images/{ticket['uuid']}", body=data)
    r.read()
    assert r.status == 200
    assert r.getheader("content-length") == "0"
    assert read_file(ticket) == data
    status = daemon.ticket(ticket["uuid"])
    assert status["transferred"] == len(data)
    assert status["active"] is False


def test_put_beyond_ticket(daemon: Daemon, conn: http.client.HTTPConnection,
                           make_ticket: Callable[..., dict[str, Any]]
                           ) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "PUT", f"/images/{ticket['uuid']}", body=b"x" * 100,
                headers={"Content-Range": "bytes 4000-4099/*"})
    r.read()
    assert r.status == 416
    assert r.getheader("content-range") == "bytes */4096"


@pytest.mark.parametrize("query,status", [
    ("flush=y", 200), ("flush=n", 200), ("flush=x", 400), ("close=y", 200),
])
def test_put_query(daemon: Daemon, conn: http.client.HTTPConnection,
                   make_ticket: Callable[..., dict[str, Any]], query: str,
                   status: int) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "PUT", f"/images/{ticket['uuid']}?{query}",
                body=b"y" * 4096)
    r.read()
    assert r.status == status
    if query == "close=y":
        assert r.getheader("connection") == "close"


@pytest.mark.parametrize("header", [
    "bytes 0-x/*", "bytes 10-5/*", "bytes 0-10/5", "cats 0-1/*",
])
def test_put_bad_content_range(daemon: Daemon,
                               conn: http.client.HTTPConnection,
                               make_ticket: Callable[..., dict[str, Any]],
                               header: str) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "PUT", f"/images/{ticket['uuid']}", body=b"z" * 11,
                headers={"Content-Range": header})
    r.read()
    assert r.status == 400


# PATCH

def test_zero(daemon: Daemon, conn: http.client.HTTPConnection,
              make_ticket: Callable[..., dict[str, Any]]) -> None:
    data = os.urandom(64 * 1024)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    msg = {"op": "zero", "offset": 100, "size": 20000, "flush": True}
    r = request(conn, "PATCH", f"/images/{ticket['uuid']}",
                body=json.dumps(msg))
    r.read()
    assert r.status == 200
    expected = data[:100] + b"\0" * 20000 + data[20100:]
    assert read_file(ticket) == expected


@pytest.mark.parametrize("msg,status", [
    ({"op": "zero"}, 400),
    ({"op": "zero", "size": "1"}, 400),
    ({"op": "zero", "size": -1}, 400),
    ({"op": "zero", "size": 1, "offset": -1}, 400),
    ({"op": "zero", "size": 1, "flush": "yes"}, 400),
    ({"op": "zero", "size": 4097}, 416),
    ({"op": "zero", "size": 10, "offset": 4090}, 416),
    ({"op": "nothing"}, 400),
    ({}, 400),
    ([], 400),
    ({"op": "flush", "extra": 1}, 200),
    ({"op": "zero", "size": 0, "unknown": True}, 200),
])
def test_patch_validation(daemon: Daemon, conn: http.client.HTTPConnection,
                          make_ticket: Callable[..., dict[str, Any]],
                          msg: Any, status: int) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "PATCH", f"/images/{ticket['uuid']}",
                body=json.dumps(msg))
    body = r.read()
    assert r.status == status, body
    if status >= 400:
        assert r.getheader("content-type") == "text/plain; charset=UTF-8"
        assert body.endswith(b"\n")


def test_patch_invalid_json(daemon: Daemon,
                            conn: http.client.HTTPConnection,
                            make_ticket: Callable[..., dict[str, Any]]
                            ) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "PATCH", f"/images/{ticket['uuid']}", body=b"{nope")
    assert r.status == 400
    assert b"Invalid JSON" in r.read()


# Extents

def test_extents_file_with_holes(daemon: Daemon,
                                 conn: http.client.HTTPConnection,
                                 make_ticket: Callable[..., dict[str, Any]]
                                 ) -> None:
    size = 4 * 1024**2
    ticket = make_ticket(size=size)
    with open(ticket["_path"], "r+b") as f:
        f.seek(1024**2)
        f.write(b"x" * 1024**2)
        f.flush()
        os.fsync(f.fileno())
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}/extents")
    assert r.status == 200
    extents = json.loads(r.read())
    assert extents == [
        {"start": 0, "length": 1024**2, "zero": True, "hole": False},
        {"start": 1024**2, "length": 1024**2, "zero": False, "hole": False},
        {"start": 2 * 1024**2, "length": 2 * 1024**2, "zero": True,
         "hole": False},
    ]


@pytest.mark.parametrize("query,status", [
    ("?context=dirty", 404), ("?context=bad", 400), ("?context=zero", 200),
])
def test_extents_contexts(daemon: Daemon, conn: http.client.HTTPConnection,
                          make_ticket: Callable[..., dict[str, Any]],
                          query: str, status: int) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}/extents{query}")
    r.read()
    assert r.status == status


# Authorization

def test_unknown_ticket_closes_connection(
        daemon: Daemon, conn: http.client.HTTPConnection) -> None:
    r = request(conn, "GET", "/images/no-such-ticket")
    body = r.read()
    assert r.status == 403
    assert b"No such ticket" in body
    assert r.getheader("connection") == "close"


def test_read_only_ticket_forbids_write(
        daemon: Daemon, conn: http.client.HTTPConnection,
        make_ticket: Callable[..., dict[str, Any]]) -> None:
    ticket = make_ticket(size=4096, ops=["read"])
    daemon.add_ticket(ticket)
    r = request(conn, "PUT", f"/images/{ticket['uuid']}", body=b"x")
    r.read()
    assert r.status == 403
    r2 = connect(daemon, "local")
    resp = request(r2, "PATCH", f"/images/{ticket['uuid']}",
                   body=json.dumps({"op": "flush"}))
    assert resp.status == 403
    resp.read()
    r2.close()


def test_expired_ticket(daemon: Daemon, conn: http.client.HTTPConnection,
                        make_ticket: Callable[..., dict[str, Any]]) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    status, _ = daemon.control("PATCH", f"/tickets/{ticket['uuid']}",
                               {"timeout": 0})
    assert status == 200
    r = request(conn, "GET", f"/images/{ticket['uuid']}")
    assert r.status == 403
    assert b"expired" in r.read()
    # Revived by extending it again.
    daemon.control("PATCH", f"/tickets/{ticket['uuid']}", {"timeout": 300})
    c = connect(daemon, "local")
    r = request(c, "GET", f"/images/{ticket['uuid']}")
    assert r.status == 200
    r.read()
    c.close()


def test_empty_ticket_id(daemon: Daemon, conn: http.client.HTTPConnection
                         ) -> None:
    r = request(conn, "GET", "/images/")
    r.read()
    assert r.status == 400


# CORS

def test_cors_headers(daemon: Daemon, conn: http.client.HTTPConnection,
                      make_ticket: Callable[..., dict[str, Any]]) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    r = request(conn, "OPTIONS", f"/images/{ticket['uuid']}", headers={
        "Origin": "https://engine",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-range",
    })
    r.read()
    assert r.getheader("access-control-allow-origin") == "*"
    assert r.getheader("access-control-allow-methods") == "OPTIONS,GET,PUT"
    assert r.getheader("access-control-allow-headers") == "*"
    assert r.getheader("access-control-max-age") == "86400"


def test_cors_on_error(daemon: Daemon, conn: http.client.HTTPConnection
                       ) -> None:
    r = request(conn, "GET", "/images/missing",
                headers={"Origin": "https://engine"})
    r.read()
    assert r.status == 403
    assert r.getheader("access-control-allow-origin") == "*"


def test_no_cors_without_origin(daemon: Daemon,
                                conn: http.client.HTTPConnection) -> None:
    r = request(conn, "OPTIONS", "/images/*")
    r.read()
    assert r.getheader("access-control-allow-origin") is None


# Routing

@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nothing", 404),
    ("POST", "/images/x", 405),
    ("DELETE", "/images/x", 405),
    ("BREW", "/images/x", 405),
])
def test_routing_errors(daemon: Daemon, conn: http.client.HTTPConnection,
                        method: str, path: str, status: int) -> None:
    r = request(conn, method, path)
    body = r.read()
    assert r.status == status
    assert r.getheader("content-type") == "text/plain; charset=UTF-8"
    assert body.endswith(b"\n")


def test_info(tls_daemon: Daemon) -> None:
    daemon = tls_daemon
    c = daemon.remote()
    r = request(c, "GET", "/info/")
    assert r.status == 200
    assert "version" in json.loads(r.read())
    c.close()
    # Not on the local service.
    c = daemon.local()
    r = request(c, "GET", "/info/")
    r.read()
    assert r.status == 404
    c.close()


# Raw protocol

def raw(daemon: Daemon, data: bytes) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(daemon.local_socket)
    try:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def test_request_line_too_long(tls_daemon: Daemon) -> None:
    daemon = tls_daemon
    reply = raw(daemon, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 414 ")


def test_put_without_content_length(tls_daemon: Daemon,
                                    make_ticket: Callable[..., Any]) -> None:
    daemon = tls_daemon
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    reply = raw(daemon, f"PUT /images/{ticket['uuid']} HTTP/1.1\r\n"
                        "Host: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Length header is required" in reply


def test_pipelined_requests(tls_daemon: Daemon,
                            make_ticket: Callable[..., Any]) -> None:
    daemon = tls_daemon
    data = os.urandom(1000)
    ticket = make_ticket(size=1000, data=data)
    daemon.add_ticket(ticket)
    one = (f"GET /images/{ticket['uuid']} HTTP/1.1\r\nHost: x\r\n"
           "Range: bytes=0-9\r\n\r\n").encode()
    last = (f"GET /images/{ticket['uuid']} HTTP/1.1\r\nHost: x\r\n"
            "Range: bytes=10-19\r\nConnection: close\r\n\r\n").encode()
    reply = raw(daemon, one + one + last)
    assert reply.count(b"HTTP/1.1 206 ") == 3
    assert reply.endswith(data[10:20])


def test_expect_continue(tls_daemon: Daemon,
                         make_ticket: Callable[..., Any]) -> None:
    daemon = tls_daemon
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(daemon.local_socket)
    with sock:
        sock.sendall(f"PUT /images/{ticket['uuid']} HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 4\r\nExpect: 100-continue\r\n\r\n"
                     .encode())
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abcd")
        reply = sock.recv(1024)
        assert reply.startswith(b"HTTP/1.1 200 ")
    assert read_file(ticket)[:4] == b"abcd"


def test_expect_continue_rejected(tls_daemon: Daemon) -> None:
    """No 100 when the request fails before the body is needed."""
    daemon = tls_daemon
    reply = raw(daemon, b"PUT /images/missing HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in reply


def test_tls_required_on_remote(tls_daemon: Daemon) -> None:
    daemon = tls_daemon
    with socket.create_connection(("127.0.0.1", daemon.port), 30) as sock:
        sock.sendall(b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1")


def test_tls12_accepted_tls11_refused(tls_daemon: Daemon) -> None:
    daemon = tls_daemon
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{PKI}/ca.pem")
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", daemon.port), 30) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as s:
            assert s.version() == "TLSv1.2"
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("local OpenSSL cannot speak TLS 1.1")
    with socket.create_connection(("127.0.0.1", daemon.port), 30) as sock:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(sock, server_hostname="localhost")


# Checksum

def naive_checksum(data: bytes, block_size: int = 4 * 1024**2) -> str:
    outer = hashlib.blake2b(digest_size=32)
    for i in range(0, len(data), block_size):
        outer.update(hashlib.blake2b(data[i:i + block_size],
                                     digest_size=32).digest())
    return outer.hexdigest()


def test_checksum(daemon: Daemon, conn: http.client.HTTPConnection,
                  make_ticket: Callable[..., dict[str, Any]]) -> None:
    size = 10 * 1024**2 + 4096
    ticket = make_ticket(size=size, ops=["read"])
    data = bytearray(size)
    data[5 * 1024**2:6 * 1024**2] = os.urandom(1024**2)
    data[-4096:] = os.urandom(4096)
    with open(ticket["_path"], "r+b") as f:
        f.seek(5 * 1024**2)
        f.write(data[5 * 1024**2:6 * 1024**2])
        f.seek(size - 4096)
        f.write(data[-4096:])
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}/checksum")
    assert r.status == 200
    assert json.loads(r.read()) == {
        "algorithm": "blake2b", "block_size": 4 * 1024**2,
        "checksum": naive_checksum(bytes(data))}
    # The connection stays usable.
    r = request(conn, "GET", f"/images/{ticket['uuid']}/checksum"
                             f"?block_size={1024**2}&algorithm=sha256")
    result = json.loads(r.read())
    outer = hashlib.sha256()
    for i in range(0, size, 1024**2):
        outer.update(hashlib.sha256(data[i:i + 1024**2]).digest())
    assert result == {"algorithm": "sha256", "block_size": 1024**2,
                      "checksum": outer.hexdigest()}


@pytest.mark.parametrize("query", [
    "?algorithm=nope", "?block_size=x", "?block_size=4096",
    f"?block_size={1024**2 + 1}", f"?block_size={32 * 1024**2}",
])
def test_checksum_bad_arguments(daemon: Daemon,
                                conn: http.client.HTTPConnection,
                                make_ticket: Callable[..., dict[str, Any]],
                                query: str) -> None:
    status, _ = get_checksum(daemon, conn, make_ticket, query)
    assert status == 400


def get_checksum(daemon: Daemon, conn: http.client.HTTPConnection,
                 make_ticket: Callable[..., dict[str, Any]],
                 query: str) -> tuple[int, str]:
    """Status and body of a checksum of a new ticket with query."""
    ticket = make_ticket(size=4096, ops=["read"])
    daemon.add_ticket(ticket)
    r = request(conn, "GET", f"/images/{ticket['uuid']}/checksum{query}")
    return r.status, r.read().decode()


@pytest.mark.parametrize("raw", [
    # All of these are 1 MiB to int(); only plain digits are a number.
    "%2B1048576",   # "+1048576"
    "+1048576",     # " 1048576": "+" is a space in a query
    "%201048576",   # " 1048576"
    "1048576%20",   # "1048576 "
    "1_048_576",
    "%D9%A11048576",  # an Arabic-Indic digit one before
    # Not numbers to int() either.
    "0x100000",
    "1e6",
])
def test_checksum_block_size_strict(daemon: Daemon,
                                    conn: http.client.HTTPConnection,
                                    make_ticket: Callable[..., dict[str, Any]],
                                    raw: str) -> None:
    status, body = get_checksum(daemon, conn, make_ticket,
                                f"?block_size={raw}")
    assert status == 400
    assert "Invalid value for 'block_size'" in body
    assert "expecting a non-negative integer" in body


def test_checksum_unknown_ticket_keeps_connection(
        daemon: Daemon, conn: http.client.HTTPConnection) -> None:
    r = request(conn, "GET", "/images/missing/checksum")
    r.read()
    assert r.status == 403
    assert r.getheader("connection") is None
    r = request(conn, "GET", "/images/anything/checksum/algorithms")
    algorithms = json.loads(r.read())["algorithms"]
    assert r.status == 200
    assert "blake2b" in algorithms and "sha256" in algorithms
    assert algorithms == sorted(algorithms)
