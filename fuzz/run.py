# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run the atheris fuzz target for a bounded time and report its figures:
inputs tried, speed, corpus growth, coverage and crashes.

    .venv/bin/python fuzz/run.py --seconds 60

Inputs libFuzzer finds interesting are kept in ``build/fuzz/corpus``
(ignored by git) and reused by the next run, next to the checked-in seed
corpus ``fuzz/corpus``. A crash stops the run, is saved under
``build/fuzz/crashes`` and makes the exit status 1; turn it into a
regression test by copying it into ``fuzz/corpus`` (every file there is
replayed by ``test/test_fuzz_corpus.py``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60,
                        help="total fuzzing time (default 60)")
    parser.add_argument("--target", choices=("http", "nbd"),
                        default="http",
                        help="the HTTP request path (default) or the NBD "
                             "door")
    parser.add_argument("--workdir",
                        help="corpus and crashes (default build/fuzz, "
                             "build/fuzz-nbd for nbd)")
    args = parser.parse_args()
    if args.workdir is None:
        suffix = "" if args.target == "http" else "-nbd"
        args.workdir = os.path.join(TOP, "build", f"fuzz{suffix}")
    seeds = "corpus" if args.target == "http" else "corpus-nbd"

    corpus = os.path.join(args.workdir, "corpus")
    crashes = os.path.join(args.workdir, "crashes")
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    before_crashes = set(os.listdir(crashes))
    before_corpus = len(os.listdir(corpus))
    log_path = os.path.join(args.workdir, "fuzz.log")

    cmd = [sys.executable, os.path.join(HERE, f"fuzz_{args.target}.py"),
           f"-max_total_time={args.seconds}",
           "-print_final_stats=1",
           f"-artifact_prefix={crashes}{os.sep}",
           *([f"-dict={os.path.join(HERE, 'http.dict')}"]
             if args.target == "http" else []),
           # One input must never take long: a hang is a bug too.
           "-timeout=10",
           "-rss_limit_mb=2048",
           corpus, os.path.join(HERE, seeds)]
    print(f"fuzz: running for {args.seconds} seconds, log in {log_path}",
          flush=True)
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                             cwd=TOP)
    with open(log_path) as f:
        text = f.read()

    runs = _stat(text, "number_of_executed_units")
    speed = _stat(text, "average_exec_per_sec")
    m = re.findall(r"cov: (\d+) ft: (\d+)", text)
    cov, features = m[-1] if m else ("?", "?")
    new_crashes = sorted(set(os.listdir(crashes)) - before_crashes)
    after_corpus = len(os.listdir(corpus))

    print(f"fuzz: inputs tried: {runs} ({speed}/s)")
    print(f"fuzz: coverage: {cov} edges, {features} features")
    print(f"fuzz: corpus: {after_corpus} inputs "
          f"({after_corpus - before_corpus} new this run)")
    print(f"fuzz: crashes: {len(new_crashes)}")
    for name in new_crashes:
        print(f"fuzz:   {os.path.join(crashes, name)}")
    if rc != 0 and not new_crashes:
        print(f"fuzz: libFuzzer failed with status {rc}; see {log_path}")
        print(text[-2000:])
    return 0 if rc == 0 and not new_crashes else 1


def _stat(text: str, name: str) -> str:
    m = re.search(rf"stat::{name}:\s+(\d+)", text)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    sys.exit(main())
