# SPDX-License-Identifier: GPL-2.0-or-later
"""
What the daemon's own checkpoints cost an upload (issue 17): the same
random raw image uploaded by ``ovirt-img`` with 4 connections to a file
ticket over the unix socket, the client flushing only at the end, by a
daemon with ``[daemon] checkpoint_size = 0`` (no checkpoints) and one
with the default (a flush and a ledger save per 64 MiB of data). Runs
alternate between the two so that drifting load hits both alike; the
figure is the median.

    .venv/bin/python bench/checkpoint.py [--size-gib 2] [--reps 3]

Writes bench/out/checkpoint.json; prints target / measured /
ok-or-MISS; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import resume  # noqa: E402

from ovirt_imageio.config.schema import Daemon as DaemonSection  # noqa: E402

MiB = 1024**2
GiB = 1024**3
OUT = os.path.join(daemons.TOP, "bench", "out", "checkpoint.json")
# An upload with checkpoints may take at most this much longer.
TARGET = 0.05


def upload_seconds(work: str, src: str, size: int, checkpoint: int
                   ) -> float:
    """One upload to a fresh daemon with this checkpoint_size."""
    target = os.path.join(work, "target-checkpoint.raw")
    resume.new_target(target, size)
    d = daemons.Daemon("ours", f"unix-checkpoint-{checkpoint}", work)
    with open(os.path.join(d.dir, "conf", "conf.d", "90-checkpoint.conf"),
              "w") as f:
        f.write(f"[daemon]\ncheckpoint_size = {checkpoint}\n")
    d.start()
    try:
        tid = str(uuid.uuid4())
        d.add_ticket({"uuid": tid, "size": size, "timeout": 3600,
                      "ops": ["write"], "url": f"file://{target}"})
        start = time.monotonic()
        rc = resume.finish(resume.upload(src, d.url(tid)))
        elapsed = time.monotonic() - start
        if rc != 0:
            raise RuntimeError("upload failed")
        return elapsed
    finally:
        d.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-checkpoint")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    size = int(args.size_gib * GiB) // MiB * MiB
    src = os.path.join(args.workdir, "src.raw")
    resume.make_source(src, size)
    load = os.getloadavg()
    default = DaemonSection().checkpoint_size
    runs: dict[int, list[float]] = {0: [], default: []}
    for i in range(args.reps):
        # Alternate which goes first, so neither always meets a warm
        # or a cold machine.
        order = [0, default] if i % 2 == 0 else [default, 0]
        for checkpoint in order:
            runs[checkpoint].append(
                upload_seconds(args.workdir, src, size, checkpoint))
    off = statistics.median(runs[0])
    on = statistics.median(runs[default])
    cost = on / off - 1
    ok = cost <= TARGET
    out: dict[str, Any] = {
        "size": size, "checkpoint_size": default, "runs": {
            str(k): v for k, v in runs.items()},
        "median_off": off, "median_on": on, "cost": cost, "target": TARGET,
        "ok": ok, "load_before": load, "load_after": os.getloadavg()}
    print(f"checkpoint cost, {size / GiB:g} GiB random upload, 4 "
          f"connections, {args.reps} reps (load {load[0]:.1f})")
    print(f"{'row':<28} {'target':>8} {'measured':>9}  verdict")
    print(f"{'no checkpoints':<28} {'':>8} {off:>8.2f}s")
    print(f"{f'checkpoint {default // MiB} MiB':<28} {'':>8} {on:>8.2f}s")
    print(f"{'cost':<28} {TARGET:>8.0%} {cost:>9.1%}  "
          f"{'ok' if ok else 'MISS'}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
