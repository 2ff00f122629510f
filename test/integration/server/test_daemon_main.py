# SPDX-License-Identifier: GPL-2.0-or-later
"""The daemon's command line, start-up checks and services."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from typing import Any

from ovirt_imageio import config
from ovirt_imageio.server import daemon as server_daemon
from ovirt_imageio.server import privileges

from support import TOP
from support.daemon_util import Daemon, free_port, request


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


def startup_conf(tmp_path: Any, port: int, control: Any) -> str:
    """A plain daemon on port with its control socket at control."""
    return write_conf(tmp_path, f"""
[daemon]
run_dir = {tmp_path / "run"}
drop_privileges = false
systemd_enable = false
[tls]
enable = false
[remote]
host = 127.0.0.1
port = {port}
[local]
enable = false
[control]
socket = {control}
[handlers]
keys = stderr
[logger_root]
handlers = stderr
""")


def test_control_socket_in_missing_folder_is_named(tmp_path: Any) -> None:
    missing = tmp_path / "nothing" / "sock"
    p = run_cli("--conf-dir", startup_conf(tmp_path, 0, missing))
    assert p.returncode == 1
    assert (f"startup failed: control.service cannot listen on unix socket "
            f"{missing}: No such file or directory") in p.stderr


def test_remote_port_in_use_is_named(tmp_path: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = startup_conf(tmp_path, port, tmp_path / "sock")
        p = run_cli("--conf-dir", conf)
    assert p.returncode == 1
    assert (f"startup failed: remote.service cannot listen on port "
            f"127.0.0.1:{port}: Address already in use") in p.stderr


def test_missing_run_dir_is_created(tmp_path: Any) -> None:
    run_dir = tmp_path / "a" / "run"
    cfg = config.load_files([os.path.join(TOP, "test", "conf",
                                          "daemon.conf")])
    cfg = cfg.replace("daemon", run_dir=str(run_dir))
    cfg = cfg.replace("control", socket=str(run_dir / "sock"))
    cfg = cfg.replace("local", enable=False)
    cfg = cfg.replace("tls", enable=False)
    old = os.umask(0o077)
    try:
        d = server_daemon.Daemon(cfg)
        d.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755
        assert os.path.exists(run_dir / "sock")
        # Handed to the service user with the socket bound in it.
        assert str(run_dir) in privileges.owned_paths(d.config, [])
    finally:
        d.stop()


def test_daemon_hashes_with_libsodium() -> None:
    # A fresh interpreter: the daemon's wiring alone picks the hash.
    code = ("from ovirt_imageio.util import blkhash\n"
            "from ovirt_imageio.native.blake2b import Blake2b\n"
            "before = type(blkhash.new('blake2b'))\n"
            "import ovirt_imageio.server.daemon\n"
            "print(before is Blake2b, type(blkhash.new('blake2b')) "
            "is Blake2b)\n")
    p = subprocess.run([sys.executable, "-c", code],
                       env=dict(os.environ, PYTHONPATH=TOP), cwd=TOP,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True"]
