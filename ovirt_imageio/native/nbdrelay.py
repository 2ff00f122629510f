# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door's relayed-read loop (ext/nbdrelay.c, the cffi module
``_nbdrelay``): runs of READ requests of one client connection served
in C from libnbd handles, without the GIL. ``nbdd.relay`` decides when a
run may serve a connection and accounts for what it did; this module
only hands buffers over and results back.

The module links libnbd; where it was not built (a client-only
install) importing this raises ImportError, and the door serves every
request in Python.

Example (the door's use)::

    relay = Relay(fd, structured=True, size=ticket.size, align=512,
                  slot_data=256 * 1024)
    run = relay.run([h1, h2], slots, pending=b"", wake_fd=-1,
                    run_ms=100, stall_ms=-1)
    run.reason, run.offsets, run.leftover
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Final, Sequence

from ._nbdrelay import ffi, lib

REQUEST_SIZE: Final = 28

# Why a run ended (nbdrelay.h).
DEADLINE: Final[int] = lib.NBDRELAY_DEADLINE
OTHER: Final[int] = lib.NBDRELAY_OTHER
EOF: Final[int] = lib.NBDRELAY_EOF
WAKE: Final[int] = lib.NBDRELAY_WAKE
FULL: Final[int] = lib.NBDRELAY_FULL
FAILED: Final[int] = lib.NBDRELAY_FAILED
ERROR: Final[int] = lib.NBDRELAY_ERROR
NO_HANDLE: Final[int] = lib.NBDRELAY_NO_HANDLE
IDLE: Final[int] = lib.NBDRELAY_IDLE

# Requests answered per run at most: more than 100 ms of 256 KiB reads
# at 8 GiB/s.
MAX_DONE: Final = 4096

# Client bytes a run reads at once: many headers per recv.
IN_SIZE: Final = 64 * 1024

# The pointer inside libnbd's Python handle (a capsule named so).
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def handle_pointer(h: Any) -> int:
    """The ``struct nbd_handle *`` of an ``nbd.NBD`` handle; valid while
    the handle lives."""
    return int(_get_pointer(h._o, b"nbd_handle"))


@dataclasses.dataclass
class Run:
    """What one run did."""

    reason: int
    # errno of the client socket's failure, or 0.
    error: int
    # The requests answered: offset, length, seconds from header to reply.
    offsets: list[int]
    lengths: list[int]
    seconds: list[float]
    # Headers of the reads that failed, unanswered, then the client's
    # bytes the run did not parse: to be read as requests again.
    failed: bytes
    leftover: bytes


class Relay:
    """Runs of the loop on one client socket (see the module doc)."""

    def __init__(self, fd: int, structured: bool, size: int, align: int,
                 slot_data: int, headroom: int = 4096,
                 max_done: int = MAX_DONE) -> None:
        self._a = a = ffi.new("struct nbdrelay_args *")
        a.client_fd = fd
        a.structured = int(structured)
        a.size = size
        a.align = align
        a.headroom = headroom
        a.slot_data = slot_data
        self.slot_size = headroom + slot_data
        # Kept here: the struct only points to them.
        self._in = ffi.new("uint8_t[]", IN_SIZE)
        self._offsets = ffi.new("uint64_t[]", max_done)
        self._lengths = ffi.new("uint32_t[]", max_done)
        self._seconds = ffi.new("double[]", max_done)
        a.input = self._in
        a.input_cap = IN_SIZE
        a.offsets = self._offsets
        a.lengths = self._lengths
        a.seconds = self._seconds
        a.max_done = max_done

    def run(self, handles: Sequence[Any], slots: Sequence[memoryview],
            pending: bytes, wake_fd: int, run_ms: int, stall_ms: int
            ) -> Run:
        """
        One run over ``handles`` (``nbd.NBD``, kept alive by the caller)
        with ``slots`` (writable buffers of at least ``slot_size``
        bytes), ``pending`` the client's bytes read before. Raises
        ValueError if pending does not fit, OSError if the run cannot
        start.
        """
        a = self._a
        if len(pending) > IN_SIZE:
            raise ValueError(f"{len(pending)} bytes pending")
        ffi.memmove(self._in, pending, len(pending))
        a.input_len = len(pending)
        ptrs = ffi.new("void *[]", [ffi.cast("void *", handle_pointer(h))
                                    for h in handles])
        a.handles = ptrs
        a.nhandles = len(handles)
        views = [ffi.from_buffer(s, require_writable=True) for s in slots]
        try:
            for v in views:
                if len(v) < self.slot_size:
                    raise ValueError(f"Slot of {len(v)} bytes")
            arr = ffi.new("uint8_t *[]", views)
            failed = ffi.new("uint8_t[]", max(1, len(slots)) * REQUEST_SIZE)
            a.slots = arr
            a.nslots = len(slots)
            a.failed = failed
            a.wake_fd = wake_fd
            a.run_ms = run_ms
            a.stall_ms = stall_ms
            rc = lib.nbdrelay_run(a)
        finally:
            for v in views:
                # The buffers' owners unmap them: no export may stay.
                ffi.release(v)
        if rc < 0:
            raise OSError(-rc, "nbdrelay_run")
        n = a.ndone
        return Run(
            reason=a.reason,
            error=a.error,
            offsets=ffi.unpack(self._offsets, n),
            lengths=ffi.unpack(self._lengths, n),
            seconds=ffi.unpack(self._seconds, n),
            failed=ffi.unpack(ffi.cast("char *", failed),
                              a.nfailed * REQUEST_SIZE),
            leftover=ffi.unpack(ffi.cast("char *", self._in), a.input_len),
        )
