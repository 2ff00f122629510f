# SPDX-License-Identifier: GPL-2.0-or-later
"""
nbd tickets through the real daemon: qemu-nbd serves the image on a unix
socket, clients talk HTTP to the daemon (local unix socket, and TLS where
the transport matters little).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import subprocess
import threading
import uuid
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.tools import qemu_img, qemu_nbd

from support.daemon_util import Daemon, request

KiB = 1024
MiB = 1024**2
CLUSTER = 64 * KiB

Serve = Callable[..., qemu_nbd.Server]


def nbd_ticket(daemon: Daemon, server: qemu_nbd.Server, size: int,
               **kw: Any) -> str:
    ticket = {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "url": server.url,
        "timeout": 300,
        "ops": ["read", "write"],
    }
    ticket.update(kw)
    daemon.add_ticket(ticket)
    return str(ticket["uuid"])


def file_ticket(daemon: Daemon, path: Any, size: int) -> str:
    ticket = {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "url": f"file://{path}",
        "timeout": 300,
        "ops": ["read"],
    }
    daemon.add_ticket(ticket)
    return str(ticket["uuid"])


def qemu_io(path: Any, fmt: str, *commands: str) -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd.extend(["-c", c])
    cmd.append(str(path))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def get_json(conn: http.client.HTTPConnection, path: str
             ) -> tuple[int, Any]:
    r = request(conn, "GET", path)
    body = r.read()
    if r.getheader("content-type", "").startswith("application/json"):
        return r.status, json.loads(body)
    return r.status, body.decode()


def put(conn: http.client.HTTPConnection, ticket_id: str, offset: int,
        data: bytes, flush: bool = False) -> None:
    r = request(conn, "PUT",
                f"/images/{ticket_id}?flush={'y' if flush else 'n'}",
                body=data, headers={
                    "Content-Range":
                        f"bytes {offset}-{offset + len(data) - 1}/*"})
    body = r.read()
    assert r.status == 200, body


def patch(conn: http.client.HTTPConnection, ticket_id: str,
          msg: dict[str, Any]) -> None:
    r = request(conn, "PATCH", f"/images/{ticket_id}",
                body=json.dumps(msg))
    body = r.read()
    assert r.status == 200, body


def get(conn: http.client.HTTPConnection, ticket_id: str,
        start: int | None = None, end: int | None = None) -> bytes:
    headers = {}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    r = request(conn, "GET", f"/images/{ticket_id}", headers=headers)
    body = r.read()
    assert r.status in (200, 206), body
    return body


def blkhash(data: bytes, block_size: int = 4 * MiB) -> str:
    """Independent implementation of the checksum algorithm (blake2b)."""
    outer = hashlib.blake2b(digest_size=32)
    for i in range(0, len(data), block_size):
        block = data[i:i + block_size]
        outer.update(hashlib.blake2b(block, digest_size=32).digest())
    return outer.hexdigest()


@pytest.fixture
def conn(daemon: Daemon) -> Iterator[http.client.HTTPConnection]:
    c = daemon.local()
    yield c
    c.close()


# OPTIONS

def test_options(daemon: Daemon, conn: http.client.HTTPConnection,
                 tmp_path: Any, serve: Serve) -> None:
    image = tmp_path / "image.raw"
    qemu_img.create(str(image), "raw", size=MiB)
    ticket_id = nbd_ticket(daemon, serve(image, "raw"), MiB)
    r = request(conn, "OPTIONS", f"/images/{ticket_id}")
    body = json.loads(r.read())
    assert r.status == 200
    assert body["features"] == [
        "checksum", "extents", "flush", "written", "zero"]
    assert body["max_readers"] == 8
    assert body["max_writers"] == 8


# Data round trips.

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_put_get_round_trip(daemon: Daemon, conn: http.client.HTTPConnection,
                            tmp_path: Any, serve: Serve, fmt: str) -> None:
    size = 2 * MiB
    image = tmp_path / f"image.{fmt}"
    qemu_img.create(str(image), fmt, size=size)
    server = serve(image, fmt)
    ticket_id = nbd_ticket(daemon, server, size)
    model = bytearray(size)
    rnd = random.Random(fmt)
    for offset, length in [(0, 1), (1, 4095), (100_000, 300_001),
                           (size - 7, 7), (MiB - 1, 2)]:
        data = rnd.randbytes(length)
        put(conn, ticket_id, offset, data)
        model[offset:offset + length] = data
    patch(conn, ticket_id, {"op": "flush"})

    assert get(conn, ticket_id) == model
    assert get(conn, ticket_id, 99_999, 400_002) == model[99_999:400_002]

    # The image itself has the data (independent reader, which needs
    # qemu-nbd's lock on the image).
    conn.close()
    server.stop()
    expected = tmp_path / "expected.raw"
    expected.write_bytes(model)
    assert qemu_img.compare(str(image), str(expected), fmt_a=fmt,
                            fmt_b="raw")


@pytest.mark.parametrize("sparse", [False, True])
def test_patch_zero(daemon: Daemon, conn: http.client.HTTPConnection,
                    tmp_path: Any, serve: Serve, sparse: bool) -> None:
    size = 4 * MiB
    image = tmp_path / "image.qcow2"
    qemu_img.create(str(image), "qcow2", size=size)
    qemu_io(image, "qcow2", f"write -P 0x55 0 {size}")
    server = serve(image, "qcow2")
    ticket_id = nbd_ticket(daemon, server, size, sparse=sparse)

    patch(conn, ticket_id, {"op": "zero", "offset": MiB, "size": 2 * MiB,
                            "flush": True})
    patch(conn, ticket_id, {"op": "zero", "offset": 10, "size": 20})
    expected = bytearray(b"\x55" * size)
    expected[MiB:3 * MiB] = bytes(2 * MiB)
    expected[10:30] = bytes(20)
    assert get(conn, ticket_id) == expected

    conn.close()
    server.stop()
    zeroed = [m for m in qemu_img.map(str(image)) if m["zero"]]
    assert [(m["start"], m["length"]) for m in zeroed] == [(MiB, 2 * MiB)]
    # Sparse tickets deallocate: no host offset left.
    assert ("offset" in zeroed[0]) == (not sparse)


# Extents.

def test_extents_zero(daemon: Daemon, conn: http.client.HTTPConnection,
                      tmp_path: Any, serve: Serve) -> None:
    image = tmp_path / "image.qcow2"
    qemu_img.create(str(image), "qcow2", size=4 * MiB)
    qemu_io(image, "qcow2", "write -P 0x11 0 1M", "write -z 2M 128k")
    ticket_id = nbd_ticket(daemon, serve(image, "qcow2", read_only=True),
                           4 * MiB, ops=["read"])
    status, extents = get_json(conn, f"/images/{ticket_id}/extents")
    assert status == 200
    assert extents == [
        {"start": 0, "length": MiB, "zero": False, "hole": False},
        {"start": MiB, "length": MiB, "zero": True, "hole": True},
        {"start": 2 * MiB, "length": 128 * KiB, "zero": True,
         "hole": False},
        {"start": 2 * MiB + 128 * KiB, "length": 2 * MiB - 128 * KiB,
         "zero": True, "hole": True},
    ]


def make_dirty_image(tmp_path: Any) -> str:
    """A qcow2 with data written before, and after, adding bitmap b1."""
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=4 * MiB)
    qemu_io(image, "qcow2", "write -P 0x11 0 1M")
    qemu_img.bitmap_add(image, "b1", granularity=CLUSTER)
    # qemu-io loads the persistent bitmap and records these writes.
    qemu_io(image, "qcow2", "write -P 0x22 2M 64k", "write -z 3M 128k")
    return image


def test_extents_dirty(daemon: Daemon, conn: http.client.HTTPConnection,
                       tmp_path: Any, serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", read_only=True, bitmap="b1")
    ticket_id = nbd_ticket(daemon, server, 4 * MiB, ops=["read"],
                           dirty=True)
    status, extents = get_json(conn,
                               f"/images/{ticket_id}/extents?context=dirty")
    assert status == 200
    assert extents == [
        {"start": 0, "length": MiB, "dirty": False, "zero": False},
        {"start": MiB, "length": MiB, "dirty": False, "zero": True},
        {"start": 2 * MiB, "length": CLUSTER, "dirty": True,
         "zero": False},
        {"start": 2 * MiB + CLUSTER, "length": MiB - CLUSTER,
         "dirty": False, "zero": True},
        {"start": 3 * MiB, "length": 2 * CLUSTER, "dirty": True,
         "zero": True},
        {"start": 3 * MiB + 2 * CLUSTER, "length": MiB - 2 * CLUSTER,
         "dirty": False, "zero": True},
    ]
    # The zero context works on a dirty ticket too.
    status, extents = get_json(conn, f"/images/{ticket_id}/extents")
    assert status == 200
    assert extents[0] == {"start": 0, "length": MiB, "zero": False,
                          "hole": False}


def test_extents_dirty_ticket_not_dirty(
        daemon: Daemon, conn: http.client.HTTPConnection, tmp_path: Any,
        serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", read_only=True, bitmap="b1")
    ticket_id = nbd_ticket(daemon, server, 4 * MiB, ops=["read"])
    status, body = get_json(conn,
                            f"/images/{ticket_id}/extents?context=dirty")
    assert status == 404
    assert "does not support dirty extents" in body


def test_extents_dirty_export_without_bitmap(
        daemon: Daemon, conn: http.client.HTTPConnection, tmp_path: Any,
        serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", read_only=True)
    ticket_id = nbd_ticket(daemon, server, 4 * MiB, ops=["read"],
                           dirty=True)
    status, body = get_json(conn,
                            f"/images/{ticket_id}/extents?context=dirty")
    assert status == 404
    assert "dirty bitmap" in body
    # The connection is still usable.
    status, _ = get_json(conn, f"/images/{ticket_id}/extents")
    assert status == 200


# Checksum.

def test_checksum_file_and_nbd(daemon: Daemon,
                               conn: http.client.HTTPConnection,
                               tmp_path: Any, serve: Serve) -> None:
    # Data, holes and a short last block.
    size = 9 * MiB + 12345
    raw = tmp_path / "image.raw"
    rnd = random.Random(7)
    with open(raw, "wb") as f:
        f.truncate(size)
        for offset in (0, 4 * MiB - 100, 8 * MiB + 5000):
            f.seek(offset)
            f.write(rnd.randbytes(300_000))
    data = raw.read_bytes()
    expected = blkhash(data)

    qcow2 = tmp_path / "image.qcow2"
    qemu_img.convert(str(raw), str(qcow2), "raw", "qcow2")
    tickets = {
        "nbd-raw": nbd_ticket(daemon, serve(raw, "raw", read_only=True),
                              size, ops=["read"]),
        "nbd-qcow2": nbd_ticket(daemon,
                                serve(qcow2, "qcow2", read_only=True),
                                size, ops=["read"]),
        "file": file_ticket(daemon, raw, size),
    }
    for name, ticket_id in tickets.items():
        status, body = get_json(conn, f"/images/{ticket_id}/checksum")
        assert status == 200, (name, body)
        assert body == {"algorithm": "blake2b", "block_size": 4 * MiB,
                        "checksum": expected}, name


# Concurrency.

def test_parallel_writers(daemon: Daemon, tmp_path: Any,
                          serve: Serve) -> None:
    writers = 8
    chunk = 256 * KiB
    # qemu-nbd with cache=none pads a raw file to 512 bytes; an aligned
    # size keeps the file comparable byte for byte.
    per_writer = MiB + 3 * 512
    size = writers * per_writer
    image = tmp_path / "image.raw"
    qemu_img.create(str(image), "raw", size=size)
    # "transferred" is reported for single-op tickets only.
    ticket_id = nbd_ticket(daemon, serve(image, "raw", shared=writers),
                           size, ops=["write"])
    data = random.Random(8).randbytes(size)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        c = daemon.local()
        try:
            start = n * per_writer
            end = start + per_writer
            for offset in range(start, end, chunk):
                put(c, ticket_id, offset, data[offset:min(offset + chunk,
                                                          end)])
            patch(c, ticket_id, {"op": "flush"})
        except BaseException as e:
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=write, args=(n,))
               for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    assert image.read_bytes() == data
    assert daemon.ticket(ticket_id)["transferred"] == size


# qemu-nbd dying under the daemon.

def daemon_still_serves(daemon: Daemon, ticket_id: str,
                        expected: bytes) -> None:
    c = daemon.local()
    try:
        r = request(c, "OPTIONS", "/images/*")
        r.read()
        assert r.status == 200
        assert get(c, ticket_id) == expected
    finally:
        c.close()


def killable_setup(daemon: Daemon, tmp_path: Any, serve: Serve
                   ) -> tuple[qemu_nbd.Server, str, str, int]:
    """An nbd ticket whose server a test kills, and a file ticket that
    must keep working: (server, nbd ticket, file ticket, size)."""
    size = 64 * MiB
    image = tmp_path / "image.raw"
    qemu_img.create(str(image), "raw", size=size)
    server = serve(image, "raw")
    ticket_id = nbd_ticket(daemon, server, size)
    other = tmp_path / "other.raw"
    other.write_bytes(b"other" * 1000)
    other_id = file_ticket(daemon, other, 5000)
    return server, ticket_id, other_id, size


def test_qemu_nbd_killed_mid_get(daemon: Daemon, tmp_path: Any,
                                 serve: Serve) -> None:
    server, ticket_id, other_id, size = killable_setup(
        daemon, tmp_path, serve)

    c = daemon.local(timeout=30)
    try:
        r = request(c, "GET", f"/images/{ticket_id}")
        assert r.status == 200
        received = len(r.read(MiB))
        server.kill()
        # The daemon cannot finish the body: it closes the connection.
        with pytest.raises((http.client.IncompleteRead, OSError)):
            while True:
                block = r.read(MiB)
                if not block:
                    raise http.client.IncompleteRead(b"")
                received += len(block)
        assert received < size
    finally:
        c.close()

    daemon_still_serves(daemon, other_id, b"other" * 1000)


def test_qemu_nbd_killed_mid_put(daemon: Daemon, tmp_path: Any,
                                 serve: Serve) -> None:
    server, ticket_id, other_id, size = killable_setup(
        daemon, tmp_path, serve)

    c = daemon.local(timeout=30)
    try:
        c.putrequest("PUT", f"/images/{ticket_id}")
        c.putheader("Content-Length", str(size))
        c.endheaders()
        block = b"x" * MiB
        c.send(block)
        server.kill()
        status = None
        try:
            for _ in range(size // MiB - 1):
                c.send(block)
            status = c.getresponse().status
        except OSError:
            # The daemon closed the connection without reading the body.
            pass
        if status is not None:
            assert status >= 500
    finally:
        c.close()

    daemon_still_serves(daemon, other_id, b"other" * 1000)
