# SPDX-License-Identifier: GPL-2.0-or-later
"""
``ovirt-img upload-disk`` and ``download-disk``: the whole flow against an
oVirt engine, from inspecting the image to the finalized transfer.

upload-disk phases: inspecting image, creating disk, creating transfer,
uploading image, finalizing transfer, upload completed (or cancelling
transfer when the upload fails: the engine then removes the new disk).

download-disk phases: creating transfer, downloading image, finalizing
transfer, download completed. A download transfer is always finalized,
also when the download failed; the partial file is removed by the
client library.

What the user sees follows ``_tool``'s rules: with ``--output json``, one
JSON line per phase or progress update; on a terminal, a live progress
line; otherwise one line per phase and a summary.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any, Protocol, TextIO

from . import _api
from ._ovirt import Engine, EngineError
from ._ui import Format, ProgressBar, humansize

# An ISO 9660 image: the primary volume descriptor (type 1, "CD001",
# version 1, a zero byte) at the start of sector 16 (of 2 KiB).
_ISO_OFFSET = 0x8000
_ISO_MAGIC = b"\x01CD001\x01\x00"

_FORMATS = ("raw", "qcow2")


class Progress(Protocol):
    """What the flow reports: phases, the size, transferred bytes."""
    phase: str | None
    size: int | None

    def update(self, n: int) -> None: ...


class PhaseLines:
    """Progress for a pipe or a file: one line per phase, then a summary."""

    def __init__(self, output: TextIO, phase: str | None = None) -> None:
        self._output = output
        self._phase: str | None = None
        self.size: int | None = None
        self.done = 0
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self.phase = phase

    @property
    def phase(self) -> str | None:
        return self._phase

    @phase.setter
    def phase(self, value: str | None) -> None:
        self._phase = value
        if value:
            print(value, file=self._output, flush=True)

    def update(self, n: int) -> None:
        # Called by all copy workers.
        with self._lock:
            self.done += n

    def summary(self) -> None:
        elapsed = time.monotonic() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0
        print(f"transferred {humansize(self.done)} in {elapsed:.2f} s "
              f"({humansize(rate)}/s)", file=self._output, flush=True)


def is_iso(filename: str) -> bool:
    """True if filename (a raw image) holds an ISO 9660 file system."""
    with open(filename, "rb") as f:
        f.seek(_ISO_OFFSET)
        return f.read(len(_ISO_MAGIC)) == _ISO_MAGIC


def disk_spec(filename: str, fmt: str, sparse: bool,
              name: str | None) -> dict[str, Any]:
    """
    The disk to create for uploading filename: its name, size, format,
    allocation and content. Only raw and qcow2 images are accepted; a raw
    ISO image goes to a raw preallocated ISO disk whatever was asked.
    """
    info = _api.info(filename)
    image_fmt = info["format"]
    if image_fmt not in _FORMATS:
        raise EngineError(
            f"Unsupported image format {image_fmt!r} of {filename} "
            "(raw or qcow2 only)")
    content = "data"
    if image_fmt == "raw" and is_iso(filename):
        content, fmt, sparse = "iso", "raw", False
    initial_size = None
    if fmt == "qcow2" and sparse:
        # A sparse qcow2 disk on block storage starts this big and grows.
        initial_size = int(_api.measure(filename, "qcow2")["required"])
    if name is None:
        name = os.path.splitext(os.path.basename(filename))[0]
    return {
        "name": name, "provisioned_size": int(info["virtual-size"]),
        "fmt": fmt, "sparse": sparse, "content_type": content,
        "initial_size": initial_size,
        # qcow2 disks may take part in incremental backups.
        "enable_backup": fmt == "qcow2",
    }


def _connect(args: argparse.Namespace) -> Engine:
    return Engine.connect(args.engine_url, args.username, args.password,
                          cafile=args.cafile, secure=args.secure,
                          debug=args.log_level == "debug")


def upload_disk(args: argparse.Namespace, progress: Progress) -> None:
    """
    Create a disk from args.filename on args.storage_domain. progress
    starts in phase "inspecting image".
    """
    spec = disk_spec(args.filename, args.format, args.sparse, args.name)
    with _connect(args) as engine:
        progress.phase = "creating disk"
        disk = engine.add_disk(
            sd_name=args.storage_domain, disk_id=args.disk_id,
            description=args.description, timeout=args.disk_timeout,
            **spec)
        progress.phase = "creating transfer"
        host = engine.find_host(args.storage_domain)
        transfer = engine.create_transfer(disk, "upload", host=host)
        try:
            progress.phase = "uploading image"
            _api.upload(
                args.filename, transfer.transfer_url, args.cafile,
                buffer_size=args.buffer_size, secure=args.secure,
                progress=progress, proxy_url=transfer.proxy_url,
                max_workers=args.max_workers, retries=args.retries,
                # A new sparse or qcow2 disk reads as zeros.
                disk_is_zero=spec["fmt"] == "qcow2" or spec["sparse"])
        except BaseException:
            # Also on a signal: the transfer must not stay open.
            progress.phase = "cancelling transfer"
            engine.cancel_transfer(transfer)
            raise
        progress.phase = "finalizing transfer"
        engine.finalize_transfer(transfer, disk)
    progress.phase = "upload completed"


def download_disk(args: argparse.Namespace, progress: Progress) -> None:
    """
    Download disk args.disk_id (or one of its snapshots). progress starts
    in phase "creating transfer".
    """
    with _connect(args) as engine:
        disk = engine.find_disk(args.disk_id)
        image = disk
        if args.snapshot_id:
            image = engine.disk_snapshot(disk, args.snapshot_id)
        host = engine.find_host(engine.find_storage_domain_name(disk))
        transfer = engine.create_transfer(image, "download", host=host)
        try:
            progress.phase = "downloading image"
            _api.download(
                transfer.transfer_url, args.filename, args.cafile,
                fmt=args.format, secure=args.secure,
                proxy_url=transfer.proxy_url,
                max_workers=args.max_workers, retries=args.retries,
                buffer_size=args.buffer_size, progress=progress)
        finally:
            # Finalizing a download never changes the disk: always safe.
            progress.phase = "finalizing transfer"
            engine.finalize_transfer(transfer, disk)
    progress.phase = "download completed"


def run(args: argparse.Namespace, out: TextIO) -> None:
    """Run the engine command args.command, showing progress on out."""
    if args.command == "upload-disk":
        command, first = upload_disk, "inspecting image"
    else:
        command, first = download_disk, "creating transfer"
    if args.output == "json" or out.isatty():
        fmt: Format = "json" if args.output == "json" else "text"
        with ProgressBar(phase=first, output=out, format=fmt) as pb:
            command(args, pb)
        return
    lines = PhaseLines(out, first)
    command(args, lines)
    lines.summary()
