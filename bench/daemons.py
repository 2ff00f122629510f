# SPDX-License-Identifier: GPL-2.0-or-later
"""
Daemons under test: ours from the source tree, upstream from its own venv.

Both run from a generated conf dir with the same settings (INFO logging to
a file, 8 MiB buffers, TLS from test/pki), in one of three variants:

- ``tls``: TLS on the remote port, local service off,
- ``tcp``: plain HTTP on the remote port, local service off,
- ``unix``: TLS on the remote port and the local unix socket on; clients
  on this host switch to the unix socket by themselves.

Turning the local service off is how the TCP variants keep clients from
switching to the unix socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmark runs as a script from bench/; the package is not installed.
sys.path.insert(0, TOP)

from ovirt_imageio.net.unixhttp import UnixHTTPConnection  # noqa: E402

PKI = os.path.join(TOP, "test", "pki")
OURS_PYTHON = os.path.join(TOP, ".venv", "bin", "python")
UPSTREAM_PYTHON = os.path.join(TOP, ".bench-venv", "bin", "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, kind: str, variant: str, workdir: str) -> None:
        self.kind = kind
        self.variant = variant
        self.dir = os.path.join(workdir, f"{kind}-{variant}")
        os.makedirs(os.path.join(self.dir, "conf", "conf.d"),
                    exist_ok=True)
        self.port = free_port()
        self.control = os.path.join(self.dir, "control.sock")
        self.local = "\0/bench/" + f"{kind}-{variant}-{os.getpid()}"
        self.tls = variant != "tcp"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def python(self) -> str:
        return OURS_PYTHON if self.kind == "ours" else UPSTREAM_PYTHON

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, ticket_id: str) -> str:
        return f"{self.scheme}://localhost:{self.port}/images/{ticket_id}"

    def _write_conf(self) -> None:
        log = os.path.join(self.dir, "daemon.log")
        conf = f"""
[daemon]
run_dir = {self.dir}
drop_privileges = false
systemd_enable = false
max_connections = 8

[tls]
enable = {str(self.tls).lower()}
key_file = {PKI}/key.pem
cert_file = {PKI}/cert.pem
ca_file = {PKI}/ca.pem

[remote]
host = 127.0.0.1
port = {self.port}

[local]
enable = {str(self.variant == "unix").lower()}
socket = {self.local}

[control]
transport = unix
socket = {self.control}

[backend_file]
buffer_size = 8388608

[backend_nbd]
buffer_size = 8388608

[handlers]
keys = logfile

[logger_root]
level = INFO
handlers = logfile

[handler_logfile]
class = logging.FileHandler
args = ("{log}",)
kwargs = {{}}
level = DEBUG
formatter = long
"""
        with open(os.path.join(self.dir, "conf", "conf.d", "bench.conf"),
                  "w") as f:
            f.write(conf)

    def start(self) -> None:
        self._write_conf()
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        if self.kind == "ours":
            env["PYTHONPATH"] = TOP
            cwd = TOP
        else:
            env.pop("PYTHONPATH", None)
            cwd = self.dir
        if self.kind == "ours":
            cmd = [self.python, "-m", "ovirt_imageio.server"]
        else:
            cmd = [self.python, "-c",
                   "from ovirt_imageio._internal import server; "
                   "server.main()"]
        self.proc = subprocess.Popen(
            cmd + ["--conf-dir", os.path.join(self.dir, "conf")],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "stderr.log"), "wb"))
        # Upstream has no readiness signal without python-systemd: wait
        # for the control socket to answer, bounded.
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} daemon exited; see "
                                   f"{self.dir}/stderr.log")
            try:
                self.request("GET", "/tickets/none")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The running daemon's pid."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def request(self, method: str, path: str, body: Any = None
                ) -> tuple[int, bytes]:
        conn = UnixHTTPConnection(self.control, timeout=600)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        status, body = self.request("PUT", f"/tickets/{ticket['uuid']}",
                                    ticket)
        if status != 200:
            raise RuntimeError(f"add ticket failed: {status} {body!r}")

    def del_ticket(self, ticket_id: str) -> None:
        self.request("DELETE", f"/tickets/{ticket_id}")

    def cpu(self) -> float:
        """User+system CPU seconds used by the daemon so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss(self) -> int:
        """Peak resident set size in bytes (VmHWM)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0
