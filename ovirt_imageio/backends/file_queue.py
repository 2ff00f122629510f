# SPDX-License-Identifier: GPL-2.0-or-later
"""
The file backend's IOQueue: a connection's aligned reads and writes in
flight together through one Linux AIO context (``ioutil.AioQueue``),
collected by the thread that started them.

Why: the NBD door used to keep a connection's requests in flight with a
storage thread per request, each waiting for its own pwrite. Waking
those threads, and passing the GIL between them, cost the door more CPU
than moving the data (about 13 context switches per request uploading
through nbdcopy, against one per two requests in qemu-nbd). With a
queue, one thread submits and reaps, as qemu-nbd --aio=native does.

Rules
-----

1. The queue takes only what a plain O_DIRECT request can do: offset,
   length and buffer address aligned to the backend's block size, and a
   range inside the file (a write past the end grows the file, which
   the backend does under its size lock). Everything else, and a
   request the kernel refuses at submission, is answered False: the
   caller uses the backend's own calls, which bounce, grow and report
   errors as they always do.
2. A request is complete only when all its bytes moved; a short or
   failed one is reported not ok, and the caller runs it again through
   the backend, whose error (or success, for a read reaching the end of
   file) is the request's.
"""

from __future__ import annotations

from typing import Callable

from ..native import ioutil


class FileQueue:
    """An IOQueue (``backends.base``) over a file backend's descriptor."""

    def __init__(self, fd: int, block_size: int, size: Callable[[], int],
                 writable: bool, depth: int) -> None:
        self._aio = ioutil.AioQueue(depth)
        self._fd = fd
        self._block_size = block_size
        self._size = size
        # The size seen last; the file only grows while it is served, so
        # a range inside it needs no fstat (rule 1).
        self._known_size = size()
        self._writable = writable
        # tag -> length of the requests in flight.
        self._lengths: dict[int, int] = {}

    def fileno(self) -> int:
        return self._aio.fileno()

    def wants_write(self) -> bool:
        return False

    def submit(self, write: bool, offset: int, buf: memoryview, tag: int
               ) -> bool:
        length = len(buf)
        bs = self._block_size
        if (not length or offset % bs or length % bs
                or ioutil.buffer_address(buf) % bs
                or (write and not self._writable)):
            return False
        end = offset + length
        if end > self._known_size:
            self._known_size = self._size()
            if end > self._known_size:
                return False
        try:
            self._aio.submit(self._fd, write, buf, offset, tag)
        except OSError:
            return False
        self._lengths[tag] = length
        return True

    def kick(self) -> None:
        self._aio.kick()

    def completed(self) -> list[tuple[int, bool]]:
        lengths = self._lengths
        return [(tag, result == lengths.pop(tag))
                for tag, result in self._aio.reap()]

    def close(self) -> None:
        self._aio.close()
