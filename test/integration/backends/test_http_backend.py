# SPDX-License-Identifier: GPL-2.0-or-later
"""
The http backend against a real daemon (file tickets, over TLS and over
the daemon's local socket), and against a tiny fake server playing old
daemons and broken remotes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any, Callable

import pytest

from ovirt_imageio.backends import Options, base, open_url
from ovirt_imageio.backends import http as http_backend
from ovirt_imageio.util.extents import ZeroExtent

from support.daemon_util import PKI, Daemon, free_port, request
from support.old_server import FakeServer

CA = os.path.join(PKI, "ca.pem")

Ticket = dict[str, Any]
MakeTicket = Callable[..., Ticket]


def url(daemon: Daemon, ticket: Ticket) -> str:
    return f"https://localhost:{daemon.port}/images/{ticket['uuid']}"


def read_file(ticket: Ticket) -> bytes:
    with open(ticket["_path"], "rb") as f:
        return f.read()


# Opening.

def test_open_adopts_options(daemon: Daemon, make_ticket: MakeTicket,
                             open_backend: Callable[..., Any],
                             transport: str) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    assert b.name == "http"
    assert b.features == {"checksum", "extents", "flush", "written",
                          "zero"}
    assert (b.max_readers, b.max_writers) == (8, 8)
    caps = b.capabilities
    assert caps.block_size == 1
    assert (caps.max_readers, caps.max_writers) == (8, 8)
    assert caps.extents == {"zero", "dirty"}
    assert caps.zero and caps.flush
    if transport == "unix":
        assert b.server_address == daemon.local_socket
    else:
        assert b.server_address == ("localhost", daemon.port)


def test_repr_hides_ticket_id(daemon: Daemon, make_ticket: MakeTicket,
                              open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    text = repr(open_backend(ticket, "r"))
    assert ticket["uuid"] not in text
    assert f"/images/{ticket['uuid'][:8]}... " in text


def test_open_read_only_ticket(daemon: Daemon, make_ticket: MakeTicket,
                               open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192, ops=("read",))
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    assert b.features == {"checksum", "extents", "written"}
    assert not b.capabilities.zero


def test_max_connections_caps_remote_counts(
        daemon: Daemon, make_ticket: MakeTicket,
        open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, max_connections=4)
    assert (b.max_readers, b.max_writers) == (4, 4)


def test_unix_socket_used_by_requests(daemon: Daemon, make_ticket: MakeTicket
                                      ) -> None:
    data = os.urandom(4096)
    ticket = make_ticket(size=len(data), data=data,
                         transfer_id=f"unix-{uuid.uuid4()}")
    daemon.add_ticket(ticket)
    with http_backend.open(url(daemon, ticket), "r", ca_file=CA) as b:
        assert b.server_address == daemon.local_socket
        buf = bytearray(len(data))
        assert b.readinto(0, memoryview(buf)) == len(data)
        assert buf == data
    # The daemon logs reads with the client name; "local" is its name
    # for unix socket clients.
    assert f"[local] READ size=4096 offset=0 close=False " \
        f"transfer={ticket['transfer_id']}" in daemon.log()


def test_open_url_http_scheme(daemon: Daemon, make_ticket: MakeTicket
                              ) -> None:
    ticket = make_ticket(size=4096, data=b"x" * 4096)
    daemon.add_ticket(ticket)
    b = open_url(url(daemon, ticket), "r", options=Options(ca_file=CA))
    try:
        assert isinstance(b, http_backend.HTTPBackend)
        assert b.size() == 4096
    finally:
        b.close()


@pytest.mark.parametrize("bad", [
    "ftp://localhost/images/x",
    "https:///images/x",
    "https://localhost:99999999/images/x",
])
def test_open_invalid_url(bad: str) -> None:
    with pytest.raises(base.BackendError):
        http_backend.open(bad, "r")


@pytest.mark.parametrize("kw", [
    {"buffer_size": 0},
    {"max_connections": 0},
])
def test_open_invalid_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        http_backend.open("https://localhost/images/x", "r", **kw)


# Data.

@pytest.mark.parametrize("offset,length", [
    (0, 1),
    (1, 4095),
    (511, 70000),
    (0, 300000),
    (299999, 1),
])
def test_write_read_round_trip(daemon: Daemon, make_ticket: MakeTicket,
                               open_backend: Callable[..., Any],
                               offset: int, length: int) -> None:
    ticket = make_ticket(size=300000)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    data = os.urandom(length)
    b.write(offset, memoryview(data))
    b.flush()
    assert read_file(ticket)[offset:offset + length] == data
    buf = bytearray(length)
    assert b.readinto(offset, memoryview(buf)) == length
    assert buf == data


def test_write_chunked_by_buffer_size(daemon: Daemon, make_ticket: MakeTicket,
                                      open_backend: Callable[..., Any]
                                      ) -> None:
    ticket = make_ticket(size=200000,
                         transfer_id=f"chunks-{uuid.uuid4()}")
    daemon.add_ticket(ticket)
    b = open_backend(ticket, buffer_size=65536)
    data = os.urandom(200000)
    b.write(0, memoryview(data))
    assert read_file(ticket) == data
    log = daemon.log()
    writes = [line for line in log.splitlines()
              if f"transfer={ticket['transfer_id']}" in line
              and "WRITE" in line]
    assert [w.split("WRITE ")[1].split(" close")[0] for w in writes] == [
        "size=65536 offset=0 flush=False",
        "size=65536 offset=65536 flush=False",
        "size=65536 offset=131072 flush=False",
        "size=3392 offset=196608 flush=False",
    ]


def test_read_short_at_end(daemon: Daemon, make_ticket: MakeTicket,
                           open_backend: Callable[..., Any]) -> None:
    data = os.urandom(100000)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    buf = bytearray(8192)
    assert b.readinto(98304, memoryview(buf)) == 1696
    assert buf[:1696] == data[98304:]


def test_zero(daemon: Daemon, make_ticket: MakeTicket,
              open_backend: Callable[..., Any]) -> None:
    data = os.urandom(65536)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    b.zero(1000, 30000)
    b.flush()
    expected = data[:1000] + bytes(30000) + data[31000:]
    assert read_file(ticket) == expected
    buf = bytearray(len(data))
    b.readinto(0, memoryview(buf))
    assert buf == expected


def test_zero_asks_no_flush_when_remote_flushes(
        daemon: Daemon, make_ticket: MakeTicket,
        open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192, transfer_id=f"zero-{uuid.uuid4()}")
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    b.zero(0, 4096)
    assert (f"ZERO size=4096 offset=0 flush=False "
            f"transfer={ticket['transfer_id']}") in daemon.log()


def test_read_only_backend_refuses_writes(
        daemon: Daemon, make_ticket: MakeTicket,
        open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    with pytest.raises(base.BackendError):
        b.write(0, memoryview(b"x"))
    with pytest.raises(base.BackendError):
        b.zero(0, 1)
    b.flush()


# Extents and size.

def test_extents_zero(daemon: Daemon, make_ticket: MakeTicket,
                      open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=3 * 1024**2)
    with open(ticket["_path"], "r+b") as f:
        f.seek(1024**2)
        f.write(b"x" * 1024**2)
    daemon.add_ticket(ticket)
    conn = daemon.remote()
    r = request(conn, "GET", f"/images/{ticket['uuid']}/extents")
    expected = json.loads(r.read())
    conn.close()
    b = open_backend(ticket, "r")
    got = list(b.extents("zero"))
    assert [e.to_dict() for e in got] == expected
    assert all(isinstance(e, ZeroExtent) for e in got)
    assert b.size() == 3 * 1024**2


def test_extents_dirty_unsupported(daemon: Daemon, make_ticket: MakeTicket,
                                   open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    with pytest.raises(base.UnsupportedContext):
        list(b.extents("dirty"))
    # The connection is still usable.
    assert b.size() == 8192


def test_extents_cached_until_write(daemon: Daemon, make_ticket: MakeTicket,
                                    open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192, data=b"x" * 4096)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    assert b.size() == 4096
    # Growing the file behind the backend's back is not seen...
    with open(ticket["_path"], "ab") as f:
        f.write(b"y" * 1024)
    assert b.size() == 4096
    # ...but a write through it drops the cache.
    b.write(6144, memoryview(b"z" * 2048))
    assert b.size() == 8192


@pytest.mark.parametrize("file_size,ticket_size,expected", [
    (4096, 8192, 4096),
    (8192, 4096, 4096),
    (0, 4096, 0),
])
def test_size(daemon: Daemon, make_ticket: MakeTicket,
              open_backend: Callable[..., Any], file_size: int,
              ticket_size: int, expected: int) -> None:
    ticket = make_ticket(size=ticket_size, data=b"a" * file_size)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    assert b.size() == expected


# Client library helpers.

def test_clone(daemon: Daemon, make_ticket: MakeTicket,
               open_backend: Callable[..., Any]) -> None:
    data = os.urandom(8192)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    extents = list(b.extents())
    with b.clone() as c:
        assert c is not b
        assert c.server_address == b.server_address
        assert c.features == b.features
        assert c.capabilities == b.capabilities
        assert list(c.extents()) == extents
        c.write(0, memoryview(b"c" * 100))
        buf = bytearray(100)
        b.readinto(0, memoryview(buf))
        assert buf == b"c" * 100
    # Closing the clone leaves the original working.
    assert b.size() == len(data)


# Errors.

def test_unknown_ticket(daemon: Daemon) -> None:
    with pytest.raises(base.RemoteError) as e:
        http_backend.open(
            f"https://localhost:{daemon.port}/images/no-such-ticket", "r",
            ca_file=CA)
    assert e.value.status == 403
    assert "No such ticket" in e.value.message


def test_write_beyond_ticket(daemon: Daemon, make_ticket: MakeTicket,
                             open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    with pytest.raises(base.RemoteError) as e:
        b.write(8000, memoryview(b"x" * 1000))
    assert e.value.status == 416
    assert e.value.headers == {"Content-Range": "bytes */8192"}
    # Still usable after the error.
    b.write(0, memoryview(b"ok"))
    assert read_file(ticket)[:2] == b"ok"


def test_read_beyond_image(daemon: Daemon, make_ticket: MakeTicket,
                           open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192, data=b"x" * 4096)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, "r")
    with pytest.raises(base.RemoteError) as e:
        b.readinto(4096, memoryview(bytearray(10)))
    assert e.value.status == 416


def test_ticket_removed_while_open(daemon: Daemon, make_ticket: MakeTicket,
                                   open_backend: Callable[..., Any]) -> None:
    ticket = make_ticket(size=8192)
    daemon.add_ticket(ticket)
    b = open_backend(ticket)
    status, _ = daemon.control("DELETE", f"/tickets/{ticket['uuid']}")
    assert status == 204
    with pytest.raises(base.RemoteError) as e:
        b.write(0, memoryview(bytearray(8192)))
    assert e.value.status == 403


def test_connection_refused() -> None:
    port = free_port()
    with pytest.raises(http_backend.ConnectionFailed) as e:
        http_backend.open(f"https://localhost:{port}/images/x", "r",
                          ca_file=CA)
    assert isinstance(e.value, base.BackendError)
    assert isinstance(e.value, OSError)
    assert f"Cannot connect to https://localhost:{port}" in str(e.value)


def test_untrusted_certificate(daemon: Daemon, make_ticket: MakeTicket
                               ) -> None:
    ticket = make_ticket(size=4096)
    daemon.add_ticket(ticket)
    # The system store does not know the test CA...
    with pytest.raises(http_backend.ConnectionFailed, match="certificate"):
        http_backend.open(url(daemon, ticket), "r", prefer_unix_socket=False)
    # ...unless verification is off.
    with http_backend.open(url(daemon, ticket), "r", secure=False,
                           prefer_unix_socket=False) as b:
        assert b.size() == 4096


# Old and broken servers.

@pytest.mark.parametrize("status,body", [
    (405, b"Method not allowed\n"),
    (204, b""),
    (200, b"not json"),
    (200, b'["a list"]'),
])
def test_old_server(status: int, body: bytes) -> None:
    with FakeServer(10000, status, body) as server:
        server.image[:] = os.urandom(10000)
        with http_backend.open(server.url, "r+") as b:
            assert b.features == frozenset()
            assert (b.max_readers, b.max_writers) == (1, 1)
            caps = b.capabilities
            assert caps.extents == {"zero"}
            assert not caps.zero and not caps.flush

            # Size and extents from a GET whose body is never read.
            assert b.size() == 10000
            assert list(b.extents()) == [ZeroExtent(0, 10000, False, False)]
            with pytest.raises(base.UnsupportedContext):
                b.extents("dirty")

            # Zero is a PUT of zeros; flush is left to each PUT.
            b.zero(100, 5000)
            assert server.image[100:5100] == bytes(5000)
            b.write(6000, memoryview(b"w" * 100))
            assert server.image[6000:6100] == b"w" * 100
            b.flush()

        assert server.methods() == ["OPTIONS", "GET", "PUT", "PUT"]
        puts = [r for r in server.requests if r[0] == "PUT"]
        # No flush=n: old servers flush every PUT, which is what we need.
        assert [p[1] for p in puts] == ["/images/x", "/images/x"]
        assert puts[0][2]["Content-Range"] == "bytes 100-5099/*"
        assert puts[0][2]["Content-Length"] == "5000"


def test_options_partial_reply() -> None:
    body = json.dumps({"features": ["zero", 7], "max_readers": "many",
                       "max_writers": 3}).encode()
    with FakeServer(4096, 200, body) as server:
        with http_backend.open(server.url, "r") as b:
            assert b.features == {"zero"}
            assert (b.max_readers, b.max_writers) == (1, 3)


def test_unusable_unix_socket_keeps_tcp(caplog: Any) -> None:
    body = json.dumps({
        "features": [],
        "unix_socket": f"\0/no/such/socket/{os.getpid()}",
    }).encode()
    with FakeServer(4096, 200, body) as server:
        with caplog.at_level(logging.WARNING):
            with http_backend.open(server.url, "r") as b:
                assert b.server_address == ("127.0.0.1",
                                            int(server.url.split(":")[2]
                                                .split("/")[0]))
                assert b.size() == 4096
        assert "Keeping TCP to http://127.0.0.1" in caplog.text


def test_stale_connection_retried() -> None:
    with FakeServer(4096, 204, close_after_response=True) as server:
        server.image[:] = b"s" * 4096
        with http_backend.open(server.url, "r+") as b:
            # Each request finds the previous connection closed.
            buf = bytearray(4096)
            assert b.readinto(0, memoryview(buf)) == 4096
            assert buf == b"s" * 4096
            b.write(0, memoryview(b"t" * 10))
            assert server.image[:10] == b"t" * 10
        assert server.methods() == ["OPTIONS", "GET", "PUT"]


def test_early_answer_to_large_write(daemon: Daemon, make_ticket: MakeTicket,
                                     open_backend: Callable[..., Any]
                                     ) -> None:
    # The daemon refuses before reading the body and closes the
    # connection, so sending the rest fails; its answer is still read.
    size = 32 * 1024**2
    ticket = make_ticket(size=size)
    daemon.add_ticket(ticket)
    b = open_backend(ticket, buffer_size=size)
    status, _ = daemon.control("DELETE", f"/tickets/{ticket['uuid']}")
    assert status == 204
    with pytest.raises(base.RemoteError) as e:
        b.write(0, memoryview(bytearray(size)))
    assert e.value.status == 403


# Body reads past http.client's buffered reader (C, and tlsio for TLS).

@pytest.mark.parametrize("how", ["tls", "tls-fallback", "unix"])
def test_body_in_odd_pieces_then_reuse(
        daemon: Daemon, make_ticket: MakeTicket,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # The first bytes of a body sit in http.client's buffer and the rest
    # in the socket; pieces smaller and larger than that buffer must come
    # out in order, and the connection must serve the next request.
    from ovirt_imageio.backends import http_connection
    from ovirt_imageio.native import tlsio
    from ovirt_imageio.util import tls
    if how == "tls-fallback":
        monkeypatch.setattr(tlsio, "ENABLED", False)
    # Slices smaller than the pieces: plain reads loop over them.
    monkeypatch.setattr(http_connection, "RECV_SLICE", 300_000)
    data = os.urandom(3 * 1024**2)
    ticket = make_ticket(size=len(data), data=data)
    daemon.add_ticket(ticket)
    if how == "unix":
        conn = http_connection.Connection.unix(daemon.local_socket, "test")
    else:
        conn = http_connection.Connection.tcp(
            "localhost", daemon.port, "test",
            context=tls.client_context(CA))
    try:
        conn.connect()
        handle = getattr(conn._conn, "ssl_handle", None)
        assert (handle is not None) == (how == "tls")
        target = f"/images/{ticket['uuid']}"
        resp = conn.request("GET", target)
        assert resp.status == 200
        got = bytearray()
        for size in (1, 100, 8191, 70_000, 1024**2, len(data)):
            piece = bytearray(min(size, len(data) - len(got)))
            if not piece:
                break
            conn.read_into(resp, memoryview(piece))
            got += piece
        assert got == data
        assert resp.isclosed()
        resp = conn.request("GET", target,
                            headers={"Range": "bytes=0-99"})
        assert resp.status == 206
        assert conn.read_small(resp) == data[:100]
    finally:
        conn.close()
