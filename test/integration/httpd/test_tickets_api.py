# SPDX-License-Identifier: GPL-2.0-or-later
"""The control API (/tickets) against a real daemon."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from typing import Any, Callable

import pytest

from ovirt_imageio.net.unixhttp import UnixHTTPConnection

from support.daemon_util import Daemon, request


def base_ticket(**kw: Any) -> dict[str, Any]:
    t = {"uuid": str(uuid.uuid4()), "size": 4096, "timeout": 300,
         "ops": ["read"], "url": "file:///no/such/file"}
    t.update(kw)
    return t


def test_add_get_delete(daemon: Daemon) -> None:
    t = base_ticket(filename="a.raw", sparse=True)
    daemon.add_ticket(t)
    status = daemon.ticket(t["uuid"])
    assert status["uuid"] == t["uuid"]
    assert status["size"] == 4096
    assert status["ops"] == ["read"]
    assert status["filename"] == "a.raw"
    assert status["sparse"] is True
    assert status["dirty"] is False
    assert status["active"] is False
    assert status["canceled"] is False
    assert status["connections"] == 0
    assert status["inactivity_timeout"] == 60
    assert status["transfer_id"] == f"(ticket/{t['uuid'][:18]})"
    assert status["transferred"] == 0
    assert isinstance(status["expires"], int)
    assert isinstance(status["idle_time"], int)

    code, body = daemon.control("DELETE", f"/tickets/{t['uuid']}")
    assert code == 204
    code, body = daemon.control("GET", f"/tickets/{t['uuid']}")
    assert code == 404
    # Deleting again is fine.
    code, body = daemon.control("DELETE", f"/tickets/{t['uuid']}")
    assert code == 204


def test_replace(daemon: Daemon) -> None:
    t = base_ticket()
    daemon.add_ticket(t)
    t["size"] = 8192
    daemon.add_ticket(t)
    assert daemon.ticket(t["uuid"])["size"] == 8192


@pytest.mark.parametrize("change,needle", [
    ({"size": "big"}, "size"),
    ({"ops": "read"}, "ops"),
    ({"url": "ftp://x/y"}, "url"),
    ({"timeout": None}, "timeout"),
    ({"uuid": 42}, "uuid"),
])
def test_add_invalid(daemon: Daemon, change: dict[str, Any], needle: str
                     ) -> None:
    t = base_ticket(**change)
    code, body = daemon.control("PUT", "/tickets/x", t)
    assert code == 400
    assert needle in body


@pytest.mark.parametrize("missing", ["uuid", "size", "ops", "timeout",
                                     "url"])
def test_add_missing_field(daemon: Daemon, missing: str) -> None:
    t = base_ticket()
    del t[missing]
    code, body = daemon.control("PUT", "/tickets/x", t)
    assert code == 400
    assert missing in body


def test_add_not_json(daemon: Daemon) -> None:
    conn = UnixHTTPConnection(daemon.control_path)
    r = request(conn, "PUT", "/tickets/x", body=b"{not json")
    assert r.status == 400
    assert b"json" in r.read().lower()
    conn.close()


@pytest.mark.parametrize("body,code", [
    ({"timeout": 10}, 200),
    ({"timeout": -1}, 400),
    ({"timeout": "x"}, 400),
    ({}, 400),
    ({"rate_limit": 1000}, 200),
    ({"rate_limit": 0, "timeout": 10}, 200),
    ({"rate_limit": -1}, 400),
    ({"rate_limit": "fast"}, 400),
    ({"rate_limit": True}, 400),
    ({"rate_limit": 1000, "timeout": -1}, 400),
])
def test_patch_ticket(daemon: Daemon, body: dict[str, Any], code: int
                      ) -> None:
    t = base_ticket()
    daemon.add_ticket(t)
    status, _ = daemon.control("PATCH", f"/tickets/{t['uuid']}", body)
    assert status == code


BAD_RATES = [-1, 1.5, "fast", True, None, [1], 2**50 + 1, 10**30]


@pytest.mark.parametrize("rate", BAD_RATES)
def test_add_with_bad_rate_limit(daemon: Daemon, rate: Any) -> None:
    t = base_ticket(rate_limit=rate)
    status, body = daemon.control("PUT", f"/tickets/{t['uuid']}", t)
    assert status == 400
    assert "'rate_limit'" in str(body)
    assert daemon.control("GET", f"/tickets/{t['uuid']}")[0] == 404


@pytest.mark.parametrize("rate", BAD_RATES)
def test_patch_bad_rate_limit(daemon: Daemon, rate: Any) -> None:
    t = base_ticket(rate_limit=1000)
    daemon.add_ticket(t)
    status, body = daemon.control("PATCH", f"/tickets/{t['uuid']}",
                                  {"rate_limit": rate})
    assert status == 400
    assert "'rate_limit'" in str(body)
    assert daemon.ticket(t["uuid"])["rate_limit"] == 1000


def test_largest_rate_limit_is_accepted(daemon: Daemon) -> None:
    t = base_ticket(rate_limit=2**50)
    daemon.add_ticket(t)
    assert daemon.ticket(t["uuid"])["rate_limit"] == 2**50
    status, _ = daemon.control("PATCH", f"/tickets/{t['uuid']}",
                               {"rate_limit": 0})
    assert status == 200
    assert daemon.ticket(t["uuid"])["rate_limit"] == 0


def test_patch_rate_limit_shows_in_status(daemon: Daemon) -> None:
    t = base_ticket()
    t["rate_limit"] = 1024**2
    daemon.add_ticket(t)
    assert daemon.ticket(t["uuid"])["rate_limit"] == 1024**2
    status, _ = daemon.control("PATCH", f"/tickets/{t['uuid']}",
                               {"rate_limit": 5 * 1024**2})
    assert status == 200
    assert daemon.ticket(t["uuid"])["rate_limit"] == 5 * 1024**2
    # A refused PATCH changes nothing.
    status, body = daemon.control("PATCH", f"/tickets/{t['uuid']}",
                                  {"rate_limit": 7, "timeout": -1})
    assert status == 400
    assert daemon.ticket(t["uuid"])["rate_limit"] == 5 * 1024**2


def test_patch_unknown(daemon: Daemon) -> None:
    status, _ = daemon.control("PATCH", "/tickets/nope", {"timeout": 1})
    assert status == 404


def test_delete_all(daemon: Daemon) -> None:
    a, b = base_ticket(), base_ticket()
    daemon.add_ticket(a)
    daemon.add_ticket(b)
    status, _ = daemon.control("DELETE", "/tickets/")
    assert status == 204
    assert daemon.control("GET", f"/tickets/{a['uuid']}")[0] == 404
    assert daemon.control("GET", f"/tickets/{b['uuid']}")[0] == 404


def test_connections_and_transferred(
        daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]) -> None:
    data = os.urandom(256 * 1024)
    ticket = make_ticket(size=len(data), data=data, ops=["read"])
    daemon.add_ticket(ticket)
    conn = daemon.local()
    r = request(conn, "GET", f"/images/{ticket['uuid']}",
                headers={"Range": "bytes=0-65535"})
    r.read()
    r = request(conn, "GET", f"/images/{ticket['uuid']}",
                headers={"Range": "bytes=32768-98303"})
    r.read()
    status = daemon.ticket(ticket["uuid"])
    assert status["connections"] == 1
    assert status["transferred"] == 98304
    conn.close()


def test_concurrent_writers_distinct_ranges(
        daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]) -> None:
    chunk = 256 * 1024
    workers = 4
    data = os.urandom(chunk * workers * 4)
    ticket = make_ticket(size=len(data), ops=["write"])
    daemon.add_ticket(ticket)
    errors: list[BaseException] = []

    def upload(index: int) -> None:
        try:
            conn = daemon.local()
            for i in range(index, len(data) // chunk, workers):
                start = i * chunk
                r = request(conn, "PUT", f"/images/{ticket['uuid']}?flush=n",
                            body=data[start:start + chunk], headers={
                                "Content-Range":
                                    f"bytes {start}-{start + chunk - 1}/*"})
                r.read()
                assert r.status == 200
            conn.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i,))
               for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open(ticket["_path"], "rb") as f:
        assert f.read() == data
    assert daemon.ticket(ticket["uuid"])["transferred"] == len(data)


def test_delete_cancels_stalled_upload(
        daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]) -> None:
    """
    A client that stalls mid-upload keeps an operation blocked on the
    socket; DELETE cancels it at once and closes the client's connection.
    """
    size = 64 * 1024**2
    ticket = make_ticket(size=size, ops=["write"])
    daemon.add_ticket(ticket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(daemon.local_socket)
    with sock:
        sock.sendall(f"PUT /images/{ticket['uuid']} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        sock.sendall(b"x" * (1024 * 1024))
        # The server reads the body only inside the operation, so once
        # the ticket is active the op is running (and then stalls).
        while not daemon.ticket(ticket["uuid"])["active"]:
            pass
        code, _ = daemon.control("DELETE", f"/tickets/{ticket['uuid']}")
        assert code == 204
        assert daemon.control("GET", f"/tickets/{ticket['uuid']}")[0] == 404
        # The server closed the connection (possibly after a 403).
        reply = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
        assert reply == b"" or reply.startswith(b"HTTP/1.1 403 ")


def test_delete_cancels_stalled_download(
        daemon: Daemon, make_ticket: Callable[..., dict[str, Any]]) -> None:
    """A client that stops reading a download cannot block DELETE."""
    size = 64 * 1024**2
    ticket = make_ticket(size=size, ops=["read"])
    daemon.add_ticket(ticket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(daemon.local_socket)
    with sock:
        sock.sendall(f"GET /images/{ticket['uuid']} HTTP/1.1\r\n"
                     "Host: x\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
        while not daemon.ticket(ticket["uuid"])["active"]:
            pass
        code, _ = daemon.control("DELETE", f"/tickets/{ticket['uuid']}")
        assert code == 204
        received = 0
        while True:
            try:
                chunk = sock.recv(1024**2)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
        assert received < size


def test_config_introspection(daemon: Daemon) -> None:
    code, cfg = daemon.control("GET", "/config/")
    assert code == 200
    assert cfg["remote"]["port"] == daemon.port
    assert cfg["remote"]["port"] != 0
    assert cfg["local"]["socket"].startswith("\0")


def test_ticket_json_roundtrip_extra_keys(daemon: Daemon) -> None:
    t = base_ticket(unknown_key="ignored", dirty=True,
                    inactivity_timeout=300, transfer_id="tx-1")
    daemon.add_ticket(t)
    status = daemon.ticket(t["uuid"])
    assert status["transfer_id"] == "tx-1"
    assert status["inactivity_timeout"] == 300
    assert status["dirty"] is True
    assert "unknown_key" not in status
    json.dumps(status)
