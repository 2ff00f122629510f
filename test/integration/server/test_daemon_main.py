# SPDX-License-Identifier: GPL-2.0-or-later
"""The daemon's command line, start-up checks and services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

from support.daemon_util import TOP, Daemon, free_port, request


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ovirt_imageio.server", *args],
        env=dict(os.environ, PYTHONPATH=TOP), cwd=TOP, capture_output=True,
        text=True, timeout=60)


def write_conf(tmp_path: Any, text: str) -> str:
    conf = tmp_path / "conf"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "conf.d" / "daemon.conf").write_text(text)
    return str(conf)


def test_show_config(tmp_path: Any) -> None:
    conf = write_conf(tmp_path, "[remote]\nport = 12345\n"
                                "[daemon]\nmax_connections = 4\n")
    p = run_cli("--conf-dir", conf, "--show-config")
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg["remote"]["port"] == 12345
    assert cfg["daemon"]["max_connections"] == 4
    assert cfg["tls"]["enable"] is True
    assert cfg["handler_logfile"]["class"] == \
        "logging.handlers.RotatingFileHandler"


def test_bad_value_fails_startup(tmp_path: Any) -> None:
    conf = write_conf(tmp_path, "[daemon]\nmax_connections = many\n")
    p = run_cli("--conf-dir", conf)
    assert p.returncode == 1
    assert "max_connections" in p.stderr
    assert "many" in p.stderr


def test_missing_conf_dir(tmp_path: Any) -> None:
    p = run_cli("--conf-dir", str(tmp_path / "nothing"))
    assert p.returncode == 1
    assert "Could not find" in p.stderr


def test_plain_tcp_and_sigterm(tmp_path: Any) -> None:
    d = Daemon(tmp_path, tls=False)
    d.start()
    try:
        conn = d.remote()
        r = request(conn, "GET", "/info/")
        assert r.status == 200
        r.read()
        conn.close()
    finally:
        rc = d.stop()
    assert rc == 0
    assert "Stopped" in d.log()
    # The pathname control socket is removed on shutdown.
    assert not os.path.exists(d.control_path)


def test_control_over_tcp(tmp_path: Any) -> None:
    port = free_port()
    d = Daemon(tmp_path, extra_conf=f"""
        [control]
        transport = tcp
        port = {port}
        """)
    d.control_port = port
    d.start()
    try:
        code, cfg = d.control("GET", "/config/")
        assert code == 200
        assert cfg["control"]["transport"] == "tcp"
        assert cfg["control"]["port"] == port
    finally:
        d.stop()


def test_ticket_preload(tmp_path: Any) -> None:
    image = tmp_path / "image.raw"
    data = os.urandom(8192)
    image.write_bytes(data)
    ticket = {"uuid": str(uuid.uuid4()), "size": 8192, "timeout": 300,
              "ops": ["read"], "url": f"file://{image}"}
    ticket_file = tmp_path / "ticket.json"
    ticket_file.write_text(json.dumps(ticket))
    d = Daemon(tmp_path / "d")
    d.start_args = ["--ticket", str(ticket_file)]
    d.start()
    try:
        conn = d.local()
        r = request(conn, "GET", f"/images/{ticket['uuid']}")
        assert r.status == 200
        assert r.read() == data
        conn.close()
    finally:
        d.stop()
