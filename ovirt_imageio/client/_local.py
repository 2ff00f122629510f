# SPDX-License-Identifier: GPL-2.0-or-later
"""
Local images as NBD exports: a private qemu-nbd per image, reached
through libnbd (the nbd backend).

qemu-nbd gives us every format qemu reads (qcow2, vmdk, vdi, ...) as raw
guest data, with extents (allocation, holes, dirty bitmaps) and zeroing,
so the copy engine needs no format code. Each LocalImage runs one
qemu-nbd on a unix socket in a private temporary directory, removed with
the server.

qemu-nbd is started with SIGINT blocked. A Ctrl-C in a terminal signals
the whole foreground process group; the server must not die under the
copy workers, which would turn an orderly cancel into I/O errors. We stop
it ourselves (SIGTERM) once the workers are gone.

OVA files are tar archives; a member is exported through a raw slice
(offset and size in the archive) with the member's format on top.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import stat
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..backends import file as file_backend
from ..backends import nbd as nbd_backend
from ..backends.base import Mode
from ..tools import qemu_img, qemu_nbd

log = logging.getLogger("client")


@dataclass(frozen=True)
class Source:
    """
    Where a local image lives: a file, or a member of a tar file (OVA),
    and its format.
    """

    filename: str
    fmt: str
    member_offset: int | None = None
    member_size: int | None = None

    @property
    def is_member(self) -> bool:
        return self.member_offset is not None

    def qemu_path(self, fmt: str | None = None,
                  backing_chain: bool = True) -> str:
        """
        A path qemu tools accept: the file name, or for a member a json:
        filename with the raw slice as the protocol node. With fmt set
        the top node is that format, else qemu probes it.
        """
        if not self.is_member:
            return self.filename
        node: dict[str, Any] = {
            "file": {
                "driver": "raw",
                "offset": self.member_offset,
                "size": self.member_size,
                "file": {"driver": "file", "filename": self.filename},
            },
        }
        if fmt is not None:
            node["driver"] = fmt
        if not backing_chain:
            node["backing"] = None
        return "json:" + json.dumps(node)


def find_member(filename: str, member: str) -> tuple[int, int]:
    """
    Return (offset, size) of the data of a tar member.

    >>> find_member("vm.ova", "disk.qcow2")       # doctest: +SKIP
    (512, 393216)
    """
    try:
        with tarfile.open(filename) as tar:
            info = tar.getmember(member)
    except KeyError:
        raise ValueError(f"No member {member!r} in {filename}") from None
    except tarfile.TarError as e:
        raise ValueError(f"Cannot read {filename} as a tar file: {e}"
                         ) from None
    if not info.isfile() or info.sparse:
        # Only a plain member is one contiguous byte range in the file.
        raise ValueError(f"Member {member!r} in {filename} is not a "
                         "regular file")
    return info.offset_data, info.size


def image_info(filename: str, member: str | None = None) -> dict[str, Any]:
    """qemu-img info of a file or tar member, with member-offset/size."""
    if member is None:
        result: dict[str, Any] = qemu_img.info(filename)
        return result
    offset, size = find_member(filename, member)
    src = Source(filename, "raw", offset, size)
    result = qemu_img.info(src.qemu_path())
    result["member-offset"] = offset
    result["member-size"] = size
    return result


def source(filename: str, member: str | None = None) -> Source:
    """Inspect a local image (or tar member) for LocalImage."""
    info = image_info(filename, member)
    return Source(filename, info["format"], info.get("member-offset"),
                  info.get("member-size"))


def _can_direct_io(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    return True


# Writes into an image go through io_uring when qemu and the kernel allow
# it. With Linux AIO (aio=native), a direct write that allocates blocks
# in the file blocks io_submit() on ext4 and XFS, stalling qemu-nbd's one
# event loop: a qcow2 download, which allocates all the time, measured
# 40% slower than with io_uring on this project's benchmark; raw targets
# measured the same either way.
_use_io_uring = True


def _write_aio() -> str:
    return "io_uring" if _use_io_uring else "native"


def _io_uring_failed() -> None:
    global _use_io_uring
    _use_io_uring = False


# qemu-nbd inherits the signal mask of the thread that starts it; the
# lock keeps two threads from changing and restoring it interleaved.
_start_lock = threading.Lock()


class LocalImage:
    """
    A local image exported by a private qemu-nbd; with direct_raw, a raw
    file or block device is read and written by the file backend instead,
    sparing a copy through qemu-nbd.

    Example::

        with LocalImage(source("disk.qcow2"), read_only=True) as image:
            with image.open("r") as backend:
                backend.readinto(0, memoryview(buf))
    """

    def __init__(self, src: Source, *, read_only: bool, shared: int = 1,
                 backing_chain: bool = True, bitmap: str | None = None,
                 direct_raw: bool = False) -> None:
        self.source = src
        self.read_only = read_only
        self.shared = shared
        self.backing_chain = backing_chain
        self.bitmap = bitmap
        self.direct_raw = direct_raw
        self._tmpdir: str | None = None
        self._server: qemu_nbd.Server | None = None
        # Set when a raw file is served by the file backend (direct_raw).
        self._file: str | None = None

    def __enter__(self) -> LocalImage:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start qemu-nbd; return when it accepts connections."""
        src = self.source
        if self.direct_raw and self._can_serve_directly():
            self._file = src.filename
            log.debug("Serving %s with the file backend", src.filename)
            return
        self._tmpdir = tempfile.mkdtemp(prefix="imageio-")
        sock = os.path.join(self._tmpdir, "sock")
        # Direct I/O keeps a one-pass copy from filling the page cache;
        # tmpfs and some network file systems cannot do it.
        direct = _can_direct_io(src.filename)
        aio = "threads"
        if direct:
            aio = "native" if self.read_only else _write_aio()
        kwargs: dict[str, Any] = dict(
            read_only=self.read_only,
            shared=self.shared,
            cache="none" if direct else "writeback",
            aio=aio,
            discard="unmap",
            # Downloads detect zeros in the copy engine (64 KiB pieces,
            # sent as zero requests); qemu scanning every write again
            # costs 5-10% of a qcow2 download on a two-core client.
            detect_zeroes=None,
            bitmap=self.bitmap,
        )
        if src.is_member and src.fmt == "raw":
            server = qemu_nbd.Server(
                src.filename, "raw", sock, offset=src.member_offset,
                size=src.member_size, **kwargs)
        elif src.is_member:
            # The server's own json: form has no slice under a format.
            server = qemu_nbd.Server(
                src.qemu_path(backing_chain=self.backing_chain), src.fmt,
                sock, **kwargs)
        else:
            server = qemu_nbd.Server(src.filename, src.fmt, sock,
                                     backing_chain=self.backing_chain,
                                     **kwargs)
        try:
            try:
                self._start_server(server)
            except qemu_nbd.QemuNBDError:
                if server.aio != "io_uring":
                    raise
                # qemu built without io_uring, or a kernel that refuses
                # it (kernel.io_uring_disabled): Linux AIO always works.
                server.aio = "native"
                self._start_server(server)
                # Only now is io_uring known to be the cause.
                log.debug("qemu-nbd cannot use io_uring here; using "
                          "native AIO")
                _io_uring_failed()
        except BaseException:
            self.stop()
            raise
        log.debug("Started %s", server)

    def _start_server(self, server: qemu_nbd.Server) -> None:
        with _start_lock:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                server.start()
                self._server = server
            finally:
                # A SIGINT that came meanwhile is handled here, and may
                # raise: the server is known, stop() stops it.
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _can_serve_directly(self) -> bool:
        """
        Whether the file backend gives what qemu-nbd would: a raw regular
        file or block device, not a tar member, with direct I/O, no
        bitmap, and the whole image wanted. (qemu reports a raw file's
        holes as unallocated, which a shallow copy skips; the file backend
        reports them as zeros.)
        """
        src = self.source
        if (src.fmt != "raw" or src.is_member or self.bitmap is not None
                or not self.backing_chain):
            return False
        try:
            mode = os.stat(src.filename).st_mode
        except OSError:
            return False
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return False
        return _can_direct_io(src.filename)

    def stop(self) -> None:
        """Stop qemu-nbd and remove its socket directory."""
        self._file = None
        server, self._server = self._server, None
        try:
            if server is not None:
                server.stop()
        finally:
            self._remove_tmpdir()

    @property
    def uses_qemu_nbd(self) -> bool:
        """Whether the started image is served by qemu-nbd."""
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("Local image is not started")
        return self._server.url

    def open(self, mode: Mode = "r", *, dirty: bool = False
             ) -> nbd_backend.NBDBackend | file_backend.FileBackend:
        """
        A new connection to the export, or a new file backend for a raw
        file served directly. Writes deallocate zeroed ranges (sparse)
        since we create the targets we write to.
        """
        if self._file is not None:
            if dirty:
                raise RuntimeError("A raw file has no dirty extents")
            return file_backend.open(self._file, mode, sparse=True,
                                     max_connections=max(self.shared, 8))
        return nbd_backend.open(self.url, mode, sparse=True, dirty=dirty)

    def _remove_tmpdir(self) -> None:
        tmpdir, self._tmpdir = self._tmpdir, None
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
