# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run one client transfer and print its timing as JSON.

This script only uses the public client API that upstream ovirt-imageio
2.5 and this project share, so the benchmark runs it with either
interpreter (the project's venv, or the separate venv holding upstream)
to time both clients with the same code. It must not import anything from
the benchmark or the project besides ``ovirt_imageio.client``.
"""

import argparse
import ctypes
import json
import os
import resource
import sys
import time

from ovirt_imageio import client


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=["upload", "download", "checksum"])
    p.add_argument("--file", required=True)
    p.add_argument("--url")
    p.add_argument("--cafile")
    p.add_argument("--fmt", default="raw")
    p.add_argument("--workers", type=int, default=4)
    # Unset: each client's own default, as its users get it.
    p.add_argument("--buffer-size", type=int)
    args = p.parse_args()
    kwargs = {}
    if args.buffer_size is not None:
        kwargs["buffer_size"] = args.buffer_size

    # qemu-nbd started with --fork leaves its parent, so its CPU would be
    # missing from RUSAGE_CHILDREN. As a subreaper this process adopts
    # it, and reaping it below counts it whichever client started it.
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    start = time.monotonic()
    if args.op == "upload":
        client.upload(args.file, args.url, args.cafile,
                      max_workers=args.workers, **kwargs)
    elif args.op == "download":
        client.download(args.url, args.file, args.cafile, fmt=args.fmt,
                        max_workers=args.workers, **kwargs)
    elif args.op == "checksum":
        client.checksum(args.file)
    elapsed = time.monotonic() - start
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break  # A child still running is not ours to wait for.
    self_ru = resource.getrusage(resource.RUSAGE_SELF)
    child_ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    json.dump({
        "seconds": elapsed,
        # CLOCK_MONOTONIC is one clock for every process of the machine,
        # so runs started together can be laid on one time line.
        "start": start,
        "end": start + elapsed,
        "client_cpu": self_ru.ru_utime + self_ru.ru_stime,
        "qemu_cpu": child_ru.ru_utime + child_ru.ru_stime,
    }, sys.stdout)


if __name__ == "__main__":
    main()
