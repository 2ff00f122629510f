# SPDX-License-Identifier: GPL-2.0-or-later
"""
Hash-on-write (issue 17, point 4): what a checksum costs after an upload
to a ticket with ``"checksum"`` (blake2b, or --algorithm, with 4 MiB
blocks), against the same work without it, on our daemon (file ticket,
the client on the local socket). "Today's" verify is the default one
(blake2b) on a plain ticket.

Rows, each the median of --reps runs, the page cache dropped before each
step that reads:

- upload: ``client.upload`` of a random raw image (default 2 GiB) in
  4 MiB aligned requests, to a plain ticket and to a hash-on-write one
  (the daemon hashes the data as it writes it);
- checksum after the hash-on-write upload: its time and the bytes it
  read from storage (``ovirt_imageio_backend_bytes_total{op="checksum"}``);
- full checksum of the plain ticket;
- ``upload(verify=True)`` to a plain ticket (the upload hashing the local
  blocks as it sends them, then the server's full checksum) and to a
  hash-on-write one (neither side reads the image again).

Targets: the checksum reads 0 bytes and answers in under 50 ms; upload
with verify on a hash-on-write ticket at most 0.75x of today's upload
with verify. The stricter ratio to upload + full server checksum (no
local checksum) is printed too. Writes JSON to bench/out/hash_on_write.json.

    .venv/bin/python bench/hash_on_write.py [--size 2] [--reps 3]
        [--algorithm sha256]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import run  # noqa: E402

from ovirt_imageio import client  # noqa: E402
from ovirt_imageio.net.unixhttp import UnixHTTPConnection  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1024**2
GiB = 1024**3
CA = os.path.join(daemons.PKI, "ca.pem")
BLOCK_SIZE = 4 * MiB


def counters(d: daemons.Daemon) -> tuple[int, int]:
    """Checksum requests answered so far, and the bytes they read."""
    status, body = d.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"metrics: {status}")
    requests = read = 0
    for line in body.decode().splitlines():
        if line.startswith("ovirt_imageio_requests_total{") and \
                'route="/images/{id}/checksum"' in line:
            requests += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("ovirt_imageio_backend_bytes_total{") and \
                'op="checksum"' in line:
            read += int(float(line.rsplit(" ", 1)[1]))
    return requests, read


def bytes_read(d: daemons.Daemon, before: tuple[int, int]) -> int:
    """Bytes read by the one checksum request since before (counted just
    after its answer is sent: wait for it, bounded)."""
    deadline = time.monotonic() + 30
    while (now := counters(d))[0] <= before[0]:
        if time.monotonic() > deadline:
            raise RuntimeError("checksum request never counted")
        time.sleep(0.01)
    return now[1] - before[1]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = int(args.size * GiB)
        os.makedirs(args.workdir, exist_ok=True)
        self.image = run.prepare(args.workdir, self.size, self.size)["raw"]
        self.target = os.path.join(args.workdir, "target.raw")
        self.daemon = daemons.Daemon("ours", "unix", args.workdir)
        self.times: dict[str, list[float]] = {}
        self.read: list[int] = []

    def ticket(self, hashed: bool) -> str:
        with open(self.target, "wb") as f:
            f.truncate(self.size)
        tid = str(uuid.uuid4())
        ticket: dict[str, Any] = {
            "uuid": tid, "size": self.size, "timeout": 3600,
            "ops": ["read", "write"], "url": f"file://{self.target}"}
        if hashed:
            ticket["checksum"] = {"algorithm": self.args.algorithm,
                                  "block_size": BLOCK_SIZE}
        self.daemon.add_ticket(ticket)
        return tid

    def timed(self, name: str, fn: Callable[[], object]) -> None:
        start = time.monotonic()
        fn()
        self.times.setdefault(name, []).append(time.monotonic() - start)

    def upload(self, tid: str, verify: bool = False) -> None:
        client.upload(self.image, self.daemon.url(tid), CA,
                      buffer_size=BLOCK_SIZE, verify=verify)

    def checksum(self, tid: str) -> dict[str, Any]:
        conn = UnixHTTPConnection(self.daemon.local, timeout=600)
        try:
            conn.request("GET", f"/images/{tid}/checksum?algorithm="
                         f"{self.args.algorithm}&block_size={BLOCK_SIZE}")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"checksum: {r.status} {body!r}")
            result: dict[str, Any] = json.loads(body)
            return result
        finally:
            conn.close()

    def rep(self) -> None:
        d = self.daemon
        # Plain ticket: upload, then the server's full checksum.
        tid = self.ticket(hashed=False)
        run.drop_caches()
        self.timed("upload plain", lambda: self.upload(tid))
        run.drop_caches()
        full: dict[str, Any] = {}
        self.timed("checksum plain (full read)",
                   lambda: full.update(self.checksum(tid)))
        d.del_ticket(tid)

        # Hash-on-write ticket: upload, then the checksum from digests.
        tid = self.ticket(hashed=True)
        run.drop_caches()
        self.timed("upload hash-on-write", lambda: self.upload(tid))
        run.drop_caches()
        before = counters(d)
        kept: dict[str, Any] = {}
        self.timed("checksum hash-on-write",
                   lambda: kept.update(self.checksum(tid)))
        self.read.append(bytes_read(d, before))
        if kept["checksum"] != full["checksum"]:
            raise RuntimeError(f"checksums differ: {kept} {full}")
        d.del_ticket(tid)

        for name, hashed in (("upload verify plain", False),
                             ("upload verify hash-on-write", True)):
            tid = self.ticket(hashed)
            run.drop_caches()
            self.timed(name, functools.partial(self.upload, tid,
                                               verify=True))
            d.del_ticket(tid)

    def run(self) -> None:
        self.daemon.start()
        try:
            for _ in range(self.args.reps):
                self.rep()
        finally:
            self.daemon.stop()
            if os.path.exists(self.target):
                os.unlink(self.target)
        self.report()

    def report(self) -> None:
        t = {k: statistics.median(v) for k, v in self.times.items()}
        gib = self.size / GiB
        print(f"\nhash-on-write ({self.args.algorithm}), {gib:g} GiB "
              f"random, {self.args.reps} reps (median), load "
              f"{os.getloadavg()[0]:.1f}")
        for name, secs in t.items():
            print(f"  {name:32} {secs:8.3f} s  "
                  f"{self.size / MiB / secs:8.0f} MiB/s")
        read = max(self.read)
        verify = t["upload verify hash-on-write"]
        today = t["upload verify plain"]
        upload_full = t["upload plain"] + t["checksum plain (full read)"]
        rows = [
            ("checksum after upload reads 0 bytes", "0",
             f"{read}", read == 0),
            ("checksum after upload answers < 50 ms", "< 50 ms",
             f"{t['checksum hash-on-write'] * 1000:.1f} ms",
             t["checksum hash-on-write"] < 0.05),
            ("upload verify / today's upload verify", "<= 0.75x",
             f"{verify / today:.2f}x", verify / today <= 0.75),
            ("upload verify / (upload + full checksum)", "<= 0.75x",
             f"{verify / upload_full:.2f}x", verify / upload_full <= 0.75),
            ("upload hash-on-write / upload plain", "(cost)",
             f"{t['upload hash-on-write'] / t['upload plain']:.2f}x",
             None),
        ]
        print(f"\n  {'target':44} {'wanted':>9} {'measured':>10}  verdict")
        for name, wanted, measured, ok in rows:
            verdict = "-" if ok is None else "ok" if ok else "MISS"
            print(f"  {name:44} {wanted:>9} {measured:>10}  {verdict}")
        out = os.path.join(HERE, "out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "hash_on_write.json"), "w") as f:
            json.dump({"size": self.size, "reps": self.args.reps,
                       "algorithm": self.args.algorithm,
                       "load": os.getloadavg(), "seconds": self.times,
                       "checksum_bytes_read": self.read,
                       "targets": [{"name": n, "target": w, "measured": m,
                                    "ok": ok} for n, w, m, ok in rows]},
                      f, indent=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2, help="GiB (default 2)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--algorithm", default="blake2b",
                   help="of the tickets' hash-on-write (default blake2b)")
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-how")
    Bench(p.parse_args()).run()


if __name__ == "__main__":
    main()
