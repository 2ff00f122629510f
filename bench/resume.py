# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resume after interruptions, the rows of ``make bench`` for issue 17:

- ``client killed``: ovirt-img uploading a random-data image with 4
  connections is SIGKILLed once the ticket's ``transferred`` passes half
  the image; ``ovirt-img upload --resume`` then completes it.
- ``daemon killed``: the same upload with ``--flush-every`` (256 MiB);
  the daemon is SIGKILLed at half, restarted, the ticket added again,
  and ``--resume`` completes it. Half of 2 GiB is a flush point, so the
  kill meets the flush starting there: the worst case, a whole interval
  not durable. ``daemon at N%`` kills half an interval later instead,
  a kill's average case.

Both end with ``qemu-img compare``. "Sent twice" is what the resumed
upload wrote (the daemon's ``ovirt_imageio_backend_bytes_total{op=
"write"}``) beyond what the target still lacked after the kill (read
from the target: blocks already equal to the source's), so it counts the
requests the kill cut, which the ledger never records. The rows also
show the issue's own count: the bytes written in both runs (metrics;
for the daemon kill, the first run's read just before the kill) beyond
the image's data. The metrics count what cut requests wrote before the
cut too, but the first run's count is read at one moment (after the
client's connections closed, or just before the daemon kill) while the
measured column reads the target itself; the metrics column can still
come out below zero, and the verdict uses the measured column.

    .venv/bin/python bench/resume.py [--size-gib 2] [--flush-every-mib 256]

Writes bench/out/resume.json; prints target / measured / ok-or-MISS;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import daemons  # noqa: E402

# Importable once daemons has put the source tree on sys.path.
from prometheus_client import parser  # noqa: E402

MiB = 1024**2
GiB = 1024**3
OVIRT_IMG = os.path.join(daemons.TOP, "ovirt-img")
CA = os.path.join(daemons.PKI, "ca.pem")
OUT = os.path.join(daemons.TOP, "bench", "out", "resume.json")
BLOCK = 4096


def make_source(path: str, size: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
        f.truncate(size)


def new_target(path: str, size: int) -> None:
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(size)


def on_target(src: str, dst: str) -> int:
    """Bytes of dst already equal to src, in 4 KiB blocks (src random)."""
    equal = 0
    chunk = 8 * MiB
    with open(src, "rb") as a, open(dst, "rb") as b:
        while True:
            x = a.read(chunk)
            if not x:
                return equal
            y = b.read(chunk)
            if x == y:
                equal += len(x)
                continue
            for i in range(0, len(x), BLOCK):
                if x[i:i + BLOCK] == y[i:i + BLOCK]:
                    equal += len(x[i:i + BLOCK])


def written_metric(d: daemons.Daemon) -> int:
    _, body = d.request("GET", "/metrics")
    total = 0.0
    for family in parser.text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if (s.name == "ovirt_imageio_backend_bytes_total"
                    and s.labels.get("op") == "write"):
                total += s.value
    return int(total)


def ticket_status(d: daemons.Daemon, tid: str) -> dict[str, Any]:
    status, body = d.request("GET", f"/tickets/{tid}")
    if status != 200:
        raise RuntimeError(f"ticket status: {status} {body!r}")
    result: dict[str, Any] = json.loads(body)
    return result


def poll(condition: Any, what: str, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def upload(src: str, url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [OVIRT_IMG, "upload", src, url, "--cafile", CA,
         "--max-workers", "4", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def halfway(d: daemons.Daemon, tid: str, proc: subprocess.Popen[bytes],
            size: int, at: float = 0.5) -> float:
    """Wait until the ticket transferred at * size; the fraction seen."""
    seen = 0

    def half() -> bool:
        nonlocal seen
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"upload ended before {at:.0%}: {err}")
        seen = int(ticket_status(d, tid).get("transferred", 0))
        return seen >= int(size * at)

    poll(half, f"{at:.0%} of the upload")
    return seen / size


def finish(proc: subprocess.Popen[bytes]) -> int:
    _, err = proc.communicate()
    if proc.returncode not in (0, 1):
        raise RuntimeError(err.decode())
    return proc.returncode


def no_connections(d: daemons.Daemon, tid: str) -> None:
    poll(lambda: ticket_status(d, tid)["connections"] == 0,
         "the ticket's connections to end")


def compare(src: str, dst: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F",
                           "raw", src, dst]).returncode == 0


def client_killed(work: str, src: str, size: int) -> dict[str, Any]:
    target = os.path.join(work, "target-client.raw")
    new_target(target, size)
    d = daemons.Daemon("ours", "unix", work)
    d.start()
    try:
        tid = str(uuid.uuid4())
        d.add_ticket({"uuid": tid, "size": size, "timeout": 3600,
                      "ops": ["write"], "url": f"file://{target}"})
        url = d.url(tid)
        start = time.monotonic()
        proc = upload(src, url)
        at = halfway(d, tid, proc, size)
        proc.kill()
        proc.wait()
        no_connections(d, tid)
        first = written_metric(d)
        present = on_target(src, target)
        resumed = upload(src, url, "--resume")
        rc = finish(resumed)
        no_connections(d, tid)
        elapsed = time.monotonic() - start
        total = written_metric(d)
        again = total - first
        return {
            "killed_at": at,
            "first_run_completed": first,
            "on_target_after_kill": present,
            "resume_sent": again,
            "sent_twice": again - (size - present),
            "sent_twice_metrics": total - size,
            "identical": rc == 0 and compare(src, target),
            "seconds": elapsed,
        }
    finally:
        d.stop()


def daemon_killed(work: str, src: str, size: int, flush_every: int,
                  at: float) -> dict[str, Any]:
    target = os.path.join(work, "target-daemon.raw")
    new_target(target, size)
    d = daemons.Daemon("ours", "unix", work)
    d.start()
    try:
        tid = str(uuid.uuid4())
        ticket = {"uuid": tid, "size": size, "timeout": 3600,
                  "ops": ["write"], "url": f"file://{target}"}
        d.add_ticket(ticket)
        url = d.url(tid)
        start = time.monotonic()
        proc = upload(src, url, "--flush-every", str(flush_every))
        at = halfway(d, tid, proc, size, at)
        # Read just before the kill: what the first run completed, give
        # or take the requests of the next few milliseconds.
        first = written_metric(d)
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        d.proc = None
        first_rc = finish(proc)
        present = on_target(src, target)
        d.start()
        d.add_ticket(ticket)
        resumed = upload(src, url, "--resume")
        rc = finish(resumed)
        no_connections(d, tid)
        elapsed = time.monotonic() - start
        again = written_metric(d)
        return {
            "killed_at": at,
            "first_client_rc": first_rc,
            "first_run_completed": first,
            "on_target_after_kill": present,
            "resume_sent": again,
            "sent_twice": again - (size - present),
            "sent_twice_metrics": first + again - size,
            "identical": rc == 0 and compare(src, target),
            "seconds": elapsed,
        }
    finally:
        d.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=2)
    p.add_argument("--flush-every-mib", type=int, default=256)
    p.add_argument("--workdir", default="/var/tmp/imageio-bench-resume")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    size = int(args.size_gib * GiB) // MiB * MiB
    src = os.path.join(args.workdir, "src.raw")
    make_source(src, size)
    load = os.getloadavg()
    flush_every = args.flush_every_mib * MiB
    # Half of the image is a multiple of the flush interval: the kill
    # comes as the flush there starts, the worst case (a whole interval
    # not yet durable). Half an interval later is a kill's average case.
    later = 0.5 + flush_every / 2 / size
    rows = {
        "client killed": (client_killed(args.workdir, src, size), 0.01),
        "daemon killed": (daemon_killed(args.workdir, src, size,
                                        flush_every, 0.5), 0.05),
        f"daemon at {later:.0%}": (daemon_killed(
            args.workdir, src, size, flush_every, later), 0.05),
    }
    out: dict[str, Any] = {"size": size, "flush_every": flush_every,
                           "load_before": load, "load_after":
                           os.getloadavg(), "rows": {}}
    print(f"resume, {size / GiB:g} GiB random, 4 connections "
          f"(load {load[0]:.1f})")
    print(f"{'row':<16} {'target':>8} {'measured':>9} {'metrics':>8} "
          f"{'killed at':>9} {'identical':>9}  verdict")
    for name, (r, target) in rows.items():
        twice = r["sent_twice"] / size
        metrics = r.get("sent_twice_metrics")
        ok = twice <= target and r["identical"]
        out["rows"][name] = dict(r, target=target, ratio=twice, ok=ok)
        shown = "-" if metrics is None else f"{metrics / size:.2%}"
        print(f"{name:<16} {target:>8.0%} {twice:>9.2%} {shown:>8} "
              f"{r['killed_at']:>9.0%} {str(r['identical']):>9}  "
              f"{'ok' if ok else 'MISS'}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
