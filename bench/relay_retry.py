# SPDX-License-Identifier: GPL-2.0-or-later
"""
Uploads through a proxy-like relay that cuts every connection after
--cut MiB (default 256): a --size GiB (default 2) image of random data,
uploaded with --workers connections (default 4) to a raw file ticket of
our daemon over plain HTTP, must complete through the client's retries
alone (no resume), with at most 2% overhead: the bytes the client sent
through the relay (request heads and the parts of cut requests included)
over the image size, less one. The same upload through a relay that
never cuts gives the baseline time. The image is checked with
``qemu-img compare`` after each run.

    .venv/bin/python bench/relay_retry.py [--size 2] [--cut 256]

Writes bench/out/relay_retry.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import daemons  # noqa: E402

# The relay is the fault tests' helper (test/support/relay.py).
sys.path.insert(0, os.path.join(daemons.TOP, "test"))

from ovirt_imageio import client  # noqa: E402

from support.relay import Relay  # noqa: E402

MiB = 1024**2
GiB = 1024**3
TARGET_OVERHEAD = 0.02
OUT = os.path.join(BENCH, "out", "relay_retry.json")


def make_image(path: str, size: int) -> None:
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        left = size
        while left:
            chunk = src.read(min(left, 8 * MiB))
            dst.write(chunk)
            left -= len(chunk)


def upload(d: daemons.Daemon, image: str, target: str, size: int,
           cut: int | None, workers: int) -> dict[str, Any]:
    with open(target, "wb") as f:
        f.truncate(size)
    tid = str(uuid.uuid4())
    d.add_ticket({"uuid": tid, "size": size, "timeout": 3600,
                  "ops": ["read", "write"], "url": f"file://{target}"})
    try:
        with Relay(("127.0.0.1", d.port), cut_after=cut) as relay:
            start = time.monotonic()
            client.upload(image, relay.url(tid), None, max_workers=workers)
            elapsed = time.monotonic() - start
            sent, cuts = relay.client_bytes, relay.cuts
            connections = relay.connections
    finally:
        d.del_ticket(tid)
    same = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", image,
         target]).returncode == 0
    return {"cut_mib": cut // MiB if cut else None, "seconds": elapsed,
            "client_bytes": sent, "overhead": sent / size - 1,
            "cuts": cuts, "connections": connections, "identical": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2, help="GiB (default 2)")
    p.add_argument("--cut", type=int, default=256,
                   help="MiB per connection before a cut (default 256)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-relay")
    args = p.parse_args()
    # Retries are logged as warnings; the table is what matters here.
    logging.basicConfig(level=logging.ERROR)
    os.makedirs(args.workdir, exist_ok=True)
    size = int(args.size * GiB)
    image = os.path.join(args.workdir, "random.raw")
    target = os.path.join(args.workdir, "target.raw")
    make_image(image, size)
    d = daemons.Daemon("ours", "tcp", args.workdir)
    d.start()
    try:
        base = upload(d, image, target, size, None, args.workers)
        cut = upload(d, image, target, size, args.cut * MiB, args.workers)
    finally:
        d.stop()
        shutil.rmtree(args.workdir, ignore_errors=True)

    ok = cut["identical"] and cut["overhead"] <= TARGET_OVERHEAD
    rows = [
        ("upload, no cuts", "-", f"{base['seconds']:.2f} s, overhead "
         f"{base['overhead']:.3%}", "ok" if base["identical"] else "MISS"),
        (f"upload, cut every {args.cut} MiB", f"<= {TARGET_OVERHEAD:.0%}",
         f"{cut['seconds']:.2f} s, overhead {cut['overhead']:.3%}, "
         f"{cut['cuts']} cuts", "ok" if ok else "MISS"),
    ]
    print(f"{'row':32} {'target':8} {'measured':44} result")
    for name, want, got, result in rows:
        print(f"{name:32} {want:8} {got:44} {result}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"size": size, "workers": args.workers,
                   "target_overhead": TARGET_OVERHEAD,
                   "baseline": base, "cut": cut, "ok": ok,
                   "load": os.getloadavg()}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
