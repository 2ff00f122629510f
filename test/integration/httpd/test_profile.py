# SPDX-License-Identifier: GPL-2.0-or-later
"""/profile/ on the control service, and ovirt-imageioctl start-profile and
stop-profile, against a real daemon with yappi."""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
from typing import Any

import pytest

from support import TOP
from support.daemon_util import Daemon, running

CTL = [sys.executable, "-m", "ovirt_imageio.admin"]


def ctl(daemon: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *argv, "-c", daemon.conf_dir], cwd=TOP,
        env=dict(os.environ, PYTHONPATH=TOP), capture_output=True,
        text=True, timeout=60)


def profiled(tmp_path: Any, **kwargs: Any) -> Any:
    return running(tmp_path / "daemon", extra_conf=f"""
        [profile]
        filename = {tmp_path / "profile"}
        """, **kwargs)


def test_start_stop(tmp_path: Any) -> None:
    with profiled(tmp_path) as d:
        assert d.control("GET", "/profile/") == (200, {"running": False})
        p = ctl(d, "start-profile")
        assert (p.returncode, p.stderr) == (0, "")
        assert d.control("GET", "/profile/") == (200, {"running": True})

        # Work for the profiler: the config and a ticket round trip.
        d.control("GET", "/config/")
        d.control("GET", "/tickets/nosuch")

        p = ctl(d, "start-profile")
        assert p.returncode == 1
        assert "400" in p.stderr and "already running" in p.stderr

        p = ctl(d, "stop-profile")
        assert (p.returncode, p.stderr) == (0, "")
        assert d.control("GET", "/profile/") == (200, {"running": False})

        p = ctl(d, "stop-profile")
        assert p.returncode == 1
        assert "not running" in p.stderr

    # A pstat file covering the daemon's own code in every thread.
    stats = pstats.Stats(str(tmp_path / "profile"))
    files = {f.file_name
             for f in stats.get_stats_profile().func_profiles.values()}
    assert any(f.endswith(os.path.join("handlers", "tickets.py"))
               for f in files)


@pytest.mark.parametrize("query,words", [
    ("run=y&clock=gpu", "Invalid clock"),
    ("run=maybe", "Invalid run"),
    ("", "Invalid run"),
])
def test_bad_requests(tmp_path: Any, query: str, words: str) -> None:
    with profiled(tmp_path) as d:
        status, body = d.control("POST", f"/profile/?{query}")
        assert status == 400
        assert words in str(body)
        assert d.control("GET", "/profile/") == (200, {"running": False})


def test_wall_clock(tmp_path: Any) -> None:
    with profiled(tmp_path) as d:
        assert d.control("POST", "/profile/?run=y&clock=wall")[0] == 200
        assert d.control("POST", "/profile/?run=n")[0] == 200
    assert os.path.getsize(tmp_path / "profile") > 0


def test_without_yappi(tmp_path: Any) -> None:
    # A package that fails to import stands for a missing yappi.
    fake = tmp_path / "noyappi"
    fake.mkdir()
    (fake / "yappi.py").write_text("raise ImportError('no yappi here')\n")
    with profiled(tmp_path, env={"PYTHONPATH": f"{fake}:{TOP}"}) as d:
        status, body = d.control("POST", "/profile/?run=y")
        assert status == 404
        assert "needs yappi" in str(body)
        p = ctl(d, "start-profile")
        assert p.returncode == 1
        assert "404" in p.stderr and "yappi" in p.stderr
    assert not os.path.exists(tmp_path / "profile")
