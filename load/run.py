# SPDX-License-Identifier: GPL-2.0-or-later
"""
Load test (``make load``): many concurrent connections mixing GET, PUT
and PATCH on a real daemon, with every byte checked against a model, and
the daemon's threads, descriptors, I/O buffers and memory compared
before and after.

    .venv/bin/python load/run.py --seconds 30 [--connections 64]
        [--tickets 8] [--transport remote|local]

Each connection owns one region of one ticket's image, so its model of
that region is exact even while the other connections of the ticket
write theirs: every GET is compared byte for byte, and at the end every
region is read back whole. The run is bounded in time and in requests,
talks only to a daemon it starts on loopback, and stops it.

Exit status 1 on any error, data mismatch or leaked descriptor or
buffer; the figures are printed either way.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "test"))
# proc_util reads the buffer pool's limit from the package.
sys.path.insert(0, TOP)

from support.daemon_util import Daemon  # noqa: E402
from support.proc_util import Resources, idle_pool_limit, resources, wait_for  # noqa: E402

KiB = 1024
MiB = 1024**2

# Requests a connection may send at most, whatever the time allows.
MAX_REQUESTS = 1_000_000

# Share of each operation, in percent.
MIX = [("GET", 40), ("PUT", 35), ("ZERO", 12), ("FLUSH", 5),
       ("OPTIONS", 5), ("RECONNECT", 3)]

# Bound on the daemon's I/O pool threads, which stay after the load:
# max(8, 4 * [daemon] max_connections) with the default of 8.
POOL_THREADS = 32
# Buffers the daemon keeps for reuse (test/conf/daemon.conf sizes).
POOL_LIMIT = idle_pool_limit(128 * KiB)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.mismatches = 0
        self.sent = 0
        self.received = 0

    def add(self, op: str, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.ops[op] += 1
            self.sent += sent
            self.received += received

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def mismatch(self) -> None:
        with self.lock:
            self.mismatches += 1


class Worker(threading.Thread):
    """One connection working on its region of one ticket."""

    def __init__(self, daemon: Daemon, transport: str, ticket_id: str,
                 start: int, size: int, deadline: float, stats: Stats,
                 seed: int) -> None:
        super().__init__(daemon=True)
        self._daemon = daemon
        self._transport = transport
        self._path = f"/images/{ticket_id}"
        self._start = start
        self._model = bytearray(size)
        self._deadline = deadline
        self._stats = stats
        self._rand = random.Random(seed)
        self._conn: http.client.HTTPConnection | None = None
        self._ops = [op for op, _ in MIX]
        self._weights = [w for _, w in MIX]

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._transport == "local":
                self._conn = self._daemon.local(timeout=60)
            else:
                self._conn = self._daemon.remote(timeout=60)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, url: str, body: Any = None,
                 headers: dict[str, str] | None = None
                 ) -> tuple[int, bytes]:
        conn = self._connection()
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()

    def _range(self) -> tuple[int, int]:
        """A random (offset, length) inside the region, often aligned."""
        size = len(self._model)
        if self._rand.random() < 0.5:
            block = 4 * KiB
            length = block * self._rand.randint(1, min(32, size // block))
            offset = block * self._rand.randint(0, (size - length) // block)
        else:
            length = self._rand.randint(1, min(96 * KiB, size))
            offset = self._rand.randint(0, size - length)
        return offset, length

    def run(self) -> None:
        try:
            for _ in range(MAX_REQUESTS):
                if time.monotonic() >= self._deadline:
                    break
                op = self._rand.choices(self._ops, self._weights)[0]
                try:
                    self._step(op)
                except (OSError, http.client.HTTPException) as e:
                    self._stats.error(f"{op}: {e!r}")
                    self._close()
            self._verify_all()
        except (OSError, http.client.HTTPException) as e:
            self._stats.error(f"verify: {e!r}")
        finally:
            self._close()

    def _step(self, op: str) -> None:
        if op == "RECONNECT":
            self._close()
            self._stats.add(op)
            return
        if op == "OPTIONS":
            status, _ = self._request("OPTIONS", self._path)
            self._check(op, status, 200)
            return
        if op == "FLUSH":
            status, _ = self._request("PATCH", self._path,
                                      json.dumps({"op": "flush"}))
            self._check(op, status, 200)
            return
        offset, length = self._range()
        first = self._start + offset
        if op == "GET":
            status, data = self._request(
                "GET", self._path,
                headers={"Range": f"bytes={first}-{first + length - 1}"})
            if self._check(op, status, 206, received=len(data)):
                if data != self._model[offset:offset + length]:
                    self._stats.mismatch()
        elif op == "PUT":
            data = self._rand.randbytes(length)
            status, _ = self._request(
                "PUT", self._path + "?flush=n", body=data,
                headers={"Content-Range":
                         f"bytes {first}-{first + length - 1}/*"})
            if self._check(op, status, 200, sent=length):
                self._model[offset:offset + length] = data
        elif op == "ZERO":
            status, _ = self._request("PATCH", self._path, json.dumps(
                {"op": "zero", "offset": first, "size": length}))
            if self._check(op, status, 200):
                self._model[offset:offset + length] = bytes(length)

    def _check(self, op: str, status: int, expected: int, sent: int = 0,
               received: int = 0) -> bool:
        if status != expected:
            self._stats.error(f"{op}: status {status}, expected {expected}")
            return False
        self._stats.add(op, sent, received)
        return True

    def _verify_all(self) -> None:
        first = self._start
        last = first + len(self._model) - 1
        status, data = self._request(
            "GET", self._path, headers={"Range": f"bytes={first}-{last}"})
        if self._check("GET", status, 206, received=len(data)):
            if data != self._model:
                self._stats.mismatch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tickets", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=8 * MiB)
    parser.add_argument("--transport", choices=("remote", "local"),
                        default="remote",
                        help="remote (TLS, the default) or local (unix "
                        "socket)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if args.connections % args.tickets:
        parser.error("--connections must be a multiple of --tickets")
    regions = args.connections // args.tickets
    region = args.image_size // regions
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    tmp = tempfile.mkdtemp(prefix="imageio-load-")
    daemon = Daemon(os.path.join(tmp, "daemon"), extra_conf="""
        [logger_root]
        level = INFO
        """)
    try:
        daemon.start()
        ticket_ids = []
        for i in range(args.tickets):
            path = os.path.join(tmp, f"image-{i}.raw")
            with open(path, "wb") as f:
                f.truncate(args.image_size)
            ticket_id = str(uuid.uuid4())
            daemon.add_ticket({
                "uuid": ticket_id, "size": args.image_size,
                "url": f"file://{path}", "timeout": 3600,
                "ops": ["read", "write"],
            })
            ticket_ids.append(ticket_id)

        before = resources(daemon.pid())
        print(f"load: {args.connections} connections over {args.tickets} "
              f"tickets ({args.transport}), {args.seconds:g} seconds, "
              f"seed {seed}", flush=True)
        stats = Stats()
        started = time.monotonic()
        deadline = started + args.seconds
        workers = [
            Worker(daemon, args.transport, ticket_ids[i % args.tickets],
                   (i // args.tickets) * region, region, deadline, stats,
                   seed + i)
            for i in range(args.connections)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - started

        # Connections end on the daemon's side after ours closed.
        def settled() -> bool:
            return all(daemon.ticket(t)["connections"] == 0
                       for t in ticket_ids)
        wait_for(settled, 30)
        after = _settle(daemon.pid(), before)
        return report(stats, elapsed, before, after)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _settle(pid: int, before: Resources) -> Resources:
    """Resources once descriptors and buffers are back, or at a bound."""
    def back() -> bool:
        now = resources(pid)
        return (now.fds <= before.fds
                and now.buffers <= max(before.buffers, POOL_LIMIT))
    wait_for(back, 10)
    return resources(pid)


def report(stats: Stats, elapsed: float, before: Resources,
           after: Resources) -> int:
    total = sum(n for op, n in stats.ops.items() if op != "RECONNECT")
    ops = " ".join(f"{op}={n}" for op, n in sorted(stats.ops.items()))
    delta = after - before
    print(f"load: requests served: {total} in {elapsed:.1f} s "
          f"({total / elapsed:.0f}/s): {ops}")
    print(f"load: bytes uploaded: {stats.sent / MiB:.1f} MiB, downloaded: "
          f"{stats.received / MiB:.1f} MiB")
    print(f"load: errors: {len(stats.errors)}")
    for text in stats.errors[:10]:
        print(f"load:   {text}")
    print(f"load: data mismatches: {stats.mismatches}")
    print(f"load: daemon before: {before}")
    print(f"load: daemon after:  {after}")
    print(f"load: delta: threads {delta.threads:+d} (I/O pool threads stay, "
          f"up to {POOL_THREADS}), fds {delta.fds:+d}, buffers "
          f"{delta.buffers // KiB:+d} KiB (the pool keeps up to "
          f"{POOL_LIMIT // KiB} KiB), rss {delta.rss / MiB:+.1f} MiB")
    leaked = (delta.fds > 0
              or after.buffers > max(before.buffers, POOL_LIMIT)
              or delta.threads > POOL_THREADS)
    print(f"load: leaks: {'YES' if leaked else 'none'}")
    failed = stats.errors or stats.mismatches or leaked
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
