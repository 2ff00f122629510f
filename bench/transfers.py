# SPDX-License-Identifier: GPL-2.0-or-later
"""
Rate limits and many transfers at once, measured (``make bench``):

- rate limit: a 4-connection upload of random data to a file ticket
  limited to --rate MiB/s should take size / rate; a second one, whose
  limit is raised to twice the rate by ``PATCH /tickets/{id}`` once half
  the image is written, should take the time until the PATCH plus the
  rest at the new rate (the expected figure is computed from the moment
  of the PATCH and the bytes transferred by then);
- many transfers: --uploads uploads of 4 connections each, to as many
  tickets and target files, started together: their aggregate
  throughput against one such upload alone, the slowest upload's time
  over the fastest's, and the daemon's peak RSS (VmHWM) afterwards.
  Upstream 2.5.1 runs the same uploads beside ours (it allows one writer
  per file ticket, so its client uses one connection).

All uploads go through the client library (``driver.py``) over TLS on
the remote port. Throughput is MiB/s of image size (all of it random
data); the aggregate is the bytes of every upload over the time from the
first start to the last end, both read from the machine-wide monotonic
clock by each driver. The daemons are started fresh for this bench, so
the peak RSS is that of these runs.

Prints one line per figure and a table of targets; writes
bench/out/transfers.json. A benchmark, not a test: nothing asserts.

    .venv/bin/python bench/transfers.py [--size 1] [--no-upstream]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402
import run  # noqa: E402

MiB = 1024**2
GiB = 1024**3

# The targets.
RATE_TOLERANCE = 0.10
MIN_AGGREGATE = 0.9
MAX_SPREAD = 1.3
MAX_RSS = 256 * MiB


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = os.path.abspath(args.workdir)
        os.makedirs(self.work, exist_ok=True)
        self.size = int(args.size * GiB) // MiB * MiB
        # All data: every byte of every upload is moved and written.
        self.src = run.prepare(self.work, self.size, self.size)["raw"]
        self.cafile = os.path.join(daemons.PKI, "ca.pem")

    # One upload.

    def _ticket(self, d: daemons.Daemon, rate: int = 0
                ) -> tuple[str, str]:
        tid = str(uuid.uuid4())
        target = os.path.join(self.work, f"target-{tid[:8]}.raw")
        with open(target, "wb") as f:
            f.truncate(self.size)
        ticket: dict[str, Any] = {
            "uuid": tid, "size": self.size, "timeout": 3600,
            "ops": ["write"], "url": f"file://{target}"}
        if rate:
            ticket["rate_limit"] = rate
        d.add_ticket(ticket)
        return tid, target

    def _done(self, d: daemons.Daemon, tid: str, target: str) -> None:
        d.del_ticket(tid)
        os.unlink(target)

    def _start(self, d: daemons.Daemon, tid: str
               ) -> subprocess.Popen[str]:
        cmd = [d.python, run.DRIVER, "upload", "--url", d.url(tid),
               "--cafile", self.cafile, "--workers", str(self.args.conns),
               "--file", self.src]
        env = dict(os.environ)
        if d.kind == "ours":
            env["PYTHONPATH"] = daemons.TOP
        else:
            env.pop("PYTHONPATH", None)
        return subprocess.Popen(cmd, env=env, cwd=self.work, text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def _wait(self, p: subprocess.Popen[str]) -> dict[str, Any]:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"upload failed:\n{err}")
        result: dict[str, Any] = json.loads(out)
        return result

    def _compare(self, target: str) -> None:
        c = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw",
                            "-F", "raw", self.src, target])
        if c.returncode != 0:
            raise RuntimeError(f"data mismatch: {self.src} {target}")

    # Rate limit.

    def rate_rows(self, d: daemons.Daemon) -> dict[str, float]:
        rate = self.args.rate * MiB
        tid, target = self._ticket(d, rate)
        run.drop_caches()
        steady = self._wait(self._start(d, tid))["seconds"]
        self._done(d, tid, target)
        expected = self.size / rate
        print(f"rate {self.args.rate} MiB/s: {steady:.2f} s "
              f"(expected {expected:.2f} s)", flush=True)

        tid, target = self._ticket(d, rate)
        run.drop_caches()
        p = self._start(d, tid)
        deadline = time.monotonic() + 10 * expected
        while True:
            status, body = d.request("GET", f"/tickets/{tid}")
            done = json.loads(body).get("transferred", 0) or 0
            if done >= self.size // 2 or p.poll() is not None:
                break
            if time.monotonic() > deadline:
                p.kill()
                raise RuntimeError("upload made no progress")
            time.sleep(0.02)
        patched_at = time.monotonic()
        status, body = d.request("PATCH", f"/tickets/{tid}",
                                 {"rate_limit": 2 * rate})
        if status != 200:
            raise RuntimeError(f"PATCH failed: {status} {body!r}")
        out = self._wait(p)
        self._compare(target)
        self._done(d, tid, target)
        patched_expected = (patched_at - out["start"]
                            + (self.size - done) / (2 * rate))
        print(f"rate {self.args.rate} -> {2 * self.args.rate} MiB/s at "
              f"{done / MiB:.0f} MiB: {out['seconds']:.2f} s (expected "
              f"{patched_expected:.2f} s)", flush=True)
        return {"steady": steady, "steady_expected": expected,
                "patched": out["seconds"],
                "patched_expected": patched_expected,
                "patched_at_bytes": done}

    # Many transfers.

    def solo(self, d: daemons.Daemon) -> float:
        tid, target = self._ticket(d)
        run.drop_caches()
        seconds: float = self._wait(self._start(d, tid))["seconds"]
        self._done(d, tid, target)
        mibs = self.size / MiB / seconds
        print(f"{d.kind:8} 1 upload x{self.args.conns}: {mibs:7.0f} MiB/s",
              flush=True)
        return mibs

    def many(self, d: daemons.Daemon) -> dict[str, float]:
        n = self.args.uploads
        tickets = [self._ticket(d) for _ in range(n)]
        run.drop_caches()
        procs = [self._start(d, tid) for tid, _ in tickets]
        outs = [self._wait(p) for p in procs]
        if d.kind == "ours":
            self._compare(tickets[0][1])
        for tid, target in tickets:
            self._done(d, tid, target)
        wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        times = [o["seconds"] for o in outs]
        result = {
            "aggregate_mib_s": n * self.size / MiB / wall,
            "spread": max(times) / min(times),
            "slowest": max(times), "fastest": min(times),
            "peak_rss": float(d.peak_rss()),
        }
        print(f"{d.kind:8} {n} uploads x{self.args.conns}: "
              f"{result['aggregate_mib_s']:7.0f} MiB/s together, "
              f"slowest/fastest {result['spread']:.2f}, peak RSS "
              f"{result['peak_rss'] / MiB:.0f} MiB", flush=True)
        return result

    def main(self) -> None:
        t0 = time.monotonic()
        load_before = os.getloadavg()
        kinds = ["ours"]
        if self.args.upstream and self.args.only != "rate":
            kinds.append("upstream")
        ds = {kind: daemons.Daemon(kind, "tls", self.work)
              for kind in kinds}
        data: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "size": self.size, "uploads": self.args.uploads,
            "conns": self.args.conns, "rate": self.args.rate * MiB,
            "load_before": load_before,
        }
        solo: dict[str, float] = {}
        many: dict[str, dict[str, float]] = {}
        try:
            for d in ds.values():
                d.start()
            if self.args.only in (None, "many"):
                # Solo, then together, each time one daemon after the
                # other, so both see about the same minutes of this
                # shared machine.
                solo = {kind: self.solo(d) for kind, d in ds.items()}
                many = {kind: self.many(d) for kind, d in ds.items()}
            if self.args.only in (None, "rate"):
                # Last: it changes nothing the RSS figures depend on.
                data["rate_limit"] = self.rate_rows(ds["ours"])
        finally:
            for d in ds.values():
                d.stop()
        data["solo_mib_s"] = solo
        data["many"] = many
        data["load_after"] = os.getloadavg()
        data["elapsed"] = time.monotonic() - t0
        data["targets"] = targets(data)
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "transfers.json"), "w") as f:
            json.dump(data, f, indent=2)
        print()
        print(table(data))
        print(f"\nload average before {load_before[0]:.2f}, after "
              f"{data['load_after'][0]:.2f}; wrote {out}/transfers.json "
              f"in {data['elapsed']:.0f} s")
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as rows: name, target, measured, ok."""
    rows: list[dict[str, Any]] = []
    r = data.get("rate_limit")
    rate = data["rate"] // MiB
    for key, name in (("steady", f"rate {rate} MiB/s elapsed"),
                      ("patched", f"rate PATCH to {2 * rate} MiB/s")):
        if r is None:
            break
        expected, measured = r[f"{key}_expected"], r[key]
        rows.append({
            "name": name,
            "target": f"{expected:.2f} s +-{RATE_TOLERANCE:.0%}",
            "measured": f"{measured:.2f} s",
            "ok": abs(measured - expected) <= RATE_TOLERANCE * expected})
    n, conns = data["uploads"], data["conns"]
    for kind, many in data["many"].items():
        solo = data["solo_mib_s"][kind]
        ratio = many["aggregate_mib_s"] / solo
        ours = kind == "ours"
        rows += [
            {"name": f"{kind} {n}x{conns} aggregate / solo",
             "target": f">= {MIN_AGGREGATE:.2f}" if ours else "-",
             "measured": f"{ratio:.2f} ({many['aggregate_mib_s']:.0f} / "
                         f"{solo:.0f} MiB/s)",
             "ok": ratio >= MIN_AGGREGATE if ours else None},
            {"name": f"{kind} {n}x{conns} slowest / fastest",
             "target": f"<= {MAX_SPREAD:.2f}" if ours else "-",
             "measured": f"{many['spread']:.2f}",
             "ok": many["spread"] <= MAX_SPREAD if ours else None},
            {"name": f"{kind} {n}x{conns} daemon peak RSS",
             "target": f"<= {MAX_RSS // MiB} MiB" if ours else "-",
             "measured": f"{many['peak_rss'] / MiB:.0f} MiB",
             "ok": many["peak_rss"] <= MAX_RSS if ours else None},
        ]
    return rows


def table(data: dict[str, Any]) -> str:
    lines = [f"{'target':34} {'wanted':18} {'measured':28} verdict"]
    for row in data["targets"]:
        verdict = {True: "ok", False: "MISS", None: "-"}[row["ok"]]
        lines.append(f"{row['name']:34} {row['target']:18} "
                     f"{row['measured']:28} {verdict}")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=float, default=1,
                   help="image size of each upload in GiB (default 1)")
    p.add_argument("--uploads", type=int, default=8,
                   help="uploads running together (default 8)")
    p.add_argument("--conns", type=int, default=4,
                   help="client connections of each upload (default 4)")
    p.add_argument("--rate", type=int, default=128,
                   help="rate limit in MiB/s (default 128)")
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-transfers")
    p.add_argument("--no-upstream", dest="upstream", action="store_false")
    p.add_argument("--only", choices=["rate", "many"],
                   help="run only the rate-limit rows or only the many "
                        "uploads rows")
    p.add_argument("--keep", action="store_true",
                   help="keep the images in --workdir")
    return p.parse_args()


if __name__ == "__main__":
    Bench(parse_args()).main()
