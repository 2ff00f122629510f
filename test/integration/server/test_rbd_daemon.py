# SPDX-License-Identifier: GPL-2.0-or-later
"""
rbd tickets through the real daemon and the client library, against the
private Ceph cluster of the test session: uploads and downloads in both
formats, a proxy in front, incremental backup from snapshots, checksums,
and failures (missing images, the OSD killed in the middle of a
transfer).

Expectations come from qemu-img (compare, map) on images exported with
the rbd tool, never from our own reads.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio import client
from ovirt_imageio.backends.base import RemoteError
from ovirt_imageio.backends.http_connection import ConnectionFailed
from ovirt_imageio.client import _imageio
from ovirt_imageio.tools import qemu_img, qemu_nbd

from support import ceph
from support.daemon_util import (
    PROXY_CONF,
    Daemon,
    put_chunked,
    request,
    running,
)
from support.rbd_util import (
    CA,
    OP_TIMEOUT,
    RBD_CONF,
    SIZE,
    add_ticket,
    export,
    make_image,
    qemu_io,
    ticket_id,
)

KiB = 1024
MiB = 1024**2
OBJECT = 4 * MiB
# The operation timeout of the daemon stopped with the cluster down.
STOP_TIMEOUT = 2

Image = Callable[..., str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("rbd-daemon"),
                 extra_conf=RBD_CONF) as d:
        yield d


# Round trips.

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload(server: Daemon, ceph_cluster: ceph.Cluster,
                rbd_image: Image, tmp_path: Any, fmt: str) -> None:
    src = make_image(str(tmp_path / f"src.{fmt}"), fmt)
    name = rbd_image(SIZE)
    url = add_ticket(server, ceph_cluster.url(name), sparse=True)
    client.upload(src, url, CA, verify=True)
    out = export(ceph_cluster, name, str(tmp_path / "out.raw"))
    assert qemu_img.compare(src, out)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_download(server: Daemon, ceph_cluster: ceph.Cluster,
                  rbd_image: Image, tmp_path: Any, fmt: str) -> None:
    name = rbd_image(SIZE)
    qemu_io(ceph_cluster.url(name), "raw", "write -P 0x44 0 1M",
            "write -P 0x55 9M 3M")
    url = add_ticket(server, ceph_cluster.url(name), ops=("read",))
    out = str(tmp_path / f"out.{fmt}")
    client.download(url, out, CA, fmt=fmt, verify=True)
    expected = export(ceph_cluster, name, str(tmp_path / "expected.raw"))
    assert qemu_img.compare(expected, out)
    if fmt == "qcow2":
        # Holes of the image stay holes in the download.
        data = sum(e["length"] for e in qemu_img.map(out) if e["data"])
        assert data == 4 * MiB


def test_chunked_upload(server: Daemon, ceph_cluster: ceph.Cluster,
                        rbd_image: Image, tmp_path: Any) -> None:
    # Uploads to rbd tickets receive into bytearray buffers (the rbd
    # backend's bytearray_buffers), also through the chunked receive loop:
    # pieces across the 8 MiB buffers, and a last partial one.
    name = rbd_image(SIZE)
    url = add_ticket(server, ceph_cluster.url(name))
    rnd = random.Random(11)
    pieces = [rnd.randbytes(n) for n in (1, 4096, 3 * MiB, 7, 6 * MiB, 99)]
    conn = server.remote()
    try:
        put_chunked(conn, f"/images/{ticket_id(url)}", pieces)
    finally:
        conn.close()
    data = b"".join(pieces)
    out = export(ceph_cluster, name, str(tmp_path / "out.raw"))
    with open(out, "rb") as f:
        assert f.read(len(data)) == data


def test_checksum(server: Daemon, ceph_cluster: ceph.Cluster,
                  rbd_image: Image, tmp_path: Any) -> None:
    name = rbd_image(SIZE)
    qemu_io(ceph_cluster.url(name), "raw", "write -P 0x66 3M 5M")
    url = add_ticket(server, ceph_cluster.url(name), ops=("read",))
    remote = _imageio.remote_checksum(url, CA, True)
    local = export(ceph_cluster, name, str(tmp_path / "local.raw"))
    assert remote == client.checksum(local)


def test_through_proxy(server: Daemon, ceph_cluster: ceph.Cluster,
                       rbd_image: Image, tmp_path: Any) -> None:
    with running(tmp_path / "proxy", extra_conf=PROXY_CONF) as proxy:
        src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
        name = rbd_image(SIZE)
        host_url = add_ticket(server, ceph_cluster.url(name), sparse=True)
        proxy_url = add_ticket(proxy, host_url)
        client.upload(src, proxy_url, CA)
        out = str(tmp_path / "out.qcow2")
        client.download(proxy_url, out, CA)
    assert qemu_img.compare(src, out)


def test_qemu_nbd_rbd_path(server: Daemon, ceph_cluster: ceph.Cluster,
                           rbd_image: Image, tmp_path: Any) -> None:
    # The other way to serve an RBD image: qemu-nbd with qemu's rbd
    # driver, and an nbd ticket.
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    name = rbd_image(SIZE)
    sock = str(tmp_path / "nbd.sock")
    with qemu_nbd.Server(ceph_cluster.url(name), "raw", sock,
                         cache="none") as nbd:
        url = add_ticket(server, nbd.url, sparse=True)
        client.upload(src, url, CA)
        out = str(tmp_path / "out.raw")
        client.download(url, out, CA, fmt="raw")
    assert qemu_img.compare(src, out)
    assert qemu_img.compare(src, export(ceph_cluster, name,
                                        str(tmp_path / "exported.raw")))


def test_incremental_backup(server: Daemon, ceph_cluster: ceph.Cluster,
                            rbd_image: Image, tmp_path: Any) -> None:
    name = rbd_image(SIZE)
    head = ceph_cluster.url(name)
    qemu_io(head, "raw", "write -P 0x11 0 8M")
    ceph_cluster.rbd("snap", "create", f"{name}@b1")

    full = str(tmp_path / "full.qcow2")
    url = add_ticket(server, ceph_cluster.url(name, "b1"), ops=("read",))
    client.download(url, full, CA)

    # The guest writes data and discards, then the next backup.
    qemu_io(head, "raw", "write -P 0x22 1M 512k", "discard 4M 4M",
            "write -P 0x33 12M 1M")
    ceph_cluster.rbd("snap", "create", f"{name}@b2")
    incr = str(tmp_path / "incr.qcow2")
    url = add_ticket(server, ceph_cluster.url(name, "b2", from_snap="b1"),
                     ops=("read",), dirty=True)
    client.download(url, incr, CA, incremental=True, backing_file=full,
                    backing_format="qcow2")

    expected = export(ceph_cluster, f"{name}@b2",
                      str(tmp_path / "b2.raw"))
    assert qemu_img.compare(expected, incr)
    # Only the changes moved: 512 KiB in object 0 (librbd reports from the
    # write to the end of the object's data), the discarded object and the
    # new 1 MiB.
    top = sum(e["length"] for e in qemu_img.map(incr)
              if e.get("depth") == 0 and e["present"])
    assert top <= 4 * MiB + 4 * MiB + MiB


def test_dirty_ticket_needs_from_snap(server: Daemon,
                                      ceph_cluster: ceph.Cluster) -> None:
    ticket = {"uuid": str(uuid.uuid4()), "size": SIZE, "timeout": 300,
              "url": ceph_cluster.url("disk"), "ops": ["read"],
              "dirty": True}
    status, body = server.control("PUT", f"/tickets/{ticket['uuid']}",
                                  ticket)
    assert status == 400
    assert "from-snap" in str(body)


# Failures.

def test_missing_image_named(server: Daemon,
                             ceph_cluster: ceph.Cluster) -> None:
    url = add_ticket(server, ceph_cluster.url("no-such-image"))
    conn = server.remote()
    try:
        r = request(conn, "GET", f"/images/{ticket_id(url)}/extents")
        body = r.read().decode()
    finally:
        conn.close()
    assert r.status == 500
    assert "RBD image rbd/no-such-image not found" in body


def test_no_secrets_in_log(server: Daemon, ceph_cluster: ceph.Cluster,
                           rbd_image: Image) -> None:
    secret = "QVFCc2VjcmV0a2V5"
    ticket = {"uuid": str(uuid.uuid4()), "size": SIZE, "timeout": 300,
              "url": f"rbd:rbd/{rbd_image(SIZE)}:key={secret}",
              "ops": ["read"]}
    status, body = server.control("PUT", f"/tickets/{ticket['uuid']}",
                                  ticket)
    assert status == 400
    assert secret not in str(body)
    assert secret not in server.log()


def test_osd_killed_mid_transfer(server: Daemon, ceph_cluster: ceph.Cluster,
                                 rbd_image: Image, tmp_path: Any) -> None:
    size = 256 * MiB
    name = rbd_image(size)
    qemu_io(ceph_cluster.url(name), "raw", f"write -P 0x77 0 {size}")
    url = add_ticket(server, ceph_cluster.url(name), size=size,
                     ops=("read",))
    other = tmp_path / "other.raw"
    other.write_bytes(b"x" * MiB)
    other_url = add_ticket(server, f"file://{other}", size=MiB,
                           ops=("read",))

    conn = server.remote(timeout=60)
    try:
        r = request(conn, "GET", f"/images/{ticket_id(url)}")
        assert r.status == 200
        assert r.read(MiB) == b"\x77" * MiB
        ceph_cluster.kill_osd()
        try:
            check_osd_gone(server, r, size, url, other_url)
        finally:
            ceph_cluster.start_osd()
    finally:
        conn.close()

    # Once the cluster is back, the same ticket works again.
    c4 = server.remote(timeout=60)
    try:
        r4 = request(c4, "GET", f"/images/{ticket_id(url)}",
                     headers={"Range": f"bytes={200 * MiB}-"
                                       f"{201 * MiB - 1}"})
        assert r4.status == 206
        assert r4.read() == b"\x77" * MiB
    finally:
        c4.close()


def check_osd_gone(server: Daemon, r: http.client.HTTPResponse, size: int,
                   url: str, other_url: str) -> None:
    start = time.monotonic()
    # The daemon cannot change the status any more: it ends the response
    # early, within the operation timeout.
    received = MiB
    while chunk := r.read(MiB):
        received += len(chunk)
    elapsed = time.monotonic() - start
    assert received < size
    # Slack for the buffers in flight and a loaded machine.
    assert elapsed < OP_TIMEOUT * 3

    # The daemon serves other tickets meanwhile.
    c2 = server.remote()
    try:
        r2 = request(c2, "GET", f"/images/{ticket_id(other_url)}")
        assert r2.read() == b"x" * MiB
    finally:
        c2.close()

    # A new request on the dead cluster: 502 with the reason, in time.
    c3 = server.remote(timeout=60)
    try:
        start = time.monotonic()
        r3 = request(c3, "GET", f"/images/{ticket_id(url)}",
                     headers={"Range": f"bytes={200 * MiB}-"
                                       f"{201 * MiB - 1}"})
        body = r3.read().decode()
        elapsed = time.monotonic() - start
    finally:
        c3.close()
    assert r3.status == 502
    assert "Ceph cluster did not answer" in body
    assert elapsed < OP_TIMEOUT * 3


class KillOnFirstBytes:
    """
    Client progress that kills the OSD when the first bytes arrive, in
    the client's copy thread: the rest of the image is still on the OSD.
    """

    def __init__(self, cluster: ceph.Cluster) -> None:
        self.size: int | None = None
        self.phase: str | None = None
        self._cluster = cluster
        self._lock = threading.Lock()
        self.killed = 0.0

    def update(self, n: int) -> None:
        with self._lock:
            if not self.killed:
                self._cluster.kill_osd()
                self.killed = time.monotonic()


def test_osd_killed_during_client_download(
        server: Daemon, ceph_cluster: ceph.Cluster, rbd_image: Image,
        tmp_path: Any) -> None:
    """
    One OSD outage (each costs the OSD's restart and peering): the
    client's download fails within the operation timeout, the daemon
    goes on serving other tickets, and a daemon with a write in flight
    to the dead cluster stops within the timeout too.
    """
    # The client reports progress per request of up to 128 MiB: an image
    # of 8 such requests leaves most of them on the OSD after the first.
    # The last 4 KiB of each object make the whole object data (librbd's
    # extents), with little to write.
    size = 1024 * MiB
    name = rbd_image(size)
    qemu_io(ceph_cluster.url(name), "raw", *(
        f"write -P 0x78 {off - 4 * KiB} 4k"
        for off in range(OBJECT, size + 1, OBJECT)))
    url = add_ticket(server, ceph_cluster.url(name), size=size,
                     ops=("read",))
    other = tmp_path / "other.raw"
    other.write_bytes(b"y" * MiB)
    other_url = add_ticket(server, f"file://{other}", size=MiB,
                           ops=("read",))
    out = tmp_path / "out.raw"
    progress = KillOnFirstBytes(ceph_cluster)
    with StoppingDaemon(ceph_cluster, tmp_path / "stopping") as stopping:
        try:
            # Within the operation timeout (slack for a loaded machine),
            # the client fails on the first request to fail: one sent
            # after the kill gets the daemon's 502 with the reason; one
            # whose response had started can only be ended early.
            with pytest.raises((RemoteError, ConnectionFailed)) as e:
                client.download(url, str(out), CA, fmt="raw",
                                progress=progress)
            elapsed = time.monotonic() - progress.killed
            assert progress.killed
            assert elapsed < OP_TIMEOUT * 3
            if isinstance(e.value, RemoteError):
                assert e.value.status == 502
                assert (f"Ceph cluster did not answer for rbd/{name} in "
                        "time") in str(e.value)
            else:
                assert "closed the connection after" in str(e.value)
            # The daemon's log has the reason, naming the image.
            assert (f"Ceph cluster did not answer for rbd/{name} in time"
                    in server.log())
            # A failed download leaves no partial image behind.
            assert not out.exists()
            # The daemon serves other tickets with the cluster down.
            copy = tmp_path / "copy.raw"
            client.download(other_url, str(copy), CA, fmt="raw")
            assert copy.read_bytes() == b"y" * MiB
            stopping.stop_with_write_in_flight()
        finally:
            ceph_cluster.start_osd()


class StoppingDaemon:
    """
    A daemon of its own with an rbd image open, to stop while the
    cluster is down.
    """

    def __init__(self, cluster: ceph.Cluster, path: Any) -> None:
        # Not removed after the test: the daemon cannot unwatch the image
        # with the OSD down, and the watch lingers for the OSD's watch
        # timeout (30 s). The session's cluster goes away at the end.
        self.name = f"stopped-{uuid.uuid4().hex[:8]}"
        cluster.create_image(self.name, SIZE)
        # Shorter timeouts than the module's daemon: stopping waits for a
        # few of them (the write in flight, then releasing the lock).
        self.daemon = Daemon(path, extra_conf=RBD_CONF.replace(
            f"op_timeout = {OP_TIMEOUT}", f"op_timeout = {STOP_TIMEOUT}"))
        self.url = ""
        self.conn: http.client.HTTPConnection | None = None
        self.cluster = cluster

    def __enter__(self) -> StoppingDaemon:
        self.daemon.start()
        url = add_ticket(self.daemon, self.cluster.url(self.name))
        self.url = f"/images/{ticket_id(url)}"
        self.conn = self.daemon.remote(timeout=60)
        # The connection's backend holds the image open.
        r = request(self.conn, "GET", self.url,
                    headers={"Range": "bytes=0-4095"})
        assert r.read() == bytes(4096)
        return self

    def stop_with_write_in_flight(self) -> None:
        assert self.conn is not None
        # The PUT's data goes to librbd, which waits for an OSD that is
        # gone.
        self.conn.putrequest("PUT", self.url)
        self.conn.putheader("Content-Length", str(MiB))
        self.conn.endheaders()
        self.conn.send(b"z" * MiB)
        start = time.monotonic()
        rc = self.daemon.stop()
        elapsed = time.monotonic() - start
        # A clean exit bounded by the operation timeout, not the kill
        # after the test helper's 30 s wait.
        assert rc == 0
        assert elapsed < STOP_TIMEOUT * 8

    def __exit__(self, *exc: Any) -> None:
        if self.conn is not None:
            self.conn.close()
        self.daemon.stop()
