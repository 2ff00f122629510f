# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door of a real daemon, used by clients nobody here wrote:
nbdinfo, nbdcopy, qemu-img, qemu-io and libnbd's Python bindings, on
file tickets over the unix socket, plain TCP and TLS.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.nbd import wire

from support import nbd_messages as m
from support.daemon_util import PKI, Daemon

nbd = pytest.importorskip("nbd")

KiB = 1024
MiB = 1024**2
SIZE = 8 * MiB

NBD_CONF = """
    [nbd]
    enable = true
    host = localhost
    port = 0
    """


def make_image(path: Any) -> bytes:
    """An image of data runs and holes; return its bytes."""
    data = bytearray(SIZE)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in ((0, 1 * MiB), (3 * MiB, 64 * KiB),
                               (5 * MiB + 512, 1000), (SIZE - 4 * KiB,
                                                       4 * KiB)):
            chunk = os.urandom(length)
            f.seek(offset)
            f.write(chunk)
            data[offset:offset + length] = chunk
    return bytes(data)


def digest(path: Any) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nbd-daemon"), extra_conf=NBD_CONF,
               tls=False)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("nbd-tls-daemon"),
               extra_conf=NBD_CONF, tls=True)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def add_ticket(d: Daemon, path: Any, ops: tuple[str, ...] = ("read",),
               size: int = SIZE, **kw: Any) -> str:
    ticket = {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "url": f"file://{path}",
        "timeout": 300,
        "ops": list(ops),
    }
    ticket.update(kw)
    d.add_ticket(ticket)
    return str(ticket["uuid"])


def unix_url(d: Daemon, ticket_id: str) -> str:
    return f"nbd+unix:///{ticket_id}?socket={d.config['nbd']['socket']}"


def tcp_url(d: Daemon, ticket_id: str, scheme: str = "nbd") -> str:
    return f"{scheme}://localhost:{d.config['nbd']['port']}/{ticket_id}"


def run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (cmd, p.stderr)
    return p.stdout


def handle(url: str, contexts: tuple[str, ...] = (), **settings: Any
           ) -> Any:
    h = nbd.NBD()
    for context in contexts:
        h.add_meta_context(context)
    for name, value in settings.items():
        getattr(h, f"set_{name}")(value)
    h.connect_uri(url)
    return h


# nbdinfo


def test_nbdinfo(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    info = json.loads(run("nbdinfo", "--json", unix_url(daemon, tid)))
    export = info["exports"][0]
    assert export["export-size"] == SIZE
    assert export["is_read_only"] is True
    assert export["can_multi_conn"] is True
    assert export["block_size_minimum"] == 1
    assert export["block_size_maximum"] == 32 * MiB
    assert export["contexts"] == ["base:allocation",
                                  "qemu:allocation-depth"]


def test_nbdinfo_map(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    out = json.loads(run("nbdinfo", "--json", "--map",
                         unix_url(daemon, tid)))
    covered = 0
    data = []
    for ext in out:
        assert ext["offset"] == covered
        covered += ext["length"]
        if not ext["type"] & wire.STATE_ZERO:
            data.append((ext["offset"], ext["length"]))
    assert covered == SIZE
    # Every run of data written by make_image is reported as data (file
    # systems allocate whole blocks, so the runs may grow).
    for offset, length in ((0, MiB), (3 * MiB, 64 * KiB),
                           (SIZE - 4 * KiB, 4 * KiB)):
        assert any(o <= offset and offset + length <= o + n
                   for o, n in data), (offset, length, data)
    assert sum(n for _, n in data) < SIZE / 2


def test_allocation_depth(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    info = json.loads(run("nbdinfo", "--json", unix_url(daemon, tid)))
    assert info["exports"][0]["contexts"] == [
        "base:allocation", "qemu:allocation-depth"]
    out = json.loads(run("nbdinfo", "--json",
                         "--map=qemu:allocation-depth",
                         unix_url(daemon, tid)))
    # A file has no backing chain: all of it is the image's own layer,
    # holes included, as qemu-nbd --allocation-depth reports for a raw
    # file.
    assert [(e["offset"], e["length"], e["type"]) for e in out] == [
        (0, SIZE, 1)]


def test_list_reveals_nothing(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    out = run("nbdinfo", "--list", "--json", unix_url(daemon, tid))
    assert tid not in out
    assert json.loads(out)["exports"] == []


def test_http_options_name_the_door(daemon: Daemon, tmp_path: Any
                                    ) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    for target in ("*", tid):
        conn = daemon.local()
        try:
            conn.request("OPTIONS", f"/images/{target}")
            r = conn.getresponse()
            body = json.loads(r.read())
        finally:
            conn.close()
        assert r.status == 200
        assert body["nbd_socket"] == daemon.config["nbd"]["socket"]
        assert body["nbd_port"] == daemon.config["nbd"]["port"]


# nbdcopy


def test_nbdcopy_download(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    out = tmp_path / "out"
    run("nbdcopy", unix_url(daemon, tid), str(out))
    assert digest(out) == digest(img)
    status = daemon.ticket(tid)
    assert status["transferred"] > 0
    assert status["connections"] == 0


@pytest.mark.parametrize("connections", [1, 4])
def test_nbdcopy_upload(daemon: Daemon, tmp_path: Any,
                        connections: int) -> None:
    src = tmp_path / "src"
    make_image(src)
    dst = tmp_path / "dst"
    with open(dst, "wb") as f:
        f.write(b"\xff" * SIZE)
    tid = add_ticket(daemon, dst, ops=("write",))
    run("nbdcopy", "-C", str(connections), "--flush", str(src),
        unix_url(daemon, tid))
    assert digest(dst) == digest(src)
    assert daemon.ticket(tid)["transferred"] == SIZE


def test_nbdcopy_tcp_both_ways(daemon: Daemon, tmp_path: Any) -> None:
    src = tmp_path / "src"
    make_image(src)
    dst = tmp_path / "dst"
    dst.write_bytes(b"")
    tid = add_ticket(daemon, dst, ops=("write",))
    run("nbdcopy", "-C", "4", str(src), tcp_url(daemon, tid))
    out = tmp_path / "out"
    run("nbdcopy", tcp_url(daemon, tid), str(out))
    assert digest(dst) == digest(src) == digest(out)


# qemu-img and qemu-io


def test_qemu_img(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    url = unix_url(daemon, tid)
    info = json.loads(run("qemu-img", "info", "--output=json", url))
    assert info["virtual-size"] == SIZE
    out = tmp_path / "out.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", url, str(out))
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", url, str(out))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", url, str(img))


def test_qemu_img_convert_upload(daemon: Daemon, tmp_path: Any) -> None:
    src = tmp_path / "src"
    make_image(src)
    dst = tmp_path / "dst"
    dst.write_bytes(b"")
    tid = add_ticket(daemon, dst, ops=("write",))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src),
        unix_url(daemon, tid))
    assert digest(dst) == digest(src)


def test_qemu_io(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(bytes(SIZE))
    tid = add_ticket(daemon, img, ops=("write",))
    url = unix_url(daemon, tid)
    run("qemu-io", "-f", "raw", "-c", "write -P 0xab 4095 10000",
        "-c", "write -z 1M 1M", "-c", "flush", url)
    run("qemu-io", "-f", "raw", "-c", "read -P 0xab 4095 10000",
        "-c", "read -P 0 1M 1M", url)
    data = img.read_bytes()
    assert data[4095:14095] == b"\xab" * 10000
    assert data[:4095] == bytes(4095)
    assert data[14095:] == bytes(SIZE - 14095)


# libnbd


def test_libnbd_io(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(b"\x11" * SIZE)
    tid = add_ticket(daemon, img, ops=("write",), sparse=True)
    h = handle(unix_url(daemon, tid))
    try:
        assert h.get_size() == SIZE
        assert not h.is_read_only()
        h.pwrite(b"x" * 1000, 100, nbd.CMD_FLAG_FUA)
        assert h.pread(1200, 0) == b"\x11" * 100 + b"x" * 1000 + b"\x11" * 100
        h.zero(2 * MiB, MiB)
        h.trim(4 * MiB, MiB)
        h.flush()
        assert h.pread(MiB, 2 * MiB) == bytes(MiB)
        assert h.pread(MiB, 4 * MiB) == bytes(MiB)
        assert h.pread(10, SIZE - 10) == b"\x11" * 10
        h.cache(MiB, 0)
        assert daemon.ticket(tid)["connections"] == 1
    finally:
        h.shutdown()
    data = img.read_bytes()
    assert data[100:1100] == b"x" * 1000
    assert data[2 * MiB:3 * MiB] == bytes(MiB)


def test_libnbd_block_status(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    h = handle(unix_url(daemon, tid), (nbd.CONTEXT_BASE_ALLOCATION,))
    try:
        assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        found: list[tuple[str, list[int]]] = []

        def extent(name: str, offset: int, entries: list[int],
                   err: Any) -> int:
            found.append((name, entries))
            return 0

        # [2 MiB, 3 MiB) is a hole of the file: zero, and allocated as
        # far as a raw file can tell.
        h.block_status(MiB, 2 * MiB, extent)
        assert found == [(nbd.CONTEXT_BASE_ALLOCATION,
                          [MiB, wire.STATE_ZERO])]
        found.clear()
        h.block_status(SIZE, 0, extent, nbd.CMD_FLAG_REQ_ONE)
        assert len(found) == 1
        length, status = found[0][1]
        assert MiB <= length < 3 * MiB and status == 0
    finally:
        h.shutdown()


def test_libnbd_read_only(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    before = digest(img)
    tid = add_ticket(daemon, img)
    # Strict mode off: libnbd sends what it would otherwise refuse, and
    # the server must answer with the protocol's errors.
    h = handle(unix_url(daemon, tid), strict_mode=0)
    try:
        assert h.is_read_only()
        calls: list[Callable[[], object]] = [
            lambda: h.pwrite(b"x" * 512, 0),
            lambda: h.zero(512, 0),
            lambda: h.trim(512, 0)]
        for call in calls:
            with pytest.raises(nbd.Error) as e:
                call()
            assert e.value.errno == "EPERM"
        # Past the end, and empty: EINVAL, and the connection goes on.
        with pytest.raises(nbd.Error) as e:
            h.pread(512, SIZE)
        assert e.value.errno == "EINVAL"
        assert len(h.pread(512, SIZE - 512)) == 512
    finally:
        h.shutdown()
    assert digest(img) == before


def test_write_past_end(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    img.write_bytes(bytes(SIZE))
    tid = add_ticket(daemon, img, ops=("write",))
    h = handle(unix_url(daemon, tid), strict_mode=0)
    try:
        with pytest.raises(nbd.Error) as e:
            h.pwrite(b"y" * 1024, SIZE - 512)
        assert e.value.errno == "ENOSPC"
        # The refused data was skipped: the stream is still in step.
        h.pwrite(b"z" * 512, SIZE - 512)
        assert h.pread(512, SIZE - 512) == b"z" * 512
    finally:
        h.shutdown()
    assert os.path.getsize(img) == SIZE


def test_image_shrunk_under_the_connection(daemon: Daemon, tmp_path: Any
                                           ) -> None:
    # A read the queue takes (inside the file it saw) but that comes back
    # short runs again through the backend, whose short read is the
    # error answered; the connection goes on.
    img = tmp_path / "img"
    img.write_bytes(b"\x22" * SIZE)
    tid = add_ticket(daemon, img)
    h = handle(unix_url(daemon, tid))
    try:
        assert h.pread(4096, SIZE - 4096) == b"\x22" * 4096
        os.truncate(img, SIZE // 2)
        with pytest.raises(nbd.Error) as e:
            h.pread(MiB, SIZE - MiB)
        assert e.value.errno == "EIO"
        assert h.pread(4096, 0) == b"\x22" * 4096
    finally:
        h.shutdown()


# Authorization


def test_unknown_ticket(daemon: Daemon) -> None:
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(unix_url(daemon, str(uuid.uuid4())))


def test_expired_ticket(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    h = handle(unix_url(daemon, tid))
    try:
        status, _ = daemon.control("PATCH", f"/tickets/{tid}",
                                   {"timeout": 0})
        assert status == 200
        with pytest.raises(nbd.Error) as e:
            h.pread(512, 0)
        assert e.value.errno == "EPERM"
    finally:
        # The server closed the connection: nothing to shut down.
        del h
    with pytest.raises(nbd.Error):
        handle(unix_url(daemon, tid))


def raw_connect(path: str, ticket_id: str) -> socket.socket:
    """Handshake by hand with NBD_OPT_EXPORT_NAME; return the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    greeting = recv_exactly(sock, m.GREETING_SIZE)
    assert greeting[:8] == b"NBDMAGIC"
    sock.sendall(m.client_flags()
                 + m.option(wire.OPT_EXPORT_NAME, ticket_id.encode()))
    size, _ = struct.unpack(">QH", recv_exactly(sock, 10))
    assert size == SIZE
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def test_cancel_ends_idle_connection(daemon: Daemon, tmp_path: Any
                                     ) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    sock = raw_connect(daemon.config["nbd"]["socket"], tid)
    try:
        sock.sendall(m.request(wire.CMD_READ, 0, 512, handle=5))
        reply = recv_exactly(sock, 16 + 512)
        assert struct.unpack(">IIQ", reply[:16]) == (
            wire.SIMPLE_REPLY_MAGIC, 0, 5)
        assert daemon.ticket(tid)["connections"] == 1
        status, _ = daemon.control("DELETE", f"/tickets/{tid}")
        assert status == 204
        start = time.monotonic()
        sock.settimeout(1)
        assert sock.recv(1) == b""
        assert time.monotonic() - start < 1
    finally:
        sock.close()


def test_bad_request_magic_closes(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    sock = raw_connect(daemon.config["nbd"]["socket"], tid)
    try:
        sock.sendall(b"\0" * 28)
        assert sock.recv(1) == b""
    finally:
        sock.close()


def test_disc(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    sock = raw_connect(daemon.config["nbd"]["socket"], tid)
    try:
        sock.sendall(m.request(wire.CMD_DISC))
        assert sock.recv(1) == b""
    finally:
        sock.close()


# TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory in the layout GnuTLS clients (libnbd, qemu) want."""
    path = tmp_path_factory.mktemp("certs")
    shutil.copy(os.path.join(PKI, "ca.pem"), path / "ca-cert.pem")
    return str(path)


def test_tls_required_on_tcp(tls_daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(tls_daemon, img)
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(tcp_url(tls_daemon, tid))


def test_tls_nbdcopy_and_qemu_img(tls_daemon: Daemon, tmp_path: Any,
                                  certs: str) -> None:
    src = tmp_path / "src"
    make_image(src)
    dst = tmp_path / "dst"
    dst.write_bytes(b"")
    tid = add_ticket(tls_daemon, dst, ops=("write",))
    url = tcp_url(tls_daemon, tid, "nbds") + f"?tls-certificates={certs}"
    run("nbdcopy", "-C", "4", str(src), url)
    assert digest(dst) == digest(src)
    out = tmp_path / "out"
    run("nbdcopy", url, str(out))
    assert digest(out) == digest(src)
    port = tls_daemon.config["nbd"]["port"]
    opts = (f"driver=nbd,host=localhost,port={port},export={tid},"
            "tls-creds=tls0")
    obj = f"tls-creds-x509,id=tls0,dir={certs},endpoint=client"
    run("qemu-img", "compare", "--object", obj, "--image-opts", opts,
        f"driver=raw,file.driver=file,file.filename={src}")
    info = json.loads(run("qemu-img", "info", "--output=json", "--object",
                          obj, "--image-opts", opts))
    assert info["virtual-size"] == SIZE


def test_unix_socket_is_plain_with_tls(tls_daemon: Daemon, tmp_path: Any
                                       ) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(tls_daemon, img)
    out = tmp_path / "out"
    run("nbdcopy", unix_url(tls_daemon, tid), str(out))
    assert digest(out) == digest(img)


# Metrics and logs


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        # Label values may hold braces ("{export}"): compare whole series.
        series, _, value = line.rpartition(" ")
        if series == f"{name}{{{want}}}":
            return float(value)
    return 0.0


def test_metrics_and_log(daemon: Daemon, tmp_path: Any) -> None:
    img = tmp_path / "img"
    make_image(img)
    tid = add_ticket(daemon, img)
    _, before = daemon.control("GET", "/metrics")
    sock = raw_connect(daemon.config["nbd"]["socket"], tid)
    try:
        # A read, a read past the end (EINVAL), then goodbye.
        sock.sendall(m.request(wire.CMD_READ, 0, 4096)
                     + m.request(wire.CMD_READ, SIZE, 4096, handle=2)
                     + m.request(wire.CMD_DISC))
        recv_exactly(sock, 16 + 4096 + 16)
        assert sock.recv(1) == b""
    finally:
        sock.close()
    _, after = daemon.control("GET", "/metrics")
    service = "nbd.local.service"
    # NBD requests count with the HTTP ones: the command is the method,
    # the NBD error the status.
    for status in ("OK", "EINVAL"):
        labels = dict(service=service, method="READ", route="{export}",
                      status=status)
        assert (metric(after, "ovirt_imageio_requests_total", **labels)
                == metric(before, "ovirt_imageio_requests_total", **labels)
                + 1)
    assert (metric(after, "ovirt_imageio_request_duration_seconds_count",
                   service=service, route="{export}")
            == metric(before, "ovirt_imageio_request_duration_seconds_count",
                      service=service, route="{export}") + 2)
    assert (metric(after, "ovirt_imageio_connections_total",
                   service=service)
            == metric(before, "ovirt_imageio_connections_total",
                      service=service) + 1)
    assert (metric(after, "ovirt_imageio_backend_bytes_total",
                   backend="file", op="read")
            == metric(before, "ovirt_imageio_backend_bytes_total",
                      backend="file", op="read") + 4096)
    assert metric(after, "ovirt_imageio_open_connections",
                  service=service) == 0
    log = daemon.log()
    assert "[read 1 ops" in log
    # Ticket ids are secrets: never whole in the log.
    assert tid not in log
