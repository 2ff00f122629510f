# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resources of a process as the kernel reports them in /proc/PID, for
leak checks of a daemon run as a subprocess: threads, open descriptors,
I/O buffers and resident memory.

I/O buffers (``ioutil.aligned_buffer``) are private anonymous mappings
marked MADV_DONTFORK, which nothing else in the daemon asks for; smaps
shows that as the ``dc`` VmFlag. Adjacent mappings may be merged into one
entry, so they are counted in bytes. A quiescent daemon holds only the
idle pairs of its buffer pool (``idle_pool_limit``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

from ovirt_imageio.transfer import buffers


@dataclasses.dataclass(frozen=True)
class Resources:
    threads: int
    fds: int
    buffers: int  # bytes
    rss: int  # bytes

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.threads - other.threads,
                         self.fds - other.fds,
                         self.buffers - other.buffers,
                         self.rss - other.rss)

    def __str__(self) -> str:
        return (f"threads={self.threads} fds={self.fds} "
                f"buffers={self.buffers // 1024}KiB "
                f"rss={self.rss / 1024**2:.1f}MiB")


def resources(pid: int) -> Resources:
    """A snapshot of process pid's resources."""
    threads = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Threads":
                threads = int(value)
            elif key == "VmRSS":
                rss = int(value.split()[0]) * 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Resources(threads, fds, buffer_bytes(pid), rss)


def buffer_bytes(pid: int) -> int:
    """Bytes mapped by process pid with MADV_DONTFORK (I/O buffers)."""
    total = size = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1]) * 1024
            elif line.startswith("VmFlags:"):
                if "dc" in line.split(":", 1)[1].split():
                    total += size
    return total


def idle_pool_limit(buffer_size: int) -> int:
    """The most buffer bytes an idle daemon keeps for reuse."""
    return buffers.KEEP_PAIRS * 2 * buffer_size


def wait_for(predicate: Callable[[], bool], timeout: float,
             interval: float = 0.05) -> bool:
    """
    Poll predicate until it is true or timeout seconds passed; return
    its last value. For state the daemon reaches on its own after the
    client is gone (a connection thread ending), which has no event to
    wait on.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def steady(pid: int, timeout: float = 10, interval: float = 0.05
           ) -> Resources:
    """
    Resources once threads and descriptors stopped changing between two
    snapshots, so a connection that is still ending (the thread of the
    control request that asked whether the daemon is idle) is not taken
    for the baseline.
    """
    deadline = time.monotonic() + timeout
    last = resources(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = resources(pid)
        if (now.threads, now.fds) == (last.threads, last.fds):
            return now
        last = now
    return last

