# SPDX-License-Identifier: GPL-2.0-or-later
"""
``make bench``: transfer throughput of this project side by side with
upstream ovirt-imageio 2.5.1 and the machine's own limits, in one run.

Every figure is MiB/s of *virtual* image size (a 2 GiB image with 1 GiB
of data moved in 1 s is 2048 MiB/s), the median of --reps runs, with the
page cache dropped before each run when the kernel allows it. Results go
to bench/out/results.json, a table on stdout, and bench/out/chart.png.

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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
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
    """qemu-nbd exporting a raw file for nbd tickets."""

    def __init__(self, path: str, sock: str, read_only: bool) -> None:
        cmd = ["qemu-nbd", "--persistent", "--shared=8", "--cache=none",
               "--aio=native", "--discard=unmap", "-f", "raw",
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
        self.rss: dict[str, Any] = {}
        self.cafile = os.path.join(daemons.PKI, "ca.pem")

    def mibs(self, seconds: float, size: int | None = None) -> float:
        return (size if size is not None else self.size) / MiB / seconds

    # References.

    def references(self) -> None:
        reps = self.args.reps
        raw, qcow2 = self.images["raw"], self.images["qcow2"]
        dst = os.path.join(self.work, "ref-dst.raw")

        def rm() -> None:
            if os.path.exists(dst):
                os.unlink(dst)
            drop_caches()

        self.refs["dd direct read"] = self.mibs(
            refs.median_of(reps, lambda: refs.dd_read(raw), drop_caches))
        self.refs["dd direct write"] = self.mibs(refs.median_of(
            reps, lambda: refs.dd_write(dst, self.size), rm))
        self.refs["dd direct copy"] = self.mibs(refs.median_of(
            reps, lambda: refs.dd_copy(raw, dst), rm))
        self.refs["qemu-img convert raw"] = self.mibs(refs.median_of(
            reps, lambda: refs.qemu_img_convert(raw, "raw", dst), rm))
        self.refs["qemu-img convert qcow2"] = self.mibs(refs.median_of(
            reps, lambda: refs.qemu_img_convert(qcow2, "qcow2", dst), rm))
        self.refs["qemu-img convert raw->qcow2"] = self.mibs(refs.median_of(
            reps, lambda: refs.qemu_img_convert(raw, "raw", dst, "qcow2"),
            rm))
        try:
            self.refs["nbdcopy"] = self.mibs(refs.median_of(
                reps, lambda: refs.nbdcopy(raw, "raw", dst, self.size), rm))
        except FileNotFoundError:
            pass
        self.refs["loopback socket"] = self.mibs(
            refs.median_of(reps, lambda: refs.socket_stream(self.size)))
        rm()
        for name, value in self.refs.items():
            print(f"  {name:28} {value:8.0f} MiB/s", flush=True)

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
            out = json.loads(p.stdout)
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

    def measure(self, d: daemons.Daemon, op: str, fmt: str, backend: str,
                conns: int, name: str | None = None, reps: int | None = None,
                **kw: Any) -> None:
        if reps is None:
            reps = self.args.reps
        # Check our results byte by byte once per configuration;
        # upstream's correctness is not what this measures.
        runs = [self.transfer(d, op, fmt, backend, conns,
                              verify=(i == 0 and d.kind == "ours"),
                              **kw)
                for i in range(reps)]
        seconds = statistics.median(r["seconds"] for r in runs)
        size = kw.get("sparse_size") or self.size
        moved = size if "sparse_size" in kw else self.data
        result = {
            "impl": d.kind, "variant": d.variant, "op": op, "fmt": fmt,
            "backend": backend, "conns": conns,
            "name": name or f"{op} {fmt} {backend} {d.variant} x{conns}",
            "seconds": seconds, "mib_s": self.mibs(seconds, size),
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

    def run_impl(self, kind: str) -> None:
        for variant in self.args.variants:
            d = daemons.Daemon(kind, variant, self.work)
            d.start()
            try:
                for op in ("upload", "download"):
                    for fmt in self.args.formats:
                        for backend in self.args.backends:
                            conns_list = (self.args.conns
                                          if backend == "file"
                                          else self.args.nbd_conns)
                            for conns in conns_list:
                                # The targets are about file tickets with
                                # the client's default 4 connections: the
                                # rest get fewer runs to bound the time.
                                target = backend == "file" and conns == 4
                                reps = self.args.reps if target \
                                    else self.args.other_reps
                                self.measure(d, op, fmt, backend, conns,
                                             reps=reps)
                if variant == self.args.variants[0]:
                    self.rss[f"{kind} after {self.size // GiB} GiB"] = \
                        d.peak_rss()
                    # On the nbd backend: upstream's file backend reports
                    # one data extent, so its client would read the whole
                    # 1 TiB (about 12 minutes here).
                    self.measure(d, "upload", "raw", "nbd", 4,
                                 src_key="empty", sparse_size=TiB,
                                 name="upload empty 1 TiB")
                    self.measure(d, "download", "raw", "nbd", 4,
                                 src_key="empty", sparse_size=TiB,
                                 name="download empty 1 TiB")
                    self.server_ops(d)
                    self.rss[f"{kind} after 1 TiB"] = d.peak_rss()
            finally:
                d.stop()

    def main(self) -> None:
        t0 = time.monotonic()
        print("machine references:", flush=True)
        self.references()
        impls = ["ours"]
        if self.args.upstream:
            impls.append("upstream")
        for kind in impls:
            print(f"{kind}:", flush=True)
            self.run_impl(kind)
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "out")
        os.makedirs(out, exist_ok=True)
        data = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": report.machine(),
            "size": self.size, "data": self.data, "reps": self.args.reps,
            "references": self.refs, "results": self.results,
            "peak_rss": self.rss,
            "elapsed": time.monotonic() - t0,
        }
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=2)
        print()
        print(report.table(data))
        report.chart(data, os.path.join(out, "chart.png"))
        print(f"\nwrote {out}/results.json and {out}/chart.png "
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
                   help="runs of the target configurations (file "
                        "backend, 4 connections); the median is reported")
    p.add_argument("--other-reps", type=int, default=1,
                   help="runs of the other configurations")
    p.add_argument("--workdir", default="/var/tmp/imageio-bench")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    p.add_argument("--variants", nargs="+", default=["tls", "tcp", "unix"])
    p.add_argument("--formats", nargs="+", default=["raw", "qcow2"])
    p.add_argument("--backends", nargs="+", default=["file", "nbd"])
    p.add_argument("--conns", nargs="+", type=int, default=[1, 4],
                   help="client connections for file tickets")
    p.add_argument("--nbd-conns", nargs="+", type=int, default=[4],
                   help="client connections for nbd tickets")
    p.add_argument("--keep", action="store_true",
                   help="keep the images in --workdir")
    return p.parse_args()


if __name__ == "__main__":
    Bench(parse_args()).main()
