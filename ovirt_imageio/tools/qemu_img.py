# SPDX-License-Identifier: GPL-2.0-or-later
"""
Typed wrappers around the qemu-img commands the tests and the client use.

Every function runs qemu-img once and waits for it. Failures raise
``QemuImgError`` with the command, exit status and qemu-img's message.
Commands with JSON output (info, map, measure) return the parsed JSON as
is; see qemu-img(1) for the keys.

The environment variable QEMU_IMG overrides the binary.

>>> create("disk.qcow2", "qcow2", size=1024**3)     # doctest: +SKIP
>>> info("disk.qcow2")["virtual-size"]              # doctest: +SKIP
1073741824
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Sequence

from ..util.errors import ImageioError


class QemuImgError(ImageioError):
    """A qemu-img command failed."""

    def __init__(self, cmd: Sequence[str], rc: int, stderr: str) -> None:
        super().__init__(f"Command {list(cmd)} failed with exit code {rc}: "
                         f"{stderr.strip()}")
        self.cmd = list(cmd)
        self.rc = rc
        self.stderr = stderr


def create(
    path: str,
    fmt: str,
    size: int | None = None,
    backing: str | None = None,
    backing_fmt: str | None = None,
    quiet: bool = True,
) -> None:
    """
    Create an image. size may be omitted with a backing file (the new
    image takes the backing file's size).
    """
    cmd = [_binary(), "create", "-f", fmt]
    if quiet:
        cmd.append("-q")
    if backing is not None:
        cmd.extend(["-b", backing])
        if backing_fmt is not None:
            cmd.extend(["-F", backing_fmt])
    cmd.append(path)
    if size is not None:
        cmd.append(str(size))
    _run(cmd)


def info(path: str, fmt: str | None = None, backing_chain: bool = False,
         force_share: bool = False) -> Any:
    """
    Return ``qemu-img info --output json``: a dict, or with backing_chain
    a list of dicts from the top image down. force_share reads an image
    another qemu process has open for writing (the result may be stale).
    """
    cmd = [_binary(), "info", "--output", "json"]
    if fmt is not None:
        cmd.extend(["-f", fmt])
    if backing_chain:
        cmd.append("--backing-chain")
    if force_share:
        cmd.append("--force-share")
    cmd.append(path)
    return json.loads(_run(cmd))


def map(path: str, fmt: str | None = None, force_share: bool = False
        ) -> list[dict[str, Any]]:
    """
    Return ``qemu-img map --output json``: the allocation of the whole
    backing chain, as dicts with start, length, depth, present, zero and
    data (and offset when the data has a host offset). force_share as in
    info().
    """
    cmd = [_binary(), "map", "--output", "json"]
    if fmt is not None:
        cmd.extend(["-f", fmt])
    if force_share:
        cmd.append("--force-share")
    cmd.append(path)
    result: list[dict[str, Any]] = json.loads(_run(cmd))
    return result


def compare(a: str, b: str, fmt_a: str | None = None,
            fmt_b: str | None = None, strict: bool = False) -> bool:
    """
    Return True if the guest visible content of a and b is equal. With
    strict, images of different sizes are different (otherwise the extra
    part must read as zeros) and allocation must match too.
    """
    cmd = [_binary(), "compare", "-q"]
    if fmt_a is not None:
        cmd.extend(["-f", fmt_a])
    if fmt_b is not None:
        cmd.extend(["-F", fmt_b])
    if strict:
        cmd.append("-s")
    cmd.extend([a, b])
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          capture_output=True)
    # 0: equal, 1: different, anything else: error.
    if proc.returncode in (0, 1):
        return proc.returncode == 0
    raise QemuImgError(cmd, proc.returncode,
                       proc.stderr.decode(errors="replace"))


def convert(src: str, dst: str, src_fmt: str | None = None,
            dst_fmt: str = "raw") -> None:
    """Copy the guest visible content of src to a new image dst."""
    cmd = [_binary(), "convert", "-q"]
    if src_fmt is not None:
        cmd.extend(["-f", src_fmt])
    cmd.extend(["-O", dst_fmt, src, dst])
    _run(cmd)


def bitmap_add(path: str, name: str, granularity: int | None = None,
               disabled: bool = False) -> None:
    """
    Add a persistent dirty bitmap to a qcow2 image. An enabled bitmap
    (the default) records every later write done by qemu (qemu-nbd,
    qemu-io, a VM); a disabled one stays as it is.
    """
    cmd = [_binary(), "bitmap", "--add"]
    if granularity is not None:
        cmd.extend(["-g", str(granularity)])
    if disabled:
        cmd.append("--disable")
    cmd.extend([path, name])
    _run(cmd)


def measure(
    path: str | None = None,
    out_fmt: str = "qcow2",
    fmt: str | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """
    Return ``qemu-img measure --output json``: the space needed to
    convert path (or a new image of size) to out_fmt, as a dict with
    "required" and "fully-allocated" (and "bitmaps" for qcow2).
    """
    if (path is None) == (size is None):
        raise ValueError("Expecting exactly one of path and size")
    cmd = [_binary(), "measure", "--output", "json", "-O", out_fmt]
    if size is not None:
        cmd.extend(["--size", str(size)])
    else:
        if fmt is not None:
            cmd.extend(["-f", fmt])
        cmd.append(str(path))
    result: dict[str, Any] = json.loads(_run(cmd))
    return result


def _binary() -> str:
    return os.environ.get("QEMU_IMG", "qemu-img")


def _run(cmd: list[str]) -> bytes:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          capture_output=True)
    if proc.returncode != 0:
        raise QemuImgError(cmd, proc.returncode,
                    proc.stderr.decode(errors="replace"))
    return proc.stdout
