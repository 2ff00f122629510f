# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ovirt_imageio.backends.nbd against real NBD servers.

qemu-nbd serves raw and qcow2 images (with backing files and dirty
bitmaps); every expectation comes from an independent source: a model
bytearray, qemu-img map and compare, qemu-io writes, st_blocks. nbdkit
provides servers qemu-nbd cannot imitate (no WRITE_ZEROES, no block
status, no flush, a minimum block size, injected errors); those tests are
skipped without nbdkit.

Images written through qemu-nbd use cache=none, so allocation seen by
qemu-img map (SEEK_DATA on raw files) does not depend on page cache
writeback timing.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import shutil
import socket
import subprocess
import threading
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends import (
    Options,
    base,
    nbd_connect,
    nbd_url,
    open_url,
)
from ovirt_imageio.backends import nbd as nbd_backend
from ovirt_imageio.tools import qemu_img, qemu_nbd
from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent, merge

from support import unix_send_buffer
from support.nbd_util import NBDKit

KiB = 1024
MiB = 1024**2
GiB = 1024**3
CLUSTER = 64 * KiB

Serve = Callable[..., qemu_nbd.Server]

requires_nbdkit = pytest.mark.skipif(
    shutil.which("nbdkit") is None, reason="nbdkit is not installed")


# Fixtures and helpers.

def assert_image(tmp_path: Any, image: str, model: bytearray,
                 fmt: str = "raw") -> None:
    """An independent reader (qemu-img) finds model in image."""
    expected = tmp_path / "expected.raw"
    expected.write_bytes(model)
    assert qemu_img.compare(image, str(expected), fmt_a=fmt, fmt_b="raw")


def served_model(tmp_path: Any, serve: Serve, size: int, seed: int
                 ) -> tuple[str, qemu_nbd.Server, bytearray]:
    """An empty raw image of size served by qemu-nbd, and random bytes
    of that size to write into it."""
    image = create(tmp_path / "image.raw", "raw", size)
    return (image, serve(image, "raw"),
            bytearray(random.Random(seed).randbytes(size)))


def served_data(tmp_path: Any, serve: Serve, size: int, seed: int
                ) -> tuple[qemu_nbd.Server, bytearray]:
    """A raw image of random bytes of size served by qemu-nbd, and the
    bytes."""
    data = bytearray(random.Random(seed).randbytes(size))
    image = tmp_path / "image.raw"
    image.write_bytes(data)
    return serve(str(image), "raw"), data


def create(path: Any, fmt: str, size: int,
           writes: tuple[tuple[int, bytes], ...] = ()) -> str:
    """Create an image and write data with qemu-io (not our code)."""
    qemu_img.create(str(path), fmt, size=size)
    qemu_io(path, fmt, *(f"write -P {data[0]:#x} {off} {len(data)}"
                         for off, data in writes))
    return str(path)


def qemu_io(path: Any, fmt: str, *commands: str) -> None:
    if not commands:
        return
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd.extend(["-c", c])
    cmd.append(str(path))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_all(backend: nbd_backend.NBDBackend) -> bytes:
    buf = bytearray(backend.size())
    assert backend.readinto(0, memoryview(buf)) == len(buf)
    return bytes(buf)


def zero_extents(backend: base.Backend) -> list[tuple[int, int, bool, bool]]:
    return [(e.start, e.length, e.zero, e.hole)
            for e in backend.extents("zero") if isinstance(e, ZeroExtent)]


def map_extents(path: str, hole_from: str
                ) -> list[tuple[int, int, bool, bool]]:
    """
    The zero extents we expect from qemu-img map of the same image. hole
    is "not present" (allocation depth 0) for qcow2 exports; raw exports
    have no allocation depth and never report holes (hole_from "").
    """
    items = [
        ZeroExtent(m["start"], m["length"], zero=m["zero"],
                   hole=bool(hole_from) and not m[hole_from])
        for m in qemu_img.map(path, force_share=True)
    ]
    return [(e.start, e.length, e.zero, e.hole) for e in merge(items)]


# Reading and writing.

# (offset, length) of writes: unaligned, crossing clusters, at both ends.
WRITES = [
    (0, 1),
    (1, 4095),
    (4095, 2),
    (65535, 65538),
    (100_000, 3 * MiB + 7),
    (4 * MiB - 3, 3),
    (2 * MiB + 511, 513),
]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("concurrent", [False, True])
def test_round_trip(tmp_path: Any, serve: Serve, fmt: str,
                    concurrent: bool) -> None:
    size = 4 * MiB
    image = create(tmp_path / f"image.{fmt}", fmt, size)
    server = serve(image, fmt)
    model = bytearray(size)
    rnd = random.Random(fmt)

    with nbd_backend.open(server.url, "r+",
                          concurrent=concurrent) as backend:
        for offset, length in WRITES:
            data = rnd.randbytes(length)
            backend.write(offset, memoryview(data))
            model[offset:offset + length] = data
        backend.flush()

        assert read_all(backend) == model
        for offset, length in WRITES:
            buf = bytearray(length)
            assert backend.readinto(offset, memoryview(buf)) == length
            assert buf == model[offset:offset + length]

    # An independent reader agrees.
    server.stop()
    assert_image(tmp_path, image, model, fmt)


def test_unix_socket_send_buffer(tmp_path: Any, serve: Serve) -> None:
    # Writes to a local NBD server queue more than the kernel's default
    # before blocking (see net.sndbuf).
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    with open("/proc/sys/net/core/wmem_max") as f:
        wmem_max = int(f.read())
    with open("/proc/sys/net/core/wmem_default") as f:
        wmem_default = int(f.read())
    with nbd_backend.open(server.url, "r+") as backend:
        fd = backend._h.aio_get_fd()
        # A duplicate: closing it leaves the handle's descriptor alone.
        with socket.socket(fileno=os.dup(fd)) as sock:
            assert sock.family == socket.AF_UNIX
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert sndbuf == unix_send_buffer()
    if wmem_max > wmem_default:
        assert sndbuf > 2 * wmem_default


def test_read_into_buffer_types(tmp_path: Any, serve: Serve) -> None:
    data = random.Random(0).randbytes(MiB)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    server = serve(path, "raw")
    with nbd_backend.open(server.url, "r") as backend:
        # A slice of a bigger buffer: only the slice is written.
        buf = bytearray(b"x" * 100)
        assert backend.readinto(1000, memoryview(buf)[10:90]) == 80
        assert buf[:10] == b"x" * 10 and buf[90:] == b"x" * 10
        assert buf[10:90] == data[1000:1080]
        # Non-byte item formats are read as bytes.
        words = memoryview(bytearray(64)).cast("I")
        assert backend.readinto(8, words) == 64
        assert words.tobytes() == data[8:72]


@pytest.mark.parametrize("offset,length,expected", [
    (MiB - 10, 100, 10),
    (MiB - 1, 1, 1),
    (MiB, 10, 0),
    (MiB + 4096, 10, 0),
    (0, 2 * MiB, MiB),
])
def test_read_clipped_at_end(tmp_path: Any, serve: Serve, offset: int,
                             length: int, expected: int) -> None:
    data = random.Random(1).randbytes(MiB)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    server = serve(path, "raw")
    with nbd_backend.open(server.url, "r") as backend:
        buf = bytearray(length)
        assert backend.readinto(offset, memoryview(buf)) == expected
        assert buf[:expected] == data[offset:offset + expected]


@pytest.mark.parametrize("operation", ["write", "zero"])
def test_past_end(tmp_path: Any, serve: Serve, operation: str) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r+") as backend:
        with pytest.raises(OSError) as e:
            if operation == "write":
                backend.write(MiB - 1, memoryview(b"ab"))
            else:
                backend.zero(MiB - 1, 2)
        assert e.value.errno == errno.ENOSPC
        assert backend.size() == MiB


def test_large_write_split(tmp_path: Any, serve: Serve) -> None:
    # Larger than qemu-nbd's 32 MiB request limit and libnbd's 64 MiB.
    size = 70 * MiB
    image = create(tmp_path / "image.qcow2", "qcow2", size)
    server = serve(image, "qcow2")
    data = random.Random(2).randbytes(size - 1)
    with nbd_backend.open(server.url, "r+") as backend:
        backend.write(1, memoryview(data))
        buf = bytearray(size - 1)
        assert backend.readinto(1, memoryview(buf)) == size - 1
        assert buf == data


# Zero.

@pytest.mark.parametrize("sparse", [False, True])
def test_zero_raw(tmp_path: Any, serve: Serve, sparse: bool) -> None:
    size = 4 * MiB
    image = create(tmp_path / "image.raw", "raw", size,
                   writes=((0, b"\x55" * size),))
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r+", sparse=sparse) as backend:
        blocks = os.stat(image).st_blocks
        backend.zero(MiB, 2 * MiB)
        backend.flush()
        data = read_all(backend)
        assert data == b"\x55" * MiB + bytes(2 * MiB) + b"\x55" * MiB
        freed = (blocks - os.stat(image).st_blocks) * 512
        assert freed == (2 * MiB if sparse else 0)
        assert zero_extents(backend) == map_extents(image, "")


@pytest.mark.parametrize("sparse", [False, True])
def test_zero_qcow2(tmp_path: Any, serve: Serve, sparse: bool) -> None:
    size = 4 * MiB
    image = create(tmp_path / "image.qcow2", "qcow2", size,
                   writes=((0, b"\x55" * size),))
    server = serve(image, "qcow2")
    with nbd_backend.open(server.url, "r+", sparse=sparse) as backend:
        backend.zero(MiB, 2 * MiB)
        backend.flush()
        assert read_all(backend) == \
            b"\x55" * MiB + bytes(2 * MiB) + b"\x55" * MiB
        assert zero_extents(backend) == [
            (0, MiB, False, False),
            (MiB, 2 * MiB, True, False),
            (3 * MiB, MiB, False, False),
        ]
    server.stop()
    zeroed = [m for m in qemu_img.map(image) if m["zero"]]
    assert [(m["start"], m["length"]) for m in zeroed] == [(MiB, 2 * MiB)]
    # Without a host offset the clusters were deallocated.
    assert ("offset" in zeroed[0]) == (not sparse)


def test_zero_unaligned(tmp_path: Any, serve: Serve) -> None:
    size = MiB
    image = create(tmp_path / "image.qcow2", "qcow2", size,
                   writes=((0, b"\xff" * size),))
    server = serve(image, "qcow2")
    model = bytearray(b"\xff" * size)
    with nbd_backend.open(server.url, "r+") as backend:
        for offset, length in [(1, 10), (4095, 65538), (size - 3, 3)]:
            backend.zero(offset, length)
            model[offset:offset + length] = bytes(length)
        assert read_all(backend) == model


# Extents.

@pytest.mark.parametrize("concurrent", [False, True])
def test_extents_raw(tmp_path: Any, serve: Serve,
                     concurrent: bool) -> None:
    path = tmp_path / "image.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        for offset in (0, 3 * MiB, 8 * MiB - 4096):
            f.seek(offset)
            f.write(b"x" * 4096)
        os.fsync(f.fileno())
    server = serve(path, "raw", read_only=True)
    with nbd_backend.open(server.url, "r", concurrent=concurrent) as backend:
        extents = zero_extents(backend)
    assert extents == map_extents(str(path), "")
    # Holes of a raw file read as zeros and have no allocation depth.
    assert (4096, 3 * MiB - 4096, True, False) in extents


QCOW2_WRITES = (
    "write -P 0x11 0 1M",
    "write -P 0x22 2M 64k",
    "write -z 3M 128k",
    "write -P 0x33 5M 4k",
)


def test_extents_qcow2(tmp_path: Any, serve: Serve) -> None:
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=8 * MiB)
    qemu_io(image, "qcow2", *QCOW2_WRITES)
    server = serve(image, "qcow2", read_only=True)
    with nbd_backend.open(server.url, "r") as backend:
        extents = zero_extents(backend)
    assert extents == map_extents(image, "present")
    assert extents == [
        (0, MiB, False, False),
        (MiB, MiB, True, True),
        (2 * MiB, 64 * KiB, False, False),
        (2 * MiB + 64 * KiB, MiB - 64 * KiB, True, True),
        (3 * MiB, 128 * KiB, True, False),
        (3 * MiB + 128 * KiB, 2 * MiB - 128 * KiB, True, True),
        (5 * MiB, 64 * KiB, False, False),
        (5 * MiB + 64 * KiB, 3 * MiB - 64 * KiB, True, True),
    ]


@pytest.mark.parametrize("backing_chain", [True, False])
def test_extents_backing(tmp_path: Any, serve: Serve,
                         backing_chain: bool) -> None:
    base_image = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    qemu_img.create(base_image, "qcow2", size=4 * MiB)
    qemu_io(base_image, "qcow2", "write -P 0x11 0 1M", "write -P 0x22 2M 64k")
    qemu_img.create(top, "qcow2", backing=base_image, backing_fmt="qcow2")
    qemu_io(top, "qcow2", "write -P 0x33 512k 1M", "write -z 3M 64k")
    server = serve(top, "qcow2", read_only=True, backing_chain=backing_chain)

    with nbd_backend.open(server.url, "r") as backend:
        extents = zero_extents(backend)
        data = read_all(backend)

    if backing_chain:
        expected = map_extents(top, "present")
    else:
        spec = ('json:{"driver": "qcow2", "backing": null, '
                f'"file": {{"driver": "file", "filename": "{top}"}}}}')
        expected = map_extents(spec, "present")
    assert extents == expected

    # Data only in the backing file shows through the chain only.
    base_data = b"\x11" * (512 * KiB) if backing_chain else bytes(512 * KiB)
    assert data[:512 * KiB] == base_data
    assert data[512 * KiB:1536 * KiB] == b"\x33" * MiB
    # Without the chain, the backing file's clusters are holes.
    assert extents[0][2:] == ((False, False) if backing_chain
                              else (True, True))


def nbdinfo_map(url: str, context: str) -> list[dict[str, Any]]:
    out = subprocess.run(["nbdinfo", f"--map={context}", "--json", url],
                         check=True, capture_output=True).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


def lookup(items: list[dict[str, Any]], offset: int) -> int:
    return next(int(m["type"]) for m in items
                if m["offset"] <= offset < m["offset"] + m["length"])


@pytest.mark.skipif(shutil.which("nbdinfo") is None,
                    reason="nbdinfo is not installed")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_extents_vs_nbdinfo(tmp_path: Any, serve: Serve, fmt: str) -> None:
    # Another NBD client's view of the same export and contexts.
    image = str(tmp_path / f"image.{fmt}")
    qemu_img.create(image, fmt, size=8 * MiB)
    qemu_io(image, fmt, *QCOW2_WRITES)
    server = serve(image, fmt, read_only=True)
    uri = f"nbd+unix:///?socket={server.sock_path}"
    alloc = nbdinfo_map(uri, "base:allocation")
    depth = nbdinfo_map(uri, "qemu:allocation-depth") if fmt == "qcow2" \
        else None
    bounds = sorted({8 * MiB} | {m["offset"] for m in alloc}
                    | {m["offset"] for m in depth or []})
    expected = merge(
        ZeroExtent(start, end - start,
                   zero=bool(lookup(alloc, start) & 2),
                   hole=depth is not None and lookup(depth, start) == 0)
        for start, end in zip(bounds, bounds[1:], strict=False))

    with nbd_backend.open(server.url, "r") as backend:
        assert zero_extents(backend) == [
            (e.start, e.length, e.zero, e.hole) for e in expected]


def test_extents_steps(tmp_path: Any, serve: Serve,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Steps ending inside extents must give the same merged result.
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=8 * MiB)
    qemu_io(image, "qcow2", *QCOW2_WRITES)
    server = serve(image, "qcow2", read_only=True)
    with nbd_backend.open(server.url, "r") as backend:
        whole = zero_extents(backend)
        monkeypatch.setattr(nbd_backend, "EXTENTS_STEP", 3 * CLUSTER + 512)
        assert zero_extents(backend) == whole


def test_extents_large_image(tmp_path: Any, serve: Serve) -> None:
    # Several steps of EXTENTS_STEP, with data across step boundaries.
    size = 5 * GiB + 4096
    image = str(tmp_path / "image.qcow2")
    qemu_img.create(image, "qcow2", size=size)
    qemu_io(image, "qcow2", "write -P 1 1073676288 128k",
            "write -P 2 3G 4k", f"write -P 3 {size - 4096} 4k")
    server = serve(image, "qcow2", read_only=True)
    with nbd_backend.open(server.url, "r") as backend:
        extents = zero_extents(backend)
    assert extents == map_extents(image, "present")
    assert extents[-1][0] + extents[-1][1] == size


def test_extents_empty_image(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.qcow2", "qcow2", 0)
    server = serve(image, "qcow2", read_only=True)
    with nbd_backend.open(server.url, "r") as backend:
        assert backend.size() == 0
        assert zero_extents(backend) == []


def test_extents_unknown_context(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r") as backend:
        with pytest.raises(base.UnsupportedContext):
            backend.extents("nope")


# Dirty extents.

def make_dirty_image(tmp_path: Any) -> str:
    """A qcow2 with clean data in [0, 1M) and an empty bitmap "b1"."""
    image = create(tmp_path / "image.qcow2", "qcow2", 4 * MiB,
                   writes=((0, b"\x11" * MiB),))
    qemu_img.bitmap_add(image, "b1", granularity=CLUSTER)
    return image


def expected_dirty(image: str, size: int, dirty: list[tuple[int, int]]
                   ) -> list[tuple[int, int, bool, bool]]:
    """
    Dirty extents expected from the dirty ranges we caused and the zero
    flag qemu-img map reports for the same image.
    """
    entries = qemu_img.map(image, force_share=True)
    bounds = sorted({0, size}
                    | {m["start"] for m in entries}
                    | {s for s, _ in dirty} | {s + n for s, n in dirty})
    items = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        zero = next(m["zero"] for m in entries
                    if m["start"] <= start < m["start"] + m["length"])
        is_dirty = any(s <= start < s + n for s, n in dirty)
        items.append(DirtyExtent(start, end - start, is_dirty, zero))
    return [(e.start, e.length, e.dirty, e.zero) for e in merge(items)]


def test_dirty_extents(tmp_path: Any, serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", bitmap="b1")

    # Writes through qemu-nbd are recorded in the enabled bitmap, one
    # granule (CLUSTER) at a time.
    with nbd_backend.open(server.url, "r+") as writer:
        writer.write(MiB + 100, memoryview(b"x" * 10))
        writer.write(2 * MiB - 1, memoryview(b"yy"))
        writer.zero(3 * MiB, 128 * KiB)
        writer.flush()
    granules = [(MiB, CLUSTER), (2 * MiB - CLUSTER, 2 * CLUSTER),
                (3 * MiB, 2 * CLUSTER)]

    with nbd_backend.open(server.url, "r", dirty=True) as backend:
        assert backend.capabilities.extents == {"zero", "dirty"}
        dirty = [(e.start, e.length, e.dirty, e.zero)
                 for e in backend.extents("dirty")
                 if isinstance(e, DirtyExtent)]

    assert dirty == expected_dirty(image, 4 * MiB, granules)
    assert [(s, n) for s, n, d, _ in merge_dirty(dirty) if d] == granules
    # Zeroed ranges are dirty and zero: no download needed.
    assert (3 * MiB, 2 * CLUSTER, True, True) in dirty
    # Data written before the bitmap existed is clean.
    assert dirty[0] == (0, MiB, False, False)


def merge_dirty(items: list[tuple[int, int, bool, bool]]
                ) -> list[tuple[int, int, bool, bool]]:
    """Merge by the dirty flag alone."""
    merged = merge(DirtyExtent(s, n, d, False) for s, n, d, _ in items)
    return [(e.start, e.length, e.dirty, False) for e in merged]


def test_dirty_not_requested(tmp_path: Any, serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", bitmap="b1", read_only=True)
    with nbd_backend.open(server.url, "r") as backend:
        assert backend.capabilities.extents == {"zero"}
        with pytest.raises(base.UnsupportedContext):
            backend.extents("dirty")


def test_dirty_without_bitmap(tmp_path: Any, serve: Serve) -> None:
    image = make_dirty_image(tmp_path)
    server = serve(image, "qcow2", read_only=True)
    with nbd_backend.open(server.url, "r", dirty=True) as backend:
        assert backend.capabilities.extents == {"zero"}
        with pytest.raises(base.UnsupportedContext):
            backend.extents("dirty")
        # The zero context still works.
        assert zero_extents(backend)[0] == (0, MiB, False, False)


def test_dirty_two_bitmaps(tmp_path: Any, serve: Serve) -> None:
    # Which one would we report? Neither.
    image = make_dirty_image(tmp_path)
    qemu_img.bitmap_add(image, "b2")
    server = serve(image, "qcow2", bitmap=["b1", "b2"], read_only=True)
    with nbd_backend.open(server.url, "r", dirty=True) as backend:
        assert backend.capabilities.extents == {"zero"}
        with pytest.raises(base.UnsupportedContext):
            backend.extents("dirty")


# Modes, capabilities and closing.

def test_capabilities(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.qcow2", "qcow2", MiB)
    server = serve(image, "qcow2")
    with nbd_backend.open(server.url, "r+", max_connections=3) as backend:
        assert backend.name == "nbd"
        # The qcow2 export offers qemu:allocation-depth.
        assert backend.capabilities == base.Capabilities(
            block_size=1, max_readers=3, max_writers=3,
            extents=frozenset({"zero"}), zero=True, flush=True,
            allocation_depth=True,
            # qemu-nbd serving several clients offers multi-conn.
            shared_flush=True,
            # One command per aligned read or write (nbd_loop).
            io_queue=True)
    raw = serve(create(tmp_path / "image.raw", "raw", MiB), "raw")
    with nbd_backend.open(raw.url, "r") as backend:
        assert not backend.capabilities.allocation_depth
    # One client only: no multi-conn, so no flush covering the others.
    single = serve(create(tmp_path / "single.raw", "raw", MiB), "raw",
                   shared=1)
    with nbd_backend.open(single.url, "r+") as backend:
        assert not backend.capabilities.shared_flush


def test_open_url(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    backend = open_url(server.url, "r", options=Options(max_connections=5))
    try:
        assert backend.name == "nbd"
        assert backend.capabilities.max_writers == 5
    finally:
        backend.close()


def test_uri_forms(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB,
                   writes=((0, b"\x42" * 10),))
    server = serve(image, "raw", export_name="disk 1")
    url = f"nbd+unix:///disk%201?socket={server.sock_path}"
    with nbd_backend.open(url, "r") as backend:
        buf = bytearray(10)
        backend.readinto(0, memoryview(buf))
        assert buf == b"\x42" * 10


@pytest.mark.parametrize("operation", ["write", "zero"])
def test_read_only_mode(tmp_path: Any, serve: Serve, operation: str
                        ) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB,
                   writes=((0, b"\x42" * MiB),))
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r") as backend:
        with pytest.raises(OSError) as e:
            if operation == "write":
                backend.write(0, memoryview(b"x"))
            else:
                backend.zero(0, 1)
        assert e.value.errno == errno.EPERM
        assert read_all(backend) == b"\x42" * MiB


def test_read_only_export(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw", read_only=True)
    with nbd_backend.open(server.url, "r+") as backend:
        with pytest.raises(OSError) as e:
            backend.write(0, memoryview(b"x"))
        assert e.value.errno == errno.EPERM
        assert not isinstance(e.value, ConnectionError)


def test_close(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    backend = nbd_backend.open(server.url, "r+")
    backend.close()
    backend.close()
    with pytest.raises(OSError) as e:
        backend.readinto(0, memoryview(bytearray(1)))
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError):
        backend.write(0, memoryview(b"x"))


def test_many_connections(tmp_path: Any, serve: Serve) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw", shared=8)
    backends = [nbd_backend.open(server.url, "r+") for _ in range(8)]
    try:
        for i, backend in enumerate(backends):
            backend.write(i * 4096, memoryview(bytes([i + 1]) * 4096))
        data = read_all(backends[0])
        for i in range(8):
            assert data[i * 4096:(i + 1) * 4096] == bytes([i + 1]) * 4096
    finally:
        for backend in backends:
            backend.close()


# Connection failures.

def test_connection_refused(sock_dir: str) -> None:
    # A socket file nobody listens on.
    path = os.path.join(sock_dir, "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with pytest.raises(base.BackendError) as e:
        nbd_backend.open(f"nbd:unix:{path}", "r")
    assert str(e.value) == "Cannot connect to NBD server: Connection refused"


def test_connection_refused_tcp() -> None:
    # Bound but not listening: the port is ours and refuses connections.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(base.BackendError) as e:
            nbd_backend.open(f"nbd://127.0.0.1:{port}/", "r")
    assert str(e.value) == "Cannot connect to NBD server: Connection refused"


def test_missing_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "missing.sock")
    with pytest.raises(base.BackendError) as e:
        nbd_backend.open(f"nbd:unix:{path}:exportname=x", "r")
    assert "No such file or directory" in str(e.value)
    assert path not in str(e.value)


def test_invalid_url() -> None:
    with pytest.raises(base.BackendError) as e:
        nbd_backend.open("nbd:unix:", "r")
    assert str(e.value) == "Invalid NBD URL"


def test_handshake_timeout(sock_dir: str) -> None:
    # The server accepts (in the kernel backlog) but never says hello.
    path = os.path.join(sock_dir, "silent.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        s.listen()
        with pytest.raises(base.BackendError) as e:
            nbd_backend.open(f"nbd:unix:{path}", "r", connect_timeout=0.5)
    assert "Timed out" in str(e.value)
    assert path not in str(e.value)


@pytest.mark.parametrize("dirty", [False, True])
def test_no_such_export(tmp_path: Any, serve: Serve, dirty: bool) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw", export_name="disk")
    url = f"nbd:unix:{server.sock_path}:exportname=nope"
    with pytest.raises(base.BackendError) as e:
        nbd_backend.open(url, "r", dirty=dirty)
    assert str(e.value) == \
        "Cannot open NBD export 'nope': No such file or directory"
    # The server still serves the right export.
    with nbd_backend.open(server.url, "r") as backend:
        assert backend.size() == MiB


def test_concurrent_writers_share_a_handle(tmp_path: Any,
                                           serve: Serve) -> None:
    # Opened concurrent, the backend takes reads and writes of several
    # threads at once on its one connection (the NBD door's storage
    # threads), and says so.
    size = 8 * MiB
    image, server, model = served_model(tmp_path, serve, size, 7)
    chunk = 256 * KiB
    with nbd_backend.open(server.url, "r+", concurrent=True) as backend:
        assert backend.capabilities.concurrent

        def write(first: int) -> None:
            for offset in range(first * chunk, size, 4 * chunk):
                backend.write(offset, memoryview(model)[offset:offset + chunk])

        threads = [threading.Thread(target=write, args=(i,))
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        backend.flush()
        assert read_all(backend) == model
    server.stop()
    assert_image(tmp_path, image, model)


def collect(q: Any, count: int) -> list[tuple[int, bool]]:
    """Wait on q as its one user does until count requests came back."""
    got: list[tuple[int, bool]] = []
    while len(got) < count:
        q.kick()
        # poll, as the door does: it reports a descriptor libnbd closed
        # (POLLNVAL) where select would fail.
        poller = select.poll()
        poller.register(q.fileno(), select.POLLIN | (
            select.POLLOUT if q.wants_write() else 0))
        assert poller.poll(10_000), "Nothing within 10 seconds"
        got += q.completed()
    return got


def test_queue_round_trip(tmp_path: Any, serve: Serve) -> None:
    # Many commands in flight from one thread, which drives the handle;
    # big writes leave libnbd's queue only when the caller waits for the
    # socket to be writable.
    size = 8 * MiB
    image, server, model = served_model(tmp_path, serve, size, 11)
    chunk = 512 * KiB
    with nbd_backend.open(server.url, "r+") as b:
        q = b.io_queue(64)
        try:
            view = memoryview(model)
            for i in range(size // chunk):
                assert q.submit(True, i * chunk,
                                view[i * chunk:(i + 1) * chunk], i)
            assert sorted(collect(q, size // chunk)) == [
                (i, True) for i in range(size // chunk)]
            back = bytearray(size)
            for i in range(size // chunk):
                assert q.submit(False, i * chunk, memoryview(back)[
                    i * chunk:(i + 1) * chunk], 100 + i)
            assert len(collect(q, size // chunk)) == size // chunk
            assert back == model
            # Refused: past the end, empty.
            assert not q.submit(False, size, memoryview(bytearray(512)), 1)
            assert not q.submit(True, 0, memoryview(b""), 2)
        finally:
            q.close()
    server.stop()
    assert_image(tmp_path, image, model)


def test_queue_server_killed(tmp_path: Any, serve: Serve) -> None:
    # Commands in flight when the server goes away come back failed;
    # none is lost.
    image = create(tmp_path / "image.raw", "raw", 64 * MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r") as b:
        q = b.io_queue(64)
        bufs = [bytearray(MiB) for _ in range(32)]
        try:
            for i, buf in enumerate(bufs):
                assert q.submit(False, i * MiB, memoryview(buf), i)
            server.stop()
            got = collect(q, len(bufs))
            assert sorted(tag for tag, _ in got) == list(range(len(bufs)))
            # A read now is refused, or fails: the server is gone.
            if q.submit(False, 0, memoryview(bufs[0]), 99):
                assert collect(q, 1) == [(99, False)]
        finally:
            q.close()


def ready_now(q: Any) -> bool:
    """Whether a poll of q's descriptor returns at once."""
    poller = select.poll()
    poller.register(q.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def test_queue_failed_by_a_synchronous_call(tmp_path: Any,
                                            serve: Serve) -> None:
    # The server goes away with reads in the queue, and the backend's own
    # call finds it gone: the handle dies in that call, libnbd fails the
    # queued reads through their callbacks and closes the socket, whose
    # number the next descriptor opened takes. The queue's descriptor
    # must still say the reads are there, and nothing more after.
    image = create(tmp_path / "image.raw", "raw", 8 * MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r") as b:
        q = b.io_queue(8)
        taken: list[int] = []
        try:
            bufs = [bytearray(MiB) for _ in range(4)]
            for i, buf in enumerate(bufs):
                assert q.submit(False, i * MiB, memoryview(buf), i)
            socket_fd = q.fileno()
            server.kill()
            with pytest.raises(OSError):
                b.readinto(0, memoryview(bytearray(4096)))
            while len(taken) < 64 and socket_fd not in taken:
                taken.append(os.eventfd(0))
            assert socket_fd in taken
            assert ready_now(q)
            # Answered before the server went, or failed: all there.
            assert sorted(tag for tag, _ in q.completed()) == [0, 1, 2, 3]
            assert not ready_now(q)
        finally:
            for fd in taken:
                os.close(fd)
            q.close()


def test_idle_queue_after_its_server_died(tmp_path: Any,
                                          serve: Serve) -> None:
    # Nothing in the queue when the handle dies in the backend's own
    # call: the queue's descriptor stays quiet. A poll of the closed
    # socket reported POLLNVAL at once, and the NBD door's idle
    # connection of an upload spun on it.
    image = create(tmp_path / "image.raw", "raw", 8 * MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r+") as b:
        q = b.io_queue(8)
        try:
            buf = bytearray(MiB)
            assert q.submit(True, 0, memoryview(buf), 1)
            assert collect(q, 1) == [(1, True)]
            server.stop()
            with pytest.raises(OSError):
                b.write(0, memoryview(buf))
            assert q.completed() == []
            assert not ready_now(q)
        finally:
            q.close()


def test_idle_spread_queue_after_its_server_died(tmp_path: Any,
                                                 serve: Serve) -> None:
    # The server goes away while nothing is in flight: its end makes the
    # sockets readable, which the queue's next collect reads (dropping
    # the extra connection, which says it is given back); then the
    # queue's descriptor is quiet. An idle download's connection in the
    # NBD door spun on it.
    size = 4 * MiB
    server, model = served_data(tmp_path, serve, size, 13)
    given: list[bool] = []
    with nbd_backend.open(server.url, "r") as b:
        q = b.spread_queue(8, 2, on_given_back=lambda: given.append(True))
        assert q is not None
        try:
            back = bytearray(size)
            view = memoryview(back)
            for i in range(4):
                assert q.submit(False, i * MiB, view[i * MiB:(i + 1) * MiB],
                                i)
            assert sorted(collect(q, 4)) == [(i, True) for i in range(4)]
            assert back == model
            server.kill()
            poller = select.poll()
            poller.register(q.fileno(), select.POLLIN)
            assert poller.poll(10_000), "Nothing within 10 seconds"
            assert q.completed() == []
            assert given == [True]
            assert not ready_now(q)
        finally:
            q.close()


def test_spread_queue_reads_and_gives_back(tmp_path: Any,
                                           serve: Serve) -> None:
    # Reads go round the backend's connection and a second one; asked
    # for it back with reads in flight, the queue collects them all,
    # then closes it and says so once.
    size = 8 * MiB
    server, model = served_data(tmp_path, serve, size, 12)
    chunk = 256 * KiB
    given: list[bool] = []
    with nbd_backend.open(server.url, "r") as b:
        q = b.spread_queue(64, 2, on_given_back=lambda: given.append(True))
        assert q is not None
        try:
            back = bytearray(size)
            view = memoryview(back)
            half = size // chunk // 2
            for i in range(half):
                assert q.submit(False, i * chunk,
                                view[i * chunk:(i + 1) * chunk], i)
            q.give_back()
            for i in range(half, 2 * half):
                assert q.submit(False, i * chunk,
                                view[i * chunk:(i + 1) * chunk], i)
            assert sorted(collect(q, 2 * half)) == [
                (i, True) for i in range(2 * half)]
            assert back == model
            assert given == [True]
        finally:
            q.close()
        assert given == [True]
        # Asking after close is harmless.
        q.give_back()


@pytest.mark.parametrize("reads_only,structured", [
    (False, True),
    # The spread's own connections: simple replies, no meta contexts.
    (True, False),
])
def test_connect_for_reads_only(tmp_path: Any, serve: Serve,
                                reads_only: bool, structured: bool) -> None:
    size = MiB
    image, server, model = served_model(tmp_path, serve, size, 4)
    with open(image, "wb") as f:
        f.write(model)
    address = nbd_url.parse_url(server.url)
    h, _ = nbd_connect.connect(address, False, 10, reads_only=reads_only)
    try:
        assert h.get_structured_replies_negotiated() == structured
        assert h.can_meta_context("base:allocation") == structured
        assert h.pread(size, 0) == model
    finally:
        nbd_connect.disconnect(h)


def test_no_spread_queue_for_writes(tmp_path: Any, serve: Serve) -> None:
    server = serve(create(tmp_path / "image.raw", "raw", MiB), "raw")
    with nbd_backend.open(server.url, "r+") as b:
        assert b.spread_queue(8, 2, on_given_back=lambda: None) is None


def test_no_spread_queue_when_the_server_is_full(tmp_path: Any,
                                                 serve: Serve) -> None:
    # qemu-nbd --shared=1 leaves a second client in its backlog: the
    # queue is not spread, and reads work on the one connection.
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw", read_only=True, shared=1)
    with nbd_backend.open(server.url, "r") as b:
        assert b.spread_queue(8, 2, on_given_back=lambda: None) is None
        assert read_all(b) == b"\0" * MiB


def test_no_queue_with_an_event_loop(tmp_path: Any, serve: Serve) -> None:
    # The loop thread drives the handle: a caller driving it too would
    # race it for replies.
    server = serve(create(tmp_path / "image.raw", "raw", MiB), "raw")
    with nbd_backend.open(server.url, "r", concurrent=True) as b:
        assert not b.capabilities.io_queue
        with pytest.raises(OSError):
            b.io_queue(8)


@pytest.mark.parametrize("concurrent", [False, True])
def test_server_killed_between_requests(tmp_path: Any, serve: Serve,
                                        concurrent: bool) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = serve(image, "raw")
    with nbd_backend.open(server.url, "r+",
                          concurrent=concurrent) as backend:
        backend.write(0, memoryview(b"x"))
        server.stop()
        for op in (lambda: backend.readinto(0, memoryview(bytearray(10))),
                   lambda: backend.write(0, memoryview(b"x")),
                   lambda: backend.zero(0, 10),
                   lambda: backend.flush(),
                   lambda: list(backend.extents("zero"))):
            with pytest.raises(OSError) as e:
                op()
            # Not a ConnectionError: the server would take it for the
            # HTTP client going away.
            assert not isinstance(e.value, (ConnectionError, TimeoutError))
            assert e.value.errno == errno.EIO


@pytest.mark.parametrize("concurrent", [False, True])
def test_server_killed_mid_read(tmp_path: Any, serve: Serve,
                                concurrent: bool) -> None:
    size = 64 * MiB
    image = create(tmp_path / "image.raw", "raw", size,
                   writes=((0, b"\x01" * size),))
    server = serve(image, "raw")
    first_read = threading.Event()
    errors: list[BaseException] = []
    backend = nbd_backend.open(server.url, "r", concurrent=concurrent)

    def read_forever() -> None:
        buf = memoryview(bytearray(8 * MiB))
        try:
            while True:
                for offset in range(0, size, len(buf)):
                    backend.readinto(offset, buf)
                    first_read.set()
        except BaseException as e:
            errors.append(e)

    reader = threading.Thread(target=read_forever, daemon=True)
    reader.start()
    try:
        assert first_read.wait(30)
        server.kill()
        reader.join(30)
        assert not reader.is_alive(), "read hangs after the server died"
    finally:
        backend.close()
    assert len(errors) == 1
    assert isinstance(errors[0], OSError)
    assert not isinstance(errors[0], (ConnectionError, TimeoutError))


# Servers qemu-nbd cannot imitate, using nbdkit.

@requires_nbdkit
def test_no_write_zeroes(nbdkit: Callable[..., NBDKit]) -> None:
    server = nbdkit("--filter=nozero", "memory", "4M", "zeromode=none")
    with nbd_backend.open(server.url, "r+") as backend:
        assert not backend.capabilities.zero
        backend.write(0, memoryview(b"\xff" * (4 * MiB)))
        backend.zero(1, 3 * MiB)
        assert read_all(backend) == \
            b"\xff" + bytes(3 * MiB) + b"\xff" * (MiB - 1)


@requires_nbdkit
def test_no_block_status(nbdkit: Callable[..., NBDKit]) -> None:
    server = nbdkit("--filter=noextents", "memory", "4M")
    with nbd_backend.open(server.url, "r", dirty=True) as backend:
        assert zero_extents(backend) == [(0, 4 * MiB, False, False)]
        with pytest.raises(base.UnsupportedContext):
            backend.extents("dirty")


@requires_nbdkit
def test_no_flush(nbdkit: Callable[..., NBDKit]) -> None:
    server = nbdkit("eval", "get_size=echo 1048576",
                    "pread=dd if=/dev/zero count=$3 iflag=count_bytes "
                    "status=none",
                    "pwrite=cat >/dev/null", "can_write=exit 0",
                    "can_flush=exit 3")
    with nbd_backend.open(server.url, "r+") as backend:
        assert not backend.capabilities.flush
        backend.write(0, memoryview(b"x"))
        backend.flush()


@requires_nbdkit
@pytest.mark.parametrize("concurrent", [False, True])
def test_minimum_block_size(nbdkit: Callable[..., NBDKit],
                            concurrent: bool) -> None:
    # The server fails unaligned requests; the backend must align them.
    server = nbdkit("--filter=blocksize-policy", "memory", "1M",
                    "blocksize-minimum=512", "blocksize-preferred=4096",
                    "blocksize-maximum=65536",
                    "blocksize-error-policy=error")
    model = bytearray(MiB)
    rnd = random.Random(3)
    with nbd_backend.open(server.url, "r+",
                          concurrent=concurrent) as backend:
        assert backend.capabilities.block_size == 512
        for offset, length in WRITES[:4] + [(MiB - 3, 3), (700, 200_000)]:
            data = rnd.randbytes(length)
            backend.write(offset, memoryview(data))
            model[offset:offset + length] = data
        for offset, length in [(1, 1), (511, 2), (1000, 70_000),
                               (MiB - 1, 1)]:
            backend.zero(offset, length)
            model[offset:offset + length] = bytes(length)
        assert read_all(backend) == model
        for offset, length in WRITES[:4]:
            buf = bytearray(length)
            assert backend.readinto(offset, memoryview(buf)) == length
            assert buf == model[offset:offset + length]


@requires_nbdkit
@pytest.mark.parametrize("error,code", [
    ("ENOSPC", errno.ENOSPC),
    ("EIO", errno.EIO),
    ("EPERM", errno.EPERM),
])
@pytest.mark.parametrize("concurrent", [False, True])
def test_command_errors(nbdkit: Callable[..., NBDKit], error: str,
                        code: int,
                        concurrent: bool) -> None:
    server = nbdkit("--filter=error", "memory", "1M", f"error={error}",
                    "error-pwrite-rate=100%", "error-zero-rate=100%")
    with nbd_backend.open(server.url, "r+",
                          concurrent=concurrent) as backend:
        ops: list[Callable[[], object]] = [
            lambda: backend.write(0, memoryview(b"x")),
            lambda: backend.zero(0, 4096),
        ]
        for op in ops:
            with pytest.raises(OSError) as e:
                op()
            assert e.value.errno == code
        # The connection survives a failed command.
        assert backend.readinto(0, memoryview(bytearray(10))) == 10


@requires_nbdkit
@pytest.mark.parametrize("operation", ["read", "write"])
def test_pipelined_pieces_fail_together(
        nbdkit: Callable[..., NBDKit], tmp_path: Any,
        operation: str) -> None:
    # Every piece of a pipelined request fails; all are waited for, the
    # first failure is reported, and nothing is left in flight to land
    # in the buffer later: the next requests on the connection work.
    trigger = tmp_path / "fail"
    trigger.touch()
    server = nbdkit("--filter=error", "memory", "16M", "error=EIO",
                    "error-pread-rate=100%", "error-pwrite-rate=100%",
                    f"error-file={trigger}")
    size = 8 * nbd_backend.PIPELINE_REQUEST
    data = random.Random(7).randbytes(size)
    with nbd_backend.open(server.url, "r+") as backend:
        buf = bytearray(size)
        with pytest.raises(OSError) as e:
            if operation == "read":
                backend.readinto(4096, memoryview(buf))
            else:
                backend.write(4096, memoryview(data))
        assert e.value.errno == errno.EIO
        assert "at offset 4096 " in str(e.value)
        trigger.unlink()
        backend.write(4096, memoryview(data))
        assert backend.readinto(4096, memoryview(buf)) == size
        assert buf == data


# The qemu-nbd and qemu-img helpers.

def test_qemu_nbd_offset_size(tmp_path: Any, serve: Serve) -> None:
    data = random.Random(4).randbytes(MiB)
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    server = serve(path, "raw", offset=4096, size=65536)
    with nbd_backend.open(server.url, "r") as backend:
        assert backend.size() == 65536
        assert read_all(backend) == data[4096:4096 + 65536]


def test_qemu_nbd_start_failure(tmp_path: Any, sock_dir: str) -> None:
    server = qemu_nbd.Server(str(tmp_path / "missing.qcow2"), "qcow2",
                             os.path.join(sock_dir, "sock"))
    with pytest.raises(qemu_nbd.QemuNBDError) as e:
        server.start()
    assert "missing.qcow2" in str(e.value)
    assert server.pid is None
    server.stop()


def test_qemu_nbd_binary_override(tmp_path: Any, sock_dir: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_NBD", "false")
    image = create(tmp_path / "image.raw", "raw", MiB)
    server = qemu_nbd.Server(image, "raw", os.path.join(sock_dir, "sock"))
    assert server.command()[0] == "false"
    with pytest.raises(qemu_nbd.QemuNBDError):
        server.start()


def test_qemu_nbd_stop(tmp_path: Any, sock_dir: str) -> None:
    image = create(tmp_path / "image.raw", "raw", MiB)
    sock = os.path.join(sock_dir, "sock")
    with qemu_nbd.Server(image, "raw", sock) as server:
        assert server.url == f"nbd:unix:{sock}:exportname="
        assert os.path.exists(sock)
        assert server.pid is not None
        pidfd = os.pidfd_open(server.pid)
    try:
        # A pidfd is readable once its process has exited.
        assert select.select([pidfd], [], [], 0)[0] == [pidfd]
    finally:
        os.close(pidfd)
    assert server.pid is None
    assert not os.path.exists(sock)


@pytest.mark.parametrize("current, expected", [
    (None, "glibc.malloc.mmap_threshold=33554432:"
           "glibc.malloc.trim_threshold=134217728"),
    ("", "glibc.malloc.mmap_threshold=33554432:"
         "glibc.malloc.trim_threshold=134217728"),
    # The caller's own settings stay and win.
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:"
     "glibc.malloc.mmap_threshold=33554432:"
     "glibc.malloc.trim_threshold=134217728"),
    ("glibc.malloc.mmap_threshold=4096:glibc.malloc.trim_threshold=1",
     "glibc.malloc.mmap_threshold=4096:glibc.malloc.trim_threshold=1"),
])
def test_qemu_nbd_glibc_tunables(current: str | None,
                                 expected: str) -> None:
    assert qemu_nbd.glibc_tunables(current) == expected


def test_qemu_nbd_environment(tmp_path: Any, sock_dir: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    # qemu-nbd starts with the malloc tunables added to the rest of our
    # environment. (Its /proc/PID/environ cannot show this: glibc 2.36
    # cuts GLIBC_TUNABLES there at the first ':' while parsing it.)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setenv("IMAGEIO_TEST_MARK", "1")
    envs: list[dict[str, str]] = []
    run = subprocess.run

    def recording_run(*args: Any, **kwargs: Any) -> Any:
        envs.append(kwargs["env"])
        return run(*args, **kwargs)

    image = create(tmp_path / "image.raw", "raw", MiB)
    monkeypatch.setattr(subprocess, "run", recording_run)
    with qemu_nbd.Server(image, "raw",
                         os.path.join(sock_dir, "sock")) as server:
        with nbd_backend.open(server.url, "r") as backend:
            assert backend.size() == MiB
    [env] = envs
    assert env["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=33554432:"
        "glibc.malloc.trim_threshold=134217728")
    assert env["IMAGEIO_TEST_MARK"] == "1"


def test_qemu_img_helpers(tmp_path: Any) -> None:
    a = str(tmp_path / "a.qcow2")
    b = str(tmp_path / "b.raw")
    qemu_img.create(a, "qcow2", size=MiB)
    qemu_io(a, "qcow2", "write -P 0x11 0 64k")
    qemu_img.convert(a, b, "qcow2", "raw")
    assert qemu_img.info(a)["virtual-size"] == MiB
    assert qemu_img.info(a)["format"] == "qcow2"
    assert qemu_img.compare(a, b)
    qemu_io(b, "raw", "write -P 0x22 0 1")
    assert not qemu_img.compare(a, b)
    assert qemu_img.measure(size=MiB)["fully-allocated"] >= MiB
    assert qemu_img.measure(a, out_fmt="raw")["required"] == MiB
    qemu_img.bitmap_add(a, "b1")
    bitmaps = qemu_img.info(a)["format-specific"]["data"]["bitmaps"]
    assert [bm["name"] for bm in bitmaps] == ["b1"]
    with pytest.raises(qemu_img.QemuImgError):
        qemu_img.info(str(tmp_path / "missing"))


# Combining block status replies (pure).

runs = st.lists(st.tuples(st.integers(1, 50), st.integers(0, 3)),
                min_size=1, max_size=10)


def expand(items: list[tuple[int, int]]) -> list[int]:
    return [flags for length, flags in items for _ in range(length)]


@given(start=st.integers(0, 100), a=runs, b=runs,
       limit=st.integers(1, 600))
def test_intersect(start: int, a: list[tuple[int, int]],
                   b: list[tuple[int, int]], limit: int) -> None:
    flat_a = [v for pair in a for v in pair]
    flat_b = [v for pair in b for v in pair]
    result = list(nbd_backend.intersect(start, flat_a, flat_b,
                                        start + limit))
    covered = min(sum(n for n, _ in a), sum(n for n, _ in b), limit)
    # Contiguous from start, non-empty, up to the shortest coverage.
    pos = start
    for s, length, _, _ in result:
        assert s == pos and length > 0
        pos += length
    assert pos == start + covered
    # Every byte carries the flags of both lists at that byte.
    flags_a, flags_b = expand(a), expand(b)
    for s, length, fa, fb in result:
        for i in range(s - start, s - start + length):
            assert (fa, fb) == (flags_a[i], flags_b[i])


@given(start=st.integers(0, 100),
       a=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)),
                  min_size=1, max_size=10),
       fb=st.integers(0, 3), limit=st.integers(0, 600))
def test_spread_as_intersect(start: int, a: list[tuple[int, int]], fb: int,
                             limit: int) -> None:
    # Empty ranges included: intersect skips them, and so must spread.
    flat = [v for pair in a for v in pair]
    end = start + limit
    expected = list(nbd_backend.intersect(start, flat, [limit, fb], end))
    assert nbd_backend.spread(start, flat, fb, end) == expected
