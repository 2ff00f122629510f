# SPDX-License-Identifier: GPL-2.0-or-later
"""
Upstream ovirt-imageio 2.5.1's own client library against our daemon.

The upstream package is never a dependency: ``make bench`` installs it
into the ignored ``.bench-venv`` as a comparison point, and these tests
reuse it when it is there (skipped otherwise). They run the upstream
client in that interpreter, outside this source tree, so nothing of ours
is imported on the client side.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from typing import Any

import pytest

from support import TOP
from support.daemon_util import PKI, Daemon

UPSTREAM_PYTHON = os.path.join(TOP, ".bench-venv", "bin", "python")
MiB = 1024**2

pytestmark = pytest.mark.skipif(
    not os.path.exists(UPSTREAM_PYTHON),
    reason="upstream 2.5.1 not installed; `make bench` installs it into "
           ".bench-venv")


def run_upstream(code: str, tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([UPSTREAM_PYTHON, "-c", textwrap.dedent(code)],
                       cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("local_socket", [False, True])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_download(tmp_path: Any, fmt: str, local_socket: bool
                         ) -> None:
    d = Daemon(tmp_path / "daemon",
               extra_conf="" if local_socket else "[local]\nenable = false\n")
    d.start()
    try:
        size = 8 * MiB
        src = tmp_path / "src.raw"
        with open(src, "wb") as f:
            f.write(os.urandom(MiB))
            f.seek(4 * MiB)
            f.write(os.urandom(MiB))
            f.truncate(size)
        image = tmp_path / f"src.{fmt}"
        if fmt == "qcow2":
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O",
                            "qcow2", str(src), str(image)], check=True)
        target = tmp_path / "target.raw"
        target.write_bytes(b"")
        os.truncate(target, size)
        ticket: dict[str, Any] = {
            "uuid": str(uuid.uuid4()), "size": size, "timeout": 300,
            "ops": ["read", "write"], "url": f"file://{target}"}
        d.add_ticket(ticket)
        url = f"https://localhost:{d.port}/images/{ticket['uuid']}"
        out = tmp_path / f"out.{fmt}"
        run_upstream(f"""
            from ovirt_imageio import client
            client.upload({str(image)!r}, {url!r}, {PKI + "/ca.pem"!r})
            client.download({url!r}, {str(out)!r}, {PKI + "/ca.pem"!r},
                            fmt={fmt!r})
            """, tmp_path)
        assert target.read_bytes() == src.read_bytes()
        subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt,
                        str(src), str(out)], check=True)
        status = d.ticket(ticket["uuid"])
        assert status["active"] is False
        # The upstream client used our unix socket when offered.
        assert ("(local.service" in d.log()) == local_socket
    finally:
        d.stop()


@pytest.mark.parametrize("local_socket", [False, True])
def test_extents(tmp_path: Any, local_socket: bool) -> None:
    # Our streamed (chunked) extents answer, read by upstream's client
    # over TLS or our unix socket: a map of several chunks.
    d = Daemon(tmp_path / "daemon",
               extra_conf="" if local_socket else "[local]\nenable = false\n")
    d.start()
    try:
        size = 256 * MiB
        image = tmp_path / "image.raw"
        with open(image, "wb") as f:
            for offset in range(0, size, 128 * 1024):
                f.seek(offset)
                f.write(b"x" * 4096)
            f.truncate(size)
        ticket: dict[str, Any] = {
            "uuid": str(uuid.uuid4()), "size": size, "timeout": 300,
            "ops": ["read"], "url": f"file://{image}"}
        d.add_ticket(ticket)
        url = f"https://localhost:{d.port}/images/{ticket['uuid']}"
        out = tmp_path / "extents.json"
        run_upstream(f"""
            import json
            from ovirt_imageio.client import ImageioClient
            with ImageioClient({url!r}, cafile={PKI + "/ca.pem"!r}) as c:
                items = [{{"start": e.start, "length": e.length,
                           "zero": e.zero, "hole": e.hole}}
                         for e in c.extents()]
            with open({str(out)!r}, "w") as f:
                json.dump(items, f)
            """, tmp_path)
        conn = d.remote()
        try:
            conn.request("GET", f"/images/{ticket['uuid']}/extents")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.getheader("transfer-encoding") == "chunked"
        assert len(body) > 2 * 64 * 1024
        assert json.loads(out.read_text()) == json.loads(body)
        assert ("(local.service" in d.log()) == local_socket
    finally:
        d.stop()
