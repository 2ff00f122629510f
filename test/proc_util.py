# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resources of a process as the kernel reports them in /proc/PID, for
leak checks of a daemon run as a subprocess: threads, open descriptors,
I/O buffers and resident memory.

I/O buffers are anonymous shared mappings (``ioutil.aligned_buffer``),
which /proc/PID/maps lists as ``/dev/zero (deleted)``; counting them
finds a buffer that outlived its connection, whatever its size.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Resources:
    threads: int
    fds: int
    buffers: int
    rss: int  # bytes

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.threads - other.threads,
                         self.fds - other.fds,
                         self.buffers - other.buffers,
                         self.rss - other.rss)

    def __str__(self) -> str:
        return (f"threads={self.threads} fds={self.fds} "
                f"buffers={self.buffers} rss={self.rss / 1024**2:.1f}MiB")


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
    with open(f"/proc/{pid}/maps") as f:
        buffers = sum(1 for line in f if "/dev/zero" in line)
    return Resources(threads, fds, buffers, rss)


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

