# SPDX-License-Identifier: GPL-2.0-or-later
"""
An IOQueue (``backends.base``) spreading reads over the backend's own
connection to an NBD server and more connections to the same export.

Why: qemu-nbd works on at most 16 requests of a connection at a time,
and sends each reply through a socket buffer smaller than one 256 KiB
read. Relaying a download, the NBD door's connection thread reads those
replies between everything else it does, so qemu-nbd's window moved
slower than for a client reading them in a thread of its own: nbdcopy
through the door ran at 0.79x of nbdcopy straight to qemu-nbd on a fast
disk, and at 0.90-0.95x with a second connection's window beside the
first (alternating runs).

Rules
-----

1. Only reads are spread, and only for read-only backends; everything
   else (writes, the backend's own calls) uses the backend's connection.
2. The queue's descriptor is an epoll descriptor over the connections'
   sockets, their queues' signal descriptors (``nbd_loop`` rule 5) and a
   wake-up eventfd, so the caller polls one descriptor as for any queue;
   a connection that waits to send gets EPOLLOUT interest from
   ``wants_write``. A socket readable with nothing in flight on it is at
   its server's end: ``completed()`` lets libnbd read it, which finds
   the handle dead, or the epoll would wake the caller at once for ever
   (an idle download's connection took a core when qemu-nbd died).
3. ``give_back()`` (from any thread) asks for the extra connections:
   new reads stop going to them, and each is disconnected once its reads
   are collected, in the caller's ``completed()``. A connection that
   fails is dropped from the spread too: what it had in flight fails
   (``CommandQueue``), and the caller runs those reads again through
   the backend's own calls. ``on_given_back`` runs once no extra
   connection is left, once, in the caller's thread; ``close()`` drops
   what is left.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable

from .nbd_loop import CommandQueue


class SpreadQueue:
    """Reads over several connections to one export (see module doc)."""

    def __init__(self, main: CommandQueue,
                 extras: list[tuple[CommandQueue, Any]],
                 disconnect: Callable[[Any], None],
                 on_given_back: Callable[[], None]) -> None:
        self._main = main
        # (queue, handle), until given back.
        self._extras = list(extras)
        self._disconnect = disconnect
        self._on_given_back: Callable[[], None] | None = on_given_back
        self._lock = threading.Lock()
        self._giving_back = False
        self._closed = False
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._masks: dict[int, int] = {}
        for q in [main] + [q for q, _ in self._extras]:
            self._epoll.register(q.socket_fd, select.EPOLLIN)
            self._masks[q.socket_fd] = select.EPOLLIN
            self._epoll.register(q.signal_fd, select.EPOLLIN)
        self._epoll.register(self._wake, select.EPOLLIN)
        # Round robin over the connections reads go to.
        self._turn = 0

    def fileno(self) -> int:
        return self._epoll.fileno()

    def relay_targets(self) -> tuple[list[Any], int]:
        """
        Like ``CommandQueue.relay_targets``, over the connections reads
        go to (rule 3); the wake-up descriptor ends the loop when the
        extra connections are asked for, so that ``completed()`` gives
        them back.
        """
        with self._lock:
            giving_back = self._giving_back
        queues = [self._main]
        if not giving_back:
            queues += [q for q, _ in self._extras]
        handles: list[Any] = []
        for q in queues:
            handles += q.relay_targets()[0]
        return handles, -1 if giving_back else self._wake

    def wants_write(self) -> bool:
        # Rule 2: the epoll descriptor is readable when a socket is
        # writable, for the sockets that want it.
        for q in [self._main] + [q for q, _ in self._extras]:
            mask = select.EPOLLIN | (select.EPOLLOUT if q.wants_write()
                                     else 0)
            if self._masks[q.socket_fd] != mask:
                self._epoll.modify(q.socket_fd, mask)
                self._masks[q.socket_fd] = mask
        return False

    def submit(self, write: bool, offset: int, buf: memoryview, tag: int
               ) -> bool:
        if write or self._giving_back or not self._extras:
            return self._main.submit(write, offset, buf, tag)
        queues = [self._main] + [q for q, _ in self._extras]
        self._turn = (self._turn + 1) % len(queues)
        return queues[self._turn].submit(write, offset, buf, tag)

    def kick(self) -> None:
        # CommandQueue sends each command as it is issued.
        pass

    def completed(self) -> list[tuple[int, bool]]:
        with self._lock:
            giving_back = self._giving_back
        if giving_back:
            # Only then can the wake-up be set: reading it on every call
            # was a failed system call per two reads relayed.
            try:
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass
        queues = [self._main] + [q for q, _ in self._extras]
        if not all(q.busy for q in queues):
            # Rule 2: only then may a socket be readable for nothing.
            ready = {fd for fd, _ in self._epoll.poll(0)}
            for q in queues:
                if not q.busy and q.socket_fd in ready:
                    q.poke()
        done = self._main.completed()
        for q, h in list(self._extras):
            done += q.completed()
            if q.dead or (giving_back and not q.busy):
                self._drop(q, h)
        if not self._extras:
            self._given_back()
        return done

    def give_back(self) -> None:
        """Ask for the extra connections (rule 3); from any thread, also
        after ``close``, when there is nothing left to give."""
        with self._lock:
            if self._closed:
                return
            self._giving_back = True
            # Under the lock: close() closes the descriptor after it.
            os.eventfd_write(self._wake, 1)

    def _drop(self, q: CommandQueue, h: Any) -> None:
        self._extras.remove((q, h))
        fd = q.socket_fd
        self._masks.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # A dead handle's socket is closed already.
        self._epoll.unregister(q.signal_fd)
        q.close()
        self._disconnect(h)

    def _given_back(self) -> None:
        callback, self._on_given_back = self._on_given_back, None
        if callback is not None:
            callback()

    def close(self) -> None:
        # Every request was collected (IOQueue.close).
        for q, h in list(self._extras):
            self._drop(q, h)
        self._given_back()
        with self._lock:
            self._closed = True
        self._epoll.close()
        os.close(self._wake)
        self._main.close()
