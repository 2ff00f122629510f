# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon in its proxy role: a host daemon and a proxy daemon on
loopback, the proxy ticket pointing at the host's transfer URL over TLS.

The main host has its local service disabled, so the proxy really relays
over TLS; one test uses the conftest daemon (local service enabled) as
host to check that the proxy moves to the host's unix socket.
"""

from __future__ import annotations

import http.client
import json
import os
import uuid
from typing import Any, Callable, Iterator

import pytest

from support.daemon_util import PROXY_CONF, Daemon, request, running

Ticket = dict[str, Any]
MakeTicket = Callable[..., Ticket]

MiB = 1024**2


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("host"),
                 extra_conf="[local]\nenable = false\n") as d:
        yield d


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("proxy"), extra_conf=PROXY_CONF) as d:
        yield d


@pytest.fixture
def conn(proxy: Daemon) -> Iterator[http.client.HTTPConnection]:
    c = proxy.remote()
    yield c
    c.close()


def install(host: Daemon, proxy: Daemon, ticket: Ticket,
            **proxy_changes: Any) -> str:
    """Install ticket on host and its proxy ticket on proxy; return id."""
    host.add_ticket(ticket)
    proxy_ticket = dict(ticket)
    proxy_ticket["url"] = (f"https://localhost:{host.port}/images/"
                           f"{ticket['uuid']}")
    proxy_ticket.update(proxy_changes)
    proxy.add_ticket(proxy_ticket)
    return str(ticket["uuid"])


def read_file(ticket: Ticket) -> bytes:
    with open(ticket["_path"], "rb") as f:
        return f.read()


def get_json(c: http.client.HTTPConnection, path: str) -> Any:
    r = request(c, "GET", path)
    body = r.read()
    assert r.status == 200, body
    return json.loads(body)


# Options.

def test_options(host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
                 conn: http.client.HTTPConnection) -> None:
    tid = install(host, proxy, make_ticket(size=MiB))
    r = request(conn, "OPTIONS", f"/images/{tid}")
    body = json.loads(r.read())
    assert r.status == 200
    assert body == {
        # From the proxy ticket...
        "features": ["checksum", "extents", "flush", "written", "zero"],
        # ...and from the host's backend; no unix_socket, since the
        # proxy's local service is disabled.
        "max_readers": 8,
        "max_writers": 8,
    }


def test_options_read_only_proxy_ticket(
        host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
        conn: http.client.HTTPConnection) -> None:
    tid = install(host, proxy, make_ticket(size=MiB), ops=["read"])
    r = request(conn, "OPTIONS", f"/images/{tid}")
    assert json.loads(r.read())["features"] == [
        "checksum", "extents", "written"]


# Data.

def test_upload(host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
                conn: http.client.HTTPConnection) -> None:
    ticket = make_ticket(size=3 * MiB)
    tid = install(host, proxy, ticket)
    data = os.urandom(3 * MiB - 1000)
    chunk = MiB
    for pos in range(0, len(data), chunk):
        body = data[pos:pos + chunk]
        r = request(conn, "PUT", f"/images/{tid}?flush=n", body=body,
                    headers={"Content-Range":
                             f"bytes {pos}-{pos + len(body) - 1}/*"})
        assert r.status == 200, r.read()
        r.read()
    r = request(conn, "PATCH", f"/images/{tid}",
                body=json.dumps({"op": "flush"}))
    assert r.status == 200, r.read()
    r.read()
    assert read_file(ticket)[:len(data)] == data


@pytest.mark.parametrize("header,start,end", [
    (None, 0, 300000),
    ("bytes=0-0", 0, 1),
    ("bytes=1-131073", 1, 131074),
    ("bytes=100000-", 100000, 300000),
])
def test_download(host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
                  conn: http.client.HTTPConnection, header: str | None,
                  start: int, end: int) -> None:
    data = os.urandom(300000)
    tid = install(host, proxy, make_ticket(size=len(data), data=data))
    headers = {} if header is None else {"Range": header}
    r = request(conn, "GET", f"/images/{tid}", headers=headers)
    assert r.status == (200 if header is None else 206)
    assert r.read() == data[start:end]


def test_upload_with_zero_extents(host: Daemon, proxy: Daemon,
                                  make_ticket: MakeTicket,
                                  conn: http.client.HTTPConnection) -> None:
    # A source image: data, zeros, data, zeros; uploaded like a client
    # does, with PUT for data and PATCH zero for zeros.
    size = 4 * MiB
    source = bytearray(size)
    source[0:MiB] = os.urandom(MiB)
    source[2 * MiB:3 * MiB] = os.urandom(MiB)
    ticket = make_ticket(size=size, sparse=True)
    # Garbage on the host, so zeroing must really happen.
    with open(ticket["_path"], "wb") as f:
        f.write(b"\xff" * size)
    tid = install(host, proxy, ticket)

    for start in (0, 2 * MiB):
        r = request(conn, "PUT", f"/images/{tid}?flush=n",
                    body=bytes(source[start:start + MiB]),
                    headers={"Content-Range":
                             f"bytes {start}-{start + MiB - 1}/*"})
        assert r.status == 200
        r.read()
    for start in (MiB, 3 * MiB):
        msg = {"op": "zero", "offset": start, "size": MiB}
        r = request(conn, "PATCH", f"/images/{tid}", body=json.dumps(msg))
        assert r.status == 200, r.read()
        r.read()
    r = request(conn, "PATCH", f"/images/{tid}",
                body=json.dumps({"op": "flush"}))
    r.read()

    assert read_file(ticket) == source
    r = request(conn, "GET", f"/images/{tid}")
    assert r.read() == source

    # Zero extents through the proxy are the host's.
    c = host.remote()
    try:
        on_host = get_json(c, f"/images/{tid}/extents?context=zero")
    finally:
        c.close()
    assert get_json(conn, f"/images/{tid}/extents") == on_host
    assert [e["zero"] for e in on_host] == [False, True, False, True]


def test_dirty_extents_unsupported_by_host(
        host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
        conn: http.client.HTTPConnection) -> None:
    tid = install(host, proxy, make_ticket(size=MiB, dirty=True))
    r = request(conn, "GET", f"/images/{tid}/extents?context=dirty")
    assert r.status == 404
    assert b"not supported" in r.read()


@pytest.mark.parametrize("query", ["", "?algorithm=sha1&block_size=1048576"])
def test_checksum(host: Daemon, proxy: Daemon, make_ticket: MakeTicket,
                  conn: http.client.HTTPConnection, query: str) -> None:
    data = os.urandom(MiB) + bytes(2 * MiB) + os.urandom(1000)
    tid = install(host, proxy, make_ticket(size=len(data), data=data))
    c = host.remote()
    try:
        on_host = get_json(c, f"/images/{tid}/checksum{query}")
    finally:
        c.close()
    assert get_json(conn, f"/images/{tid}/checksum{query}") == on_host


def test_proxy_uses_host_unix_socket(daemon: Daemon, proxy: Daemon,
                                     make_ticket: MakeTicket,
                                     conn: http.client.HTTPConnection
                                     ) -> None:
    # The conftest daemon has its local service enabled and runs on this
    # host, so the proxy's backend moves to its unix socket.
    data = os.urandom(4096)
    ticket = make_ticket(size=len(data), data=data,
                         transfer_id=f"via-local-{uuid.uuid4()}")
    tid = install(daemon, proxy, ticket)
    r = request(conn, "GET", f"/images/{tid}")
    assert r.read() == data
    assert (f"[local] READ size=4096 offset=0 close=False "
            f"transfer={ticket['transfer_id']}") in daemon.log()


# Remote errors.

def test_expired_host_ticket(host: Daemon, proxy: Daemon,
                             make_ticket: MakeTicket,
                             conn: http.client.HTTPConnection) -> None:
    tid = install(host, proxy, make_ticket(size=4096, data=b"a" * 4096))
    r = request(conn, "GET", f"/images/{tid}")
    assert r.read() == b"a" * 4096

    status, _ = host.control("PATCH", f"/tickets/{tid}", {"timeout": 0})
    assert status == 200
    # The proxy's backend is open; its next request gets the host's 403.
    r = request(conn, "GET", f"/images/{tid}")
    body = r.read()
    assert r.status == 403
    assert b"expired" in body

    # A new proxy connection fails already when opening the backend.
    c = proxy.remote()
    try:
        r = request(c, "GET", f"/images/{tid}")
        assert r.status == 403
        assert b"expired" in r.read()
    finally:
        c.close()


def test_read_only_host_ticket(host: Daemon, proxy: Daemon,
                               make_ticket: MakeTicket,
                               conn: http.client.HTTPConnection) -> None:
    ticket = make_ticket(size=MiB, ops=("read",))
    tid = install(host, proxy, ticket, ops=["read", "write"])
    r = request(conn, "PUT", f"/images/{tid}", body=b"x" * 1000)
    body = r.read()
    assert r.status == 403
    assert body.startswith(b"You are not allowed to access this resource")
    assert read_file(ticket) == bytes(MiB)

    r2 = proxy.remote()
    try:
        r = request(r2, "PATCH", f"/images/{tid}",
                    body=json.dumps({"op": "zero", "size": 100}))
        assert r.status == 403
        r.read()
    finally:
        r2.close()


def test_range_beyond_host_ticket(host: Daemon, proxy: Daemon,
                                  make_ticket: MakeTicket,
                                  conn: http.client.HTTPConnection) -> None:
    # The proxy ticket allows more than the host ticket.
    tid = install(host, proxy, make_ticket(size=8192), size=16384)
    r = request(conn, "PUT", f"/images/{tid}", body=b"x" * 4096,
                headers={"Content-Range": "bytes 10000-14095/*"})
    assert r.status == 416
    assert r.getheader("content-range") == "bytes */8192"
    r.read()


def test_host_stopped_mid_transfer(tmp_path_factory: pytest.TempPathFactory,
                                   host: Daemon, proxy: Daemon,
                                   make_ticket: MakeTicket) -> None:
    doomed = Daemon(tmp_path_factory.mktemp("doomed"),
                    extra_conf="[local]\nenable = false\n")
    doomed.start()
    try:
        # Far larger than what the sockets and buffers between the host
        # and us can hold, so the download cannot be done when the host
        # stops.
        size = 64 * MiB
        tid = install(doomed, proxy, make_ticket(size=size))
        c = proxy.remote()
        try:
            r = request(c, "GET", f"/images/{tid}")
            assert r.status == 200
            received = len(r.read(MiB))
            doomed.stop()
            # The proxy closes the connection mid-body: the only way to
            # tell a client that a download failed after its 200.
            try:
                while chunk := r.read(MiB):
                    received += len(chunk)
            except ConnectionError:
                pass
            assert MiB <= received < size
        finally:
            c.close()

        # The ticket now fails cleanly: 502, the host is unreachable...
        c = proxy.remote()
        try:
            r = request(c, "GET", f"/images/{tid}")
            assert r.status == 502
            r.read()
        finally:
            c.close()
    finally:
        doomed.stop()

    # ...and the proxy serves other tickets as before.
    data = os.urandom(8192)
    other = install(host, proxy, make_ticket(size=len(data), data=data))
    c = proxy.remote()
    try:
        r = request(c, "GET", f"/images/{other}")
        assert r.read() == data
    finally:
        c.close()
    assert proxy.proc is not None and proxy.proc.poll() is None
