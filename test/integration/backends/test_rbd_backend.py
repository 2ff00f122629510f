# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ovirt_imageio.backends.rbd against the private Ceph cluster of
the test session (support/ceph.py).

Expectations come from independent sources: data written with qemu-io
through qemu's own rbd driver, read back with ``rbd export``, snapshots
made with the rbd tool, and a model bytearray.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import threading
import time
from typing import Any, Callable

import pytest

from ovirt_imageio.backends import BackendError, open_url, rbd_connect
from ovirt_imageio.backends import rbd as rbd_backend
from ovirt_imageio.backends.base import UnsupportedContext
from ovirt_imageio.util.extents import DirtyExtent, ZeroExtent

from support import ceph
from support.rbd_util import wrong_key

KiB = 1024
MiB = 1024**2
OBJECT = 4 * MiB

Image = Callable[..., str]


def qemu_io(cluster: ceph.Cluster, name: str, *commands: str) -> None:
    """Write with qemu's rbd driver, not our code."""
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    subprocess.run(args + [cluster.url(name)], check=True,
                   capture_output=True, timeout=60)


def export(cluster: ceph.Cluster, name: str, tmp_path: Any) -> bytes:
    """The image's bytes, read by the rbd tool."""
    path = str(tmp_path / f"{name}.export")
    if os.path.exists(path):
        os.unlink(path)
    cluster.rbd("export", "--no-progress", name, path)
    with open(path, "rb") as f:
        return f.read()


def read_all(backend: Any) -> bytes:
    buf = bytearray(backend.size())
    assert backend.readinto(0, memoryview(buf)) == len(buf)
    return bytes(buf)


# I/O.

def test_write_read_any_offset(ceph_cluster: ceph.Cluster, rbd_image: Image,
                               tmp_path: Any) -> None:
    size = 3 * OBJECT + 12345
    name = rbd_image(size)
    model = bytearray(size)
    rnd = random.Random(18)
    b = open_url(ceph_cluster.url(name), "r+")
    try:
        assert b.name == "rbd"
        assert b.size() == size
        # Unaligned, across object boundaries, up to the image's end.
        for offset, length in [(1, 511), (OBJECT - 100, 300),
                               (5 * MiB + 7, OBJECT + 3),
                               (size - 999, 999)]:
            data = rnd.randbytes(length)
            b.write(offset, memoryview(data))
            model[offset:offset + length] = data
        # The upload buffers (bytearray_buffers): a whole bytearray goes
        # to librbd as it is, a part of one is copied; both are reused
        # at once, like the request pipeline does.
        assert b.capabilities.bytearray_buffers
        upload = bytearray(OBJECT + 5)
        for offset, length in [(3, OBJECT + 5), (2 * OBJECT + 1, 4097)]:
            view = memoryview(upload)[:length]
            view[:] = rnd.randbytes(length)
            b.write(offset, view)
            model[offset:offset + length] = view
            view[:] = bytes(length)
        b.flush()
        assert read_all(b) == model
        # A read past the end stops at the end.
        buf = bytearray(100)
        assert b.readinto(size - 10, memoryview(buf)) == 10
        assert buf[:10] == model[-10:]
        assert b.readinto(size, memoryview(buf)) == 0
    finally:
        b.close()
    assert export(ceph_cluster, name, tmp_path) == model


def test_read_data_written_by_qemu(ceph_cluster: ceph.Cluster,
                                   rbd_image: Image) -> None:
    name = rbd_image(2 * OBJECT)
    qemu_io(ceph_cluster, name, "write -P 0x55 0 64k",
            f"write -P 0xaa {OBJECT - 512} 1k")
    b = open_url(ceph_cluster.url(name), "r")
    try:
        data = read_all(b)
    finally:
        b.close()
    expected = bytearray(2 * OBJECT)
    expected[:64 * KiB] = b"\x55" * (64 * KiB)
    expected[OBJECT - 512:OBJECT + 512] = b"\xaa" * KiB
    assert data == expected


@pytest.mark.parametrize("sparse", [True, False])
def test_zero(ceph_cluster: ceph.Cluster, rbd_image: Image, tmp_path: Any,
              sparse: bool) -> None:
    name = rbd_image(3 * OBJECT)
    qemu_io(ceph_cluster, name, f"write -P 0x55 0 {3 * OBJECT}")
    b = open_url(ceph_cluster.url(name), "r+", sparse=sparse)
    try:
        # A whole object and an unaligned piece of another.
        b.zero(OBJECT, OBJECT)
        b.zero(2 * OBJECT + 100, 1000)
        b.flush()
        extents = list(b.extents("zero"))
    finally:
        b.close()
    expected = bytearray(b"\x55" * 3 * OBJECT)
    expected[OBJECT:2 * OBJECT] = bytes(OBJECT)
    expected[2 * OBJECT + 100:2 * OBJECT + 1100] = bytes(1000)
    assert export(ceph_cluster, name, tmp_path) == expected
    # Sparse zeroing deallocates the whole object; otherwise it stays
    # allocated (written zeros are data).
    hole = ZeroExtent(OBJECT, OBJECT, True, True)
    assert (hole in extents) == sparse


def test_read_only(ceph_cluster: ceph.Cluster, rbd_image: Image) -> None:
    name = rbd_image(OBJECT)
    b = open_url(ceph_cluster.url(name), "r")
    try:
        assert b.capabilities.max_writers == 0
        with pytest.raises(OSError):
            b.write(0, memoryview(b"x"))
    finally:
        b.close()


def test_concurrent_writers(ceph_cluster: ceph.Cluster, rbd_image: Image,
                            tmp_path: Any) -> None:
    # Four connections of one ticket, as the client uploads; each writes
    # its own quarter. The image has exclusive-lock (the default).
    size = 8 * OBJECT
    name = rbd_image(size)
    data = random.Random(4).randbytes(size)
    quarter = size // 4
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        try:
            b = open_url(ceph_cluster.url(name), "r+")
            try:
                for off in range(i * quarter, (i + 1) * quarter, MiB):
                    b.write(off, memoryview(data)[off:off + MiB])
                b.flush()
            finally:
                b.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert export(ceph_cluster, name, tmp_path) == data


def test_backends_share_one_handle(ceph_cluster: ceph.Cluster,
                                   rbd_image: Image) -> None:
    name = rbd_image(OBJECT)
    before = rbd_connect.open_handles()
    a = open_url(ceph_cluster.url(name), "r+")
    b = open_url(ceph_cluster.url(name), "r+")
    r = open_url(ceph_cluster.url(name), "r")
    assert rbd_connect.open_handles() == before + 2
    a.close()
    b.close()
    a.close()  # Closing twice releases once.
    assert rbd_connect.open_handles() == before + 1
    r.close()
    assert rbd_connect.open_handles() == before


# Extents.

def test_zero_extents_from_allocation(ceph_cluster: ceph.Cluster,
                                      rbd_image: Image) -> None:
    size = 4 * OBJECT
    name = rbd_image(size)
    qemu_io(ceph_cluster, name, "write -P 1 64k 64k",
            f"write -P 2 {2 * OBJECT} {OBJECT}")
    b = open_url(ceph_cluster.url(name), "r")
    try:
        # librbd knows the allocation of an object from its start to its
        # last written byte.
        assert list(b.extents("zero")) == [
            ZeroExtent(0, 128 * KiB, False, False),
            ZeroExtent(128 * KiB, 2 * OBJECT - 128 * KiB, True, True),
            ZeroExtent(2 * OBJECT, OBJECT, False, False),
            ZeroExtent(3 * OBJECT, OBJECT, True, True),
        ]
        with pytest.raises(UnsupportedContext):
            list(b.extents("dirty"))
    finally:
        b.close()


def test_dirty_extents_between_snapshots(ceph_cluster: ceph.Cluster,
                                         rbd_image: Image) -> None:
    size = 4 * OBJECT
    name = rbd_image(size)
    qemu_io(ceph_cluster, name, f"write -P 1 0 {size}")
    ceph_cluster.rbd("snap", "create", f"{name}@base")
    # Changes since base: new data in object 1, object 3 discarded.
    qemu_io(ceph_cluster, name, f"write -P 2 {OBJECT} 64k",
            f"discard {3 * OBJECT} {OBJECT}")
    ceph_cluster.rbd("snap", "create", f"{name}@top")
    # The head changes after the top snapshot: not part of the export.
    qemu_io(ceph_cluster, name, "write -P 3 0 64k")

    url = ceph_cluster.url(name, "top", from_snap="base")
    b = open_url(url, "r", dirty=True)
    try:
        assert "dirty" in b.capabilities.extents
        assert list(b.extents("dirty")) == [
            DirtyExtent(0, OBJECT, False, False),
            DirtyExtent(OBJECT, 64 * KiB, True, False),
            DirtyExtent(OBJECT + 64 * KiB, 2 * OBJECT - 64 * KiB, False,
                        False),
            DirtyExtent(3 * OBJECT, OBJECT, True, True),
        ]
        # The snapshot's data, not the head's.
        buf = bytearray(64 * KiB)
        b.readinto(0, memoryview(buf))
        assert buf == b"\x01" * (64 * KiB)
    finally:
        b.close()

    # From the base to the head: the later write is dirty too.
    head = open_url(ceph_cluster.url(name, from_snap="base"), "r",
                    dirty=True)
    try:
        assert list(head.extents("dirty"))[0] == DirtyExtent(
            0, 64 * KiB, True, False)
    finally:
        head.close()


def test_dirty_extents_where_base_had_no_data(ceph_cluster: ceph.Cluster,
                                              rbd_image: Image) -> None:
    # librbd reports a new object from its start; zero blocks are clean.
    name = rbd_image(2 * OBJECT)
    ceph_cluster.rbd("snap", "create", f"{name}@base")
    qemu_io(ceph_cluster, name, f"write -P 1 {MiB} 64k",
            f"write -P 2 {OBJECT + 100} 10")
    url = ceph_cluster.url(name, from_snap="base")
    b = open_url(url, "r", dirty=True)
    try:
        assert list(b.extents("dirty")) == [
            DirtyExtent(0, MiB, False, False),
            DirtyExtent(MiB, 64 * KiB, True, False),
            DirtyExtent(MiB + 64 * KiB, OBJECT - MiB - 64 * KiB, False,
                        False),
            # The object's data ends at its last written byte.
            DirtyExtent(OBJECT, 110, True, False),
            DirtyExtent(OBJECT + 110, OBJECT - 110, False, False),
        ]
    finally:
        b.close()


def test_read_sees_writes_not_flushed(ceph_cluster: ceph.Cluster,
                                      rbd_image: Image) -> None:
    # Reads see the writes that returned, flushed or not.
    name = rbd_image(4 * OBJECT)
    data = random.Random(7).randbytes(4 * OBJECT)
    b = open_url(ceph_cluster.url(name), "r+")
    try:
        for off in range(0, len(data), MiB):
            b.write(off, memoryview(data)[off:off + MiB])
        assert read_all(b) == data
    finally:
        b.close()


# Errors.

def test_snapshot_is_read_only(ceph_cluster: ceph.Cluster,
                               rbd_image: Image) -> None:
    name = rbd_image(OBJECT)
    ceph_cluster.rbd("snap", "create", f"{name}@s")
    with pytest.raises(BackendError,
                       match=f"snapshot rbd/{name}@s is read-only"):
        open_url(ceph_cluster.url(name, "s"), "r+")


def test_dirty_needs_from_snap(ceph_cluster: ceph.Cluster,
                               rbd_image: Image) -> None:
    name = rbd_image(OBJECT)
    with pytest.raises(BackendError, match="from-snap"):
        open_url(ceph_cluster.url(name), "r", dirty=True)


@pytest.mark.parametrize("what,expected", [
    ("pool", "RBD pool 'nosuchpool' not found"),
    ("image", "RBD image rbd/nosuchimage not found"),
    ("snapshot", "RBD snapshot rbd/{name}@nosuchsnap not found"),
    ("from-snap", "RBD snapshot rbd/{name}@nosuchbase not found"),
])
def test_missing_named(ceph_cluster: ceph.Cluster, rbd_image: Image,
                       what: str, expected: str) -> None:
    name = rbd_image(OBJECT)
    url = {
        "pool": f"rbd:nosuchpool/{name}:conf={ceph_cluster.conf}",
        "image": ceph_cluster.url("nosuchimage"),
        "snapshot": ceph_cluster.url(name, "nosuchsnap"),
        "from-snap": ceph_cluster.url(name, from_snap="nosuchbase"),
    }[what]
    before = rbd_connect.open_handles()
    with pytest.raises(rbd_connect.NotFound) as e:
        open_url(url, "r")
    assert str(e.value) == expected.format(name=name)
    assert rbd_connect.open_handles() == before


def test_missing_conf_hides_path() -> None:
    with pytest.raises(BackendError) as e:
        open_url("rbd:rbd/disk:conf=/nonexistent/secret-dir/ceph.conf", "r")
    assert "secret-dir" not in str(e.value)
    assert "rbd/disk" in str(e.value)


def test_unreachable_cluster_times_out(tmp_path: Any) -> None:
    # A monitor address where nothing listens: connecting must give up
    # within the connect timeout instead of retrying for ever.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nmon host = [v2:127.0.0.1:{port}]\n"
                    "auth client required = none\n")
    start = time.monotonic()
    with pytest.raises(rbd_connect.ClusterUnreachable,
                       match="Ceph cluster did not connect to rbd/disk"):
        rbd_backend.open(f"rbd:rbd/disk:conf={conf}", "r",
                         connect_timeout=2)
    assert time.monotonic() - start < 10


# Namespaces and client names.

def test_namespace(ceph_cluster: ceph.Cluster, tmp_path: Any) -> None:
    # qemu's syntax: rbd:POOL/NAMESPACE/IMAGE.
    ns = "ns-" + os.urandom(4).hex()
    ceph_cluster.rbd("namespace", "create", "--namespace", ns)
    # The rbd tool's spec: pool/namespace/image.
    image = f"{ceph_cluster.pool}/{ns}/disk"
    ceph_cluster.create_image(image, OBJECT)
    try:
        data = random.Random(5).randbytes(OBJECT)
        url = f"rbd:{ceph_cluster.pool}/{ns}/disk:conf={ceph_cluster.conf}"
        b = open_url(url, "r+")
        try:
            b.write(0, memoryview(data))
            b.flush()
        finally:
            b.close()
        # The image of the namespace, not one of that name in the pool.
        path = tmp_path / "ns.export"
        ceph_cluster.rbd("export", "--no-progress", image, str(path))
        assert path.read_bytes() == data
        with pytest.raises(rbd_connect.NotFound,
                           match=f"RBD image rbd/{ns}/nosuch not found"):
            open_url(f"rbd:{ceph_cluster.pool}/{ns}/nosuch:"
                     f"conf={ceph_cluster.conf}", "r")
    finally:
        ceph_cluster.remove_image(image)
        ceph_cluster.rbd("namespace", "remove", "--namespace", ns)


def test_client_name_reaches_librados(ceph_cluster: ceph.Cluster,
                                      rbd_image: Image) -> None:
    # librados names its admin socket after the client ("run/$name.asok"
    # in the cluster's ceph.conf), which shows the name it connected with.
    name = rbd_image(OBJECT)
    asok = os.path.join(ceph_cluster.root, "run",
                        f"client.{ceph.USER}.asok")
    b = open_url(ceph_cluster.url(name, user=ceph.USER), "r")
    try:
        assert os.path.exists(asok)
        assert b.size() == OBJECT
    finally:
        b.close()
    assert not os.path.exists(asok)


# cephx: the test cluster requires it. Refusals fail at once (librados
# does not retry them): the bound is for a loaded machine, far below the
# connect timeout of the daemon (10 s).
REFUSED_IN = 5


def test_keyring_option(ceph_cluster: ceph.Cluster, rbd_image: Image,
                        tmp_path: Any) -> None:
    # The keyring= option, not the one the ceph.conf names.
    name = rbd_image(OBJECT)
    keyring = tmp_path / "keys" / "imageio.keyring"
    keyring.parent.mkdir()
    keyring.write_text(open(ceph_cluster.keyring(ceph.USER)).read())
    data = random.Random(7).randbytes(OBJECT)
    b = open_url(ceph_cluster.url(name, user=ceph.USER,
                                  keyring=str(keyring)), "r+")
    try:
        b.write(0, memoryview(data))
        b.flush()
    finally:
        b.close()
    assert export(ceph_cluster, name, tmp_path) == data


def test_wrong_key_refused(ceph_cluster: ceph.Cluster, rbd_image: Image,
                           tmp_path: Any,
                           caplog: pytest.LogCaptureFixture) -> None:
    # A well-formed key that is not client.imageio's: the monitor refuses
    # it. The error names the client and the image, never the key nor
    # the keyring's path.
    name = rbd_image(OBJECT)
    keyring, secret = wrong_key(tmp_path)
    caplog.set_level("DEBUG")
    before = rbd_connect.open_handles()
    start = time.monotonic()
    with pytest.raises(PermissionError) as e:
        rbd_backend.open(ceph_cluster.url(name, user=ceph.USER,
                                          keyring=str(keyring)), "r")
    assert time.monotonic() - start < REFUSED_IN
    message = str(e.value)
    assert message == (f"[Errno 13] Ceph cluster refused client.{ceph.USER} "
                       f"for rbd/{name}: authentication failed (wrong key "
                       "or unknown client)")
    assert "private" not in message
    assert secret not in caplog.text
    assert rbd_connect.open_handles() == before


@pytest.mark.parametrize("how", ["keyring-missing", "no-keyring-for-name"])
def test_no_key(ceph_cluster: ceph.Cluster, rbd_image: Image, tmp_path: Any,
                how: str) -> None:
    name = rbd_image(OBJECT)
    if how == "keyring-missing":
        url = ceph_cluster.url(name, user=ceph.USER,
                               keyring=str(tmp_path / "private" / "nokey"))
        client = f"client.{ceph.USER}"
    else:
        # The ceph.conf's keyring path for this name has no file.
        url = ceph_cluster.url(name, user="nobody")
        client = "client.nobody"
    start = time.monotonic()
    with pytest.raises(rbd_connect.NoKey) as e:
        rbd_backend.open(url, "r")
    assert time.monotonic() - start < REFUSED_IN
    assert str(e.value) == (f"No key for Ceph {client} to connect for "
                            f"rbd/{name}: no keyring found with its name")


def test_malformed_keyring(ceph_cluster: ceph.Cluster, rbd_image: Image,
                           tmp_path: Any) -> None:
    # librados cannot parse the key: EIO at connect, with no more said
    # (Ceph's own client log quotes the value, our message never does).
    name = rbd_image(OBJECT)
    keyring = tmp_path / "private" / "bad.keyring"
    keyring.parent.mkdir()
    keyring.write_text(f"[client.{ceph.USER}]\n\tkey = not-a-key-value\n")
    start = time.monotonic()
    with pytest.raises(rbd_connect.ClusterUnreachable) as e:
        rbd_backend.open(ceph_cluster.url(name, user=ceph.USER,
                                          keyring=str(keyring)), "r")
    assert time.monotonic() - start < REFUSED_IN
    assert str(e.value) == (f"Cannot connect to the Ceph cluster of "
                            f"rbd/{name}: Input/output error")


def test_caps_of_another_pool(ceph_cluster: ceph.Cluster, rbd_image: Image,
                              tmp_path: Any) -> None:
    # A client whose caps allow another pool only: it connects, the
    # image refuses it.
    name = rbd_image(OBJECT)
    ceph_cluster.add_user("other-pool", "other")
    before = rbd_connect.open_handles()
    start = time.monotonic()
    with pytest.raises(PermissionError) as e:
        rbd_backend.open(ceph_cluster.url(name, user="other-pool"), "r")
    assert time.monotonic() - start < REFUSED_IN
    assert e.value.errno == errno.EPERM
    assert str(e.value) == (f"[Errno 1] rbd/{name}: Operation not permitted "
                            "for Ceph client.other-pool (see its caps)")
    assert rbd_connect.open_handles() == before


def test_read_only_caps(ceph_cluster: ceph.Cluster, rbd_image: Image,
                        tmp_path: Any) -> None:
    # A backup client (profile rbd-read-only) reads; opening for writing
    # is refused (the image's watch and lock need writes), naming the
    # client.
    name = rbd_image(OBJECT)
    qemu_io(ceph_cluster, name, "write -P 0x5a 0 64k")
    ceph_cluster.add_user("backup", ceph_cluster.pool, read_only=True)
    url = ceph_cluster.url(name, user="backup")
    b = open_url(url, "r")
    try:
        assert read_all(b)[:64 * KiB] == b"\x5a" * 64 * KiB
    finally:
        b.close()
    before = rbd_connect.open_handles()
    start = time.monotonic()
    with pytest.raises(PermissionError) as e:
        open_url(url, "r+")
    assert time.monotonic() - start < REFUSED_IN
    assert str(e.value).endswith(
        f"rbd/{name}: Operation not permitted for Ceph client.backup "
        "(see its caps)")
    assert rbd_connect.open_handles() == before
    assert export(ceph_cluster, name, tmp_path)[:64 * KiB] == (
        b"\x5a" * 64 * KiB)
