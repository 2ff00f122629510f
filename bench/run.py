# SPDX-License-Identifier: GPL-2.0-or-later
"""
``make bench``: transfer throughput of this project side by side with
upstream ovirt-imageio 2.5.1 and the machine's own limits, in one run.

Every figure is MiB/s of *virtual* image size (a 2 GiB image with 1 GiB
of data moved in 1 s is 2048 MiB/s), the median of --reps runs, with the
page cache dropped before each run when the kernel allows it. Results go
to bench/out/results.json, a table on stdout, and bench/out/chart.png
(with the same bars as text in bench/out/chart.txt).

This is a benchmark, not a test: nothing here asserts; the target checks
at the end only report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import nbd_door  # noqa: E402
import refs  # noqa: E402
import report  # noqa: E402

MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "driver.py")


def drop_caches() -> None:
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass  # Not allowed here: runs go through the page cache.


def prepare(work: str, size: int, data: int) -> dict[str, str]:
    """A raw image with `data` bytes of random data then a hole, and its
    qcow2 copy; a 1 TiB empty image."""
    raw = os.path.join(work, "image.raw")
    qcow2 = os.path.join(work, "image.qcow2")
    empty = os.path.join(work, "empty-1t.raw")
    if not os.path.exists(raw) or os.path.getsize(raw) != size:
        with open(raw, "wb") as f:
            left = data
            while left:
                n = min(left, 64 * MiB)
                f.write(os.urandom(n))
                left -= n
            f.truncate(size)
        if os.path.exists(qcow2):
            os.unlink(qcow2)
    if not os.path.exists(qcow2):
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        raw, qcow2], check=True)
    with open(empty, "wb") as f:
        f.truncate(TiB)
    return {"raw": raw, "qcow2": qcow2, "empty": empty}


class NBDServer:
    """qemu-nbd exporting an image (raw by default) for nbd tickets."""

    def __init__(self, path: str, sock: str, read_only: bool,
                 fmt: str = "raw") -> None:
        cmd = ["qemu-nbd", "--persistent", "--shared=8", "--cache=none",
               "--aio=native", "--discard=unmap", "-f", fmt,
               "--socket", sock, path]
        if read_only:
            cmd.insert(1, "--read-only")
        self.sock = sock
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        refs._wait_sockets([sock])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = os.path.abspath(args.workdir)
        os.makedirs(self.work, exist_ok=True)
        self.size = int(args.size * GiB)
        self.data = int(self.size * args.data_ratio)
        self.images = prepare(self.work, self.size, self.data)
        self.results: list[dict[str, Any]] = []
        self.refs: dict[str, float] = {}
        self.ref_times: dict[str, list[float]] = {}
        self.rss: dict[str, Any] = {}
        self.cafile = os.path.join(daemons.PKI, "ca.pem")
        self.configs = 0

    def mibs(self, seconds: float, size: int | None = None) -> float:
        return (size if size is not None else self.size) / MiB / seconds

    # References.

    def reference_round(self) -> None:
        """
        Time each machine reference once, adding to self.ref_times.

        The rounds are spread over the run (before the transfers, between
        uploads and downloads, after them): a reference timed three times
        in a row once came out 50% faster than the same command minutes
        later, and the qemu-img targets compare with these figures.
        """
        raw, qcow2 = self.images["raw"], self.images["qcow2"]
        dst = os.path.join(self.work, "ref-dst.raw")

        def rm() -> None:
            if os.path.exists(dst):
                os.unlink(dst)
            drop_caches()

        steps: list[tuple[str, Callable[[], float]]] = [
            ("dd direct read", lambda: refs.dd_read(raw)),
            ("dd direct write", lambda: refs.dd_write(dst, self.size)),
            ("dd direct copy", lambda: refs.dd_copy(raw, dst)),
            ("qemu-img convert raw",
             lambda: refs.qemu_img_convert(raw, "raw", dst)),
            ("qemu-img convert qcow2",
             lambda: refs.qemu_img_convert(qcow2, "qcow2", dst)),
            ("qemu-img convert raw->qcow2",
             lambda: refs.qemu_img_convert(raw, "raw", dst, "qcow2")),
            ("nbdcopy", lambda: refs.nbdcopy(raw, "raw", dst, self.size)),
            ("loopback socket", lambda: refs.socket_stream(self.size)),
        ]
        for name, func in steps:
            rm()
            try:
                seconds = func()
            except FileNotFoundError:
                if name != "nbdcopy":
                    raise
                continue  # Optional: libnbd-bin is not installed.
            self.ref_times.setdefault(name, []).append(seconds)
        rm()

    def finish_references(self) -> None:
        for name, times in self.ref_times.items():
            self.refs[name] = self.mibs(statistics.median(times))
            print(f"  {name:28} {self.refs[name]:8.0f} MiB/s", flush=True)

    # Transfers.

    def transfer(self, d: daemons.Daemon, op: str, fmt: str, backend: str,
                 conns: int, verify: bool, src_key: str | None = None,
                 sparse_size: int | None = None) -> dict[str, Any]:
        size = sparse_size or self.size
        ticket_id = str(uuid.uuid4())
        local = os.path.join(self.work, f"local-{ticket_id[:8]}.{fmt}")
        remote = os.path.join(self.work, f"remote-{ticket_id[:8]}.raw")
        nbd = None
        try:
            if op == "upload":
                src = self.images[src_key or fmt]
                with open(remote, "wb") as f:
                    f.truncate(size)
                target = remote
                ops = ["write"]
            else:
                src = self.images[src_key or "raw"]
                target = src
                ops = ["read"]
            if backend == "nbd":
                sock = os.path.join(self.work, f"nbd-{ticket_id[:8]}.sock")
                nbd = NBDServer(target, sock, read_only=op == "download")
                url = f"nbd:unix:{sock}"
            else:
                url = f"file://{target}"
            d.add_ticket({"uuid": ticket_id, "size": size, "url": url,
                          "timeout": 3600, "ops": ops, "sparse": True})
            cmd = [d.python, DRIVER, op, "--url", d.url(ticket_id),
                   "--cafile", self.cafile, "--workers", str(conns)]
            if op == "upload":
                cmd += ["--file", src]
            else:
                cmd += ["--file", local, "--fmt", fmt]
            env = dict(os.environ)
            if d.kind == "ours":
                env["PYTHONPATH"] = daemons.TOP
            else:
                env.pop("PYTHONPATH", None)
            drop_caches()
            cpu0 = d.cpu()
            p = subprocess.run(cmd, env=env, cwd=self.work,
                               capture_output=True, text=True)
            cpu1 = d.cpu()
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr}")
            out: dict[str, Any] = json.loads(p.stdout)
            if verify:
                if op == "upload":
                    a, fa, b = src, "qcow2" if src.endswith("qcow2") \
                        else "raw", remote
                    fb = "raw"
                else:
                    a, fa, b, fb = src, "raw", local, fmt
                c = subprocess.run(["qemu-img", "compare", "-q", "-f", fa,
                                    "-F", fb, a, b])
                if c.returncode != 0:
                    raise RuntimeError(f"data mismatch: {a} {b}")
            out["daemon_cpu"] = cpu1 - cpu0
            return out
        finally:
            d.del_ticket(ticket_id)
            if nbd is not None:
                nbd.stop()
            for path in (local, remote):
                if os.path.exists(path):
                    os.unlink(path)

    def measure(self, ds: list[daemons.Daemon], op: str, fmt: str,
                backend: str, conns: int, name: str | None = None,
                reps: int | None = None, **kw: Any) -> None:
        """
        Time one configuration on each daemon in ds, reps times each (by
        default what self.reps says).

        The runs interleave: one run on every daemon, then the next round,
        each round starting one daemon further. This machine's speed
        drifts by 10-20% over tens of seconds (a shared host); measured one
        daemon after the other, the ratios the targets are about (TLS/TCP,
        unix/TCP, ours/upstream) would compare different moments as much as
        different code.
        """
        count = {id(d): reps or self.reps(d, backend, conns) for d in ds}
        runs: dict[int, list[dict[str, Any]]] = {id(d): [] for d in ds}
        # Our result is checked byte by byte once per configuration, over
        # each transport in turn (a check costs about as much as two
        # transfers; the tests cover every transport on every route).
        # Upstream's correctness is not what this measures.
        ours = [d for d in ds if d.kind == "ours"]
        checked = ours[self.configs % len(ours)] if ours else None
        self.configs += 1
        for i in range(max(count.values())):
            shift = i % len(ds)
            for d in ds[shift:] + ds[:shift]:
                if i >= count[id(d)]:
                    continue
                runs[id(d)].append(self.transfer(
                    d, op, fmt, backend, conns,
                    verify=(i == 0 and d is checked), **kw))
        for d in ds:
            self._add_transfer(d, op, fmt, backend, conns, name,
                               runs[id(d)], **kw)

    def _add_transfer(self, d: daemons.Daemon, op: str, fmt: str,
                      backend: str, conns: int, name: str | None,
                      runs: list[dict[str, Any]], **kw: Any) -> None:
        seconds = statistics.median(r["seconds"] for r in runs)
        size = kw.get("sparse_size") or self.size
        moved = size if "sparse_size" in kw else self.data
        result = {
            "impl": d.kind, "variant": d.variant, "op": op, "fmt": fmt,
            "backend": backend, "conns": conns,
            "name": name or f"{op} {fmt} {backend} {d.variant} x{conns}",
            "seconds": seconds, "mib_s": self.mibs(seconds, size),
            "runs": [self.mibs(r["seconds"], size) for r in runs],
            "daemon_cpu_per_gib": statistics.median(
                r["daemon_cpu"] for r in runs) / (moved / GiB),
            "client_cpu_per_gib": statistics.median(
                r["client_cpu"] + r["qemu_cpu"] for r in runs)
            / (moved / GiB),
        }
        self.results.append(result)
        print(f"  {d.kind:8} {result['name']:34} {result['mib_s']:9.0f} "
              f"MiB/s  daemon cpu {result['daemon_cpu_per_gib']:.2f} s/GiB",
              flush=True)

    def http_timed(self, d: daemons.Daemon, path: str, ticket: dict[str, Any]
                   ) -> float:
        import http.client
        import ssl
        d.add_ticket(ticket)
        try:
            if d.tls:
                ctx = ssl.create_default_context(cafile=self.cafile)
                conn: http.client.HTTPConnection = \
                    http.client.HTTPSConnection("localhost", d.port,
                                                context=ctx, timeout=600)
            else:
                conn = http.client.HTTPConnection("localhost", d.port,
                                                  timeout=600)
            times = []
            for _ in range(self.args.reps):
                drop_caches()
                start = time.monotonic()
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {path}: {r.status}")
                times.append(time.monotonic() - start)
            conn.close()
            return statistics.median(times)
        finally:
            d.del_ticket(ticket["uuid"])

    def server_ops(self, d: daemons.Daemon) -> None:
        tid = str(uuid.uuid4())
        t = {"uuid": tid, "size": self.size, "timeout": 3600,
             "ops": ["read"], "url": f"file://{self.images['raw']}"}
        secs = self.http_timed(d, f"/images/{tid}/checksum", t)
        self._add(d, "checksum", secs, self.size)
        tid = str(uuid.uuid4())
        t = {"uuid": tid, "size": TiB, "timeout": 3600, "ops": ["read"],
             "url": f"file://{self.images['empty']}"}
        secs = self.http_timed(d, f"/images/{tid}/extents", t)
        self._add(d, "extents 1 TiB", secs, TiB)

    def _add(self, d: daemons.Daemon, name: str, seconds: float, size: int
             ) -> None:
        result = {"impl": d.kind, "variant": d.variant, "name": name,
                  "seconds": seconds, "mib_s": self.mibs(seconds, size)}
        self.results.append(result)
        print(f"  {d.kind:8} {name:34} {result['mib_s']:9.0f} MiB/s "
              f"({seconds:.3f} s)", flush=True)

    def run_all(self, kinds: list[str],
                between: Callable[[], None] = lambda: None) -> None:
        """
        Measure the transfers of each implementation in kinds, calling
        between after the uploads, before the downloads.
        """
        # One daemon per implementation and transport, all running, so
        # that measure can interleave their runs. Idle daemons cost
        # nothing.
        ds = [daemons.Daemon(kind, v, self.work)
              for kind in kinds for v in self.args.variants]
        try:
            for d in ds:
                d.start()
            for op in ("upload", "download"):
                if op == "download":
                    between()
                for fmt in self.args.formats:
                    for backend in self.args.backends:
                        conns_list = (self.args.conns if backend == "file"
                                      else self.args.nbd_conns)
                        for conns in conns_list:
                            self.measure(ds, op, fmt, backend, conns)
            for kind in kinds:
                first = next(d for d in ds if d.kind == kind)
                self.rss[f"{kind} after {self.size // GiB} GiB"] = \
                    first.peak_rss()
            # On the nbd backend: upstream's file backend reports one data
            # extent, so its client would read the whole 1 TiB (about 12
            # minutes here).
            firsts = [next(d for d in ds if d.kind == kind)
                      for kind in kinds]
            self.measure(firsts, "upload", "raw", "nbd", 4,
                         src_key="empty", sparse_size=TiB,
                         name="upload empty 1 TiB", reps=self.args.reps)
            self.measure(firsts, "download", "raw", "nbd", 4,
                         src_key="empty", sparse_size=TiB,
                         name="download empty 1 TiB", reps=self.args.reps)
            for d in firsts:
                self.server_ops(d)
                self.rss[f"{d.kind} after 1 TiB"] = d.peak_rss()
        finally:
            for d in ds:
                d.stop()

    def reps(self, d: daemons.Daemon, backend: str, conns: int) -> int:
        # The upstream targets are about file tickets with the client's
        # default 4 connections; upstream's other rows only draw the
        # picture and get fewer runs to bound the time. Every row of ours
        # feeds the transport targets, so all of them get --reps.
        if d.kind == "ours" or (backend == "file" and conns == 4):
            return int(self.args.reps)
        return int(self.args.other_reps)

    def main(self) -> None:
        t0 = time.monotonic()
        # The references' rounds: one first, one last, the rest between
        # uploads and downloads.
        rounds = max(1, self.args.reps)
        self.reference_round()
        impls = ["ours"]
        if self.args.upstream:
            impls.append("upstream")
        print("transfers:", flush=True)

        def middle_rounds() -> None:
            for _ in range(rounds - 2):
                self.reference_round()

        self.run_all(impls, between=middle_rounds)
        nbd: dict[str, Any] = {}
        if self.args.nbd:
            print("NBD door (nbdcopy):", flush=True)
            nbd = nbd_door.run(self.work, self.images["raw"], self.size,
                               self.args.reps)
        if rounds >= 2:
            self.reference_round()
        print(f"machine references (median of {rounds} rounds over the "
              f"run):", flush=True)
        self.finish_references()
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "out")
        os.makedirs(out, exist_ok=True)
        data = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": report.machine(),
            "size": self.size, "data": self.data, "reps": self.args.reps,
            "references": self.refs, "results": self.results,
            "peak_rss": self.rss,
            "nbd": nbd,
            "elapsed": time.monotonic() - t0,
        }
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=2)
        print()
        print(report.table(data))
        if nbd.get("rows"):
            print()
            print(nbd_door.table(nbd))
        report.chart(data, os.path.join(out, "chart.png"))
        with open(os.path.join(out, "chart.txt"), "w") as f:
            f.write(report.text_chart(data) + "\n")
        print(f"\nwrote {out}/results.json, {out}/chart.png and chart.txt "
              f"in {data['elapsed']:.0f} s")
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2,
                   help="virtual image size in GiB (default 2)")
    p.add_argument("--data-ratio", type=float, default=0.5,
                   help="fraction of the image holding random data")
    p.add_argument("--reps", type=int, default=3,
                   help="runs of each of our configurations and of "
                        "upstream's file-ticket, 4-connection ones; the "
                        "median is reported")
    p.add_argument("--other-reps", type=int, default=1,
                   help="runs of upstream's other configurations")
    p.add_argument("--workdir", default="/var/tmp/imageio-bench")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    p.add_argument("--variants", nargs="+", default=["tls", "tcp", "unix"])
    p.add_argument("--formats", nargs="+", default=["raw", "qcow2"])
    p.add_argument("--backends", nargs="+", default=["file", "nbd"])
    p.add_argument("--conns", nargs="+", type=int, default=[1, 4],
                   help="client connections for file tickets")
    p.add_argument("--nbd-conns", nargs="+", type=int, default=[4],
                   help="client connections for nbd tickets")
    p.add_argument("--no-nbd", dest="nbd", action="store_false",
                   help="skip the NBD door rows (bench/nbd_door.py)")
    p.add_argument("--keep", action="store_true",
                   help="keep the images in --workdir")
    return p.parse_args()


if __name__ == "__main__":
    Bench(parse_args()).main()
