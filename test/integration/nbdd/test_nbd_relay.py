# SPDX-License-Identifier: GPL-2.0-or-later
"""
nbd tickets through the NBD door: the daemon relays to qemu-nbd, and
exports the ticket's dirty bitmap for incremental backup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import socket
import subprocess
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.tools import qemu_img, qemu_nbd

from support import prometheus_text
from support.daemon_util import Daemon
from support.nbd_util import NBDKit

nbd = pytest.importorskip("nbd")

KiB = 1024
MiB = 1024**2
CLUSTER = 64 * KiB

Serve = Callable[..., qemu_nbd.Server]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nbd-relay"), tls=False,
               extra_conf="""
                   [nbd]
                   enable = true
                   port = -1
                   """)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def ticket(d: Daemon, server: qemu_nbd.Server, size: int, **kw: Any
           ) -> str:
    t = {"uuid": str(uuid.uuid4()), "size": size, "url": server.url,
         "timeout": 300, "ops": ["read"]}
    t.update(kw)
    d.add_ticket(t)
    return str(t["uuid"])


def url(d: Daemon, ticket_id: str) -> str:
    return f"nbd+unix:///{ticket_id}?socket={d.config['nbd']['socket']}"


def run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (cmd, p.stderr)
    return p.stdout


def qemu_io(path: str, fmt: str, *commands: str) -> None:
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    run(*cmd, path)


def sha256(path: Any) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_relay_download_and_upload(daemon: Daemon, tmp_path: Any,
                                   serve: Serve) -> None:
    src = str(tmp_path / "src.qcow2")
    qemu_img.create(src, "qcow2", size=8 * MiB)
    qemu_io(src, "qcow2", "write -P 0x55 0 1M", "write -P 0x66 5M 512k")
    tid = ticket(daemon, serve(src, "qcow2", read_only=True), 8 * MiB)
    out = tmp_path / "out.raw"
    run("nbdcopy", url(daemon, tid), str(out))
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", src, str(out))

    dst = str(tmp_path / "dst.qcow2")
    qemu_img.create(dst, "qcow2", size=8 * MiB)
    tid = ticket(daemon, serve(dst, "qcow2"), 8 * MiB, ops=["write"])
    run("nbdcopy", "-C", "4", "--flush", str(out), url(daemon, tid))
    # Back through the door, and in the file (qemu-nbd still serves it:
    # share its lock; the flush wrote its metadata).
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(out),
        url(daemon, tid))
    run("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", dst,
        str(out))


def test_dirty_bitmap(daemon: Daemon, tmp_path: Any, serve: Serve) -> None:
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=4 * MiB)
    qemu_io(image, "qcow2", "write -P 0x11 0 1M")
    qemu_img.bitmap_add(image, "b1", granularity=CLUSTER)
    # Recorded by the bitmap: written after it was added.
    qemu_io(image, "qcow2", "write -P 0x22 2M 64k", "write -P 0x33 3M 128k")
    server = serve(image, "qcow2", read_only=True, bitmap="b1")
    tid = ticket(daemon, server, 4 * MiB, dirty=True)
    info = json.loads(run("nbdinfo", "--json", url(daemon, tid)))
    assert info["exports"][0]["contexts"] == [
        "base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b1"]
    extents = json.loads(run("nbdinfo", "--json",
                             "--map=qemu:dirty-bitmap:b1",
                             url(daemon, tid)))
    dirty = [(e["offset"], e["length"]) for e in extents if e["type"] & 1]
    assert dirty == [(2 * MiB, CLUSTER), (3 * MiB, 2 * CLUSTER)]
    assert sum(e["length"] for e in extents) == 4 * MiB


def test_no_dirty_bitmap_without_dirty_ticket(daemon: Daemon,
                                              tmp_path: Any,
                                              serve: Serve) -> None:
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=MiB)
    qemu_img.bitmap_add(image, "b1", granularity=CLUSTER)
    server = serve(image, "qcow2", read_only=True, bitmap="b1")
    tid = ticket(daemon, server, MiB)
    info = json.loads(run("nbdinfo", "--json", url(daemon, tid)))
    assert info["exports"][0]["contexts"] == [
        "base:allocation", "qemu:allocation-depth"]


def depth_map(nbd_url: str) -> list[tuple[int, int, int]]:
    out = json.loads(run("nbdinfo", "--json",
                         "--map=qemu:allocation-depth", nbd_url))
    return [(e["offset"], e["length"], e["type"]) for e in out]


def test_allocation_depth(daemon: Daemon, tmp_path: Any,
                          serve: Serve) -> None:
    # A backing chain: data in the base, in the top, and absent ranges.
    base = str(tmp_path / "base.qcow2")
    qemu_img.create(base, "qcow2", size=4 * MiB)
    qemu_io(base, "qcow2", "write -P 0x11 0 64k")
    top = str(tmp_path / "top.qcow2")
    qemu_img.create(top, "qcow2", size=4 * MiB, backing=base,
                    backing_fmt="qcow2")
    qemu_io(top, "qcow2", "write -P 0x22 1M 64k")
    server = serve(top, "qcow2", read_only=True)
    tid = ticket(daemon, server, 4 * MiB)
    direct = depth_map(
        f"nbd+unix:///{server.export_name}?socket={server.sock_path}")
    # What qemu-nbd says itself: 2 for the backing file's data.
    assert direct == [(0, CLUSTER, 2), (CLUSTER, MiB - CLUSTER, 0),
                      (MiB, CLUSTER, 1), (MiB + CLUSTER,
                                          3 * MiB - CLUSTER, 0)]
    # Through the door absent ranges are the same; allocated ones are 1,
    # whatever their layer (see docs/nbd.md).
    assert depth_map(url(daemon, tid)) == [
        (start, length, min(depth, 1)) for start, length, depth in direct]


def greets(sock_path: str) -> bool:
    """Whether the NBD server at sock_path greets a new client now: a
    server at its connection limit leaves it in its backlog."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.settimeout(1)
        try:
            return s.recv(8) == b"NBDMAGIC"
        except TimeoutError:
            return False


def test_download_gives_back_its_second_connection(
        tmp_path: Any, serve: Serve) -> None:
    # A download spreads its reads over a second connection to the
    # server while the ticket has room (nbdd.slots); a client connecting
    # when the server is at the ticket's limit gets it back.
    d = Daemon(tmp_path / "daemon", tls=False, extra_conf="""
        [daemon]
        max_connections = 2
        [nbd]
        enable = true
        port = -1
        """)
    d.start()
    try:
        data = random.Random(7).randbytes(4 * MiB)
        image = tmp_path / "image.raw"
        image.write_bytes(data)
        server = serve(image, "raw", read_only=True, shared=2)
        tid = ticket(d, server, len(data))
        a = nbd.NBD()
        a.connect_uri(url(d, tid))
        assert a.pread(2 * MiB, 0) == data[:2 * MiB]
        # Both of the server's connections are the first client's.
        assert not greets(server.sock_path)
        b = nbd.NBD()
        b.connect_uri(url(d, tid))
        assert b.pread(2 * MiB, 2 * MiB) == data[2 * MiB:]
        assert a.pread(MiB, MiB) == data[MiB:2 * MiB]
        a.shutdown()
        b.shutdown()
        # Everything given back: the server greets again.
        assert greets(server.sock_path)
    finally:
        d.stop()


# Reads relayed in C (nbdd.relay): what clients see and what the daemon
# counts is what the Python path gives.


def total(text: str, name: str, **match: str) -> float:
    return sum(prometheus_text.select(prometheus_text.parse(text)[1], name,
                                      **match).values())


@pytest.mark.parametrize("structured", [True, False])
def test_relayed_reads_between_other_requests(
        daemon: Daemon, tmp_path: Any, serve: Serve,
        structured: bool) -> None:
    size = 8 * MiB
    data = random.Random(3).randbytes(size)
    image = tmp_path / "image.raw"
    image.write_bytes(data)
    tid = ticket(daemon, serve(image, "raw", read_only=True), size)
    _, before = daemon.control("GET", "/metrics")
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(url(daemon, tid))
    reads = {}
    try:
        # Many reads in flight at once, with a request of another kind
        # after every eighth (the relay loop hands those to the thread).
        for i, offset in enumerate(range(0, size, 256 * KiB)):
            buf = nbd.Buffer(256 * KiB)
            reads[offset] = (buf, h.aio_pread(buf, offset))
            if i % 8 == 7:
                h.aio_cache(4096, offset)
        while h.aio_in_flight():
            h.poll(-1)
        for offset, (buf, cookie) in reads.items():
            assert h.aio_command_completed(cookie)
            assert buf.to_bytearray() == data[offset:offset + 256 * KiB]
        # Out of range: the error the door answers everywhere.
        with pytest.raises(nbd.Error) as e:
            h.pread(512, size)
        assert e.value.errnum == errno.EINVAL
        assert daemon.ticket(tid)["transferred"] == size
    finally:
        h.shutdown()
    _, after = daemon.control("GET", "/metrics")
    labels = dict(service="nbd.local.service", method="READ",
                  route="{export}", status="OK")
    assert (total(after, "ovirt_imageio_requests_total", **labels)
            - total(before, "ovirt_imageio_requests_total", **labels)
            == len(reads))
    moved = dict(backend="nbd", op="read")
    assert (total(after, "ovirt_imageio_backend_bytes_total", **moved)
            - total(before, "ovirt_imageio_backend_bytes_total", **moved)
            == size)
    assert f"[read {len(reads)} ops" in daemon.log()


def test_relayed_reads_failing_in_the_server(
        daemon: Daemon, sock_dir: str) -> None:
    # Every read fails in nbdkit: the loop hands them back, and the
    # client gets the server's error as through the Python path.
    kit = NBDKit(sock_dir, "--filter=error", "pattern", f"size={MiB}",
                 "error-pread=EIO", "error-pread-rate=100%")
    try:
        tid = ticket(daemon, kit, MiB)  # type: ignore[arg-type]
        h = nbd.NBD()
        h.connect_uri(url(daemon, tid))
        try:
            cookies = [h.aio_pread(nbd.Buffer(64 * KiB), i * 64 * KiB)
                       for i in range(8)]
            while h.aio_in_flight():
                h.poll(-1)
            for cookie in cookies:
                with pytest.raises(nbd.Error) as e:
                    h.aio_command_completed(cookie)
                assert e.value.errnum == errno.EIO
            # The connection goes on.
            assert h.aio_is_ready()
        finally:
            h.shutdown()
    finally:
        kit.stop()


def test_cancel_ends_a_relayed_download(
        daemon: Daemon, tmp_path: Any, serve: Serve) -> None:
    size = 8 * MiB
    image = tmp_path / "image.raw"
    image.write_bytes(random.Random(5).randbytes(size))
    tid = ticket(daemon, serve(image, "raw", read_only=True), size)
    h = nbd.NBD()
    h.connect_uri(url(daemon, tid))
    try:
        h.pread(256 * KiB, 0)
        status, _ = daemon.control("DELETE", f"/tickets/{tid}")
        assert status == 204
        start = time.monotonic()
        # Reads until the door ends the connection.
        with pytest.raises(nbd.Error):
            while True:
                h.pread(256 * KiB, 0)
        assert time.monotonic() - start < 1
    finally:
        if h.aio_is_ready():
            h.shutdown()


def test_expired_ticket_ends_a_relayed_download(
        daemon: Daemon, tmp_path: Any, serve: Serve) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x5a" * MiB)
    tid = ticket(daemon, serve(image, "raw", read_only=True), MiB)
    h = nbd.NBD()
    h.connect_uri(url(daemon, tid))
    try:
        assert h.pread(64 * KiB, 0) == b"\x5a" * (64 * KiB)
        status, _ = daemon.control("PATCH", f"/tickets/{tid}",
                                   {"timeout": 0})
        assert status == 200
        with pytest.raises(nbd.Error) as e:
            h.pread(64 * KiB, 0)
        assert e.value.errno == "EPERM"
    finally:
        if h.aio_is_ready():
            h.shutdown()
