# SPDX-License-Identifier: GPL-2.0-or-later
"""
Server checksum throughput: GET /images/ID/checksum of an image that is
half random data, half zeros (default 4 GiB), on a file ticket and an nbd
ticket, ours and upstream side by side. Prints GiB/s of image size, the
median of --reps runs with the page cache dropped before each.

    .venv/bin/python bench/checksum.py [--size 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import run  # noqa: E402

# Importable once daemons has put the source tree on sys.path.
from ovirt_imageio.net.unixhttp import UnixHTTPConnection  # noqa: E402

GiB = 1024**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=4, help="GiB (default 4)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-checksum")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    size = int(args.size * GiB)
    images = run.prepare(args.workdir, size, size // 2)
    raw = images["raw"]
    kinds = ["ours", "upstream"] if args.upstream else ["ours"]
    for kind in kinds:
        d = daemons.Daemon(kind, "unix", args.workdir)
        d.start()
        nbd = None
        try:
            sock = os.path.join(args.workdir, f"{kind}-nbd.sock")
            nbd = run.NBDServer(raw, sock, read_only=True)
            for backend, url in (("file", f"file://{raw}"),
                                 ("nbd", f"nbd:unix:{sock}")):
                tid = str(uuid.uuid4())
                d.add_ticket({"uuid": tid, "size": size, "timeout": 3600,
                              "ops": ["read"], "url": url})
                times = []
                conn = UnixHTTPConnection(d.local, timeout=600)
                for _ in range(args.reps):
                    run.drop_caches()
                    start = time.monotonic()
                    conn.request("GET", f"/images/{tid}/checksum")
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{r.status} {body!r}")
                    times.append(time.monotonic() - start)
                conn.close()
                d.del_ticket(tid)
                secs = statistics.median(times)
                print(f"{kind:8} {backend:4} {args.size:g} GiB checksum: "
                      f"{secs:6.3f} s  {size / GiB / secs:6.2f} GiB/s",
                      flush=True)
        finally:
            if nbd is not None:
                nbd.stop()
            d.stop()


if __name__ == "__main__":
    main()
