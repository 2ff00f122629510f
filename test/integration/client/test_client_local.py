# SPDX-License-Identifier: GPL-2.0-or-later
"""
The client's private qemu-nbd (client._local): which AIO mode it asks
for, and the fall back when io_uring cannot be used. A wrapper script
set as $QEMU_NBD plays a qemu or kernel without io_uring.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest

from ovirt_imageio.client import _local
from ovirt_imageio.tools import qemu_img, qemu_nbd

SIZE = 4 * 1024**2


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_local, "_use_io_uring", True)


@pytest.fixture
def image(tmp_path: Any) -> str:
    path = str(tmp_path / "disk.qcow2")
    qemu_img.create(path, "qcow2", size=SIZE)
    if not _local._can_direct_io(path):
        pytest.skip("no direct I/O here: qemu-nbd uses threads")
    return path


def wrapper(tmp_path: Any, body: str) -> str:
    """A $QEMU_NBD script logging each call's --aio to calls.log."""
    path = str(tmp_path / "qemu-nbd-wrapper")
    log = str(tmp_path / "calls.log")
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
aio=none
for a in "$@"; do
    case "$a" in --aio=*) aio="${{a#--aio=}}";; esac
done
echo "$aio" >> {log}
{body}
""")
    os.chmod(path, stat.S_IRWXU)
    return path


def calls(tmp_path: Any) -> list[str]:
    with open(tmp_path / "calls.log") as f:
        return f.read().split()


def round_trip(img: _local.LocalImage) -> None:
    data = os.urandom(1024**2)
    with img.open("r+") as b:
        b.write(65536, memoryview(data))
        b.flush()
        buf = bytearray(len(data))
        b.readinto(65536, memoryview(buf))
    assert buf == data


def test_writable_image_uses_io_uring(image: str) -> None:
    with _local.LocalImage(_local.Source(image, "qcow2"),
                           read_only=False) as img:
        assert img._server is not None
        assert img._server.aio == "io_uring"
        round_trip(img)


@pytest.mark.parametrize("fmt,direct_raw,expected", [
    ("raw", True, False),
    ("raw", False, True),
    ("qcow2", True, True),
])
def test_uses_qemu_nbd(tmp_path: Any, fmt: str, direct_raw: bool,
                       expected: bool) -> None:
    path = str(tmp_path / f"disk.{fmt}")
    qemu_img.create(path, fmt, size=1024**2)
    if not expected and not _local._can_direct_io(path):
        # tmpfs: raw files go through qemu-nbd too.
        expected = True
    with _local.LocalImage(_local.Source(path, fmt), read_only=True,
                           direct_raw=direct_raw) as img:
        assert img.uses_qemu_nbd is expected
    assert not img.uses_qemu_nbd


def test_read_only_image_uses_native_aio(image: str) -> None:
    with _local.LocalImage(_local.Source(image, "qcow2"),
                           read_only=True) as img:
        assert img._server is not None
        assert img._server.aio == "native"


def test_falls_back_to_native_and_remembers(
        image: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_NBD", wrapper(tmp_path, """
[ "$aio" = io_uring ] && { echo "io_uring refused" >&2; exit 1; }
exec qemu-nbd "$@"
"""))
    for _ in range(2):
        with _local.LocalImage(_local.Source(image, "qcow2"),
                               read_only=False) as img:
            assert img._server is not None
            assert img._server.aio == "native"
            round_trip(img)
    # Tried once; the second image went straight to native.
    assert calls(tmp_path) == ["io_uring", "native", "native"]
    assert not _local._use_io_uring


def test_other_failures_are_not_blamed_on_io_uring(
        image: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_NBD", wrapper(tmp_path, """
echo "cannot open image" >&2; exit 1
"""))
    with pytest.raises(qemu_nbd.QemuNBDError, match="cannot open image"):
        _local.LocalImage(_local.Source(image, "qcow2"),
                          read_only=False).start()
    assert calls(tmp_path) == ["io_uring", "native"]
    assert _local._use_io_uring
