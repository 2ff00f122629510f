# SPDX-License-Identifier: GPL-2.0-or-later
"""
HTTP for every client and every disk size, measured (``make bench``):

- chunked uploads: ``curl -T -`` of an image from a pipe against the same
  curl PUT with Content-Length, to a file ticket of our daemon (plain
  TCP, so curl's own TLS does not blur the comparison);
- extents of a fragmented 64 TiB qcow2 (20,000 data clusters of 64 KiB,
  one every 2 MiB over the first 40 GiB) exported by qemu-nbd: the whole
  map from our daemon and from upstream's, with each daemon's CPU time
  and when the first byte of the answer arrived (ours is streamed), and
  the first 1 GiB window from ours;
- a download of that image by our client from our daemon: when the first
  data arrives (the client asks the extents in windows); the download is
  stopped there.

Prints one line per figure, then a table of the issue's targets
(target / measured / ok or MISS), also written to
bench/out/http_features.json; the image is kept in --workdir between
runs (making it takes about a minute).

    .venv/bin/python bench/http_features.py [--reps 3] [--no-upstream]
        [--only chunked|extents]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import run  # noqa: E402

from ovirt_imageio import client  # noqa: E402

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
    cpus: dict[str, list[float]] = {k: [] for k in times}
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
                assert d.proc is not None
                before = cpu_seconds(d.proc.pid)
                times[kind].append(curl_put(d.url(tid), image,
                                            kind == "chunked"))
                cpus[kind].append(cpu_seconds(d.proc.pid) - before)
                d.del_ticket(tid)
    finally:
        d.stop()
        os.unlink(target)
    result = {k: size / MiB / statistics.median(v) for k, v in times.items()}
    for kind, rate in list(result.items()):
        # Daemon CPU is steadier than the rate on a shared machine.
        cpu = statistics.median(cpus[kind])
        result[f"{kind} cpu"] = cpu
        print(f"curl PUT 1 GiB {kind:15} {rate:8.0f} MiB/s "
              f"daemon cpu {cpu:5.2f} s", flush=True)
    return result


def get_extents(d: daemons.Daemon, tid: str, query: str = ""
                ) -> tuple[float, float, int, float]:
    """
    Seconds, daemon CPU seconds and items of one extents request, and
    the seconds until the first byte of its body.
    """
    assert d.proc is not None and not d.tls
    c = http.client.HTTPConnection("localhost", d.port, timeout=600)
    before = cpu_seconds(d.proc.pid)
    start = time.monotonic()
    c.request("GET", f"/images/{tid}/extents{query}")
    r = c.getresponse()
    body = r.read(1)
    first = time.monotonic() - start
    body += r.read()
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(d.proc.pid) - before
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{r.status} {body[:200]!r}")
    return elapsed, cpu, len(json.loads(body)), first


class FirstData(Exception):
    """Raised by the progress object to stop the download."""


class Progress:
    """
    A progress object noting when the copy's workers first report: a
    worker reports a range it copied (skipped ranges are reported by the
    calling thread), so that is when data started moving. It then stops
    the download: its error aborts the copy.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.first: float | None = None

    def update(self, n: int) -> None:
        if threading.current_thread().name.startswith("download/"):
            self.first = time.monotonic() - self.start
            raise FirstData


def download_rows(d: daemons.Daemon, tid: str, workdir: str
                  ) -> dict[str, float]:
    target = os.path.join(workdir, "download.qcow2")
    progress = Progress()
    try:
        client.download(d.url(tid), target, None, fmt="qcow2",
                        progress=progress)
    except FirstData:
        pass
    finally:
        # The client removes a failed download's image; never leave one.
        if os.path.exists(target):
            os.unlink(target)
    assert progress.first is not None
    print(f"download 64 TiB fragmented ours: first data "
          f"{progress.first * 1000:7.1f} ms", flush=True)
    return {"client first data": progress.first}


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
                first_byte = statistics.median(r[3] for r in runs)
                result[f"{kind} whole"] = secs
                result[f"{kind} cpu"] = cpu
                result[f"{kind} whole first byte"] = first_byte
                print(f"extents 64 TiB fragmented {kind:8} {secs:7.3f} s "
                      f"daemon cpu {cpu:6.2f} s ({items} items), first "
                      f"byte {first_byte * 1000:6.1f} ms", flush=True)
                if kind == "ours":
                    window = [get_extents(d, tid, f"?start=0&length={GiB}")
                              for _ in range(reps)]
                    first = statistics.median(r[0] for r in window)
                    result["ours first window"] = first
                    print(f"extents first 1 GiB window ours "
                          f"{first * 1000:7.1f} ms ({window[0][2]} items)",
                          flush=True)
                    result.update(download_rows(d, tid, workdir))
            finally:
                d.stop()
    finally:
        nbd.stop()
    return result


def verdicts(chunked: dict[str, float], ext: dict[str, float]
             ) -> list[dict[str, Any]]:
    """The issue's targets: (name, target, measured, ok) rows."""
    rows: list[dict[str, Any]] = []

    def row(name: str, target: str, measured: str, ok: bool) -> None:
        rows.append({"name": name, "target": target, "measured": measured,
                     "ok": ok})

    if chunked:
        ratio = chunked["chunked"] / chunked["content-length"]
        row("curl -T - vs Content-Length PUT", ">= 0.90x", f"{ratio:.2f}x",
            ratio >= 0.9)
    if "upstream whole" in ext:
        speed = ext["upstream whole"] / ext["ours whole"]
        cpu = ext["ours cpu"] / max(ext["upstream cpu"], 1e-9)
        row("whole extents, speed vs upstream", ">= 3x", f"{speed:.2f}x",
            speed >= 3)
        row("whole extents, daemon CPU vs upstream", "<= 0.33x",
            f"{cpu:.2f}x", cpu <= 0.33)
    if "ours first window" in ext:
        first = ext["ours first window"]
        row("first 1 GiB window", "< 100 ms", f"{first * 1000:.1f} ms",
            first < 0.1)
        data = ext["client first data"]
        row("download: client first data", "< 1 s", f"{data:.2f} s",
            data < 1)
    width = max(len(r["name"]) for r in rows)
    print(f"{'target':{width}}  {'wanted':>9}  {'measured':>10}  verdict")
    for r in rows:
        print(f"{r['name']:{width}}  {r['target']:>9}  {r['measured']:>10}  "
              f"{'ok' if r['ok'] else 'MISS'}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-http")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    p.add_argument("--chunked-reps", type=int, default=None,
                   help="repetitions of the curl uploads (default --reps)")
    p.add_argument("--only", choices=["chunked", "extents"],
                   help="measure only the chunked uploads or the extents")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    chunked: dict[str, float] = {}
    ext: dict[str, float] = {}
    if args.only != "extents":
        chunked = chunked_rows(args.workdir, args.chunked_reps or args.reps)
    if args.only != "chunked":
        ext = extents_rows(args.workdir, args.reps, args.upstream)
    rows = verdicts(chunked, ext)
    out = os.path.join(daemons.TOP, "bench", "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "http_features.json"), "w") as f:
        json.dump({"figures": {**chunked, **ext}, "targets": rows,
                   "load": os.getloadavg()}, f, indent=2)


if __name__ == "__main__":
    main()
