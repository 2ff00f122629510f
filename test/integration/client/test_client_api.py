# SPDX-License-Identifier: GPL-2.0-or-later
"""
The client library against a real daemon on loopback: round trips with
format conversion, sparseness and backing chains, over TLS and over the
daemon's unix socket, incremental backup, checksums, and failures.

Every test runs with a private temporary directory for the library's
qemu-nbd sockets; after the test it must be empty and no qemu-nbd may be
left running (fixture ``no_leftovers``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Any, Iterator

import pytest

from ovirt_imageio import client
from ovirt_imageio.backends import base
from ovirt_imageio.backends import http as http_backend
from ovirt_imageio.client import _api, _imageio
from ovirt_imageio.tools import qemu_img, qemu_nbd
from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent

from support import daemon_util
from support.daemon_util import PKI, Daemon, free_port, running

KiB = 1024
MiB = 1024**2
SIZE = 8 * MiB
CA = os.path.join(PKI, "ca.pem")

# Daemon configurations: "tls" has no local service, so the client must
# stay on TCP+TLS; "unix" advertises its local socket and the client
# moves to it.
CONFIGS = {
    "tls": "[local]\nenable = false\n",
    "unix": "",
}


# Helpers shared with test_client_tool.py.

def qemu_io(path: str, fmt: str, *commands: str) -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args.extend(["-c", c])
    args.append(path)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def make_image(path: str, fmt: str, size: int = SIZE,
               backing: str | None = None) -> str:
    """
    An image with data, a zeroed range and holes:

        0-1M data (0x11), 2M-3M zero, 5M-6M data (0x22), rest hole.
    """
    if backing is None:
        qemu_img.create(path, fmt, size=size)
    else:
        qemu_img.create(path, fmt, backing=backing, backing_fmt="qcow2")
    qemu_io(path, fmt, "write -P 0x11 0 1M", "write -z 2M 1M",
            "write -P 0x22 5M 1M")
    return path


def data_bytes(path: str, fmt: str) -> int:
    """Bytes qemu-img map reports as data in the top image."""
    return sum(e["length"] for e in qemu_img.map(path, fmt)
               if e["data"] and e.get("depth", 0) == 0)


def add_ticket(daemon: Daemon, url: str, size: int = SIZE,
               ops: tuple[str, ...] = ("read", "write"), **kw: Any) -> str:
    """daemon_util.add_ticket, SIZE bytes unless told."""
    return daemon_util.add_ticket(daemon, url, size, ops, **kw)


def disk(tmp_path: Any, size: int = SIZE, name: str = "disk.raw") -> str:
    """A zeroed raw file for a file ticket."""
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def qemu_nbd_processes(marker: str) -> list[int]:
    """Pids of qemu-nbd processes whose command line contains marker."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if "qemu-nbd" in cmdline and marker in cmdline:
            pids.append(int(pid))
    return pids


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """
    Point the library's temporary files at a private directory (short,
    for unix socket paths) and check nothing is left there afterwards.
    """
    tmp = tempfile.mkdtemp(prefix="ct-")
    monkeypatch.setattr(tempfile, "tempdir", tmp)
    try:
        yield tmp
        assert os.listdir(tmp) == []
        assert qemu_nbd_processes(tmp) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp(request.param),
                 extra_conf=CONFIGS[request.param]) as d:
        yield d


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start qemu-nbd servers for nbd tickets; stopped after the test."""
    sock_dir = tempfile.mkdtemp(prefix="cn-")
    servers: list[qemu_nbd.Server] = []

    def start(image: str, fmt: str, **kw: Any) -> qemu_nbd.Server:
        sock = os.path.join(sock_dir, f"{len(servers)}.sock")
        s = qemu_nbd.Server(image, fmt, sock, **kw)
        s.start()
        servers.append(s)
        return s

    try:
        yield start
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


# Transports.

def test_transport(server: Daemon, tmp_path: Any) -> None:
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    with http_backend.open(url, "r", ca_file=CA) as b:
        local = isinstance(b.server_address, str)
    assert local == (server.config["local"]["enable"] is True)


# Round trips.

@pytest.mark.parametrize("src_fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("dst_fmt", ["raw", "qcow2"])
def test_round_trip(server: Daemon, tmp_path: Any, src_fmt: str,
                    dst_fmt: str) -> None:
    src = make_image(str(tmp_path / f"src.{src_fmt}"), src_fmt)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    client.upload(src, url, CA)
    assert qemu_img.compare(src, target, src_fmt, "raw")

    out = str(tmp_path / f"out.{dst_fmt}")
    client.download(url, out, CA, fmt=dst_fmt)
    assert qemu_img.info(out)["format"] == dst_fmt
    assert qemu_img.compare(src, out, src_fmt, dst_fmt)
    # Zeros did not become allocated data in the new image.
    assert data_bytes(out, dst_fmt) <= 2 * MiB


def test_upload_progress(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    url = add_ticket(server, f"file://{disk(tmp_path)}")

    class Progress:
        size: int | None = None
        done = 0

        def update(self, n: int) -> None:
            self.done += n

    p = Progress()
    client.upload(src, url, CA, progress=p, max_workers=2)
    assert p.size == SIZE and p.done == SIZE


def test_upload_backing_chain(server: Daemon, tmp_path: Any) -> None:
    base_img = str(tmp_path / "base.qcow2")
    qemu_img.create(base_img, "qcow2", size=SIZE)
    qemu_io(base_img, "qcow2", "write -P 0x33 0 8M")
    top = make_image(str(tmp_path / "top.qcow2"), "qcow2", backing=base_img)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    client.upload(top, url, CA)
    assert qemu_img.compare(top, target, "qcow2", "raw")


def test_upload_shallow(server: Daemon, tmp_path: Any) -> None:
    """Without the backing chain only the top layer moves; holes are
    left alone, so the target's copy of the base shows through."""
    base_img = str(tmp_path / "base.qcow2")
    qemu_img.create(base_img, "qcow2", size=SIZE)
    qemu_io(base_img, "qcow2", "write -P 0x33 0 8M")
    top = make_image(str(tmp_path / "top.qcow2"), "qcow2", backing=base_img)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    client.upload(base_img, url, CA)
    client.upload(top, url, CA, backing_chain=False)
    assert qemu_img.compare(top, target, "qcow2", "raw")


def test_upload_disk_is_zero(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    client.upload(src, url, CA, disk_is_zero=True)
    assert qemu_img.compare(src, target, "qcow2", "raw")


def test_download_with_backing_file(server: Daemon, tmp_path: Any) -> None:
    """Zeros of the source hide the backing file's data."""
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{src}", ops=("read",))
    backing = str(tmp_path / "backing.qcow2")
    qemu_img.create(backing, "qcow2", size=SIZE)
    qemu_io(backing, "qcow2", "write -P 0x44 0 8M")
    out = str(tmp_path / "out.qcow2")

    client.download(url, out, CA, backing_file="backing.qcow2")
    info = qemu_img.info(out)
    assert info["backing-filename"] == "backing.qcow2"
    assert info["backing-filename-format"] == "qcow2"
    assert qemu_img.compare(src, out, "raw", "qcow2")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_ova_member(server: Daemon, tmp_path: Any, fmt: str) -> None:
    src = make_image(str(tmp_path / f"disk.{fmt}"), fmt)
    with open(tmp_path / "note.txt", "w") as f:
        f.write("not an image\n")
    ova = str(tmp_path / "vm.ova")
    member = f"disk.{fmt}"
    with tarfile.open(ova, "w") as tar:
        tar.add(str(tmp_path / "note.txt"), arcname="note.txt")
        tar.add(src, arcname=member)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    info = client.info(ova, member=member)
    assert info["format"] == fmt
    assert info["virtual-size"] == SIZE
    assert info["member-size"] == os.path.getsize(src)
    measured = client.measure(ova, "qcow2", member=member)
    assert measured["fully-allocated"] == \
        client.measure(src, "qcow2")["fully-allocated"]
    client.upload(ova, url, CA, member=member)
    assert qemu_img.compare(src, target, fmt, "raw")
    assert client.checksum(ova, member=member) == client.checksum(src)


def test_upload_ova_missing_member(tmp_path: Any) -> None:
    ova = str(tmp_path / "vm.ova")
    with tarfile.open(ova, "w"):
        pass
    with pytest.raises(ValueError, match="No member"):
        client.info(ova, member="disk.qcow2")


def test_proxy_url_fallback(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    ticket_id = url.rsplit("/", 1)[1]
    unreachable = f"https://localhost:{free_port()}/images/{ticket_id}"
    client.upload(src, unreachable, CA, proxy_url=url)
    assert qemu_img.compare(src, target, "raw", "raw")


# Checksums.

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_checksum_equals_server(server: Daemon, tmp_path: Any,
                                fmt: str) -> None:
    src = make_image(str(tmp_path / f"src.{fmt}"), fmt)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    client.upload(src, url, CA)
    for algorithm, block_size in [("blake2b", 4 * MiB), ("sha256", MiB)]:
        local = client.checksum(src, algorithm=algorithm,
                                block_size=block_size)
        remote = _imageio.remote_checksum(url, CA, True,
                                          algorithm=algorithm,
                                          block_size=block_size)
        assert local == remote


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_verified_round_trip(server: Daemon, tmp_path: Any,
                             fmt: str) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    client.upload(src, url, CA, verify=True)
    out = str(tmp_path / f"out.{fmt}")
    client.download(url, out, CA, fmt=fmt, verify=True)
    assert qemu_img.compare(src, out, "qcow2", fmt)


def test_verified_shallow_upload(server: Daemon, tmp_path: Any) -> None:
    # The top layer alone, holes left alone on a zeroed target: verify
    # compares the top layer read without its backing file, whose holes
    # take the zero digest although the copy skipped them.
    base_img = str(tmp_path / "base.qcow2")
    qemu_img.create(base_img, "qcow2", size=SIZE)
    qemu_io(base_img, "qcow2", "write -P 0x33 0 8M")
    top = make_image(str(tmp_path / "top.qcow2"), "qcow2", backing=base_img)
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    client.upload(top, url, CA, backing_chain=False, verify=True)
    # And it fails when the holes show something else on the target.
    client.upload(base_img, url, CA)
    with pytest.raises(client.VerificationError):
        client.upload(top, url, CA, backing_chain=False, verify=True)


def test_verify_detects_mismatch(server: Daemon, tmp_path: Any) -> None:
    # The target holds data past the end of the uploaded image, so the
    # server's image differs from the local one.
    src = make_image(str(tmp_path / "src.raw"), "raw")
    target = disk(tmp_path, size=2 * SIZE)
    with open(target, "r+b") as f:
        f.seek(SIZE + MiB)
        f.write(b"x" * MiB)
    url = add_ticket(server, f"file://{target}", size=2 * SIZE)
    with pytest.raises(client.VerificationError, match="mismatch"):
        client.upload(src, url, CA, verify=True)


@pytest.mark.parametrize("kw,message", [
    ({"algorithm": "nope"}, "Unsupported algorithm"),
    ({"block_size": 1000}, "Invalid block_size"),
])
def test_checksum_invalid(tmp_path: Any, kw: dict[str, Any],
                          message: str) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    with pytest.raises(ValueError, match=message):
        client.checksum(src, **kw)


def test_checksum_formats_equal(tmp_path: Any) -> None:
    raw = make_image(str(tmp_path / "src.raw"), "raw")
    qcow2 = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    result = client.checksum(qcow2)
    assert result["algorithm"] == "blake2b"
    assert result["block_size"] == 4 * MiB
    assert result == client.checksum(raw)
    assert result == client.checksum(raw, detect_zeroes=False)


# Inspecting local images.

def test_info_and_measure(tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    info = client.info(src)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == SIZE
    m = client.measure(src, "qcow2")
    assert 2 * MiB <= m["required"] < m["fully-allocated"]


def test_extents(tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    assert list(client.extents(src)) == [
        ZeroExtent(0, MiB, zero=False, hole=False),
        ZeroExtent(MiB, MiB, zero=True, hole=True),
        ZeroExtent(2 * MiB, MiB, zero=True, hole=False),
        ZeroExtent(3 * MiB, 2 * MiB, zero=True, hole=True),
        ZeroExtent(5 * MiB, MiB, zero=False, hole=False),
        ZeroExtent(6 * MiB, 2 * MiB, zero=True, hole=True),
    ]


def test_extents_bitmap(tmp_path: Any) -> None:
    src = str(tmp_path / "src.qcow2")
    qemu_img.create(src, "qcow2", size=SIZE)
    qemu_io(src, "qcow2", "write -P 0x11 0 1M")
    qemu_img.bitmap_add(src, "b1")
    qemu_io(src, "qcow2", "write -P 0x22 4M 1M", "write -z 6M 1M")
    assert list(client.extents(src, bitmap="b1")) == [
        DirtyExtent(0, MiB, dirty=False, zero=False),
        DirtyExtent(MiB, 3 * MiB, dirty=False, zero=True),
        DirtyExtent(4 * MiB, MiB, dirty=True, zero=False),
        DirtyExtent(5 * MiB, MiB, dirty=False, zero=True),
        DirtyExtent(6 * MiB, MiB, dirty=True, zero=True),
        DirtyExtent(7 * MiB, MiB, dirty=False, zero=True),
    ]


def test_extents_generator_closed_early(tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    gen = client.extents(src)
    assert next(gen).start == 0
    gen.close()
    # no_leftovers checks qemu-nbd is gone.


# Incremental backup.

def test_incremental_download(server: Daemon, tmp_path: Any,
                              serve: Any) -> None:
    disk_img = str(tmp_path / "vm.qcow2")
    qemu_img.create(disk_img, "qcow2", size=SIZE)
    qemu_io(disk_img, "qcow2", "write -P 0x11 0 4M")
    # The checkpoint: a bitmap recording writes from now on.
    qemu_img.bitmap_add(disk_img, "check1")

    # Full backup.
    full = str(tmp_path / "full.qcow2")
    nbd = serve(disk_img, "qcow2", read_only=True)
    url = add_ticket(server, nbd.url, ops=("read",))
    client.download(url, full, CA)
    nbd.stop()
    assert qemu_img.compare(disk_img, full)

    # The guest writes data and zeros, then an incremental backup.
    qemu_io(disk_img, "qcow2", "write -P 0x22 1M 512k", "write -z 3M 1M",
            "write -P 0x33 6M 1M")
    incr = str(tmp_path / "incr.qcow2")
    nbd = serve(disk_img, "qcow2", read_only=True, bitmap="check1")
    url = add_ticket(server, nbd.url, ops=("read",), dirty=True)
    client.download(url, incr, CA, incremental=True, backing_file=full,
                    backing_format="qcow2")
    nbd.stop()

    # The chain equals the source, and the new layer holds only the
    # changes.
    assert qemu_img.compare(disk_img, incr)
    allocated = [e for e in qemu_img.map(incr)
                 if e.get("depth") == 0 and e["present"]]
    assert sum(e["length"] for e in allocated) == 512 * KiB + 2 * MiB


def test_incremental_requires_qcow2(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="qcow2"):
        client.download("https://localhost/images/x", str(tmp_path / "o"),
                        CA, fmt="raw", incremental=True)


def test_incremental_without_dirty_ticket(server: Daemon,
                                          tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{src}", ops=("read",))
    out = str(tmp_path / "out.qcow2")
    with pytest.raises(base.UnsupportedContext):
        client.download(url, out, CA, incremental=True)
    assert not os.path.exists(out)


# Failures: a clean error, no qemu-nbd and no temporary files left.

def test_wrong_ca(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    # The server certificate is not a CA: nothing can be verified.
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        client.upload(src, url, os.path.join(PKI, "cert.pem"))


def test_insecure(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    client.upload(src, url, None, secure=False)
    assert qemu_img.compare(src, target, "raw", "raw")


def test_expired_ticket(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    ticket_id = url.rsplit("/", 1)[1]
    status, _ = server.control("PATCH", f"/tickets/{ticket_id}",
                               {"timeout": 0})
    assert status == 200
    with pytest.raises(base.RemoteError) as e:
        client.upload(src, url, CA)
    assert e.value.status == 403
    out = str(tmp_path / "out.raw")
    with pytest.raises(base.RemoteError):
        client.download(url, out, CA, fmt="raw")
    assert not os.path.exists(out)


def test_read_only_ticket_upload(server: Daemon, tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}", ops=("read",))
    with pytest.raises(base.RemoteError) as e:
        client.upload(src, url, CA)
    assert e.value.status == 403
    # Nothing was written.
    with open(target, "rb") as f:
        assert f.read() == bytes(SIZE)


def fragmented(path: str, fmt: str, chunks: int = 16) -> str:
    """An image of alternating 256 KiB data and hole ranges."""
    qemu_img.create(path, fmt, size=chunks * 512 * KiB)
    qemu_io(path, fmt, *[f"write -P {i + 1} {i * 512}k 256k"
                         for i in range(chunks)])
    return path


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_server_killed_mid_upload(tmp_path: Any, config: str) -> None:
    d = Daemon(tmp_path / "daemon", extra_conf=CONFIGS[config])
    d.start()
    try:
        src = fragmented(str(tmp_path / "src.qcow2"), "qcow2")
        size = qemu_img.info(src)["virtual-size"]
        url = add_ticket(d, f"file://{disk(tmp_path, size)}", size=size)

        class Killer:
            size = None

            def update(self, n: int) -> None:
                # After the first request the daemon dies.
                if d.proc is not None and d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()

        with pytest.raises(OSError):
            client.upload(src, url, CA, progress=Killer(), max_workers=1)
    finally:
        d.stop()


def test_server_killed_mid_download(tmp_path: Any) -> None:
    d = Daemon(tmp_path / "daemon")
    d.start()
    try:
        src = str(tmp_path / "src.raw")
        with open(src, "wb") as f:
            f.write(os.urandom(4 * MiB))
        url = add_ticket(d, f"file://{src}", size=4 * MiB, ops=("read",))
        out = str(tmp_path / "out.qcow2")

        class Killer:
            size = None

            def update(self, n: int) -> None:
                if d.proc is not None and d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()

        # Small buffer, but one request per extent: make the server's
        # single data extent take several requests.
        from ovirt_imageio.client import _io
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_io, "MAX_REQUEST", MiB)
            with pytest.raises(OSError):
                client.download(url, out, CA, progress=Killer(),
                                max_workers=1)
        # The partial image is removed.
        assert not os.path.exists(out)
    finally:
        d.stop()


def test_missing_source(tmp_path: Any) -> None:
    with pytest.raises(qemu_img.QemuImgError):
        client.upload(str(tmp_path / "missing.qcow2"),
                      "https://localhost:1/images/x", CA)


# Raw images without qemu-nbd (LocalImage direct_raw).

@pytest.fixture
def no_qemu_nbd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every qemu-nbd start fail."""
    fake = tmp_path / "qemu-nbd-broken"
    fake.write_text("#!/bin/sh\necho 'qemu-nbd must not run' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("QEMU_NBD", str(fake))


def test_raw_round_trip_without_qemu_nbd(server: Daemon, tmp_path: Any,
                                         no_qemu_nbd: None) -> None:
    # An odd size: the file backend's unaligned tail on both sides.
    size = 3 * MiB + 1234
    data = os.urandom(MiB) + b"\0" * MiB + os.urandom(MiB + 1234)
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.write(data)
    target = disk(tmp_path, size)
    url = add_ticket(server, f"file://{target}", size=size)

    client.upload(src, url, CA, verify=True)
    with open(target, "rb") as f:
        assert f.read() == data

    out = str(tmp_path / "out.raw")
    client.download(url, out, CA, fmt="raw", verify=True)
    with open(out, "rb") as f:
        assert f.read() == data
    assert client.checksum(out) == client.checksum(src)


def test_qcow2_still_needs_qemu_nbd(server: Daemon, tmp_path: Any,
                                    no_qemu_nbd: None) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    with pytest.raises(qemu_nbd.QemuNBDError, match="must not run"):
        client.upload(src, url, CA)


def test_raw_without_direct_io_uses_qemu_nbd(
        server: Daemon, tmp_path: Any, no_qemu_nbd: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # File systems without O_DIRECT need qemu-nbd's buffered I/O.
    from ovirt_imageio.client import _local
    monkeypatch.setattr(_local, "_can_direct_io", lambda path: False)
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    with pytest.raises(qemu_nbd.QemuNBDError, match="must not run"):
        client.upload(src, url, CA)


@pytest.mark.parametrize("chosen,deep,workers,expected", [
    # Deep: the same bytes in flight whatever the workers.
    (None, True, 1, 16 * MiB),
    (None, True, 2, 8 * MiB),
    (None, True, 4, 4 * MiB),
    (None, False, 1, client.BUFFER_SIZE),
    # A chosen size is kept.
    (2 * MiB, True, 1, 2 * MiB),
    (32 * MiB, False, 4, 32 * MiB),
])
def test_default_buffer_size(chosen: int | None, deep: bool, workers: int,
                             expected: int) -> None:
    assert _api._buffer_size(chosen, workers, deep=deep) == expected
