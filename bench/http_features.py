# SPDX-License-Identifier: GPL-2.0-or-later
"""
HTTP for every client and every disk size, measured (``make bench``):

- chunked uploads: ``curl -T -`` of an image from a pipe against the same
  curl PUT with Content-Length, to a file ticket of our daemon (plain
  TCP, so curl's own TLS does not blur the comparison);
- extents of a fragmented 64 TiB qcow2 (20,000 data clusters of 64 KiB,
  one every 2 MiB over the first 40 GiB) exported by qemu-nbd: the whole
  map from our daemon and from upstream's, with each daemon's CPU time,
  and the first 1 GiB window from ours.

Prints one line per figure and the verdicts of the issue's targets; the
image is kept in --workdir between runs (making it takes about a minute).

    .venv/bin/python bench/http_features.py [--reps 3] [--no-upstream]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import run  # noqa: E402

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

BIG_SIZE = 64 * TiB
CLUSTERS = 20_000
SPACING = 2 * MiB


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fragmented_image(workdir: str) -> str:
    path = os.path.join(workdir, "fragmented-64t.qcow2")
    if os.path.exists(path):
        return path
    tmp = path + ".tmp"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", tmp, "64T"],
                   check=True, stdout=subprocess.DEVNULL)
    commands = "".join(f"write -P 1 {i * SPACING} 64k\n"
                       for i in range(CLUSTERS))
    subprocess.run(["qemu-io", "-f", "qcow2", tmp], input=commands.encode(),
                   check=True, stdout=subprocess.DEVNULL)
    os.rename(tmp, path)
    return path


def curl_put(url: str, image: str, chunked: bool) -> float:
    if chunked:
        cmd = f"cat {image} | curl -sS -f -T - {url} -o /dev/null"
    else:
        cmd = f"curl -sS -f -T {image} {url} -o /dev/null"
    start = time.monotonic()
    subprocess.run(cmd, shell=True, check=True)
    return time.monotonic() - start


def chunked_rows(workdir: str, reps: int) -> dict[str, float]:
    size = GiB
    images = run.prepare(workdir, size, size)
    image = images["raw"]
    target = os.path.join(workdir, "chunked-target.raw")
    d = daemons.Daemon("ours", "tcp", workdir)
    d.start()
    times: dict[str, list[float]] = {"content-length": [], "chunked": []}
    try:
        for _ in range(reps):
            # Interleaved, so both see the same minutes of the machine.
            for kind in times:
                with open(target, "wb") as f:
                    f.truncate(size)
                tid = str(uuid.uuid4())
                d.add_ticket({"uuid": tid, "size": size, "timeout": 3600,
                              "ops": ["write"], "url": f"file://{target}"})
                run.drop_caches()
                times[kind].append(curl_put(d.url(tid), image,
                                            kind == "chunked"))
                d.del_ticket(tid)
    finally:
        d.stop()
        os.unlink(target)
    result = {k: size / MiB / statistics.median(v) for k, v in times.items()}
    for kind, rate in result.items():
        print(f"curl PUT 1 GiB {kind:15} {rate:8.0f} MiB/s", flush=True)
    return result


def get_extents(d: daemons.Daemon, tid: str, query: str = ""
                ) -> tuple[float, float, int]:
    """Seconds, daemon CPU seconds and items of one extents request."""
    assert d.proc is not None and not d.tls
    c = http.client.HTTPConnection("localhost", d.port, timeout=600)
    before = cpu_seconds(d.proc.pid)
    start = time.monotonic()
    c.request("GET", f"/images/{tid}/extents{query}")
    r = c.getresponse()
    body = r.read()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(d.proc.pid) - before
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status} {body[:200]!r}")
    return elapsed, cpu, len(json.loads(body))


def extents_rows(workdir: str, reps: int, upstream: bool
                 ) -> dict[str, float]:
    image = fragmented_image(workdir)
    sock = os.path.join(workdir, "fragmented.sock")
    nbd = run.NBDServer(image, sock, read_only=True, fmt="qcow2")
    result: dict[str, float] = {}
    try:
        for kind in (["ours", "upstream"] if upstream else ["ours"]):
            d = daemons.Daemon(kind, "tcp", workdir)
            d.start()
            try:
                tid = str(uuid.uuid4())
                d.add_ticket({"uuid": tid, "size": BIG_SIZE,
                              "timeout": 3600, "ops": ["read"],
                              "url": f"nbd:unix:{sock}"})
                runs = [get_extents(d, tid) for _ in range(reps)]
                secs = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                items = runs[0][2]
                result[f"{kind} whole"] = secs
                result[f"{kind} cpu"] = cpu
                print(f"extents 64 TiB fragmented {kind:8} {secs:7.3f} s "
                      f"daemon cpu {cpu:6.2f} s ({items} items)",
                      flush=True)
                if kind == "ours":
                    window = [get_extents(d, tid, f"?start=0&length={GiB}")
                              for _ in range(reps)]
                    first = statistics.median(r[0] for r in window)
                    result["ours first window"] = first
                    print(f"extents first 1 GiB window ours "
                          f"{first * 1000:7.1f} ms ({window[0][2]} items)",
                          flush=True)
            finally:
                d.stop()
    finally:
        nbd.stop()
    return result


def verdicts(chunked: dict[str, float], ext: dict[str, float]) -> None:
    ratio = chunked["chunked"] / chunked["content-length"]
    print(f"target chunked >= 0.90x Content-Length: {ratio:.2f}x "
          f"{'ok' if ratio >= 0.9 else 'MISS'}")
    if "upstream whole" in ext:
        speed = ext["upstream whole"] / ext["ours whole"]
        cpu = ext["ours cpu"] / max(ext["upstream cpu"], 1e-9)
        print(f"target whole extents >= 3x upstream: {speed:.2f}x "
              f"{'ok' if speed >= 3 else 'MISS'}")
        print(f"target daemon cpu <= 0.33x upstream: {cpu:.2f}x "
              f"{'ok' if cpu <= 0.33 else 'MISS'}")
    first = ext["ours first window"]
    print(f"target first 1 GiB window < 100 ms: {first * 1000:.1f} ms "
          f"{'ok' if first < 0.1 else 'MISS'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-http")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    chunked = chunked_rows(args.workdir, args.reps)
    ext = extents_rows(args.workdir, args.reps, args.upstream)
    verdicts(chunked, ext)


if __name__ == "__main__":
    main()
