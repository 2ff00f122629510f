# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run qemu-nbd serving one image on a unix socket.

Readiness without polling: qemu-nbd runs with ``--fork``, whose parent
process exits only once the server listens on the socket (or has failed,
with a non-zero status and a message on stderr). So ``start()`` waits
for the parent to exit, and the socket accepts connections from then on.
The server process itself is then not our child; its pid comes from
``--pid-file``, and a pidfd (Linux 5.3) lets ``stop()`` signal exactly
that process and wait for it with a timeout, immune to pid reuse.

``stop()`` sends SIGTERM and waits up to ``stop_timeout`` seconds, then
sends SIGKILL.

The environment variable QEMU_NBD overrides the binary.

>>> server = Server("disk.qcow2", "qcow2", "/tmp/sock")    # doctest: +SKIP
>>> with server:                                          # doctest: +SKIP
...     server.url
'nbd:unix:/tmp/sock:exportname='
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import stat
import subprocess
import tempfile
from typing import Any, Sequence

from ..util.errors import ImageioError

log = logging.getLogger(__name__)

# Bounds on starting the server and on its graceful exit.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# qemu-nbd allocates a buffer for every request and frees it when the
# reply is sent. With glibc's defaults a 1 MiB buffer is a fresh mapping
# each time (or heap trimmed away and grown again), so every direct read
# into it first faults in and zeroes 256 pages, and the buffer is
# unmapped after: 70% of qemu-nbd's CPU when we read a qcow2 image
# through it. Keeping request buffers (up to the 32 MiB NBD request
# limit) in a heap that is not trimmed under 128 MiB took qemu-nbd from
# 0.60 to 0.18 CPU seconds per GiB read here, and the reads 15-25% less
# time. The heap never holds more than the requests in flight at once.
MALLOC_TUNABLES = {
    "glibc.malloc.mmap_threshold": 32 * 1024**2,
    "glibc.malloc.trim_threshold": 128 * 1024**2,
}


def glibc_tunables(current: str | None) -> str:
    """
    The GLIBC_TUNABLES value for qemu-nbd: current (the caller's, if set)
    with MALLOC_TUNABLES added where current does not set them.

    >>> glibc_tunables("glibc.malloc.trim_threshold=1")
    'glibc.malloc.trim_threshold=1:glibc.malloc.mmap_threshold=33554432'
    """
    items = [item for item in (current or "").split(":") if item]
    present = {item.split("=", 1)[0] for item in items}
    items += [f"{name}={value}" for name, value in MALLOC_TUNABLES.items()
              if name not in present]
    return ":".join(items)


class QemuNBDError(ImageioError):
    """qemu-nbd failed to start, or could not be stopped."""


class Server:
    """
    A qemu-nbd process exporting image (format fmt) on the unix socket
    sock_path, under export name export_name.

    Options follow qemu-nbd(8), None meaning "qemu-nbd's default":

    - read_only: export read only (--read-only).
    - shared: maximum number of clients (--shared).
    - cache, aio, discard, detect_zeroes: the block layer options of the
      same names.
    - bitmap: name (or names) of persistent dirty bitmaps to export as
      ``qemu:dirty-bitmap:NAME`` contexts. An enabled bitmap records the
      writes done through this server.
    - allocation_depth: export ``qemu:allocation-depth`` (for formats
      other than raw only: a raw image has no layers to report, and
      qemu 6.2 reports wrong depths for raw).
    - backing_chain: with False, a qcow2 image is opened without its
      backing file, so unallocated clusters read as zeros and show as
      depth 0.
    - offset, size: export only this range of a raw image.
    """

    def __init__(
        self,
        image: str,
        fmt: str,
        sock_path: str,
        read_only: bool = False,
        shared: int = 8,
        cache: str | None = None,
        aio: str | None = None,
        discard: str | None = "unmap",
        detect_zeroes: str | None = None,
        bitmap: str | Sequence[str] | None = None,
        allocation_depth: bool = True,
        backing_chain: bool = True,
        offset: int | None = None,
        size: int | None = None,
        export_name: str = "",
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        if (offset is not None or size is not None) and fmt != "raw":
            raise ValueError("offset and size need the raw format")
        self.image = image
        self.fmt = fmt
        self.sock_path = sock_path
        self.read_only = read_only
        self.shared = shared
        self.cache = cache
        self.aio = aio
        self.discard = discard
        self.detect_zeroes = detect_zeroes
        self.bitmap = bitmap
        self.allocation_depth = allocation_depth
        self.backing_chain = backing_chain
        self.offset = offset
        self.size = size
        self.export_name = export_name
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._pid: int | None = None
        self._pidfd: int | None = None

    def __repr__(self) -> str:
        return (f"<qemu_nbd.Server image={self.image!r} fmt={self.fmt} "
                f"socket={self.sock_path!r} pid={self._pid}>")

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The ticket URL of the export."""
        return f"nbd:unix:{self.sock_path}:exportname={self.export_name}"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._pid

    def command(self) -> list[str]:
        """The qemu-nbd command line (without --fork and --pid-file)."""
        cmd = [
            os.environ.get("QEMU_NBD", "qemu-nbd"),
            "--persistent",
            f"--shared={self.shared}",
            f"--socket={self.sock_path}",
            f"--export-name={self.export_name}",
        ]
        if self.read_only:
            cmd.append("--read-only")
        if self.cache is not None:
            cmd.append(f"--cache={self.cache}")
        if self.aio is not None:
            cmd.append(f"--aio={self.aio}")
        if self.discard is not None:
            cmd.append(f"--discard={self.discard}")
        if self.detect_zeroes is not None:
            cmd.append(f"--detect-zeroes={self.detect_zeroes}")
        bitmaps = [self.bitmap] if isinstance(self.bitmap, str) \
            else list(self.bitmap or ())
        for name in bitmaps:
            cmd.append(f"--bitmap={name}")
        if self.allocation_depth and self.fmt != "raw":
            cmd.append("--allocation-depth")
        cmd.extend(self._image_args())
        return cmd

    def _image_args(self) -> list[str]:
        use_json = (self.offset is not None or self.size is not None
                    or (not self.backing_chain and self.fmt != "raw"))
        if not use_json:
            return ["--format", self.fmt, self.image]
        node: dict[str, Any] = {
            "driver": self.fmt,
            "file": {"driver": _protocol(self.image),
                     "filename": self.image},
        }
        if not self.backing_chain and self.fmt != "raw":
            node["backing"] = None
        if self.offset is not None:
            node["offset"] = self.offset
        if self.size is not None:
            node["size"] = self.size
        return ["json:" + json.dumps(node)]

    def start(self) -> None:
        """Start the server; return once it accepts connections."""
        if self._pidfd is not None:
            raise RuntimeError(f"{self} is already running")
        pid_file = self.sock_path + ".pid"
        cmd = self.command()
        cmd[1:1] = ["--fork", f"--pid-file={pid_file}"]
        log.debug("Starting %s", cmd)
        # stderr goes to a file: the server process inherits it and would
        # keep a pipe open forever.
        with tempfile.TemporaryFile() as err:
            try:
                env = dict(os.environ)
                env["GLIBC_TUNABLES"] = glibc_tunables(
                    env.get("GLIBC_TUNABLES"))
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err,
                                      env=env, timeout=self.start_timeout)
            except subprocess.TimeoutExpired:
                self._kill_orphan(pid_file)
                raise QemuNBDError(f"qemu-nbd did not start within "
                                   f"{self.start_timeout} seconds") from None
            if proc.returncode != 0:
                err.seek(0)
                message = err.read().decode(errors="replace").strip()
                raise QemuNBDError(f"qemu-nbd failed with exit code "
                                   f"{proc.returncode}: {message}")

        pid = _read_pid(pid_file)
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise QemuNBDError(
                f"qemu-nbd (pid {pid}) exited after starting") from None
        self._pid = pid
        log.debug("Started qemu-nbd pid=%d socket=%s", pid, self.sock_path)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after stop_timeout."""
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is None:
            return
        try:
            if not _terminate(pidfd, signal.SIGTERM, self.stop_timeout):
                log.warning("qemu-nbd pid=%s did not exit after SIGTERM, "
                            "killing it", self._pid)
                if not _terminate(pidfd, signal.SIGKILL, self.stop_timeout):
                    raise QemuNBDError(f"qemu-nbd pid={self._pid} "
                                       "survived SIGKILL")
        finally:
            os.close(pidfd)
            self._pid = None
        # Gone after SIGKILL; removing them keeps the paths reusable.
        for path in (self.sock_path, self.sock_path + ".pid"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def kill(self) -> None:
        """SIGKILL the server at once (for tests of a crashing server)."""
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _kill_orphan(self, pid_file: str) -> None:
        try:
            pid = _read_pid(pid_file)
            pidfd = os.pidfd_open(pid)
        except (QemuNBDError, ProcessLookupError):
            return
        try:
            _terminate(pidfd, signal.SIGKILL, self.stop_timeout)
        finally:
            os.close(pidfd)


def _protocol(path: str) -> str:
    """The qemu protocol driver for path."""
    try:
        if stat.S_ISBLK(os.stat(path).st_mode):
            return "host_device"
    except FileNotFoundError:
        pass
    return "file"


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        raise QemuNBDError(
            f"Cannot read qemu-nbd pid file {path}: {e}") from None


def _terminate(pidfd: int, signo: int, timeout: float) -> bool:
    """Send signo and wait up to timeout; True if the process exited."""
    try:
        signal.pidfd_send_signal(pidfd, signo)
    except ProcessLookupError:
        return True
    # A pidfd becomes readable when its process exits.
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))
