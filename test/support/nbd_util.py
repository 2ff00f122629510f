# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD servers for tests: nbdkit with socket activation."""

from __future__ import annotations

import os
import socket
import subprocess


class NBDKit:
    """
    nbdkit on a unix socket, started with systemd socket activation: the
    socket listens before nbdkit starts, so clients can connect at once
    (the kernel queues them) and nothing waits for readiness.
    """

    def __init__(self, sock_dir: str, *args: str) -> None:
        self.sock = os.path.join(sock_dir, "nbdkit.sock")
        self.url = f"nbd:unix:{self.sock}"
        listener = socket.socket(socket.AF_UNIX)
        try:
            listener.bind(self.sock)
            listener.listen()
            fd = listener.fileno()
            # LISTEN_PID must be nbdkit's pid: the shell's, kept by exec.
            # bash, since dash cannot redirect descriptors above 9.
            script = f'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@" 3<&{fd}'
            self.proc = subprocess.Popen(
                ["bash", "-c", script, "bash", "nbdkit", "-f", *args],
                pass_fds=[fd])
        finally:
            listener.close()

    def stop(self) -> None:
        # SIGTERM lets nbdkit unload its plugin; the eval plugin removes
        # its script directory in /tmp then, which SIGKILL would leak.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
