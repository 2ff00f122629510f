# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hostile and broken clients against a real daemon: slow heads, bodies
and TLS handshakes, oversized heads, request smuggling, pipelining,
connection floods, odd ticket ids and path tricks. Each case has the
status documented in docs/http-api.md ("Hostile clients").
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import urllib.parse
import uuid
from typing import Any, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.daemon_util import PKI, Daemon, request, running
from support.proc_util import wait_for

KiB = 1024
MiB = 1024**2

# The bound on a whole request head in these daemons, seconds.
HEADER_TIMEOUT = 1

# How long a test waits for the daemon to act on its own; far above the
# bounds it enforces, so a pass never depends on timing, and a daemon
# that ignores a bound fails instead of hanging.
PATIENCE = 15


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("hostile"), extra_conf=f"""
        [daemon]
        header_timeout = {HEADER_TIMEOUT}
        """) as d:
        yield d


MakeTicket = Callable[..., dict[str, Any]]


@pytest.fixture
def ticket(daemon: Daemon, make_ticket: MakeTicket) -> dict[str, Any]:
    t = make_ticket(size=MiB)
    daemon.add_ticket({k: v for k, v in t.items() if k != "_path"})
    return t


class _Reader:
    """
    Lets http.client parse responses from one shared buffered file, which
    it must not close: the next response is in its buffer.
    """

    def __init__(self, f: Any) -> None:
        self._f = f

    def makefile(self, *args: Any, **kw: Any) -> Any:
        return self

    def read(self, *args: Any) -> bytes:
        return bytes(self._f.read(*args))

    def readline(self, *args: Any) -> bytes:
        return bytes(self._f.readline(*args))

    def readinto(self, buf: Any) -> int:
        return int(self._f.readinto(buf))

    def close(self) -> None:
        pass


class Raw:
    """
    A connection sending exactly the bytes a test gives, and parsing the
    responses one by one; for requests http.client would not send.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(PATIENCE)
        self.sock = sock
        self.file = sock.makefile("rb")

    @classmethod
    def local(cls, daemon: Daemon) -> Raw:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(daemon.local_socket)
        return cls(sock)

    @classmethod
    def remote(cls, daemon: Daemon) -> Raw:
        ctx = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
        sock = socket.create_connection(("localhost", daemon.port))
        return cls(ctx.wrap_socket(sock, server_hostname="localhost"))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        resp = http.client.HTTPResponse(
            _Reader(self.file), method=method)  # type: ignore[arg-type]
        resp.begin()
        resp.body = resp.read()  # type: ignore[attr-defined]
        return resp

    def at_eof(self) -> bool:
        """True when the server closed the connection (after a reset too)."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def head(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *fields, "", ""]
    return "\r\n".join(lines).encode()


# Slow clients.

def test_slow_head_gets_408(daemon: Daemon, ticket: dict[str, Any]) -> None:
    c = Raw.local(daemon)
    try:
        data = head("GET", f"/images/{ticket['uuid']}", "X-Pad: " + "x" * 200)
        # One byte per 0.1 s: each receive is far within any idle
        # timeout, yet the head as a whole never completes in time.
        for i in range(len(data) - 2):
            c.send(data[i:i + 1])
            readable, _, _ = select.select([c.sock], [], [], 0.1)
            if readable:
                break
        else:
            pytest.fail("the daemon waited for the whole trickled head")
        r = c.response()
        assert r.status == 408
        assert b"Request Timeout" in r.body  # type: ignore[attr-defined]
        assert r.getheader("connection") == "close"
        assert c.at_eof()
    finally:
        c.close()


def test_slow_tls_handshake_is_cut(daemon: Daemon) -> None:
    sock = socket.create_connection(("localhost", daemon.port))
    try:
        # The first byte of a TLS record, then nothing: the handshake
        # bound is the header timeout, not the idle timeout.
        sock.sendall(b"\x16")
        sock.settimeout(PATIENCE)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
    finally:
        sock.close()


def test_stalled_body_ends_connection(daemon: Daemon,
                                      make_ticket: MakeTicket) -> None:
    t = make_ticket(size=MiB, inactivity_timeout=1)
    daemon.add_ticket({k: v for k, v in t.items() if k != "_path"})
    c = Raw.local(daemon)
    try:
        c.send(head("PUT", f"/images/{t['uuid']}",
                    f"Content-Length: {MiB}") + b"x" * 1000)
        # Nothing more: the ticket's inactivity timeout (1 s) bounds each
        # receive of the body, then the daemon drops the connection.
        assert c.at_eof()
    finally:
        c.close()
    # The ticket is still usable.
    conn = daemon.local()
    try:
        data = os.urandom(4096)
        r = request(conn, "PUT", f"/images/{t['uuid']}", body=data)
        r.read()
        assert r.status == 200
        r = request(conn, "GET", f"/images/{t['uuid']}",
                    headers={"Range": "bytes=0-4095"})
        assert r.read() == data
    finally:
        conn.close()


# Oversized heads.

@pytest.mark.parametrize("data,status", [
    (head("GET", "/images/" + "x" * 5000), 414),
    (head("GET", "/images/x", "X-Big: " + "x" * 9000), 431),
    (head("GET", "/images/x", *[f"X-{i}: {i}" for i in range(101)]), 431),
    (head("GET", "/images/x", *[f"X-{i}: " + "x" * 8000
                                for i in range(9)]), 431),
    (b"\r\n" * 40000, 431),
])
def test_oversized_head(daemon: Daemon, data: bytes, status: int) -> None:
    c = Raw.local(daemon)
    try:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The daemon answered before reading everything.
        r = c.response()
        assert r.status == status
        assert c.at_eof()
    finally:
        c.close()


@pytest.fixture(scope="module")
def plain_daemon(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("hostile-plain"), tls=False,
                 extra_conf=f"""
        [daemon]
        header_timeout = {HEADER_TIMEOUT}
        """) as d:
        yield d


@pytest.mark.parametrize("transport", ["unix", "tls", "tcp"])
def test_long_request_line_answered_before_its_end(
        daemon: Daemon, plain_daemon: Daemon, transport: str) -> None:
    # No line end ever comes: a daemon waiting for one would answer 408
    # when the header timeout (1 s) expires, not 414.
    if transport == "unix":
        c = Raw.local(daemon)
    elif transport == "tls":
        c = Raw.remote(daemon)
    else:
        c = Raw(socket.create_connection(("localhost", plain_daemon.port)))
    try:
        try:
            c.send(b"GET /images/" + b"x" * 5000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The daemon answered before reading everything.
        r = c.response()
        assert r.status == 414
        assert r.getheader("connection") == "close"
        assert c.at_eof()
    finally:
        c.close()


# Request smuggling: requests whose framing parties could read
# differently are refused, and the connection closed, so bytes hidden
# after them never run as a request.

@pytest.mark.parametrize("fields,status", [
    (["Content-Length: 4", "Transfer-Encoding: chunked"], 400),
    (["Transfer-Encoding: chunked", "Content-Length: 4"], 400),
    (["Content-Length: 4", "Content-Length: 5"], 400),
    (["Content-Length: 4, 4"], 400),
    (["Content-Length: +4"], 400),
    (["Content-Length: 0x4"], 400),
    (["Content-Length : 4"], 400),
    (["Transfer-Encoding : chunked"], 400),
    (["Transfer-Encoding: gzip, chunked"], 501),
    (["Transfer-Encoding: chunked, chunked"], 501),
    (["Transfer-Encoding: identity"], 501),
    (["X-Folded: a", " Transfer-Encoding: chunked"], 400),
    (["X-Bad: a\rTransfer-Encoding: chunked"], 400),
])
def test_smuggling_refused(daemon: Daemon, ticket: dict[str, Any],
                           fields: list[str], status: int) -> None:
    hidden = head("DELETE", "/tickets/" + ticket["uuid"])
    c = Raw.local(daemon)
    try:
        c.send(head("PUT", f"/images/{ticket['uuid']}", *fields)
               + b"4\r\nabcd\r\n0\r\n\r\n" + hidden)
        r = c.response("PUT")
        assert r.status == status
        assert r.getheader("connection") == "close"
        assert c.at_eof()
    finally:
        c.close()
    assert daemon.ticket(ticket["uuid"])["uuid"] == ticket["uuid"]
    with open(ticket["_path"], "rb") as f:
        assert f.read(4) == b"\0" * 4


def test_duplicate_equal_content_length_accepted(
        daemon: Daemon, ticket: dict[str, Any]) -> None:
    c = Raw.local(daemon)
    try:
        c.send(head("PUT", f"/images/{ticket['uuid']}",
                    "Content-Length: 4", "Content-Length: 4") + b"abcd")
        assert c.response("PUT").status == 200
    finally:
        c.close()
    with open(ticket["_path"], "rb") as f:
        assert f.read(4) == b"abcd"


# Pipelining.

def test_pipelined_mixed_requests(daemon: Daemon,
                                  ticket: dict[str, Any]) -> None:
    path = f"/images/{ticket['uuid']}"
    data = os.urandom(8 * KiB)
    zero = json.dumps({"op": "zero", "offset": 0, "size": 4096}).encode()
    stream = (
        head("PUT", path + "?flush=n", f"Content-Length: {len(data)}")
        + data
        + head("GET", path, "Range: bytes=0-8191")
        + head("PATCH", path, f"Content-Length: {len(zero)}") + zero
        + head("GET", path, "Range: bytes=0-8191")
        + head("OPTIONS", path)
    )
    c = Raw.local(daemon)
    try:
        # Split at odd places, so heads and bodies span writes.
        for i in range(0, len(stream), 997):
            c.send(stream[i:i + 997])
        r = c.response("PUT")
        assert r.status == 200
        r = c.response()
        assert r.status == 206
        assert r.body == data  # type: ignore[attr-defined]
        assert c.response("PATCH").status == 200
        r = c.response()
        zeroed = bytes(4096) + data[4096:]
        assert r.body == zeroed  # type: ignore[attr-defined]
        r = c.response("OPTIONS")
        assert r.status == 200
        assert json.loads(r.body)["features"]  # type: ignore[attr-defined]
    finally:
        c.close()


# Connection floods.

@pytest.fixture
def small_daemon(tmp_path: Any) -> Iterator[Daemon]:
    with running(tmp_path / "small", extra_conf="""
        [daemon]
        max_client_connections = 4
        """) as d:
        yield d


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """The sum of the samples of name whose labels include labels."""
    _, text = daemon.control("GET", "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total


def test_flood_refused_transfer_unaffected(small_daemon: Daemon,
                                           make_ticket: MakeTicket) -> None:
    d = small_daemon
    size = 8 * MiB
    data = os.urandom(size)
    t = make_ticket(size=size, data=data)
    d.add_ticket({k: v for k, v in t.items() if k != "_path"})

    # A download in progress, and three idle connections: the limit.
    busy = d.local()
    r = request(busy, "GET", f"/images/{t['uuid']}")
    received = r.read(MiB)
    idle = [d.local() for _ in range(3)]
    try:
        for c in idle:
            r2 = request(c, "OPTIONS", "/images/*")
            r2.read()
            assert r2.status == 200

        # Past the limit: 503 at once, without sending anything...
        for _ in range(10):
            raw = Raw.local(d)
            try:
                r3 = raw.response()
                assert r3.status == 503
                assert r3.getheader("connection") == "close"
                body = r3.body  # type: ignore[attr-defined]
                assert b"Too many connections" in body
                assert raw.at_eof()
            finally:
                raw.close()
        # ...and a client sending its request reads the same.
        c4 = d.local()
        try:
            r4 = request(c4, "GET", f"/images/{t['uuid']}")
            assert r4.status == 503
            r4.read()
        finally:
            c4.close()

        # The transfer goes on to its last byte.
        received += r.read()
        assert received == data
    finally:
        busy.close()
        for c in idle:
            c.close()

    # Once connections end, new ones are served again.
    def served() -> bool:
        c = d.local()
        try:
            r = request(c, "OPTIONS", "/images/*")
            r.read()
            return r.status == 200
        finally:
            c.close()
    assert wait_for(served, PATIENCE)
    assert metric(d, "ovirt_imageio_errors_total",
                  service="local.service", kind="rejected") >= 11


def test_flood_over_tls(small_daemon: Daemon) -> None:
    d = small_daemon
    held = [d.remote() for _ in range(4)]
    try:
        for c in held:
            r = request(c, "OPTIONS", "/images/*")
            r.read()
        # A burst larger than the threads answering it: every connection
        # gets a 503 or is closed, none hangs.
        answers: list[int | None] = []
        for _ in range(30):
            c = d.remote(timeout=PATIENCE)
            try:
                r = request(c, "OPTIONS", "/images/*")
                answers.append(r.status)
                r.read()
            except (OSError, http.client.HTTPException):
                answers.append(None)
            finally:
                c.close()
        assert set(answers) <= {503, None}
        assert 503 in answers
        # The held connections still work.
        for c in held:
            r = request(c, "OPTIONS", "/images/*")
            r.read()
            assert r.status == 200
    finally:
        for c in held:
            c.close()


# Ticket ids that are not uuids are accepted (like upstream) and work
# when percent-encoded in URLs.

ODD_IDS = [
    "a/b",
    "../x",
    "..",
    "тикет-✓",
    "%2F",
    "with space",
    "q?uery#frag",
    "*",
    "x" * 300,
]


@pytest.mark.parametrize("ticket_id", ODD_IDS)
def test_odd_ticket_ids(daemon: Daemon, make_ticket: MakeTicket,
                        ticket_id: str) -> None:
    data = os.urandom(4096)
    t = make_ticket(size=len(data), data=data)
    t = {k: v for k, v in t.items() if k != "_path"}
    t["uuid"] = ticket_id
    quoted = urllib.parse.quote(ticket_id, safe="")
    status, body = daemon.control("PUT", f"/tickets/{quoted}", t)
    assert status == 200, body
    try:
        conn = daemon.local()
        try:
            r = request(conn, "GET", f"/images/{quoted}")
            assert r.read() == data
            assert r.status == 200
        finally:
            conn.close()
        status, body = daemon.control("GET", f"/tickets/{quoted}")
        assert status == 200
        assert body["uuid"] == ticket_id
    finally:
        status, _ = daemon.control("DELETE", f"/tickets/{quoted}")
        assert status == 204
    assert daemon.control("GET", f"/tickets/{quoted}")[0] == 404
    # Logs show ids shortened, whatever they are made of.
    if len(ticket_id) > 8:
        assert ticket_id not in daemon.log()


def test_id_shadowed_by_sub_route(daemon: Daemon,
                                  make_ticket: MakeTicket) -> None:
    # "/images/a/extents" is the extents route of ticket "a", so a
    # ticket named "a/extents" cannot be downloaded: documented.
    t = {k: v for k, v in make_ticket(size=4096).items() if k != "_path"}
    t["uuid"] = "a/extents"
    assert daemon.control("PUT", "/tickets/a%2Fextents", t)[0] == 200
    conn = daemon.local()
    try:
        r = request(conn, "GET", "/images/a%2Fextents")
        r.read()
        assert r.status == 403
    finally:
        conn.close()
        daemon.control("DELETE", "/tickets/a%2Fextents")


# Path tricks: the data services have no route to the control API, and
# decoding a path never turns it into another route's path.

def tricky_paths(ticket_id: str) -> list[str]:
    return [
        f"/tickets/{ticket_id}",
        f"/images/..%2F..%2Ftickets/{ticket_id}",
        f"/images/../tickets/{ticket_id}",
        f"/images/%2e%2e/%2e%2e/tickets/{ticket_id}",
        f"//tickets/{ticket_id}",
        f"/images/{ticket_id}/../../tickets/{ticket_id}",
        f"/images/%2Ftickets%2F{ticket_id}",
        f"http://localhost/tickets/{ticket_id}",
        "/tickets/",
        "/config/",
        "/metrics",
    ]


@pytest.mark.parametrize("service", ["local", "remote"])
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_path_tricks_never_reach_control(
        daemon: Daemon, ticket: dict[str, Any], service: str,
        method: str) -> None:
    for path in tricky_paths(ticket["uuid"]):
        c = Raw.local(daemon) if service == "local" else Raw.remote(daemon)
        try:
            body = json.dumps({"timeout": 0}).encode()
            c.send(head(method, path, f"Content-Length: {len(body)}")
                   + body)
            r = c.response(method)
            assert r.status in (400, 403, 404, 405), (path, r.status)
        finally:
            c.close()
    info = daemon.ticket(ticket["uuid"])
    assert not info["canceled"]
    assert info["timeout"] == 300


def test_control_service_has_no_images(daemon: Daemon,
                                       ticket: dict[str, Any]) -> None:
    status, _ = daemon.control("GET", f"/images/{ticket['uuid']}")
    assert status == 404


def test_unknown_ticket_is_403_for_random_uuid(daemon: Daemon) -> None:
    conn = daemon.local()
    try:
        r = request(conn, "GET", f"/images/{uuid.uuid4()}")
        r.read()
        assert r.status == 403
    finally:
        conn.close()
