# SPDX-License-Identifier: GPL-2.0-or-later
"""
Streamed extents answers: HTTP/1.1 requests get the JSON chunked, a
piece at a time, over TCP, TLS and the unix socket, with exactly the
bytes of the whole answer an HTTP/1.0 request gets with its length; an
NBD failure before the first extent still gets a status, and one after
the head a broken answer (no last chunk), never a JSON that parses.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ovirt_imageio.backends.nbd import EXTENTS_IN_FLIGHT, EXTENTS_STEP
from ovirt_imageio.http.chunked import ChunkedDecoder
from ovirt_imageio.tools import qemu_img, qemu_nbd
from ovirt_imageio.util.extents import PIECE

from support.daemon_util import Daemon, request, running
from support.nbd_util import NBDKit

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# One 64 KiB cluster of data every 128 KiB: 2 extents per 128 KiB, some
# 70 bytes of JSON each, so the map is several pieces.
CLUSTER = 64 * KiB
CLUSTERS = 1200
SIZE = CLUSTERS * 2 * CLUSTER

Serve = Callable[..., qemu_nbd.Server]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon serving plain HTTP on TCP (the default daemon is TLS)."""
    with running(tmp_path_factory.mktemp("plain"), tls=False) as d:
        yield d


def fragmented(path: str) -> str:
    qemu_img.create(path, "qcow2", size=SIZE)
    commands = "".join(f"write -P 1 {i * 2 * CLUSTER} 64k\n"
                       for i in range(CLUSTERS))
    subprocess.run(["qemu-io", "-f", "qcow2", path], input=commands.encode(),
                   check=True, stdout=subprocess.DEVNULL)
    return path


@pytest.fixture
def image(tmp_path: Any) -> str:
    return fragmented(str(tmp_path / "fragmented.qcow2"))


def add_ticket(d: Daemon, url: str, size: int) -> str:
    ticket = {"uuid": str(uuid.uuid4()), "size": size, "url": url,
              "timeout": 300, "ops": ["read"]}
    d.add_ticket(ticket)
    return str(ticket["uuid"])


def connect(d: Daemon, transport: str) -> http.client.HTTPConnection:
    return d.local() if transport == "unix" else d.remote()


def get_chunked(d: Daemon, path: str) -> bytes:
    """GET path over HTTP/1.1; check it succeeded as a chunked
    response and return the body."""
    conn = d.remote()
    try:
        resp = request(conn, "GET", path)
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.getheader("transfer-encoding") == "chunked"
    return body


def get_http10(d: Daemon, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET over HTTP/1.0 on plain TCP: the answer built whole."""
    with socket.create_connection(("localhost", d.port)) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def read_chunked(s: socket.socket) -> tuple[bytes, list[bytes]]:
    """Read one chunked answer: its head and the payload of each chunk."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        assert got, "closed before the end of the head"
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    decoder = ChunkedDecoder()
    chunks: list[bytes] = []
    buf = rest
    while not decoder.done:
        if not buf:
            buf = s.recv(65536)
            assert buf, "closed before the last chunk"
        if decoder.chunk_left:
            n = min(len(buf), decoder.chunk_left)
            chunks[-1] += buf[:n]
            decoder.consume(n)
            buf = buf[n:]
        else:
            used = decoder.feed(buf)
            buf = buf[used:]
            if decoder.chunk_left:
                # A chunk began.
                chunks.append(b"")
    assert buf == b"", "bytes after the answer"
    return head, chunks


@pytest.mark.parametrize("transport", ["tcp", "tls", "unix"])
def test_streamed_equals_whole(daemon: Daemon, plain: Daemon, serve: Serve,
                               image: str, transport: str) -> None:
    d = plain if transport == "tcp" else daemon
    server = serve(image, "qcow2", read_only=True)
    tid = add_ticket(d, server.url, SIZE)
    conn = connect(d, transport)
    try:
        resp = request(conn, "GET", f"/images/{tid}/extents")
        body = resp.read()
        assert resp.status == 200
        assert resp.getheader("transfer-encoding") == "chunked"
        assert resp.getheader("content-length") is None
        assert resp.getheader("content-type") == "application/json"
        # The connection serves the next request after a chunked answer.
        resp = request(conn, "GET", f"/images/{tid}/extents?context=zero")
        assert resp.read() == body
    finally:
        conn.close()
    items = json.loads(body)
    assert len(items) == 2 * CLUSTERS
    assert items[0] == {"start": 0, "length": CLUSTER, "zero": False,
                        "hole": False}
    assert items[1] == {"start": CLUSTER, "length": CLUSTER, "zero": True,
                        "hole": True}
    # Byte for byte what json.dumps gives, as the unstreamed answer was.
    assert body == json.dumps(items).encode() + b"\n"
    assert len(body) > 2 * PIECE, "the answer should take several pieces"

    # HTTP/1.0 cannot read chunked: the same bytes, whole, with a length.
    whole = plain if d is plain else None
    if whole is None:
        tid = add_ticket(plain, server.url, SIZE)
        whole = plain
    status, headers, old = get_http10(whole, f"/images/{tid}/extents")
    assert status == 200
    assert headers["content-length"] == str(len(old))
    assert "transfer-encoding" not in headers
    assert old == body


def test_chunks(plain: Daemon, serve: Serve, image: str) -> None:
    server = serve(image, "qcow2", read_only=True)
    tid = add_ticket(plain, server.url, SIZE)
    with socket.create_connection(("localhost", plain.port)) as s:
        for context in ("zero", "zero"):
            s.sendall(f"GET /images/{tid}/extents?context={context} "
                      f"HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            head, chunks = read_chunked(s)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nTransfer-Encoding: chunked" in head
            # The first chunk leaves with the first extent.
            assert chunks[0] == (b'[{"start": 0, "length": 65536, '
                                 b'"zero": false, "hole": false}')
            # Then pieces of PIECE characters or a little more, the last
            # one with the closing bracket and the line end.
            for piece in chunks[1:-2]:
                assert PIECE <= len(piece) < PIECE + 100
            assert chunks[-1] == b"\n"
            assert chunks[-2].endswith(b"]")
            assert len(json.loads(b"".join(chunks))) == 2 * CLUSTERS


@pytest.mark.parametrize("window", [(0, 0), (SIZE, 1), (5, 10),
                                    (CLUSTER - 1, 2 * CLUSTER + 2),
                                    (3 * MiB, SIZE)])
def test_windows(plain: Daemon, serve: Serve, image: str,
                 window: tuple[int, int]) -> None:
    # Windows stream too, empty ones included, as their whole answers.
    server = serve(image, "qcow2", read_only=True)
    tid = add_ticket(plain, server.url, SIZE)
    start, length = window
    path = f"/images/{tid}/extents?start={start}&length={length}"
    body = get_chunked(plain, path)
    status, _, old = get_http10(plain, path)
    assert status == 200
    assert body == old
    items = json.loads(body)
    end = min(SIZE, start + length)
    assert sum(e["length"] for e in items) == end - start
    if items:
        assert items[0]["start"] == start


def test_file_and_written(plain: Daemon,
                          make_ticket: Callable[..., dict[str, Any]]
                          ) -> None:
    # The file backend and the ledger's context stream the same way.
    ticket = make_ticket(size=4 * MiB)
    with open(ticket["_path"], "r+b") as f:
        for offset in range(0, 4 * MiB, 256 * KiB):
            f.seek(offset)
            f.write(b"x" * 4096)
    ticket.pop("_path")
    plain.add_ticket(ticket)
    for context in ("zero", "written"):
        path = f"/images/{ticket['uuid']}/extents?context={context}"
        body = get_chunked(plain, path)
        items = json.loads(body)
        assert body == json.dumps(items).encode() + b"\n"
        assert get_http10(plain, path)[2] == body
        assert sum(e["length"] for e in items) == 4 * MiB
    assert items == [{"start": 0, "length": 4 * MiB, "written": False}]


# Failures. nbdkit's data plugin gives a first extent at once; its delay
# filter holds every block status 200 ms before the error filter sees it,
# so the steps sent after the head fail once the trigger file exists:
# the image has twice as many steps as the scan sends at first.

BIG = 2 * EXTENTS_IN_FLIGHT * EXTENTS_STEP // GiB * GiB


@pytest.fixture
def failing(nbdkit: Callable[..., NBDKit], tmp_path: Any
            ) -> tuple[NBDKit, str]:
    trigger = str(tmp_path / "fail")
    data = " ".join(f"@{i * GiB} 1" for i in range(0, 64, 4))
    server = nbdkit("--filter=delay", "--filter=error", "data",
                    f"data={data}", f"size={BIG}", "delay-extents=200ms",
                    "error-extents=EIO", "error-extents-rate=1",
                    f"error-extents-file={trigger}")
    return server, trigger


def test_failure_before_head(plain: Daemon, failing: tuple[NBDKit, str]
                             ) -> None:
    server, trigger = failing
    tid = add_ticket(plain, server.url, BIG)
    open(trigger, "w").close()
    conn = plain.remote()
    try:
        resp = request(conn, "GET", f"/images/{tid}/extents")
        body = resp.read()
    finally:
        conn.close()
    assert resp.status >= 500
    assert resp.getheader("transfer-encoding") is None
    assert b"block status" in body


def test_failure_after_head(plain: Daemon, failing: tuple[NBDKit, str]
                            ) -> None:
    server, trigger = failing
    tid = add_ticket(plain, server.url, BIG)
    conn = plain.remote()
    try:
        resp = request(conn, "GET", f"/images/{tid}/extents")
        assert resp.status == 200
        assert resp.getheader("transfer-encoding") == "chunked"
        # The head came with the first extent; the steps still to come
        # fail.
        open(trigger, "w").close()
        with pytest.raises(http.client.IncompleteRead) as e:
            resp.read()
    finally:
        conn.close()
    partial = e.value.partial
    assert partial.startswith(b'[{"start": 0, "length": ')
    with pytest.raises(ValueError):
        json.loads(partial)
    assert "NBD block status failed" in plain.log()


def test_failure_after_head_raw(plain: Daemon, failing: tuple[NBDKit, str]
                                ) -> None:
    # On the wire: the connection closes without the last chunk.
    server, trigger = failing
    tid = add_ticket(plain, server.url, BIG)
    with socket.create_connection(("localhost", plain.port)) as s:
        s.sendall(f"GET /images/{tid}/extents HTTP/1.1\r\n"
                  f"Host: localhost\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            got = s.recv(65536)
            assert got
            data += got
        open(trigger, "w").close()
        while got := s.recv(65536):
            data += got
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not data.endswith(b"0\r\n\r\n")
    assert os.path.exists(trigger)
