# SPDX-License-Identifier: GPL-2.0-or-later
"""
An event loop thread for one libnbd handle, so commands of several
threads are in flight on it together.

Theory of operation
===================

libnbd's synchronous calls, and ``poll()``, hold the handle's lock
while they wait for the server, so threads sharing a handle through them
take turns: four threads writing 256 KiB each through ``pwrite`` to
qemu-nbd moved 198 MiB/s where one moved 174. Submitting with the
``aio_*`` calls takes the lock only briefly; what remains is to drive
the socket. The loop does that in its own thread, the way libnbd
documents for an external main loop: it waits in ``select()`` (holding
no lock) on the handle's descriptor in the direction libnbd asks for,
and on a wake-up pipe, then calls ``aio_notify_read``/``aio_notify_write``.
The same four threads, each waiting on its command through the loop,
moved 367 MiB/s.

Rules
-----

1. A command is submitted by its caller with ``completion=`` a callback
   from ``completion()``, then ``wake()`` (the loop may be waiting for
   reads only while the command still has to be written; wake() checks
   that, since a pipe write and a loop turn per command cost the relay
   of the NBD door about 8% of its CPU), then ``wait()``. The callback
   does not retire the command: the caller retires it with
   ``aio_command_completed``, which raises the command's error as
   without the loop.
2. While the loop runs, every command goes through it: a synchronous
   call (or ``poll()``) waiting on the handle would race the loop for
   its reply, and wait forever when the loop took it.
3. When the handle dies (the server went away, or ``close()``), the loop
   ends and wakes every waiter; their ``aio_command_completed`` then
   raises.
4. A ``CommandQueue`` is the other way to keep commands in flight, for
   a handle without a loop: its one caller submits many reads and
   writes, drives the handle itself and collects them in batches from a
   list the completion callbacks fill (they retire their commands:
   return 1). When the handle dies, the commands still in flight are
   reported failed.
5. A CommandQueue's descriptor is readable while finished commands wait
   in it, though some finish out of its caller's sight: a synchronous
   call on the handle (the backend's own, in the same thread) reads the
   replies to queued commands before its own, and a handle that dies in
   any call fails everything in flight through the callbacks and closes
   its socket. So the descriptor is the socket only while commands are
   in flight and none waits; otherwise it is an eventfd of the queue's
   (``signal_fd``), which completions outside ``completed()`` write.
   Idle, the socket would wake the caller at once (closed, or at a dead
   server's end), or watch whatever took its number. Before: relaying a
   download from a qemu-nbd killed mid-copy, the NBD door's connection
   waited forever about every other time for reads such a call had
   failed, and the daemon's stop with it; an idle upload's connection
   polled the closed socket and took a core.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import threading
from typing import Any, Callable

import nbd

log = logging.getLogger(__name__)


class Completion:
    """One command's completion, waited for by its caller."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        # Held until the command completes: acquiring and releasing a
        # lock is a C call each, an Event a Condition's worth of Python
        # per request.
        self._lock = threading.Lock()
        self._lock.acquire()

    def __call__(self, error: Any) -> int:
        # Runs in the loop thread; 0 leaves the command for the caller to
        # retire (rule 1).
        self.set()
        return 0

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            # Set already: the loop ended after the command completed.
            pass

    def wait(self) -> None:
        """Wait once; the lock stays taken, so a late set() (the loop
        ending after the command completed) finds it held and releases
        it harmlessly."""
        self._lock.acquire()


class EventLoop:
    """Drives one handle's socket in a thread (see the module docstring).

    >>> loop = EventLoop(h)                           # doctest: +SKIP
    >>> done = loop.completion()                      # doctest: +SKIP
    >>> cookie = h.aio_pwrite(buf, 0, completion=done)  # doctest: +SKIP
    >>> loop.wake(); done.wait()                      # doctest: +SKIP
    >>> h.aio_command_completed(cookie)               # doctest: +SKIP
    True
    """

    def __init__(self, h: Any, name: str = "nbd-loop") -> None:
        self._h = h
        self._fd = h.aio_get_fd()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._pending: set[Completion] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name,
                                        daemon=True)
        self._thread.start()

    def completion(self) -> Completion:
        """A completion callback to submit a command with."""
        done = Completion()
        with self._lock:
            if self._stopped:
                # Nothing will drive the handle: the caller's
                # aio_command_completed reports the dead handle.
                done.set()
            else:
                self._pending.add(done)
        return done

    def wait(self, done: Completion) -> None:
        """Wait until the command of ``done`` completed or the loop
        ended."""
        done.wait()
        with self._lock:
            self._pending.discard(done)

    def discard(self, done: Completion) -> None:
        """Forget ``done`` of a command that failed to submit."""
        with self._lock:
            self._pending.discard(done)

    def wake(self) -> None:
        """Make the loop look again at what the handle waits for, if a
        command submitted still has bytes to send: the loop may be
        waiting for replies only. A command sent whole, or queued behind
        a reply the loop is reading, needs no wake-up (the loop looks
        again after every step)."""
        if self._h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            # The pipe is full of wake-ups already.
            pass

    def close(self) -> None:
        """Stop the loop thread; the handle stays open."""
        with self._lock:
            if self._stopped and not self._thread.is_alive():
                return
            self._stopped = True
        self._wake()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        h, fd, wake_r = self._h, self._fd, self._wake_r
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                direction = h.aio_get_direction()
                readers = [wake_r]
                if direction & nbd.AIO_DIRECTION_READ:
                    readers.append(fd)
                writers = [fd] if direction & nbd.AIO_DIRECTION_WRITE else []
                readable, writable, _ = select.select(readers, writers, [])
                if wake_r in readable:
                    _drain(wake_r)
                if fd in readable:
                    h.aio_notify_read()
                if fd in writable:
                    h.aio_notify_write()
                if h.aio_is_dead() or h.aio_is_closed():
                    return
        except (nbd.Error, OSError) as e:
            log.debug("NBD event loop ends: %s", e)
        finally:
            self._end()

    def _end(self) -> None:
        # Rule 3: nothing completes any more.
        with self._lock:
            self._stopped = True
            pending, self._pending = self._pending, set()
        for done in pending:
            done.set()


class CommandQueue:
    """
    An IOQueue (``backends.base``) of reads and writes on a handle that
    no EventLoop drives: its one caller drives it (rule 4). The caller
    polls the handle's own descriptor (readable, and writable when
    ``wants_write()``), and ``completed()`` lets libnbd read and write
    what it can, running the completion callbacks in the caller's thread.
    Against an event loop thread that saves the thread and a wake-up of
    each side per command, for a caller that is the handle's only user
    (the NBD door's connection thread, which also makes the backend's
    synchronous calls). ``accept(write, offset, length)`` says which
    requests the handle takes as one command; the others are answered
    False, for the backend's own calls.
    """

    def __init__(self, h: Any, accept: Callable[[bool, int, int], bool]
                 ) -> None:
        self._h = h
        # Read once: a dead handle refuses aio_get_fd.
        self.socket_fd = int(h.aio_get_fd())
        # Rule 5: written when a command finishes outside completed().
        self.signal_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._signaled = False
        self._driving = False
        self._accept = accept
        # Tags in flight, and those finished and not yet collected.
        self._pending: set[int] = set()
        self._done: list[tuple[int, bool]] = []
        self._dead = False

    def relay_targets(self) -> tuple[list[Any], int]:
        """
        The handles a loop outside this queue may read from now, while
        nothing is in flight here (the NBD door's relay loop), and a
        descriptor that ends such a loop when readable (-1: none).
        """
        return ([] if self._dead else [self._h]), -1

    def fileno(self) -> int:
        # Rule 5.
        if self._pending and not self._done:
            return self.socket_fd
        return self.signal_fd

    @property
    def busy(self) -> bool:
        """Whether commands are in flight or not yet collected."""
        return bool(self._pending or self._done)

    @property
    def dead(self) -> bool:
        """Whether the handle was found dead (nothing completes)."""
        return self._dead

    def wants_write(self) -> bool:
        if self._dead:
            return False
        try:
            direction = self._h.aio_get_direction()
        except nbd.Error:
            # Dead: completed() says so.
            return False
        return bool(direction & nbd.AIO_DIRECTION_WRITE)

    def submit(self, write: bool, offset: int, buf: memoryview, tag: int
               ) -> bool:
        if self._dead or not self._accept(write, offset, len(buf)):
            return False
        command = self._h.aio_pwrite if write else self._h.aio_pread
        # Before the command: libnbd may run its callback before we
        # return.
        self._pending.add(tag)
        try:
            command(buf, offset,
                    completion=functools.partial(self._completed, tag))
        except nbd.Error:
            self._pending.discard(tag)
            return False
        return True

    def _completed(self, tag: int, error: Any) -> int:
        # In completed(), or in any other call on the handle (rule 5); 1
        # retires the command.
        if tag in self._pending:
            self._pending.discard(tag)
            self._done.append((tag, error.value == 0))
            if not self._driving and not self._signaled:
                os.eventfd_write(self.signal_fd, 1)
                self._signaled = True
        return 1

    def kick(self) -> None:
        # libnbd sends each command as it is issued, as far as the
        # socket takes it; the rest goes when the caller's poll says the
        # socket is writable (wants_write).
        pass

    def completed(self) -> list[tuple[int, bool]]:
        if self._signaled:
            _drain(self.signal_fd)
            self._signaled = False
        if self._pending and not self._dead:
            self._drive()
        done, self._done = self._done, []
        return done

    def poke(self) -> None:
        """
        Let libnbd read the socket of a handle with nothing in flight,
        for a caller that found it readable: the server went away (the
        handle is dead then) or sent what it should not.
        """
        if not self._dead:
            self._drive()

    def _drive(self) -> None:
        h = self._h
        # Rule 5: what completes now is returned by this call.
        self._driving = True
        try:
            # Never blocks: libnbd reads and writes what the socket has
            # bytes or room for. Reading may change what it waits for.
            # Each call releases and takes back the GIL, a hand-off when
            # other connections' threads wait for it: a handle that
            # waits for nothing is dead or closed, and only then is that
            # asked.
            direction = h.aio_get_direction()
            if direction & nbd.AIO_DIRECTION_READ:
                h.aio_notify_read()
                direction = h.aio_get_direction()
            if direction & nbd.AIO_DIRECTION_WRITE:
                h.aio_notify_write()
                direction = h.aio_get_direction()
            dead = not direction and (h.aio_is_dead() or h.aio_is_closed())
        except nbd.Error as e:
            log.debug("NBD handle failed: %s", e)
            dead = True
        finally:
            self._driving = False
        if dead:
            # Nothing completes on a dead handle (rule 3): what is still
            # in flight failed.
            self._dead = True
            self._done.extend((tag, False) for tag in sorted(self._pending))
            self._pending.clear()

    def close(self) -> None:
        if self.signal_fd >= 0:
            os.close(self.signal_fd)
            self.signal_fd = -1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
