# SPDX-License-Identifier: GPL-2.0-or-later
"""
Helpers of the tests that run rbd tickets through a real daemon: the
daemon's [backend_rbd] settings for short failures, ticket install, and
test images made and read back by tools other than ours (qemu-img,
qemu-io, the rbd tool).

    with daemon_util.running(tmp_path, extra_conf=rbd_util.RBD_CONF) as d:
        url = rbd_util.add_ticket(d, cluster.url(name), sparse=True)
        client.upload(rbd_util.make_image(src, "qcow2"), url, rbd_util.CA)
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from ovirt_imageio.tools import qemu_img

from . import ceph, daemon_util
from .daemon_util import PKI, Daemon

MiB = 1024**2
SIZE = 16 * MiB
CA = os.path.join(PKI, "ca.pem")

# Short, so the failure tests run quickly; the daemon's default is 20 s.
OP_TIMEOUT = 5
RBD_CONF = f"""
    [backend_rbd]
    op_timeout = {OP_TIMEOUT}
    connect_timeout = {OP_TIMEOUT}
    """


def add_ticket(daemon: Daemon, url: str, size: int = SIZE,
               ops: tuple[str, ...] = ("read", "write"), **kw: Any) -> str:
    """daemon_util.add_ticket, SIZE bytes unless told."""
    return daemon_util.add_ticket(daemon, url, size, ops, **kw)


def ticket_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


def qemu_io(path: str, fmt: str, *commands: str) -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    subprocess.run(args + [path], check=True, capture_output=True,
                   timeout=60)


def make_image(path: str, fmt: str, size: int = SIZE) -> str:
    """Data, a zeroed range and holes."""
    qemu_img.create(path, fmt, size=size)
    qemu_io(path, fmt, "write -P 0x11 0 1M", "write -z 2M 1M",
            "write -P 0x22 5M 1M", "write -P 0x33 13M 64k")
    return path


def export(cluster: ceph.Cluster, name: str, path: str) -> str:
    """The image's bytes, read by the rbd tool, in file path."""
    cluster.rbd("export", "--no-progress", name, path)
    return path


def wrong_key(tmp_path: Any) -> tuple[str, str]:
    """A well-formed key that is not client.imageio's, in a keyring."""
    secret = subprocess.run(["ceph-authtool", "--gen-print-key"],
                            check=True, capture_output=True,
                            text=True).stdout.strip()
    path = tmp_path / "private" / "wrong.keyring"
    path.parent.mkdir()
    path.write_text(f"[client.{ceph.USER}]\n\tkey = {secret}\n")
    return str(path), secret
