# SPDX-License-Identifier: GPL-2.0-or-later
"""
``make load`` stays runnable: a one-second load from its own script, as a
subprocess started the way the Makefile starts it, serves requests with
no errors, mismatches or leaks.
"""

from __future__ import annotations

import os
import subprocess
import sys

from support import TOP  # noqa: E402


def test_short_load_run() -> None:
    env = dict(os.environ)
    # As from make: nothing on the path but what the script adds.
    env.pop("PYTHONPATH", None)
    p = subprocess.run(
        [sys.executable, os.path.join(TOP, "load", "run.py"),
         "--seconds", "1", "--connections", "4", "--tickets", "2",
         "--seed", "1"],
        cwd=TOP, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "load: errors: 0" in p.stdout
    assert "load: data mismatches: 0" in p.stdout
    assert "load: leaks: none" in p.stdout
