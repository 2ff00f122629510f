# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run the real daemon as a subprocess for integration tests, and talk to
it over TCP, TLS, the local unix socket and the control socket.

Readiness is signalled the systemd way: the test binds a datagram socket,
passes it in NOTIFY_SOCKET, and waits for READY=1, so no test polls or
sleeps waiting for the daemon.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import uuid
from typing import Any, Iterable, Iterator

from ovirt_imageio.net.unixhttp import UnixHTTPConnection

from . import TOP

PKI = os.path.join(TOP, "test", "pki")
START_TIMEOUT = 30


class Daemon:
    """A daemon subprocess with its own conf dir and run dir."""

    def __init__(self, tmp_path: Any, extra_conf: str = "",
                 tls: bool = True, keep_notify: bool = False,
                 python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = str(tmp_path)
        self.conf_dir = os.path.join(self.tmp, "conf")
        self.run_dir = os.path.join(self.tmp, "run")
        os.makedirs(os.path.join(self.conf_dir, "conf.d"))
        os.makedirs(self.run_dir)
        self.control_path = os.path.join(self.run_dir, "sock")
        self.log_path = os.path.join(self.tmp, "daemon.log")
        with open(os.path.join(TOP, "test", "conf", "daemon.conf")) as f:
            base = f.read()
        with open(os.path.join(self.conf_dir, "conf.d", "50-test.conf"),
                  "w") as f:
            f.write(base)
        override = textwrap.dedent(f"""
            [daemon]
            run_dir = {self.run_dir}
            systemd_enable = true

            [tls]
            enable = {str(tls).lower()}
            key_file = {PKI}/key.pem
            cert_file = {PKI}/cert.pem
            ca_file = {PKI}/ca.pem

            [control]
            socket = {self.control_path}
            """)
        with open(os.path.join(self.conf_dir, "conf.d", "60-test.conf"),
                  "w") as f:
            f.write(override)
        if extra_conf:
            with open(os.path.join(self.conf_dir, "conf.d", "70-extra.conf"),
                      "w") as f:
                f.write(textwrap.dedent(extra_conf))
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}
        self.tls = tls
        # Extra command line arguments for the daemon.
        self.start_args: list[str] = []
        # Set when the control service listens on TCP.
        self.control_port: int | None = None
        # Keep the notify socket after READY=1, to see STOPPING=1.
        self.keep_notify = keep_notify
        self.notify: socket.socket | None = None
        # The interpreter running the daemon, and extra environment.
        self.python = python
        self.env = env or {}

    def start(self) -> None:
        notify_path = os.path.join(self.run_dir, "notify")
        # Left by an earlier start of this daemon (a restart test).
        if os.path.lexists(notify_path):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        # Like systemd's: a daemon that dropped root can still notify.
        os.chmod(notify_path, 0o666)
        notify.settimeout(START_TIMEOUT)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path,
                   PYTHONPATH=TOP)
        env.update(self.env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.python, "-m", "ovirt_imageio.server",
             "--conf-dir", self.conf_dir, *self.start_args],
            env=env, cwd=TOP, stdout=self._log, stderr=subprocess.STDOUT)
        # Wait for READY=1 or for the process to exit, whichever is first.
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(notify, selectors.EVENT_READ)
                sel.register(pidfd, selectors.EVENT_READ)
                ready = [k.fileobj for k, _ in sel.select(START_TIMEOUT)]
            if notify not in ready:
                self.stop()
                raise RuntimeError(f"daemon did not start:\n{self.log()}")
            msg = notify.recv(4096)
        finally:
            os.close(pidfd)
            if self.keep_notify:
                self.notify = notify
            else:
                notify.close()
        assert msg == b"READY=1", msg
        self.config = self.control("GET", "/config/")[1]

    def wait_notify(self, timeout: float = START_TIMEOUT) -> bytes:
        """The next message on the notify socket (needs keep_notify)."""
        assert self.notify is not None, "Daemon(keep_notify=True) needed"
        self.notify.settimeout(timeout)
        return self.notify.recv(4096)

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int | None:
        try:
            return self._stop()
        finally:
            if self.notify is not None:
                self.notify.close()
                self.notify = None

    def _stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL the daemon (a crash: no clean stop, nothing saved)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._log.close()
        self.proc = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    # Connections.

    @property
    def port(self) -> int:
        return int(self.config["remote"]["port"])

    @property
    def local_socket(self) -> str:
        return str(self.config["local"]["socket"])

    def remote(self, timeout: float = 60) -> http.client.HTTPConnection:
        if self.tls:
            ctx = ssl.create_default_context(cafile=f"{PKI}/ca.pem")
            return http.client.HTTPSConnection(
                "localhost", self.port, context=ctx, timeout=timeout)
        return http.client.HTTPConnection("localhost", self.port,
                                          timeout=timeout)

    def local(self, timeout: float = 60) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.local_socket, timeout=timeout)

    def control(self, method: str, path: str, body: Any = None
                ) -> tuple[int, Any]:
        conn: http.client.HTTPConnection
        if self.control_port is not None:
            conn = http.client.HTTPConnection("localhost", self.control_port,
                                              timeout=60)
        else:
            conn = UnixHTTPConnection(self.control_path)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data)
            resp = conn.getresponse()
            payload = resp.read()
            wait_for_close(conn)
            if resp.getheader("content-type", "").startswith(
                    "application/json"):
                return resp.status, json.loads(payload)
            return resp.status, payload.decode()
        finally:
            conn.close()

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        status, body = self.control("PUT", f"/tickets/{ticket['uuid']}",
                                    ticket)
        assert status == 200, body

    def ticket(self, uuid: str) -> dict[str, Any]:
        status, body = self.control("GET", f"/tickets/{uuid}")
        assert status == 200, body
        return dict(body)


def wait_for_close(conn: http.client.HTTPConnection) -> None:
    """
    End a kept-alive connection and wait until the server closed it.

    The server finishes its bookkeeping of a request (statistics,
    metrics) before it reads the next one, so once it saw our end of
    stream and closed, everything we sent is accounted for.
    """
    sock = conn.sock
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass
    except OSError:
        pass


def add_ticket(daemon: Daemon, url: str, size: int,
               ops: tuple[str, ...] = ("read", "write"), **kw: Any) -> str:
    """Install a ticket of size bytes for url (more ticket fields in kw);
    return its transfer URL on the remote service."""
    ticket = {"uuid": str(uuid.uuid4()), "size": size, "url": url,
              "timeout": 300, "ops": list(ops)}
    ticket.update(kw)
    daemon.add_ticket(ticket)
    scheme = "https" if daemon.tls else "http"
    return f"{scheme}://localhost:{daemon.port}/images/{ticket['uuid']}"


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (tests of fixed ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(conn: http.client.HTTPConnection, method: str, path: str,
            body: Any = None, headers: dict[str, str] | None = None
            ) -> http.client.HTTPResponse:
    conn.request(method, path, body=body, headers=headers or {})
    return conn.getresponse()


# Settings of a proxy daemon in front of a host daemon of these tests.
PROXY_CONF = f"""
    [local]
    enable = false

    [backend_http]
    ca_file = {PKI}/ca.pem
    """


def put_chunked(conn: http.client.HTTPConnection, path: str,
                pieces: Iterable[bytes]) -> None:
    """PUT pieces as a chunked body (http.client's encoding); assert 200.
    The connection stays open for the caller."""
    conn.request("PUT", path, body=iter(pieces), encode_chunked=True)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, body


# extra_conf of a daemon serving the NBD door on its unix socket.
NBD_DOOR_CONF = """
    [nbd]
    enable = true
    """


@contextlib.contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[Daemon]:
    """A started Daemon(*args, **kwargs), stopped on exit."""
    d = Daemon(*args, **kwargs)
    d.start()
    try:
        yield d
    finally:
        d.stop()
