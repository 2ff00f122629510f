# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door's rows of ``make bench``: ``nbdcopy`` through the door
against ``nbdcopy`` to ``qemu-nbd --cache=none --aio=native`` serving the
same file, both directions, on the unix socket, TCP and TLS, and on an
nbd ticket relayed to qemu-nbd. Run alone for just these rows::

    .venv/bin/python bench/nbd_door.py --reps 3

Figures are MiB/s of virtual size, the median of --reps runs; the runs
interleave (one run of every row, then the next round), rows compared
by a target run next to each other and in alternating order (see
``round``), so the ratios compare the same moments of this shared
machine. nbdcopy uses
its defaults (4 connections when the server allows multi-conn, 64
requests in flight of 256 KiB).
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
import refs  # noqa: E402

MiB = 1024**2
GiB = 1024**3

# (row, reference row, minimum ratio) checked at the end: the issue's
# targets.
TARGETS = [
    ("door download unix", "qemu-nbd download unix", 1.0),
    ("door download tcp", "qemu-nbd download tcp", 1.0),
    ("door upload unix", "qemu-nbd upload unix", 1.0),
    ("door upload tcp", "qemu-nbd upload tcp", 1.0),
    ("door relay download unix", "qemu-nbd download unix", 0.9),
    ("door relay upload unix", "qemu-nbd upload unix", 0.9),
    ("door download tls", "door download tcp", 0.8),
    ("door upload tls", "door upload tcp", 0.8),
]


def drop_caches() -> None:
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


class QemuNBD:
    """qemu-nbd serving a raw file on a unix socket or loopback TCP."""

    def __init__(self, path: str, read_only: bool, sock: str | None = None,
                 port: int | None = None) -> None:
        cmd = ["qemu-nbd", "--persistent", "--shared=8", "--cache=none",
               "--aio=native", "--discard=unmap", "-f", "raw"]
        if read_only:
            cmd.append("--read-only")
        if sock is not None:
            cmd += ["--socket", sock]
            self.url = f"nbd+unix:///?socket={sock}"
        else:
            cmd += ["--bind", "127.0.0.1", "--port", str(port)]
            self.url = f"nbd://127.0.0.1:{port}/"
        self.sock = sock
        self.port = port
        self.proc = subprocess.Popen(cmd + [path], stderr=subprocess.DEVNULL)
        if sock is not None:
            refs._wait_sockets([sock])
        else:
            _wait_port(int(port or 0))

    def stop(self) -> None:
        # qemu-nbd loses a SIGTERM that lands before its main loop runs
        # (it is already listening then), so a term is followed by a kill.
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class DoorBench:
    def __init__(self, work: str, image: str, size: int, reps: int,
                 only: list[str] | None = None) -> None:
        self.work = work
        # Substrings of the row names to run (None: all).
        self.only = only
        self.image = image
        self.size = size
        self.reps = reps
        self.certs = os.path.join(work, "nbd-certs")
        os.makedirs(self.certs, exist_ok=True)
        shutil.copy(os.path.join(daemons.PKI, "ca.pem"),
                    os.path.join(self.certs, "ca-cert.pem"))
        # variant -> (NBD port, NBD socket)
        self.doors: dict[str, tuple[int, str]] = {}
        # TLS is all or nothing on the TCP door: one daemon without it
        # (unix and tcp rows), one with it (tls rows).
        self.plain = self._daemon("nbd-plain", tls=False)
        self.tls = self._daemon("nbd-tls", tls=True)
        self.results: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def _daemon(self, variant: str, tls: bool) -> daemons.Daemon:
        d = daemons.Daemon("ours", variant, self.work)
        d.tls = tls
        port = daemons.free_port()
        sock = os.path.join(d.dir, "nbd.sock")
        self.doors[variant] = (port, sock)
        conf_d = os.path.join(d.dir, "conf", "conf.d")
        with open(os.path.join(conf_d, "nbd.conf"), "w") as f:
            f.write(f"[nbd]\nenable = true\nhost = 127.0.0.1\n"
                    f"port = {port}\nsocket = {sock}\n")
        return d

    def daemon(self, transport: str) -> daemons.Daemon:
        return self.tls if transport == "tls" else self.plain

    def url(self, transport: str, ticket_id: str) -> str:
        port, sock = self.doors[self.daemon(transport).variant]
        if transport == "unix":
            return f"nbd+unix:///{ticket_id}?socket={sock}"
        if transport == "tcp":
            return f"nbd://127.0.0.1:{port}/{ticket_id}"
        return (f"nbds://localhost:{port}/{ticket_id}"
                f"?tls-certificates={self.certs}")

    def wanted(self, name: str) -> bool:
        """Whether the row called name runs (see --only)."""
        return not self.only or any(o in name for o in self.only)

    def timed_copy(self, name: str, src: str, dst: str,
                   cpu: Callable[[], float] | None = None) -> None:
        if not self.wanted(name):
            return
        drop_caches()
        c0 = cpu() if cpu else 0.0
        start = time.monotonic()
        subprocess.run(["nbdcopy", src, dst], check=True)
        seconds = time.monotonic() - start
        self.results.setdefault(name, []).append(self.size / MiB / seconds)
        if cpu:
            self.cpu.setdefault(name, []).append(
                (cpu() - c0) / (self.size / GiB))
        print(f"  {name:30} {self.size / MiB / seconds:8.0f} MiB/s",
              flush=True)

    def fresh(self, path: str) -> str:
        if os.path.exists(path):
            os.unlink(path)
        with open(path, "wb") as f:
            f.truncate(self.size)
        return path

    def ticket(self, url: str, ops: list[str],
               d: daemons.Daemon | None = None) -> str:
        tid = str(uuid.uuid4())
        (d or self.plain).add_ticket({
            "uuid": tid, "size": self.size, "url": url, "timeout": 3600,
            "ops": ops, "sparse": True})
        return tid

    def run(self) -> dict[str, Any]:
        try:
            self.plain.start()
            self.tls.start()
            for n in range(self.reps):
                self.round(n)
        finally:
            self.plain.stop()
            self.tls.stop()
        rows = {name: statistics.median(v) for name, v in
                self.results.items()}
        cpu = {name: statistics.median(v) for name, v in self.cpu.items()}
        return {"rows": rows, "runs": self.results, "daemon_cpu_per_gib": cpu}

    def round(self, n: int = 0) -> None:
        """
        One run of every row. Rows compared by a target run next to each
        other, in groups, and each group runs backwards in every other
        round: the disk of this VM speeds up and slows down over tens of
        seconds, and a fixed order would hand the same row the slow
        moments (the first upload after the downloads ran at 0.74x of
        qemu-nbd in place, and at 1.2x next to it).
        """
        out = os.path.join(self.work, "nbd-out.raw")
        up = os.path.join(self.work, "nbd-up.raw")
        sock = os.path.join(self.work, "qemu-nbd.sock")
        groups: list[list[Callable[[], None]]] = [
            [lambda: self.qemu_download(sock=sock),
             lambda: self.door_download("unix"),
             lambda: self.relay_download(sock)],
            [lambda: self.qemu_download(port=daemons.free_port()),
             lambda: self.door_download("tcp"),
             lambda: self.door_download("tls")],
            [lambda: self.qemu_upload(sock=sock),
             lambda: self.door_upload("unix"),
             lambda: self.relay_upload(sock)],
            [lambda: self.qemu_upload(port=daemons.free_port()),
             lambda: self.door_upload("tcp"),
             lambda: self.door_upload("tls")],
        ]
        for group in groups:
            for step in (group if n % 2 == 0 else group[::-1]):
                step()
        for path in (out, up):
            if os.path.exists(path):
                os.unlink(path)

    def _out(self) -> str:
        """A new empty download target."""
        return self.fresh(os.path.join(self.work, "nbd-out.raw"))

    def _up(self) -> str:
        """A new sparse upload target of the image's size."""
        return self.fresh(os.path.join(self.work, "nbd-up.raw"))

    def door_download(self, transport: str) -> None:
        dd = self.daemon(transport)
        tid = self.ticket(f"file://{self.image}", ["read"], dd)
        self.timed_copy(f"door download {transport}",
                        self.url(transport, tid), self._out(), dd.cpu)
        dd.del_ticket(tid)

    def door_upload(self, transport: str) -> None:
        dd = self.daemon(transport)
        tid = self.ticket(f"file://{self._up()}", ["write"], dd)
        self.timed_copy(f"door upload {transport}", self.image,
                        self.url(transport, tid), dd.cpu)
        dd.del_ticket(tid)

    def qemu_download(self, sock: str | None = None,
                      port: int | None = None) -> None:
        name = f"qemu-nbd download {'unix' if sock else 'tcp'}"
        if not self.wanted(name):
            return
        q = QemuNBD(self.image, True, sock=sock, port=port)
        try:
            self.timed_copy(name, q.url, self._out())
        finally:
            q.stop()

    def qemu_upload(self, sock: str | None = None,
                    port: int | None = None) -> None:
        name = f"qemu-nbd upload {'unix' if sock else 'tcp'}"
        if not self.wanted(name):
            return
        q = QemuNBD(self._up(), False, sock=sock, port=port)
        try:
            self.timed_copy(name, self.image, q.url)
        finally:
            q.stop()

    def relay_download(self, sock: str) -> None:
        if not self.wanted("door relay download unix"):
            return
        q = QemuNBD(self.image, True, sock=sock)
        try:
            tid = self.ticket(f"nbd:unix:{sock}", ["read"])
            self.timed_copy("door relay download unix",
                            self.url("unix", tid), self._out(),
                            self.plain.cpu)
            self.plain.del_ticket(tid)
        finally:
            q.stop()

    def relay_upload(self, sock: str) -> None:
        if not self.wanted("door relay upload unix"):
            return
        q = QemuNBD(self._up(), False, sock=sock)
        try:
            tid = self.ticket(f"nbd:unix:{sock}", ["write"])
            self.timed_copy("door relay upload unix", self.image,
                            self.url("unix", tid), self.plain.cpu)
            self.plain.del_ticket(tid)
        finally:
            q.stop()


def table(nbd: dict[str, Any]) -> str:
    rows = nbd["rows"]
    cpu = nbd["daemon_cpu_per_gib"]
    lines = [f"{'nbdcopy (MiB/s)':32} {'median':>8} {'runs':>20} "
             f"{'cpu s/GiB':>10}"]
    for name, value in rows.items():
        runs = " ".join(f"{v:.0f}" for v in nbd["runs"][name])
        c = f"{cpu[name]:10.2f}" if name in cpu else f"{'-':>10}"
        lines.append(f"{name:32} {value:8.0f} {runs:>20} {c}")
    lines.append("")
    lines.append("NBD door targets (median of the rounds' ratios; the "
                 "ratio of the medians after it):")
    for row, ref, minimum in TARGETS:
        if row not in rows or ref not in rows:
            continue
        x = paired_ratio(nbd["runs"][row], nbd["runs"][ref])
        lines.append(f"  [{'ok' if x >= minimum else 'MISS'}] {row} >= "
                     f"{minimum:.1f}x {ref}: {x:.2f}x "
                     f"({rows[row] / rows[ref]:.2f}x)")
    return "\n".join(lines)


def paired_ratio(runs: list[float], ref_runs: list[float]) -> float:
    """
    The median of the ratios of a row's runs to its reference's runs in
    the same round. A target's rows run next to each other (``round``),
    while this VM's disk and CPU drift by up to 2x over minutes: the
    ratio of the two medians can pair a fast minute of one row with a
    slow one of the other, the ratio within a round cannot.

    >>> paired_ratio([100, 50, 80], [100, 40, 100])
    1.0
    """
    return statistics.median(
        a / b for a, b in zip(runs, ref_runs, strict=True))


def run(work: str, image: str, size: int, reps: int,
        only: list[str] | None = None) -> dict[str, Any]:
    """Measure the rows; the result goes under "nbd" in results.json."""
    if shutil.which("nbdcopy") is None:
        return {"rows": {}, "runs": {}, "daemon_cpu_per_gib": {}}
    return DoorBench(work, image, size, reps, only).run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-nbd")
    p.add_argument("--only", help="run only the rows whose names contain "
                   "one of these comma-separated words, e.g. 'tls,tcp'")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    size = int(args.size * GiB)
    image = os.path.join(args.workdir, "image.raw")
    if not os.path.exists(image) or os.path.getsize(image) != size:
        with open(image, "wb") as f:
            left = size // 2
            while left:
                n = min(left, 64 * MiB)
                f.write(os.urandom(n))
                left -= n
            f.truncate(size)
    only = args.only.split(",") if args.only else None
    result = run(args.workdir, image, size, args.reps, only)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "nbd_door.json"), "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(table(result))


if __name__ == "__main__":
    main()
