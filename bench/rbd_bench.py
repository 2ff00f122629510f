# SPDX-License-Identifier: GPL-2.0-or-later
"""
``make bench`` rbd rows: the native rbd backend against an nbd ticket on
``qemu-nbd rbd:`` serving the same image, and ``qemu-img convert`` into
RBD as the machine's reference, on a private test cluster
(test/support/ceph.py). Also the cluster's start time and the bytes an
incremental backup moves when 1% of a 2 GiB image changed.

Not named rbd.py: bench/ goes on sys.path (test_bench_report.py), where
that name would shadow librbd's binding.

MiB/s of virtual size, median of --reps rounds (each row once per
round, every other round in reverse), 4 client connections, with the
CPU seconds the daemon, the OSD and qemu-nbd used in each transfer.
Results go to bench/out/rbd.json and a table on stdout, then the targets
(report.rbd_targets) with ok or MISS. A benchmark, not a test: nothing
asserts; the target checks only report. --only runs some rows while
developing (no targets, no JSON).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "test"))
sys.path.insert(0, os.path.dirname(HERE))

import daemons  # noqa: E402
import report  # noqa: E402

from ovirt_imageio import client  # noqa: E402
from ovirt_imageio.tools import qemu_img, qemu_nbd  # noqa: E402

from support import ceph  # noqa: E402

MiB = 1024**2
GiB = 1024**3
OBJECT = 4 * MiB
CONNS = 4
# The incremental row changes this share of the image, in 64 KiB writes.
CHANGED = 0.01
CHANGE_SIZE = 64 * 1024


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = tempfile.mkdtemp(prefix="bench-rbd-", dir=args.workdir)
        self.size = args.size
        self.rows: list[dict[str, Any]] = []
        self.cafile = os.path.join(daemons.PKI, "ca.pem")
        # CPU seconds per process of the last transfer (see rounds).
        self.cpu: dict[str, float] = {}

    def prepare(self) -> None:
        """Half random data, half hole; and its qcow2 copy."""
        raw = os.path.join(self.work, "image.raw")
        with open(raw, "wb") as f:
            rnd = random.Random(0)
            for _ in range(self.size // 2 // (8 * MiB)):
                f.write(rnd.randbytes(8 * MiB))
            f.truncate(self.size)
        qcow2 = os.path.join(self.work, "image.qcow2")
        qemu_img.convert(raw, qcow2, "raw", "qcow2")
        self.images = {"raw": raw, "qcow2": qcow2}

    def rounds(self, rows: list[tuple[str, Callable[[], float]]]) -> None:
        """
        Time every row once per round, --reps rounds: the machine's drift
        (other work on it) spreads over all rows instead of favouring the
        rows that ran first. Every other round runs the rows in reverse,
        so the native row and its qemu-nbd pair take turns following the
        other (each row follows the removal of the image before, whose
        freeing the OSD finishes in the background).
        """
        times: dict[str, list[float]] = {name: [] for name, _ in rows}
        cpu: dict[str, list[dict[str, float]]] = {
            name: [] for name, _ in rows}
        for i in range(self.args.reps):
            for name, run in (rows if i % 2 == 0 else rows[::-1]):
                self.cpu = {}
                times[name].append(run())
                cpu[name].append(self.cpu)
        for name, _ in rows:
            seconds = statistics.median(times[name])
            mibs = self.size / MiB / seconds
            # CPU seconds of each process, median over the rounds.
            used = {k: statistics.median(c[k] for c in cpu[name])
                    for k in cpu[name][0]}
            self.rows.append({"name": name, "seconds": seconds,
                              "mibs": mibs, "runs": times[name],
                              "cpu": used})
            where = " ".join(f"{k} {v:.1f}" for k, v in used.items())
            print(f"{name:<44} {mibs:8.0f} MiB/s  ({seconds:.2f} s, runs "
                  f"{' '.join(f'{t:.2f}' for t in times[name])}"
                  f"{'; cpu s ' + where if where else ''})", flush=True)

    def image(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        self.cluster.create_image(name, self.size)
        return name

    def ticket(self, url: str, ops: list[str], **kw: Any) -> str:
        tid = str(uuid.uuid4())
        ticket = {"uuid": tid, "size": self.size, "url": url,
                  "timeout": 3600, "ops": ops, "sparse": True}
        ticket.update(kw)
        self.daemon.add_ticket(ticket)
        return self.daemon.url(tid)

    def transfer(self, op: str, fmt: str, path: str) -> float:
        name = self.image()
        try:
            if op == "download":
                subprocess.run(["qemu-img", "convert", "-n", "-f", "raw",
                                "-O", "raw", self.images["raw"],
                                self.cluster.url(name)], check=True)
            rbd_url = self.cluster.url(name)
            server = None
            if path == "qemu-nbd":
                sock = os.path.join(self.work, f"{name}.sock")
                server = qemu_nbd.Server(rbd_url, "raw", sock,
                                         read_only=op == "download",
                                         cache="none")
                server.start()
                url = server.url
            else:
                url = rbd_url
            try:
                ops = ["read"] if op == "download" else ["write"]
                transfer_url = self.ticket(url, ops)
                out = os.path.join(self.work, f"out.{fmt}")
                pids = {"daemon": self.daemon.pid, "osd": self.cluster.osd_pid}
                if server is not None and server.pid is not None:
                    pids["qemu-nbd"] = server.pid
                before = {k: cpu_seconds(p) for k, p in pids.items()}
                start = time.monotonic()
                if op == "upload":
                    client.upload(self.images[fmt], transfer_url,
                                  self.cafile, max_workers=CONNS)
                else:
                    client.download(transfer_url, out, self.cafile,
                                    fmt=fmt, max_workers=CONNS)
                elapsed = time.monotonic() - start
                self.cpu = {k: cpu_seconds(p) - before[k]
                            for k, p in pids.items()}
                if self.args.verify:
                    a = self.images[fmt] if op == "upload" else out
                    if not qemu_img.compare(a, rbd_url):
                        raise RuntimeError(f"{op} {fmt} {path}: mismatch")
                if os.path.exists(out):
                    os.unlink(out)
                return elapsed
            finally:
                if server is not None:
                    server.stop()
        finally:
            self.cluster.remove_image(name)

    def convert(self) -> float:
        name = self.image()
        try:
            start = time.monotonic()
            subprocess.run(["qemu-img", "convert", "-n", "-W", "-m",
                            str(CONNS), "-f", "raw", "-O", "raw",
                            "-T", "none", self.images["raw"],
                            self.cluster.url(name)], check=True)
            return time.monotonic() - start
        finally:
            self.cluster.remove_image(name)

    def incremental(self) -> None:
        """Full backup, 1% changed in 64 KiB writes, incremental backup."""
        name = self.image()
        try:
            url = self.cluster.url(name)
            subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O",
                            "raw", self.images["raw"], url], check=True)
            self.cluster.rbd("snap", "create", f"{name}@b1")
            full = os.path.join(self.work, "full.qcow2")
            client.download(self.ticket(self.cluster.url(name, "b1"),
                                        ["read"]), full, self.cafile)
            count = int(self.size * CHANGED) // CHANGE_SIZE
            rnd = random.Random(1)
            slots = rnd.sample(range(self.size // CHANGE_SIZE), count)
            commands = []
            for s in slots:
                commands += ["-c", f"write -P 0x5a {s * CHANGE_SIZE} "
                             f"{CHANGE_SIZE}"]
            subprocess.run(["qemu-io", "-f", "raw", *commands, url],
                           check=True, stdout=subprocess.DEVNULL)
            self.cluster.rbd("snap", "create", f"{name}@b2")
            incr = os.path.join(self.work, "incr.qcow2")
            start = time.monotonic()
            client.download(
                self.ticket(self.cluster.url(name, "b2", from_snap="b1"),
                            ["read"], dirty=True),
                incr, self.cafile, incremental=True, backing_file=full,
                backing_format="qcow2")
            seconds = time.monotonic() - start
            moved = sum(e["length"] for e in qemu_img.map(incr)
                        if e.get("depth") == 0 and e["present"])
            ok = qemu_img.compare(incr, self.cluster.url(name, "b2"))
            row = {"name": "rbd incremental 1% changed", "seconds": seconds,
                   "changed": count * CHANGE_SIZE, "moved": moved,
                   "moved_pct": 100 * moved / self.size, "equal": ok}
            self.rows.append(row)
            print(f"{row['name']:<44} moved {moved / MiB:.1f} MiB = "
                  f"{row['moved_pct']:.2f}% of {self.size / GiB:.0f} GiB "
                  f"(changed {count * CHANGE_SIZE / MiB:.1f} MiB) in "
                  f"{seconds:.2f} s, chain equal: {ok}", flush=True)
            for path in (full, incr):
                os.unlink(path)
        finally:
            self.cluster.remove_image(name)

    def run(self) -> None:
        try:
            self._run()
        finally:
            # The images and the OSD's BlueStore file take gigabytes.
            if not self.args.keep:
                shutil.rmtree(self.work, ignore_errors=True)

    def _run(self) -> None:
        self.prepare()
        start = time.monotonic()
        with ceph.running(os.path.join(self.work, "ceph")) as cluster:
            self.cluster = cluster
            print(f"{'rbd test cluster start':<44} {cluster.start_time:8.1f}"
                  " s", flush=True)
            self.rows.append({"name": "rbd cluster start",
                              "seconds": cluster.start_time})
            self.daemon = daemons.Daemon("ours", "unix", self.work)
            self.daemon.start()
            try:
                rows: list[tuple[str, Callable[[], float]]] = []
                for op in ("upload", "download"):
                    for fmt in ("raw", "qcow2"):
                        for path in ("native", "qemu-nbd"):
                            rows.append((
                                f"rbd {op} {fmt} {path} ({CONNS} conns)",
                                functools.partial(self.transfer, op, fmt,
                                                  path)))
                rows.append(("qemu-img convert raw -> rbd (reference)",
                             self.convert))
                if self.args.only:
                    rows = [r for r in rows if self.args.only in r[0]]
                self.rounds(rows)
                if not self.args.only:
                    self.incremental()
            finally:
                self.daemon.stop()
        self.report(time.monotonic() - start)

    def report(self, total: float) -> None:
        if self.args.only:
            return
        data = {"rows": self.rows, "size": self.size,
                "reps": self.args.reps, "total_seconds": total,
                "load": os.getloadavg()}
        data["targets"] = [
            {"target": t, "wanted": w, "measured": m, "ok": ok}
            for t, w, m, ok in report.rbd_targets(data)]
        print()
        print(report.rbd_table(data))
        out = os.path.join(HERE, "out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "rbd.json"), "w") as f:
            json.dump(data, f, indent=2)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name, which may hold spaces.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--size", type=int, default=2 * GiB)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--verify", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true",
                   help="keep the images and the cluster's files")
    p.add_argument("--only", default="", metavar="TEXT",
                   help="run only the rows whose name contains TEXT, "
                   "for development (no targets, no JSON)")
    args = p.parse_args()
    Bench(args).run()


if __name__ == "__main__":
    main()
