# SPDX-License-Identifier: GPL-2.0-or-later
"""
The machine's own limits, measured in the same run as the transfers:
direct I/O with dd, qemu-img convert without caches, nbdcopy between two
qemu-nbd servers, and a loopback TCP stream in Python.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

MiB = 1024**2


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def dd_read(src: str) -> float:
    return timed(["dd", f"if={src}", "of=/dev/null", "bs=8M",
                  "iflag=direct"])


def dd_write(dst: str, size: int) -> float:
    return timed(["dd", "if=/dev/zero", f"of={dst}", "bs=8M",
                  f"count={size // (8 * MiB)}", "oflag=direct",
                  "conv=fsync"])


def dd_copy(src: str, dst: str) -> float:
    return timed(["dd", f"if={src}", f"of={dst}", "bs=8M", "iflag=direct",
                  "oflag=direct", "conv=fsync,sparse"])


def qemu_img_convert(src: str, src_fmt: str, dst: str,
                     dst_fmt: str = "raw") -> float:
    return timed(["qemu-img", "convert", "-t", "none", "-T", "none",
                  "-f", src_fmt, "-O", dst_fmt, src, dst])


def nbdcopy(src: str, src_fmt: str, dst: str, size: int) -> float:
    """nbdcopy between two qemu-nbd over unix sockets (raw target)."""
    if shutil.which("nbdcopy") is None:
        raise FileNotFoundError("nbdcopy")
    tmp = tempfile.mkdtemp(prefix="bench-nbd-")
    a = os.path.join(tmp, "src.sock")
    b = os.path.join(tmp, "dst.sock")
    with open(dst, "wb") as f:
        f.truncate(size)
    procs = [
        subprocess.Popen(stderr=subprocess.DEVNULL,
                         args=["qemu-nbd", "--read-only", "--persistent",
                               "--shared=8", "--cache=none", "--aio=native",
                               "-f", src_fmt, "--socket", a, src]),
        subprocess.Popen(stderr=subprocess.DEVNULL,
                         args=["qemu-nbd", "--persistent", "--shared=8",
                               "--cache=none", "--aio=native", "-f", "raw",
                               "--discard=unmap", "--socket", b, dst]),
    ]
    # qemu-nbd complains on stderr when nbdcopy disconnects; not ours.
    try:
        _wait_sockets([a, b])
        return timed(["nbdcopy", f"nbd+unix:///?socket={a}",
                      f"nbd+unix:///?socket={b}"])
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_sockets(paths: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for path in paths:
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def socket_stream(size: int, chunk: int = 4 * MiB) -> float:
    """Send size bytes over loopback TCP with sendall/recv_into."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    done: list[float] = []

    def receive() -> None:
        conn, _ = server.accept()
        buf = memoryview(bytearray(chunk))
        left = size
        while left:
            n = conn.recv_into(buf, min(left, chunk))
            if n == 0:
                break
            left -= n
        done.append(time.monotonic())
        conn.close()

    t = threading.Thread(target=receive)
    t.start()
    data = os.urandom(chunk)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as c:
        left = size
        while left:
            n = min(left, chunk)
            c.sendall(data[:n])
            left -= n
    t.join()
    server.close()
    return done[0] - start
